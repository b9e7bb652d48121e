//! Announcing commits to every instance: `NOTIFY` in the committing
//! transaction, one `LISTEN`ing connection per instance.
//!
//! **What a notification says.** One JSON payload per commit (split in parts
//! under PostgreSQL's 8,000-byte limit): the instance and a commit token,
//! then one entry per event — `c`: a space and the first and last revision
//! the commit gave it; `m`: a user who joined or left a space; `r`:
//! a user's device that was revoked. Document contents never travel in a
//! notification.
//!
//! **Order.** PostgreSQL delivers notifications in commit order, so the
//! listener hands events to the [`CommitListener`] in the order the database
//! committed them, whichever instance committed. An instance's own events
//! are kept in memory under their commit token (registered before the
//! commit) and handed over when their notification comes back; the writer
//! marks them ready once it has answered the callers, so a device's `ack`
//! still comes before the live changes of its own push.
//!
//! **Changes of other instances** are read from the store: for each space, the
//! rows with versions in the announced range, in one statement for every
//! space of a drain of notifications. Only the contiguous run from the first
//! announced revision is handed on (a later revision in the range may already
//! have been overwritten by a newer commit, whose own notification follows),
//! with the checksum stored with its last row. A session that sees a gap
//! reads the feed from the store itself. Reading only announced revisions
//! means a change committed after a membership removal is never handed on
//! before that removal.
//!
//! **Reconnects.** If the listening connection breaks (or stops answering a
//! keepalive), the listener connects again with backoff, hands on its own
//! events whose notifications were lost, then replays what the database
//! recorded while it was deaf (plus a margin): membership changes and
//! revocations from `announcements`, and for every space whose feed moved,
//! its newest change, which makes every session behind it read the rest from
//! the store.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tandem_protocol::{Change, DeviceId, SpaceChecksum, SpaceId, UserId};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::reads::{self, change_from_row};
use super::{TxError, pg_error};
use crate::store::{CommitListener, CommittedChanges, DeviceIdentity, StoreError, StoreEvent};

/// Largest payload part; PostgreSQL refuses 8,000 bytes and more.
const MAX_PAYLOAD: usize = 7_000;
/// How often an idle listening connection is checked.
const KEEPALIVE: Duration = Duration::from_secs(10);
/// Replayed beyond the time the listener was deaf, to cover transactions
/// that started (and took their timestamp) earlier than they committed.
const REPLAY_MARGIN: Duration = Duration::from_secs(60);
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a closing store waits for its own last notifications.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// One announced event, as it travels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Notice {
    /// Changes committed to a space: first and last revision.
    #[serde(rename = "c")]
    Changes(String, u64, u64),
    /// A user joined (`true`) or left a space.
    #[serde(rename = "m")]
    Membership(String, String, bool),
    /// A device was revoked.
    #[serde(rename = "r")]
    Revoked(String, String),
    /// A user's role changed holder.
    #[serde(rename = "o")]
    Role(String, String),
    /// A user's devices changed (registry or presence).
    #[serde(rename = "d")]
    Devices(String),
}

impl Notice {
    fn of(event: &StoreEvent) -> Option<Notice> {
        match event {
            StoreEvent::Changes(batch) => {
                let first = batch.changes.first()?.rev;
                let last = batch.changes.last()?.rev;
                Some(Notice::Changes(batch.space.to_string(), first, last))
            }
            StoreEvent::MembershipChanged {
                user,
                space,
                member,
                ..
            } => Some(Notice::Membership(
                user.to_string(),
                space.to_string(),
                *member,
            )),
            StoreEvent::DeviceRevoked(id) => {
                Some(Notice::Revoked(id.user.to_string(), id.device.to_string()))
            }
            StoreEvent::RoleChanged { user, state } => {
                Some(Notice::Role(user.to_string(), state.role.clone()))
            }
            StoreEvent::DevicesChanged { user, .. } => Some(Notice::Devices(user.to_string())),
        }
    }
}

/// One notification payload.
#[derive(Debug, Serialize, Deserialize)]
struct Payload {
    /// The committing instance.
    i: Uuid,
    /// The commit token, unique within the instance.
    t: u64,
    /// The part number (PostgreSQL folds identical notifications of one
    /// transaction into one).
    p: u32,
    /// The events.
    e: Vec<Notice>,
}

fn encode(instance: Uuid, token: u64, notices: Vec<Notice>) -> Result<Vec<String>, StoreError> {
    let mut parts = Vec::new();
    let mut current: Vec<Notice> = Vec::new();
    let mut size = 0;
    for notice in notices {
        let len = serde_json::to_string(&notice)
            .map_err(|e| StoreError::Backend(e.to_string()))?
            .len()
            + 1;
        if !current.is_empty() && size + len > MAX_PAYLOAD - 100 {
            parts.push(std::mem::take(&mut current));
            size = 0;
        }
        size += len;
        current.push(notice);
    }
    if !current.is_empty() {
        parts.push(current);
    }
    parts
        .into_iter()
        .enumerate()
        .map(|(p, e)| {
            serde_json::to_string(&Payload {
                i: instance,
                t: token,
                p: p as u32,
                e,
            })
            .map_err(|e| StoreError::Backend(e.to_string()))
        })
        .collect()
}

/// Coalesces the changes of one space committed together into one event
/// (one `changes` message per space and commit), without moving any change
/// across a membership or revocation event.
pub(crate) fn coalesce(events: Vec<StoreEvent>) -> Vec<StoreEvent> {
    let mut out: Vec<StoreEvent> = Vec::with_capacity(events.len());
    let mut open: HashMap<SpaceId, usize> = HashMap::new();
    for event in events {
        match event {
            StoreEvent::Changes(batch) => {
                if let Some(&i) = open.get(&batch.space)
                    && let Some(StoreEvent::Changes(existing)) = out.get_mut(i)
                {
                    let batch = Arc::unwrap_or_clone(batch);
                    let existing = Arc::make_mut(existing);
                    existing.changes.extend(batch.changes);
                    existing.checksum = batch.checksum;
                    continue;
                }
                open.insert(batch.space.clone(), out.len());
                out.push(StoreEvent::Changes(batch));
            }
            other => {
                open.clear();
                out.push(other);
            }
        }
    }
    out
}

/// An instance's own committed events waiting for their notification.
struct Pending {
    events: Vec<StoreEvent>,
    /// Fires once the writer has answered the callers; dropped unfired if
    /// the commit failed.
    ready: oneshot::Receiver<()>,
}

/// A commit whose events are registered; [`Committed::ready`] releases them.
pub(crate) struct Committed {
    ready: Option<oneshot::Sender<()>>,
}

impl Committed {
    /// The callers have their answers: the events may be handed on.
    pub fn ready(self) {
        if let Some(ready) = self.ready {
            let _ = ready.send(());
        }
    }
}

/// The instance's side of announcements: commits with `NOTIFY`, and the
/// listening task.
pub(crate) struct Announcer {
    instance: Uuid,
    channel: String,
    next_token: AtomicU64,
    pending: Mutex<BTreeMap<u64, Pending>>,
    stop: CancellationToken,
}

impl Announcer {
    /// Connects the listener (waiting until it listens) and starts its task.
    pub async fn start(
        instance: Uuid,
        config: tokio_postgres::Config,
        pool: Pool,
        channel: String,
        listener: Arc<dyn CommitListener>,
    ) -> Result<(Arc<Announcer>, JoinHandle<()>), StoreError> {
        let announcer = Arc::new(Announcer {
            instance,
            channel,
            next_token: AtomicU64::new(1),
            pending: Mutex::new(BTreeMap::new()),
            stop: CancellationToken::new(),
        });
        let connection = Listening::connect(&config, &announcer.channel).await?;
        let task = ListenerTask {
            announcer: announcer.clone(),
            config,
            pool,
            listener,
        };
        let handle = tokio::spawn(task.run(connection));
        Ok((announcer, handle))
    }

    /// The instance's id.
    pub fn instance(&self) -> Uuid {
        self.instance
    }

    /// Asks the listener to stop once the instance's own events are handed
    /// on.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Commits `tx`, announcing `events` (coalesced) to every instance.
    pub async fn commit(
        &self,
        tx: deadpool_postgres::Transaction<'_>,
        events: Vec<StoreEvent>,
    ) -> Result<Committed, TxError> {
        if events.is_empty() {
            tx.commit().await?;
            return Ok(Committed { ready: None });
        }
        let events = coalesce(events);
        let notices: Vec<Notice> = events.iter().filter_map(Notice::of).collect();
        let mut kinds = Vec::new();
        let mut users = Vec::new();
        let mut spaces = Vec::new();
        let mut devices = Vec::new();
        for notice in &notices {
            match notice {
                Notice::Membership(user, space, _) => {
                    kinds.push("m");
                    users.push(user.as_str());
                    spaces.push(Some(space.as_str()));
                    devices.push(None);
                }
                Notice::Revoked(user, device) => {
                    kinds.push("r");
                    users.push(user.as_str());
                    spaces.push(None);
                    devices.push(Some(device.as_str()));
                }
                Notice::Role(user, role) => {
                    kinds.push("o");
                    users.push(user.as_str());
                    spaces.push(Some(role.as_str()));
                    devices.push(None);
                }
                Notice::Devices(user) => {
                    kinds.push("d");
                    users.push(user.as_str());
                    spaces.push(None);
                    devices.push(None);
                }
                Notice::Changes(..) => {}
            }
        }
        if !kinds.is_empty() {
            tx.execute(
                "INSERT INTO announcements (kind, user_id, space, device_id)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])",
                &[&kinds, &users, &spaces, &devices],
            )
            .await?;
        }
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let notify = tx.prepare_cached("SELECT pg_notify($1, $2)").await?;
        for part in encode(self.instance, token, notices)? {
            tx.execute(&notify, &[&self.channel, &part]).await?;
        }
        let (ready, ready_rx) = oneshot::channel();
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(
                token,
                Pending {
                    events,
                    ready: ready_rx,
                },
            );
        }
        match tx.commit().await {
            Ok(()) => Ok(Committed { ready: Some(ready) }),
            Err(e) => {
                if let Ok(mut pending) = self.pending.lock() {
                    pending.remove(&token);
                }
                Err(e.into())
            }
        }
    }

    fn take_pending(&self, token: u64) -> Option<Pending> {
        self.pending.lock().ok()?.remove(&token)
    }

    fn take_all_pending(&self) -> Vec<Pending> {
        match self.pending.lock() {
            Ok(mut pending) => std::mem::take(&mut *pending).into_values().collect(),
            Err(_) => Vec::new(),
        }
    }

    fn has_pending(&self) -> bool {
        self.pending.lock().map(|p| !p.is_empty()).unwrap_or(false)
    }
}

/// A connection that `LISTEN`s, and the notifications it receives.
struct Listening {
    client: tokio_postgres::Client,
    notifications: mpsc::UnboundedReceiver<String>,
}

impl Listening {
    async fn connect(
        config: &tokio_postgres::Config,
        channel: &str,
    ) -> Result<Listening, StoreError> {
        let (client, mut connection) = config.connect(NoTls).await.map_err(pg_error)?;
        let (sender, notifications) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => {
                        if sender.send(n.payload().to_owned()).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        warn!(error = %e, "the notification connection failed");
                        return;
                    }
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN {channel}"))
            .await
            .map_err(pg_error)?;
        Ok(Listening {
            client,
            notifications,
        })
    }
}

/// One item of a run of notifications between two membership or
/// revocation events.
enum Item {
    /// This instance's own changes, as committed.
    Local(Arc<CommittedChanges>),
    /// Another instance's changes: revisions `first..=last` of the space.
    Remote(SpaceId, u64, u64),
}

struct ListenerTask {
    announcer: Arc<Announcer>,
    config: tokio_postgres::Config,
    pool: Pool,
    listener: Arc<dyn CommitListener>,
}

impl ListenerTask {
    async fn run(self, first: Listening) {
        let mut connection = Some(first);
        let mut deaf_since: Option<Instant> = None;
        let mut backoff = Duration::from_millis(50);
        loop {
            let listening = match connection.take() {
                Some(listening) => listening,
                None => {
                    if self.announcer.stop.is_cancelled() {
                        return;
                    }
                    match Listening::connect(&self.config, &self.announcer.channel).await {
                        Ok(listening) => {
                            info!("the notification listener reconnected");
                            backoff = Duration::from_millis(50);
                            listening
                        }
                        Err(e) => {
                            warn!(error = %e, "the notification listener cannot reconnect");
                            tokio::select! {
                                _ = self.announcer.stop.cancelled() => return,
                                _ = tokio::time::sleep(backoff) => {}
                            }
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                            continue;
                        }
                    }
                }
            };
            if let Some(since) = deaf_since.take() {
                self.recover(since.elapsed() + REPLAY_MARGIN).await;
            }
            let last_heard = self.listen(listening).await;
            match last_heard {
                None => return,
                Some(heard) => deaf_since = Some(heard),
            }
        }
    }

    /// Hands on notifications until the connection fails (returning when it
    /// was last known to work) or the store stops (`None`).
    async fn listen(&self, mut listening: Listening) -> Option<Instant> {
        let mut last_heard = Instant::now();
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.tick().await;
        let mut stopping: Option<tokio::time::Instant> = None;
        loop {
            if let Some(deadline) = stopping
                && (!self.announcer.has_pending() || tokio::time::Instant::now() >= deadline)
            {
                return None;
            }
            tokio::select! {
                _ = self.announcer.stop.cancelled(), if stopping.is_none() => {
                    stopping = Some(tokio::time::Instant::now() + STOP_GRACE);
                }
                _ = tokio::time::sleep(Duration::from_millis(20)), if stopping.is_some() => {}
                received = listening.notifications.recv() => {
                    let Some(first) = received else {
                        warn!("the notification connection closed; reconnecting");
                        return Some(last_heard);
                    };
                    last_heard = Instant::now();
                    let mut payloads = vec![first];
                    while let Ok(next) = listening.notifications.try_recv() {
                        payloads.push(next);
                    }
                    self.hand_on(payloads).await;
                }
                _ = keepalive.tick() => {
                    let alive = tokio::time::timeout(KEEPALIVE, listening.client.simple_query("SELECT 1")).await;
                    match alive {
                        Ok(Ok(_)) => last_heard = Instant::now(),
                        _ => {
                            warn!("the notification connection stopped answering; reconnecting");
                            return Some(last_heard);
                        }
                    }
                }
            }
        }
    }

    /// Turns a run of notifications into events, in order, and hands them
    /// to the commit listener.
    async fn hand_on(&self, payloads: Vec<String>) {
        let mut out = Vec::new();
        let mut run: Vec<Item> = Vec::new();
        for text in payloads {
            let payload: Payload = match serde_json::from_str(&text) {
                Ok(payload) => payload,
                Err(e) => {
                    warn!(error = %e, "an unreadable notification was ignored");
                    continue;
                }
            };
            if payload.i == self.announcer.instance {
                let Some(pending) = self.announcer.take_pending(payload.t) else {
                    continue;
                };
                // The notification proves the commit: hand the events on
                // even if the writer went away without saying so.
                let _ = pending.ready.await;
                for event in pending.events {
                    match event {
                        StoreEvent::Changes(batch) => run.push(Item::Local(batch)),
                        other => {
                            self.flush(&mut run, &mut out).await;
                            out.push(other);
                        }
                    }
                }
                continue;
            }
            for notice in payload.e {
                match notice {
                    Notice::Changes(space, first, last) => match SpaceId::new(space) {
                        Ok(space) => run.push(Item::Remote(space, first, last)),
                        Err(e) => warn!(error = %e, "a notification named a bad space"),
                    },
                    Notice::Membership(user, space, member) => {
                        self.flush(&mut run, &mut out).await;
                        if let Some(event) = self.membership_event(&user, &space, member).await {
                            out.push(event);
                        }
                    }
                    Notice::Revoked(user, device) => {
                        self.flush(&mut run, &mut out).await;
                        match (UserId::new(user), DeviceId::new(device)) {
                            (Ok(user), Ok(device)) => {
                                out.push(StoreEvent::DeviceRevoked(DeviceIdentity { user, device }))
                            }
                            _ => warn!("a notification named a bad device"),
                        }
                    }
                    Notice::Role(user, role) => {
                        self.flush(&mut run, &mut out).await;
                        if let Some(event) = self.role_event(&user, &role).await {
                            out.push(event);
                        }
                    }
                    Notice::Devices(user) => {
                        self.flush(&mut run, &mut out).await;
                        if let Some(event) = self.devices_event(&user).await {
                            out.push(event);
                        }
                    }
                }
            }
        }
        self.flush(&mut run, &mut out).await;
        if !out.is_empty() {
            self.listener.committed(out);
        }
    }

    /// Turns a run of change items into one event per space.
    async fn flush(&self, run: &mut Vec<Item>, out: &mut Vec<StoreEvent>) {
        if run.is_empty() {
            return;
        }
        // Per space, in order of first appearance: the announced range, and
        // whether another instance wrote to it in this run.
        let mut order: Vec<SpaceId> = Vec::new();
        let mut ranges: HashMap<SpaceId, (u64, u64, bool)> = HashMap::new();
        let mut local: HashMap<SpaceId, Vec<Arc<CommittedChanges>>> = HashMap::new();
        for item in run.drain(..) {
            let (space, first, last, remote) = match &item {
                Item::Local(batch) => {
                    let (Some(first), Some(last)) = (batch.changes.first(), batch.changes.last())
                    else {
                        continue;
                    };
                    (batch.space.clone(), first.rev, last.rev, false)
                }
                Item::Remote(space, first, last) => (space.clone(), *first, *last, true),
            };
            match ranges.get_mut(&space) {
                Some(range) => {
                    range.0 = range.0.min(first);
                    range.1 = range.1.max(last);
                    range.2 |= remote;
                }
                None => {
                    order.push(space.clone());
                    ranges.insert(space.clone(), (first, last, remote));
                }
            }
            if let Item::Local(batch) = item {
                local.entry(space).or_default().push(batch);
            }
        }
        let remote: Vec<(SpaceId, u64, u64)> = order
            .iter()
            .filter_map(|s| {
                let (first, last, remote) = ranges.get(s)?;
                remote.then(|| (s.clone(), first.saturating_sub(1), *last))
            })
            .collect();
        let mut read = if remote.is_empty() {
            HashMap::new()
        } else {
            match self.read_ranges(&remote).await {
                Ok(read) => read,
                Err(e) => {
                    // The sessions of these spaces catch up at the next
                    // change: it shows them a gap.
                    warn!(error = %e, "reading announced changes failed");
                    HashMap::new()
                }
            }
        };
        for space in order {
            let Some(&(_, _, remote)) = ranges.get(&space) else {
                continue;
            };
            if remote {
                if let Some(batch) = read.remove(&space) {
                    out.push(StoreEvent::Changes(Arc::new(batch)));
                }
            } else if let Some(batches) = local.remove(&space) {
                let events = batches.into_iter().map(StoreEvent::Changes).collect();
                out.extend(coalesce(events));
            }
        }
    }

    /// Reads the announced ranges `(after, cap]` of several spaces in one
    /// statement, keeping the contiguous run from `after + 1` of each.
    async fn read_ranges(
        &self,
        ranges: &[(SpaceId, u64, u64)],
    ) -> Result<HashMap<SpaceId, CommittedChanges>, StoreError> {
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        let spaces: Vec<&str> = ranges.iter().map(|(s, _, _)| s.as_str()).collect();
        let afters: Vec<i64> = ranges.iter().map(|(_, a, _)| *a as i64).collect();
        let caps: Vec<i64> = ranges.iter().map(|(_, _, c)| *c as i64).collect();
        let statement = client
            .prepare_cached(
                "SELECT d.space, d.collection, d.doc_id, d.version, d.checksum, d.state,
                        d.deleted, d.origin, d.mutation_id
                 FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS r(space, after, cap)
                 JOIN documents d ON d.space = r.space AND d.version > r.after
                                 AND d.version <= r.cap
                 ORDER BY d.space, d.version",
            )
            .await
            .map_err(pg_error)?;
        let rows = client
            .query(&statement, &[&spaces, &afters, &caps])
            .await
            .map_err(pg_error)?;
        let afters: HashMap<&str, u64> = ranges.iter().map(|(s, a, _)| (s.as_str(), *a)).collect();
        let mut out: HashMap<SpaceId, CommittedChanges> = HashMap::new();
        let mut broken: std::collections::HashSet<SpaceId> = Default::default();
        for row in rows {
            let space: String = row.get(0);
            let Some(&after) = afters.get(space.as_str()) else {
                continue;
            };
            let space = SpaceId::new(space).map_err(|e| StoreError::Backend(e.to_string()))?;
            if broken.contains(&space) {
                continue;
            }
            let (change, checksum) = change_from_row(&space, &row, 1)?;
            let batch = out
                .entry(space.clone())
                .or_insert_with(|| CommittedChanges {
                    space: space.clone(),
                    changes: Vec::new(),
                    checksum: SpaceChecksum::default(),
                });
            let expected = batch
                .changes
                .last()
                .map_or(after + 1, |c: &Change| c.rev + 1);
            if change.rev != expected {
                broken.insert(space);
                continue;
            }
            batch.changes.push(change);
            batch.checksum = checksum;
        }
        out.retain(|_, batch| !batch.changes.is_empty());
        Ok(out)
    }

    /// The event of a membership change announced by another instance; the
    /// user's spaces are read now (a later change may already show).
    async fn membership_event(&self, user: &str, space: &str, member: bool) -> Option<StoreEvent> {
        let (Ok(user), Ok(space)) = (UserId::new(user), SpaceId::new(space)) else {
            warn!("a notification named a bad user or space");
            return None;
        };
        let client = match self.pool.get().await {
            Ok(client) => client,
            Err(e) => {
                warn!(error = %e, "reading a membership failed");
                return None;
            }
        };
        match reads::membership_now(&client, &user, &space).await {
            Ok((_, spaces)) => Some(StoreEvent::MembershipChanged {
                user,
                space,
                member,
                spaces,
            }),
            Err(e) => {
                warn!(error = %e, "reading a membership failed");
                None
            }
        }
    }

    /// The event of a role change announced by another instance: the
    /// role's state now.
    async fn role_event(&self, user: &str, role: &str) -> Option<StoreEvent> {
        let user = UserId::new(user).ok()?;
        let client = self.pool.get().await.ok()?;
        match super::coordination::role_state_now(&client, &user, role).await {
            Ok(state) => Some(StoreEvent::RoleChanged { user, state }),
            Err(e) => {
                warn!(error = %e, "reading a role failed");
                None
            }
        }
    }

    /// The event of a registry or presence change announced by another
    /// instance: the user's devices now.
    async fn devices_event(&self, user: &str) -> Option<StoreEvent> {
        let user = UserId::new(user).ok()?;
        let client = self.pool.get().await.ok()?;
        match super::coordination::devices_of(&client, &user).await {
            Ok(devices) => Some(StoreEvent::DevicesChanged { user, devices }),
            Err(e) => {
                warn!(error = %e, "reading devices failed");
                None
            }
        }
    }

    /// After a reconnect: hands on the instance's own events whose
    /// notifications were lost, then replays what was committed in the last
    /// `window`.
    async fn recover(&self, window: Duration) {
        let mut out = Vec::new();
        for pending in self.announcer.take_all_pending() {
            // Released only by a commit that succeeded.
            if pending.ready.await.is_ok() {
                out.extend(pending.events);
            }
        }
        match self.replay(window).await {
            Ok(replayed) => {
                debug!(events = replayed.len(), "replayed after a reconnect");
                out.extend(replayed);
            }
            Err(e) => warn!(error = %e, "replaying after a reconnect failed"),
        }
        if !out.is_empty() {
            self.listener.committed(out);
        }
    }

    async fn replay(&self, window: Duration) -> Result<Vec<StoreEvent>, StoreError> {
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        let seconds = window.as_secs_f64();
        let mut out = Vec::new();
        let announced = client
            .query(
                "SELECT kind, user_id, space, device_id FROM announcements
                 WHERE at >= now() - make_interval(secs => $1) ORDER BY id",
                &[&seconds],
            )
            .await
            .map_err(pg_error)?;
        for row in announced {
            let kind: String = row.get(0);
            let user: String = row.get(1);
            match kind.as_str() {
                "m" => {
                    let space: Option<String> = row.get(2);
                    let Some(space) = space else { continue };
                    let (Ok(user), Ok(space)) = (UserId::new(user), SpaceId::new(space)) else {
                        continue;
                    };
                    let (member, spaces) = reads::membership_now(&client, &user, &space).await?;
                    out.push(StoreEvent::MembershipChanged {
                        user,
                        space,
                        member,
                        spaces,
                    });
                }
                "r" => {
                    let device: Option<String> = row.get(3);
                    let Some(device) = device else { continue };
                    let (Ok(user), Ok(device)) = (UserId::new(user), DeviceId::new(device)) else {
                        continue;
                    };
                    let identity = DeviceIdentity { user, device };
                    // A device that registered again since is not revoked
                    // any more.
                    if !reads::has_credentials(&client, &identity).await? {
                        out.push(StoreEvent::DeviceRevoked(identity));
                    }
                }
                "o" => {
                    let role: Option<String> = row.get(2);
                    let (Some(role), Ok(user)) = (role, UserId::new(user)) else {
                        continue;
                    };
                    let state = super::coordination::role_state_now(&client, &user, &role).await?;
                    out.push(StoreEvent::RoleChanged { user, state });
                }
                "d" => {
                    let Ok(user) = UserId::new(user) else {
                        continue;
                    };
                    let devices = super::coordination::devices_of(&client, &user).await?;
                    out.push(StoreEvent::DevicesChanged { user, devices });
                }
                _ => {}
            }
        }
        let heads = client
            .query(
                "SELECT d.space, d.collection, d.doc_id, d.version, d.checksum, d.state,
                        d.deleted, d.origin, d.mutation_id
                 FROM spaces s JOIN documents d ON d.space = s.space AND d.version = s.head
                 WHERE s.changed_at >= now() - make_interval(secs => $1)",
                &[&seconds],
            )
            .await
            .map_err(pg_error)?;
        for row in heads {
            let space: String = row.get(0);
            let space = SpaceId::new(space).map_err(|e| StoreError::Backend(e.to_string()))?;
            let (change, checksum) = change_from_row(&space, &row, 1)?;
            out.push(StoreEvent::Changes(Arc::new(CommittedChanges {
                space,
                changes: vec![change],
                checksum,
            })));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_split_under_the_limit_and_keep_order() {
        let notices: Vec<Notice> = (0..2_000)
            .map(|i| Notice::Changes(format!("shared:space-{i}"), i, i + 1))
            .collect();
        let instance = Uuid::now_v7();
        let parts = encode(instance, 7, notices.clone()).unwrap();
        assert!(parts.len() > 1);
        let mut decoded = Vec::new();
        for (n, part) in parts.iter().enumerate() {
            assert!(part.len() < 8_000, "{}", part.len());
            let payload: Payload = serde_json::from_str(part).unwrap();
            assert_eq!((payload.i, payload.t, payload.p), (instance, 7, n as u32));
            decoded.extend(payload.e);
        }
        assert_eq!(decoded, notices);
    }
}
