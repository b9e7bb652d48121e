//! Fan-out: live changes from the store's commit path to connected devices.
//!
//! The [`FanOut`] hub is a [`CommitListener`]: the store hands it the events
//! of every commit, in commit order. It keeps, per space, the connections
//! subscribed to it and, per user, the user's connections, and puts each
//! event on the bounded queue of every connection concerned. It never blocks
//! and never waits for a device: a connection whose queue is full is
//! disconnected as a slow consumer (it resumes from its cursor when it
//! reconnects), so one slow device costs the others nothing.
//!
//! A connection registers with the hub before it reads its catch-up from the
//! store, and drops live changes at or below what it has already sent (its
//! per-space watermark); see `session`. A later multi-instance store can feed
//! the same hub from its notifications: it only needs to turn them into
//! [`StoreEvent`]s.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::ws::Utf8Bytes;
use tandem_protocol::wire::{Changes, DeviceInfo, RoleState};
use tandem_protocol::{Change, ErrorCode, ServerMessage, SpaceId, UserId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::{CommitListener, CommittedChanges, DeviceIdentity, PageFill, StoreEvent};

/// Identifies one connection in the hub.
pub type ConnectionId = u64;

/// Live changes of one space, shared by every connection that receives them.
#[derive(Debug)]
pub struct LiveChanges {
    /// The committed changes.
    pub batch: Arc<CommittedChanges>,
    encoded: OnceLock<Arc<[Utf8Bytes]>>,
}

impl LiveChanges {
    /// The whole batch as `changes` messages of at most `max_frame_bytes`
    /// (see [`live_messages`]), encoded once for every connection that
    /// sends it unfiltered. (Every connection of a server has the same
    /// limit.)
    pub fn encoded(&self, max_frame_bytes: usize) -> Arc<[Utf8Bytes]> {
        self.encoded
            .get_or_init(|| encode_live(&self.batch, 0, max_frame_bytes))
            .clone()
    }
}

/// The frames of the part of `batch` above `watermark` (see
/// [`live_messages`]). The usual commit fits in one frame and is encoded
/// once; only one that does not is measured change by change and split.
pub fn encode_live(
    batch: &CommittedChanges,
    watermark: u64,
    max_frame_bytes: usize,
) -> Arc<[Utf8Bytes]> {
    let whole = ServerMessage::Changes(Changes {
        space: batch.space.clone(),
        changes: batch
            .changes
            .iter()
            .filter(|c| c.rev > watermark)
            .cloned()
            .collect(),
        more: false,
        checksum: Some(batch.checksum),
        head: batch.changes.last().map(|c| c.rev),
        reset: false,
    })
    .encode();
    if whole.len() <= max_frame_bytes {
        return Arc::from([Utf8Bytes::from(whole)]);
    }
    live_messages(batch, watermark, max_frame_bytes)
        .iter()
        .map(|m| Utf8Bytes::from(m.encode()))
        .collect()
}

/// The `changes` messages for the part of `batch` above `watermark`, each
/// at most `max_frame_bytes` long (a change longer than that on its own
/// goes alone in its message): usually one. When the commit does not fit
/// one message, every message but the last has `more: true` and no
/// checksum (the device is between two states of the server, as in the
/// middle of a catch-up); the last has `more: false` and the checksum.
/// Every message's `head` is the commit's last revision.
pub fn live_messages(
    batch: &CommittedChanges,
    watermark: u64,
    max_frame_bytes: usize,
) -> Vec<ServerMessage> {
    let head = batch.changes.last().map(|c| c.rev);
    let limit = crate::feed::page_limit(&batch.space, usize::MAX, max_frame_bytes);
    let mut parts: Vec<Vec<Change>> = vec![Vec::new()];
    let mut fill = PageFill::new(limit);
    for change in batch.changes.iter().filter(|c| c.rev > watermark) {
        if !fill.admit(change) {
            parts.push(Vec::new());
            fill = PageFill::new(limit);
            fill.admit(change);
        }
        if let Some(part) = parts.last_mut() {
            part.push(change.clone());
        }
    }
    let last = parts.len() - 1;
    parts
        .into_iter()
        .enumerate()
        .map(|(i, changes)| {
            ServerMessage::Changes(Changes {
                space: batch.space.clone(),
                changes,
                more: i < last,
                checksum: (i == last).then_some(batch.checksum),
                head,
                reset: false,
            })
        })
        .collect()
}

/// What a connection receives from the hub.
#[derive(Debug, Clone)]
pub enum LiveEvent {
    /// Changes committed to a subscribed space.
    Changes(Arc<LiveChanges>),
    /// The user's spaces changed; `removed` names a space the connection no
    /// longer receives.
    Spaces {
        /// All of the user's spaces now.
        spaces: Vec<SpaceId>,
        /// The space the user was removed from, if any.
        removed: Option<SpaceId>,
    },
    /// A role of the user changed holder.
    Role(RoleState),
    /// The user's devices changed.
    Devices(Arc<Vec<DeviceInfo>>),
}

struct Subscriber {
    identity: DeviceIdentity,
    queue: mpsc::Sender<LiveEvent>,
    kill: CancellationToken,
    kill_reason: OnceLock<ErrorCode>,
}

impl Subscriber {
    fn kill(&self, reason: ErrorCode) {
        let _ = self.kill_reason.set(reason);
        self.kill.cancel();
    }
}

#[derive(Default)]
struct Registry {
    connections: HashMap<ConnectionId, Arc<Subscriber>>,
    by_space: HashMap<SpaceId, HashSet<ConnectionId>>,
    by_user: HashMap<UserId, HashSet<ConnectionId>>,
}

impl Registry {
    fn remove(&mut self, id: ConnectionId) {
        if let Some(sub) = self.connections.remove(&id)
            && let Some(set) = self.by_user.get_mut(&sub.identity.user)
        {
            set.remove(&id);
            if set.is_empty() {
                self.by_user.remove(&sub.identity.user);
            }
        }
        self.by_space.retain(|_, set| {
            set.remove(&id);
            !set.is_empty()
        });
    }

    fn unsubscribe(&mut self, id: ConnectionId, space: &SpaceId) {
        if let Some(set) = self.by_space.get_mut(space) {
            set.remove(&id);
            if set.is_empty() {
                self.by_space.remove(space);
            }
        }
    }
}

/// The fan-out hub.
pub struct FanOut {
    registry: Mutex<Registry>,
    next_id: AtomicU64,
    metrics: Arc<Metrics>,
    /// Spaces with committed changes, for the push hints (when a webhook
    /// is configured).
    changed_spaces: OnceLock<mpsc::UnboundedSender<SpaceId>>,
}

/// A connection's registration with the hub; unregisters when dropped.
pub struct Registration {
    hub: Arc<FanOut>,
    id: ConnectionId,
    subscriber: Arc<Subscriber>,
    events: mpsc::Receiver<LiveEvent>,
}

impl FanOut {
    /// An empty hub.
    pub fn new(metrics: Arc<Metrics>) -> Arc<FanOut> {
        Arc::new(FanOut {
            registry: Mutex::new(Registry::default()),
            next_id: AtomicU64::new(1),
            metrics,
            changed_spaces: OnceLock::new(),
        })
    }

    /// Sends the space of every commit with changes to `sink` from now on
    /// (the push hints' worker).
    pub fn watch_changed_spaces(&self, sink: mpsc::UnboundedSender<SpaceId>) {
        let _ = self.changed_spaces.set(sink);
    }

    fn user_connections(registry: &Registry, user: &UserId) -> Vec<ConnectionId> {
        registry
            .by_user
            .get(user)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Registers a connection of `identity` with a queue of `capacity` events.
    pub fn register(self: &Arc<Self>, identity: DeviceIdentity, capacity: usize) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (queue, events) = mpsc::channel(capacity.max(1));
        let subscriber = Arc::new(Subscriber {
            identity: identity.clone(),
            queue,
            kill: CancellationToken::new(),
            kill_reason: OnceLock::new(),
        });
        if let Ok(mut registry) = self.registry.lock() {
            registry.connections.insert(id, subscriber.clone());
            registry
                .by_user
                .entry(identity.user)
                .or_default()
                .insert(id);
        }
        Registration {
            hub: self.clone(),
            id,
            subscriber,
            events,
        }
    }

    /// Connections registered now.
    pub fn connection_count(&self) -> usize {
        self.registry
            .lock()
            .map(|r| r.connections.len())
            .unwrap_or(0)
    }

    fn deliver(&self, registry: &mut Registry, ids: Vec<ConnectionId>, event: &LiveEvent) {
        for id in ids {
            let Some(sub) = registry.connections.get(&id) else {
                continue;
            };
            match sub.queue.try_send(event.clone()) {
                Ok(()) => self.metrics.fanout_queued(1),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    sub.kill(ErrorCode::SlowConsumer);
                    registry.remove(id);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => registry.remove(id),
            }
        }
    }
}

impl CommitListener for FanOut {
    fn committed(&self, events: Vec<StoreEvent>) {
        let Ok(mut registry) = self.registry.lock() else {
            return;
        };
        for event in events {
            match event {
                StoreEvent::Changes(batch) => {
                    if let Some(sink) = self.changed_spaces.get() {
                        let _ = sink.send(batch.space.clone());
                    }
                    let Some(ids) = registry.by_space.get(&batch.space) else {
                        continue;
                    };
                    let ids: Vec<_> = ids.iter().copied().collect();
                    let live = LiveEvent::Changes(Arc::new(LiveChanges {
                        batch,
                        encoded: OnceLock::new(),
                    }));
                    self.deliver(&mut registry, ids, &live);
                }
                StoreEvent::MembershipChanged {
                    user,
                    space,
                    member,
                    spaces,
                } => {
                    let ids: Vec<_> = registry
                        .by_user
                        .get(&user)
                        .map(|s| s.iter().copied().collect())
                        .unwrap_or_default();
                    if !member {
                        // Stop at once: nothing committed after the removal
                        // reaches the removed user's connections.
                        for id in &ids {
                            registry.unsubscribe(*id, &space);
                        }
                    }
                    let event = LiveEvent::Spaces {
                        spaces,
                        removed: (!member).then_some(space),
                    };
                    self.deliver(&mut registry, ids, &event);
                }
                StoreEvent::RoleChanged { user, state } => {
                    let ids = Self::user_connections(&registry, &user);
                    self.deliver(&mut registry, ids, &LiveEvent::Role(state));
                }
                StoreEvent::DevicesChanged { user, devices } => {
                    let ids = Self::user_connections(&registry, &user);
                    self.deliver(&mut registry, ids, &LiveEvent::Devices(Arc::new(devices)));
                }
                StoreEvent::DeviceRevoked(identity) => {
                    let ids: Vec<_> = registry
                        .by_user
                        .get(&identity.user)
                        .map(|s| s.iter().copied().collect())
                        .unwrap_or_default();
                    for id in ids {
                        let revoked = registry
                            .connections
                            .get(&id)
                            .filter(|s| s.identity == identity)
                            .cloned();
                        if let Some(sub) = revoked {
                            sub.kill(ErrorCode::Revoked);
                            registry.remove(id);
                        }
                    }
                }
            }
        }
    }
}

impl Registration {
    /// Starts delivering `space`'s live changes to this connection.
    pub fn subscribe(&self, space: &SpaceId) {
        if let Ok(mut registry) = self.hub.registry.lock()
            && registry.connections.contains_key(&self.id)
        {
            registry
                .by_space
                .entry(space.clone())
                .or_default()
                .insert(self.id);
        }
    }

    /// Stops delivering `space`'s live changes to this connection.
    pub fn unsubscribe(&self, space: &SpaceId) {
        if let Ok(mut registry) = self.hub.registry.lock() {
            registry.unsubscribe(self.id, space);
        }
    }

    /// The next event, once one is queued.
    pub async fn next(&mut self) -> Option<LiveEvent> {
        let event = self.events.recv().await;
        if event.is_some() {
            self.hub.metrics.fanout_queued(-1);
        }
        event
    }

    /// The next event if one is queued now.
    pub fn try_next(&mut self) -> Option<LiveEvent> {
        let event = self.events.try_recv().ok();
        if event.is_some() {
            self.hub.metrics.fanout_queued(-1);
        }
        event
    }

    /// Why the hub disconnected this connection (once it has).
    pub fn kill_reason(&self) -> ErrorCode {
        self.subscriber
            .kill_reason
            .get()
            .copied()
            .unwrap_or(ErrorCode::Internal)
    }

    /// The token the hub cancels to disconnect this connection.
    pub fn kill_token(&self) -> CancellationToken {
        self.subscriber.kill.clone()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.events.close();
        let mut left = 0i64;
        while self.events.try_recv().is_ok() {
            left += 1;
        }
        self.hub.metrics.fanout_queued(-left);
        if let Ok(mut registry) = self.hub.registry.lock() {
            registry.remove(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;
    use tandem_protocol::{Collection, DocId, DocState, SpaceChecksum};

    use super::*;

    fn batch(n: u64, blob: usize) -> CommittedChanges {
        let space = SpaceId::new("personal:alice").unwrap();
        let changes = (1..=n)
            .map(|rev| {
                let mut state = DocState::default();
                state.fields.insert("blob".into(), json!("x".repeat(blob)));
                Change {
                    space: space.clone(),
                    rev,
                    collection: Collection::new("blobs").unwrap(),
                    doc_id: DocId::new(format!("b{rev}")).unwrap(),
                    state,
                    deleted: false,
                    origin: None,
                    mutation_id: None,
                }
            })
            .collect();
        CommittedChanges {
            space,
            changes,
            checksum: SpaceChecksum(9),
        }
    }

    fn parts(messages: &[ServerMessage]) -> Vec<(Vec<u64>, bool, bool, Option<u64>)> {
        messages
            .iter()
            .map(|m| match m {
                ServerMessage::Changes(c) => (
                    c.changes.iter().map(|c| c.rev).collect(),
                    c.more,
                    c.checksum.is_some(),
                    c.head,
                ),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_commit_that_fits_one_frame_is_one_message() {
        let messages = live_messages(&batch(3, 10), 0, 1 << 20);
        assert_eq!(
            parts(&messages),
            vec![(vec![1, 2, 3], false, true, Some(3))]
        );
        let messages = live_messages(&batch(3, 10), 1, 1 << 20);
        assert_eq!(parts(&messages), vec![(vec![2, 3], false, true, Some(3))]);
    }

    #[test]
    fn encoded_frames_are_the_messages() {
        for (n, blob, watermark, limit) in [(3, 10, 0, 1 << 20), (7, 3 * 1024, 2, 10 * 1024)] {
            let batch = batch(n, blob);
            let frames: Vec<String> = encode_live(&batch, watermark, limit)
                .iter()
                .map(|f| f.as_str().to_owned())
                .collect();
            let messages: Vec<String> = live_messages(&batch, watermark, limit)
                .iter()
                .map(ServerMessage::encode)
                .collect();
            assert_eq!(frames, messages);
        }
    }

    #[test]
    fn a_commit_too_long_for_one_frame_is_split_within_the_limit() {
        let limit = 10 * 1024;
        let messages = live_messages(&batch(7, 3 * 1024), 0, limit);
        assert_eq!(
            parts(&messages),
            vec![
                (vec![1, 2, 3], true, false, Some(7)),
                (vec![4, 5, 6], true, false, Some(7)),
                (vec![7], false, true, Some(7)),
            ]
        );
        for m in &messages {
            assert!(m.encode().len() <= limit, "{}", m.encode().len());
        }
        // A change longer than the limit on its own goes alone.
        let messages = live_messages(&batch(2, 20 * 1024), 0, limit);
        assert_eq!(
            parts(&messages),
            vec![
                (vec![1], true, false, Some(2)),
                (vec![2], false, true, Some(2))
            ]
        );
    }
}
