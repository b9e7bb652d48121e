//! The sync engine: a state machine with events in and actions out.
//!
//! The engine never touches a socket, a timer or a random source. The
//! driver (`driver.rs`, or a test) feeds it [`Event`]s and carries out the
//! [`Action`]s it returns: open or close the connection, send a frame,
//! arm a timer, refresh the credentials. Time comes from an injected
//! [`Clock`] and jitter from an injected [`Jitter`], so every reconnect,
//! retry and conflict path runs the same way in a unit test as on a phone.
//!
//! # Persistence
//!
//! The engine's durable state is the store, and the engine writes it
//! itself, synchronously, inside [`Engine::handle`], one transaction per
//! step: a page of changes is one, an `ack` of 500 results is one (every
//! acknowledgement and refusal in it, `Store::record_outcomes`), the
//! retries of an unanswered batch are one, a conflict's settlement is one
//! (`settle.rs`). The write happens before the actions of the same event
//! are returned, so an action never runs ahead of the state it depends on
//! (a `push` is sent only after its entries are marked in flight).
//! Everything that leaves the process, calls the app or depends on time
//! goes through actions: the engine never calls the app's conflict
//! handler or observers itself.
//!
//! # Connection
//!
//! ```text
//! Idle ──Connect──▶ Connecting ──Connected──▶ Handshaking ──welcome──▶ Online
//!   ▲                    │                         │                    │
//!   └── reconnect timer ◀┴──── Disconnected ◀──────┴────────────────────┘
//! ```
//!
//! Reconnects back off 0.5 s doubling to 30 s plus jitter; the count
//! resets when a welcome arrives, and when the host reports the network
//! back ([`Event::NetworkChanged`]), which also connects at once. A
//! heartbeat timer sends `ping` after a quiet spell and drops the
//! connection when nothing at all has arrived for longer.
//!
//! # Delivery
//!
//! The outbox goes out in seq order in batches of at most the server's
//! `max_batch_mutations`, several batches outstanding at once (the server
//! answers in order). Answers: `applied`/`duplicate` mark the entry
//! acknowledged (it leaves the outbox when the cursor reaches its
//! revision); `conflict` goes to [`ConflictHandler`] rules; `rejected`
//! fails the entry and rolls it back from the view. An `error` naming a
//! batch (rate limited, internal) and a missing answer retry the batch's
//! entries with backoff (1 s doubling to 60 s plus jitter), failing an
//! entry after the configured number of attempts. A dropped connection
//! puts in-flight entries back in the queue without counting an attempt:
//! being offline never fails a write.
//!
//! # Catch-up
//!
//! After the welcome each space's pages are applied one transaction per
//! page. A final page and every live message carry the space's checksum;
//! a mismatch counts in the status and re-syncs the space from 0 with
//! mark and sweep (`store/remote.rs`), as `reset_required` and `reset`
//! pages do.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tandem_protocol::wire::{
    Ack, Changes, ErrorMessage, Heartbeat, Hello, Limits, Outcome, Push, Renew, RoleState,
    Subscribe, Welcome,
};
use tandem_protocol::{
    ClientMessage, Collection, CollectionPolicy, Document, ErrorCode, MutationId, PROTOCOL_VERSION,
    RejectCode, RoleFence, ServerMessage, SpaceId,
};

use crate::clock::Clock;
use crate::error::Error;
use crate::store::{BatchLimit, EntryOutcome, OutboxEntry, PageCheck, PageEnd, Resync, Store};
use crate::sync::backoff::Jitter;
use crate::sync::config::SyncTuning;
use crate::sync::interface::{Action, DisconnectReason, Event, Notice, Timer};
use crate::sync::status::{
    ConnectionState, MutationFailure, SpaceProgress, SyncError, SyncErrorKind, SyncStatus,
};

mod settle;
#[cfg(test)]
mod tests;

/// Room a `push` message needs around its mutations:
/// `{"type":"push","batch_id":N,"mutations":[...]}`, with a margin.
const PUSH_ENVELOPE_BYTES: usize = 128;

/// One space on the current connection.
#[derive(Debug, Clone, Default)]
struct SpaceSync {
    caught_up: bool,
    resync: bool,
    head: Option<u64>,
    applied: u64,
    /// The catch-up starts from 0 into a space the device held nothing of
    /// (see `PageEnd::fresh_below`).
    fresh: bool,
    /// The head of the fresh catch-up's first page.
    fresh_below: Option<u64>,
}

/// A batch sent and not yet answered.
#[derive(Debug, Clone)]
struct Batch {
    id: u64,
    entries: Vec<OutboxEntry>,
    sent_at: u64,
}

/// The current connection, once open.
#[derive(Debug, Default)]
struct Session {
    welcomed: bool,
    limits: Option<Limits>,
    spaces: BTreeMap<SpaceId, SpaceSync>,
    batches: VecDeque<Batch>,
    last_rx: u64,
    /// Per space, the highest version applied from a conflict answer ahead
    /// of the feed: checksums are not comparable until the cursor passes
    /// it.
    ahead: HashMap<SpaceId, u64>,
    /// Requests sent on this connection and not yet answered.
    requests: BTreeSet<u64>,
    /// The user's roles and devices arrived (the server sends them after
    /// the first catch-up, devices last).
    coordination_known: bool,
    /// Conflicts the app is deciding (see `settle.rs`), by id.
    conflicts: BTreeMap<u64, settle::Parked>,
}

#[derive(Debug)]
enum Connection {
    /// Not connected; a reconnect may be scheduled.
    Idle,
    /// `Connect` was asked for.
    Connecting,
    /// Open.
    Open(Session),
    /// The server cannot be spoken to (another protocol version).
    Stopped,
}

/// The sync engine of one device.
pub struct Engine {
    store: Arc<Store>,
    tuning: SyncTuning,
    clock: Arc<dyn Clock>,
    jitter: Box<dyn Jitter>,
    network: bool,
    connection: Connection,
    reconnect_failures: u32,
    /// Failed credential renewals in a row (their retries back off too).
    refresh_failures: u32,
    next_batch_id: u64,
    next_nonce: u64,
    /// Spaces to fetch again from 0 on the next connection.
    resync: BTreeSet<SpaceId>,
    checksum_mismatches: u64,
    last_error: Option<SyncError>,
    /// Auth failed on the last attempt: refresh before connecting again.
    credentials_stale: bool,
    out: Vec<Action>,
    status_changed: bool,
    /// The user's roles as the server last told them.
    roles: BTreeMap<String, RoleState>,
    /// Requests waiting for a welcomed connection, in order.
    queued_requests: VecDeque<(u64, ClientMessage)>,
    /// Whether the renew timer is armed.
    renewing: bool,
    /// The id of the next conflict handed to the app.
    next_conflict_id: u64,
}

impl Engine {
    /// An engine over `store`.
    pub fn new(
        store: Arc<Store>,
        tuning: SyncTuning,
        clock: Arc<dyn Clock>,
        jitter: Box<dyn Jitter>,
    ) -> Result<Engine, Error> {
        let resync = store.resyncing_spaces()?.into_iter().collect();
        let (_, checksum_mismatches) = store.sync_marks()?;
        Ok(Engine {
            store,
            tuning,
            clock,
            jitter,
            network: true,
            connection: Connection::Idle,
            reconnect_failures: 0,
            refresh_failures: 0,
            next_batch_id: 1,
            next_nonce: 1,
            resync,
            checksum_mismatches,
            last_error: None,
            credentials_stale: false,
            out: Vec::new(),
            status_changed: false,
            roles: BTreeMap::new(),
            queued_requests: VecDeque::new(),
            renewing: false,
            next_conflict_id: 1,
        })
    }

    /// Handles one event and returns what to do. Store errors are returned
    /// as they are; the engine stays usable (the next event retries what is
    /// still to do).
    pub fn handle(&mut self, event: Event) -> Result<Vec<Action>, Error> {
        let result = self.dispatch(event);
        if self.status_changed {
            self.status_changed = false;
            self.out.push(Action::Notify(Notice::StatusChanged));
        }
        let out = std::mem::take(&mut self.out);
        result.map(|()| out)
    }

    /// This device's id.
    pub fn device_id(&self) -> tandem_protocol::DeviceId {
        self.store.identity().device_id.clone()
    }

    /// The connection state.
    pub fn connection(&self) -> ConnectionState {
        match &self.connection {
            Connection::Idle | Connection::Stopped => ConnectionState::Offline,
            Connection::Connecting => ConnectionState::Connecting,
            Connection::Open(s) if !s.welcomed => ConnectionState::Connecting,
            Connection::Open(_) => ConnectionState::Online,
        }
    }

    /// The whole status (reads the outbox counts and cursors).
    pub fn status(&self) -> Result<SyncStatus, Error> {
        let (pending, failed) = self.store.outbox_counts()?;
        let (last_synced, _) = self.store.sync_marks()?;
        let cursors = self
            .store
            .cursors()?
            .into_iter()
            .map(|(space, c)| (space, c.rev))
            .collect();
        let catching_up = match &self.connection {
            Connection::Open(s) => s
                .spaces
                .iter()
                .filter(|(_, sp)| !sp.caught_up)
                .map(|(space, sp)| {
                    (
                        space.to_string(),
                        SpaceProgress {
                            applied: sp.applied,
                            head: sp.head,
                        },
                    )
                })
                .collect(),
            _ => BTreeMap::new(),
        };
        Ok(SyncStatus {
            connection: self.connection(),
            pending,
            failed,
            last_synced,
            cursors,
            catching_up,
            checksum_mismatches: self.checksum_mismatches,
            last_error: self.last_error.clone(),
        })
    }

    /// Whether the device is offline because of an error that waiting will
    /// not mend by itself: an untrusted certificate, credentials the server
    /// refuses, another protocol version. (It keeps retrying with backoff:
    /// the server or the app may fix it.)
    pub fn is_blocked(&self) -> bool {
        matches!(self.connection, Connection::Idle | Connection::Stopped)
            && self.last_error.as_ref().is_some_and(|e| {
                matches!(
                    e.kind,
                    SyncErrorKind::Tls | SyncErrorKind::Unauthorized | SyncErrorKind::Protocol
                )
            })
    }

    /// Whether the device is online, caught up with every space, knows the
    /// user's roles and devices as of its catch-up, and has nothing it
    /// could send now or is waiting to hear about.
    pub fn is_settled(&self) -> Result<bool, Error> {
        let Connection::Open(session) = &self.connection else {
            return Ok(false);
        };
        if !session.welcomed
            || !session.coordination_known
            || !session.batches.is_empty()
            || !session.conflicts.is_empty()
            || session.spaces.values().any(|s| !s.caught_up)
        {
            return Ok(false);
        }
        Ok(!self.store.has_sendable(self.clock.now_ms())? && !self.store.has_acked_entries()?)
    }

    fn dispatch(&mut self, event: Event) -> Result<(), Error> {
        match event {
            Event::Start => {
                if self.network && matches!(self.connection, Connection::Idle) {
                    self.connect();
                }
                Ok(())
            }
            Event::Connected => self.on_connected(),
            Event::Disconnected { reason } => {
                if matches!(
                    self.connection,
                    Connection::Connecting | Connection::Open(_)
                ) {
                    self.on_disconnected(reason)?;
                }
                Ok(())
            }
            Event::FrameReceived(message) => self.on_frame(message),
            Event::TimerFired(timer) => self.on_timer(timer),
            Event::LocalWrite => {
                // The pending count moved, online or not.
                self.status_changed = true;
                self.fill_pipeline()
            }
            Event::SyncNow => {
                if matches!(self.connection, Connection::Idle) && self.network {
                    self.reconnect_failures = 0;
                    self.connect();
                }
                self.fill_pipeline()
            }
            Event::NetworkChanged(available) => {
                self.network = available;
                if available {
                    self.reconnect_failures = 0;
                    if matches!(self.connection, Connection::Idle) {
                        self.connect();
                    }
                } else if matches!(
                    self.connection,
                    Connection::Connecting | Connection::Open(_)
                ) {
                    self.out.push(Action::Disconnect);
                    self.drop_connection()?;
                }
                Ok(())
            }
            Event::CredentialsUpdated { access_expires_at } => {
                self.credentials_stale = false;
                self.refresh_failures = 0;
                let now = self.clock.now_ms();
                let remaining = access_expires_at.saturating_sub(now);
                #[allow(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    clippy::cast_precision_loss
                )]
                let after = (remaining as f64 * self.tuning.refresh_at_fraction) as u64;
                self.out.push(Action::Schedule {
                    timer: Timer::RefreshCredentials,
                    after: Duration::from_millis(after.max(1_000)),
                });
                Ok(())
            }
            Event::Request { id, message } => {
                match &mut self.connection {
                    Connection::Open(session) if session.welcomed => {
                        session.requests.insert(id);
                        self.out.push(Action::Send(message));
                    }
                    Connection::Stopped => self.out.push(Action::Reply {
                        id,
                        answer: Err("the server speaks another protocol version".into()),
                    }),
                    _ => self.queued_requests.push_back((id, message)),
                }
                Ok(())
            }
            Event::ConflictResolved { id, resolution } => self.on_conflict_resolved(id, resolution),
            Event::CancelRequest(id) => {
                self.queued_requests.retain(|(queued, _)| *queued != id);
                if let Connection::Open(session) = &mut self.connection {
                    session.requests.remove(&id);
                }
                Ok(())
            }
            Event::CredentialsFailed { reason } => {
                tracing::warn!(target: "tandem_core", %reason, "renewing the device's credentials failed");
                self.last_error = Some(reason);
                self.status_changed = true;
                let after = self
                    .tuning
                    .reconnect
                    .delay(self.refresh_failures, self.jitter.as_mut());
                self.refresh_failures = self.refresh_failures.saturating_add(1);
                self.out.push(Action::Schedule {
                    timer: Timer::RefreshCredentials,
                    after,
                });
                Ok(())
            }
        }
    }

    fn connect(&mut self) {
        if self.credentials_stale {
            // Ask for fresh credentials first; the driver's connect step
            // uses whatever is stored when it runs.
            self.out.push(Action::RefreshCredentials);
        }
        self.connection = Connection::Connecting;
        self.out.push(Action::Connect);
        self.status_changed = true;
    }

    fn on_connected(&mut self) -> Result<(), Error> {
        if !matches!(self.connection, Connection::Connecting) {
            // A connection nobody asked for any more (the network went
            // away meanwhile).
            self.out.push(Action::Disconnect);
            return Ok(());
        }
        for space in self.resync.clone() {
            self.store.begin_resync(&space)?;
        }
        let cursors = self
            .store
            .cursors()?
            .into_iter()
            .filter_map(|(space, c)| SpaceId::new(space).ok().map(|s| (s, c.rev)))
            .collect();
        let now = self.clock.now_ms();
        self.connection = Connection::Open(Session {
            last_rx: now,
            ..Session::default()
        });
        self.out.push(Action::Send(ClientMessage::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            device_id: self.store.identity().device_id.clone(),
            cursors,
        })));
        self.out.push(Action::Schedule {
            timer: Timer::Heartbeat,
            after: self.heartbeat_interval(),
        });
        self.status_changed = true;
        Ok(())
    }

    fn heartbeat_interval(&self) -> Duration {
        (self.tuning.ping_after / 2).max(Duration::from_millis(10))
    }

    /// Leaves the current connection: in-flight entries go back to the
    /// queue (no attempt counted).
    fn drop_connection(&mut self) -> Result<(), Error> {
        if let Connection::Open(session) = &mut self.connection {
            // Requests already sent may or may not have been carried out
            // (a guard may have recorded its content): the app decides
            // whether to ask again.
            for id in std::mem::take(&mut session.requests) {
                self.out.push(Action::Reply {
                    id,
                    answer: Err("the connection was lost before the answer came".into()),
                });
            }
            if session.welcomed {
                self.out.push(Action::Notify(Notice::Online(false)));
            }
        }
        self.renewing = false;
        self.connection = Connection::Idle;
        self.status_changed = true;
        self.store.requeue_in_flight()?;
        Ok(())
    }

    fn on_disconnected(&mut self, reason: DisconnectReason) -> Result<(), Error> {
        tracing::info!(target: "tandem_core", reason = ?reason, "disconnected from the sync server");
        self.drop_connection()?;
        match &reason {
            DisconnectReason::Transport(why) => {
                self.last_error = Some(SyncError::new(SyncErrorKind::Network, why.clone()));
            }
            DisconnectReason::Tls(why) => {
                self.last_error = Some(SyncError::new(SyncErrorKind::Tls, why.clone()));
            }
            DisconnectReason::Unauthorized(why) => {
                self.last_error = Some(SyncError::new(SyncErrorKind::Unauthorized, why.clone()));
                self.credentials_stale = true;
            }
            DisconnectReason::UnsupportedProtocol => {
                self.last_error = Some(SyncError::new(
                    SyncErrorKind::Protocol,
                    "the server speaks another protocol version",
                ));
                self.connection = Connection::Stopped;
                return Ok(());
            }
        }
        self.schedule_reconnect();
        Ok(())
    }

    fn schedule_reconnect(&mut self) {
        if !self.network {
            return;
        }
        let after = self
            .tuning
            .reconnect
            .delay(self.reconnect_failures, self.jitter.as_mut());
        self.reconnect_failures = self.reconnect_failures.saturating_add(1);
        self.out.push(Action::Schedule {
            timer: Timer::Reconnect,
            after,
        });
    }

    fn on_timer(&mut self, timer: Timer) -> Result<(), Error> {
        let now = self.clock.now_ms();
        match timer {
            Timer::Reconnect => {
                if matches!(self.connection, Connection::Idle) && self.network {
                    self.connect();
                }
            }
            Timer::Heartbeat => {
                let Connection::Open(session) = &self.connection else {
                    return Ok(());
                };
                let quiet = Duration::from_millis(now.saturating_sub(session.last_rx));
                if quiet >= self.tuning.dead_after {
                    self.out.push(Action::Disconnect);
                    return self.on_disconnected(DisconnectReason::Transport(format!(
                        "nothing received for {} s",
                        quiet.as_secs()
                    )));
                }
                if quiet >= self.tuning.ping_after {
                    let nonce = self.next_nonce;
                    self.next_nonce += 1;
                    self.out
                        .push(Action::Send(ClientMessage::Ping(Heartbeat { nonce })));
                }
                self.out.push(Action::Schedule {
                    timer: Timer::Heartbeat,
                    after: self.heartbeat_interval(),
                });
            }
            Timer::Retry => self.fill_pipeline()?,
            Timer::AckTimeout => {
                let Connection::Open(session) = &self.connection else {
                    return Ok(());
                };
                let Some(oldest) = session.batches.front() else {
                    return Ok(());
                };
                let due = oldest.sent_at + millis(self.tuning.ack_timeout);
                if now < due {
                    self.out.push(Action::Schedule {
                        timer: Timer::AckTimeout,
                        after: Duration::from_millis(due - now),
                    });
                    return Ok(());
                }
                // No answer in time: the connection is not trustworthy.
                // Count an attempt for what it carried, and start over.
                let batches: Vec<Batch> = match &mut self.connection {
                    Connection::Open(session) => session.batches.drain(..).collect(),
                    _ => Vec::new(),
                };
                let entries: Vec<OutboxEntry> =
                    batches.into_iter().flat_map(|b| b.entries).collect();
                self.retry_or_fail(&entries, "no answer from the server in time")?;
                self.out.push(Action::Disconnect);
                self.on_disconnected(DisconnectReason::Transport(
                    "a batch was not answered in time".into(),
                ))?;
                self.schedule_retry_timer()?;
            }
            Timer::RefreshCredentials => self.out.push(Action::RefreshCredentials),
            Timer::RenewRoles => {
                self.renewing = false;
                self.renew_roles();
            }
        }
        Ok(())
    }

    fn on_frame(&mut self, message: ServerMessage) -> Result<(), Error> {
        let now = self.clock.now_ms();
        let Connection::Open(session) = &mut self.connection else {
            return Ok(());
        };
        session.last_rx = now;
        match message {
            ServerMessage::Welcome(welcome) => self.on_welcome(welcome),
            ServerMessage::Changes(changes) => self.on_changes(changes),
            ServerMessage::Ack(ack) => self.on_ack(ack),
            ServerMessage::Spaces(spaces) => self.on_spaces(spaces.spaces),
            ServerMessage::Error(error) => self.on_error(error),
            ServerMessage::Ping(hb) => {
                self.out.push(Action::Send(ClientMessage::Pong(hb)));
                Ok(())
            }
            ServerMessage::Pong(_) => Ok(()),
            ServerMessage::Role(state) => {
                self.on_role(state);
                Ok(())
            }
            ServerMessage::GuardResult(result) => {
                let id = result.request_id;
                self.answer(id, ServerMessage::GuardResult(result));
                Ok(())
            }
            ServerMessage::Devices(devices) => {
                // After the first catch-up the server sends the user's
                // roles, then the devices: from here this device knows
                // every role the server knew when it caught up.
                session.coordination_known = true;
                self.out
                    .push(Action::Notify(Notice::DevicesChanged(devices.devices)));
                Ok(())
            }
        }
    }

    /// Hands the answer of request `id` to the app, if it is waiting.
    fn answer(&mut self, id: u64, message: ServerMessage) {
        if let Connection::Open(session) = &mut self.connection
            && session.requests.remove(&id)
        {
            self.out.push(Action::Reply {
                id,
                answer: Ok(message),
            });
        }
    }

    /// A role's state: remembered (an older epoch than the one known is
    /// ignored), told to the app when its holder or epoch changed, and the
    /// holder's heartbeat started when this device holds it.
    fn on_role(&mut self, state: RoleState) {
        if let Some(id) = state.request_id {
            self.answer(id, ServerMessage::Role(state.clone()));
        }
        let known = self.roles.get(&state.role);
        if known.is_some_and(|k| k.epoch > state.epoch) {
            return;
        }
        let changed = known.is_none_or(|k| k.epoch != state.epoch || k.holder != state.holder);
        let mut state = state;
        state.request_id = None;
        self.roles.insert(state.role.clone(), state.clone());
        if changed {
            tracing::debug!(target: "tandem_core", role = %state.role, epoch = state.epoch, holder = ?state.holder, "role changed");
            self.out.push(Action::Notify(Notice::RoleChanged(state)));
        }
        self.renew_roles();
    }

    /// The roles this device holds, as last heard.
    fn held_roles(&self) -> Vec<RoleFence> {
        let me = &self.store.identity().device_id;
        self.roles
            .values()
            .filter(|r| r.holder.as_ref() == Some(me))
            .map(|r| RoleFence {
                role: r.role.clone(),
                epoch: r.epoch,
            })
            .collect()
    }

    /// Sends the holder's heartbeat now if it is not armed, and arms it.
    fn renew_roles(&mut self) {
        if self.renewing {
            return;
        }
        let welcomed = matches!(&self.connection, Connection::Open(s) if s.welcomed);
        let leases = self.held_roles();
        if !welcomed || leases.is_empty() {
            return;
        }
        self.out
            .push(Action::Send(ClientMessage::Renew(Renew { leases })));
        self.renewing = true;
        self.out.push(Action::Schedule {
            timer: Timer::RenewRoles,
            after: self.tuning.role_renew_interval,
        });
    }

    fn on_welcome(&mut self, welcome: Welcome) -> Result<(), Error> {
        // Policies: the server's word replaces what is stored; a collection
        // it no longer declares is lww again.
        let stored = self.store.policies();
        let mut policies: Vec<(Collection, CollectionPolicy)> = welcome
            .policies
            .iter()
            .filter(|(collection, policy)| stored.get(*collection) != Some(*policy))
            .map(|(c, p)| (c.clone(), p.clone()))
            .collect();
        for (collection, policy) in &stored {
            if !welcome.policies.contains_key(collection) && *policy != CollectionPolicy::lww() {
                policies.push((collection.clone(), CollectionPolicy::lww()));
            }
        }
        let resync: Vec<SpaceId> = welcome
            .reset_required
            .iter()
            .filter(|space| !self.resync.contains(*space))
            .cloned()
            .collect();
        // Spaces this device holds that the user no longer belongs to.
        let listed: BTreeSet<&SpaceId> = welcome.spaces.iter().collect();
        let dropped: Vec<SpaceId> = self
            .store
            .cursors()?
            .keys()
            .filter_map(|space| SpaceId::new(space.as_str()).ok())
            .filter(|space| !listed.contains(space))
            .collect();
        self.store.apply_welcome(&policies, &resync, &dropped)?;
        self.resync.extend(resync);
        for space in &dropped {
            self.resync.remove(space);
        }
        let resync = self.resync.clone();
        let cursors = self.store.cursors()?;
        let Connection::Open(session) = &mut self.connection else {
            return Ok(());
        };
        session.welcomed = true;
        session.limits = Some(welcome.limits);
        session.spaces = welcome
            .spaces
            .iter()
            .map(|s| {
                (
                    s.clone(),
                    SpaceSync {
                        resync: resync.contains(s),
                        fresh: !resync.contains(s)
                            && cursors.get(s.as_str()).is_none_or(|c| c.rev == 0),
                        ..SpaceSync::default()
                    },
                )
            })
            .collect();
        self.reconnect_failures = 0;
        self.last_error = None;
        self.status_changed = true;
        tracing::info!(target: "tandem_core", spaces = welcome.spaces.len(), "connected to the sync server");
        self.out.push(Action::Notify(Notice::Online(true)));
        while let Some((id, message)) = self.queued_requests.pop_front() {
            if let Connection::Open(session) = &mut self.connection {
                session.requests.insert(id);
            }
            self.out.push(Action::Send(message));
        }
        self.fill_pipeline()
    }

    fn on_changes(&mut self, page: Changes) -> Result<(), Error> {
        let Connection::Open(session) = &mut self.connection else {
            return Ok(());
        };
        let sp = session.spaces.entry(page.space.clone()).or_default();
        if page.reset && !sp.resync {
            tracing::info!(target: "tandem_core", space = %page.space, "the server reset the space's feed: fetching it again");
            self.store.begin_resync(&page.space)?;
            self.resync.insert(page.space.clone());
            sp.resync = true;
        }
        if sp.resync {
            sp.fresh = false;
            sp.fresh_below = None;
        } else if sp.fresh && sp.fresh_below.is_none() {
            sp.fresh_below = page.head;
        }
        let fresh_below = sp.fresh_below;
        let last = page.changes.last().map(|c| c.rev);
        let end_rev = if page.more {
            last.unwrap_or(0)
        } else {
            page.head.or(last).unwrap_or(0)
        };
        let resync = match (sp.resync, page.more) {
            (false, _) => Resync::No,
            (true, true) => Resync::Page,
            (true, false) => Resync::Final,
        };
        // What to check and record in the page's own transaction: the
        // checksum of a final page, and the sync time if this page is the
        // last any space was waiting for.
        let check = if page.more {
            None
        } else {
            page.checksum.map(|expected| PageCheck {
                expected,
                comparable_from: session.ahead.get(&page.space).copied().unwrap_or(0),
            })
        };
        let completes_sync = !page.more
            && session.welcomed
            && session
                .spaces
                .iter()
                .all(|(space, s)| s.caught_up || *space == page.space);
        let applied = self.store.apply_page(
            &page.space,
            page.changes,
            PageEnd {
                rev: end_rev,
                resync,
                fresh_below,
                check,
                synced_at: completes_sync.then(|| self.clock.now_ms()),
            },
        )?;
        let cursor = applied.cursor;
        let Connection::Open(session) = &mut self.connection else {
            return Ok(());
        };
        let sp = session.spaces.entry(page.space.clone()).or_default();
        sp.applied = cursor.rev;
        if page.head.is_some() {
            sp.head = page.head;
        }
        let mismatch = applied.mismatch;
        if !page.more {
            let was_catching_up = !sp.caught_up;
            sp.caught_up = true;
            sp.fresh = false;
            sp.fresh_below = None;
            if sp.resync {
                sp.resync = false;
                self.resync.remove(&page.space);
            }
            if was_catching_up {
                self.status_changed = true;
            }
        } else {
            self.status_changed = true;
        }
        if mismatch {
            // Re-sync the space from 0 on a new connection rather than with
            // `subscribe` on this one: live changes of the old feed may
            // still be on their way, and one of them (`more: false`) could
            // not be told from the re-sync's final page, which sweeps.
            self.checksum_mismatches += 1;
            tracing::warn!(target: "tandem_core", space = %page.space, "checksum mismatch: fetching the space again");
            self.resync.insert(page.space.clone());
            self.out.push(Action::Disconnect);
            self.drop_connection()?;
            self.last_error = Some(SyncError::new(
                SyncErrorKind::Checksum,
                format!("checksum mismatch in {}: fetching it again", page.space),
            ));
            self.schedule_reconnect();
            return Ok(());
        } else if completes_sync {
            // The cache budget's eviction pass: its own transaction, and
            // only with a budget set.
            self.store.enforce_cache_limit()?;
        }
        // Confirmed entries may unblock later ones of their documents.
        self.fill_pipeline()
    }

    fn on_spaces(&mut self, spaces: Vec<SpaceId>) -> Result<(), Error> {
        let cursors = self.store.cursors()?;
        let Connection::Open(session) = &mut self.connection else {
            return Ok(());
        };
        let listed: BTreeSet<SpaceId> = spaces.into_iter().collect();
        let gone: Vec<SpaceId> = session
            .spaces
            .keys()
            .filter(|s| !listed.contains(*s))
            .cloned()
            .collect();
        let mut subscribe = Vec::new();
        for space in &listed {
            if !session.spaces.contains_key(space) {
                let cursor = cursors.get(space.as_str()).map_or(0, |c| c.rev);
                session.spaces.insert(
                    space.clone(),
                    SpaceSync {
                        fresh: cursor == 0,
                        ..SpaceSync::default()
                    },
                );
                subscribe.push(Subscribe {
                    space: space.clone(),
                    cursor,
                });
            }
        }
        for space in &gone {
            session.spaces.remove(space);
        }
        for space in gone {
            self.store.drop_space(&space)?;
            self.resync.remove(&space);
        }
        for s in subscribe {
            self.out.push(Action::Send(ClientMessage::Subscribe(s)));
        }
        self.status_changed = true;
        Ok(())
    }

    fn on_error(&mut self, error: ErrorMessage) -> Result<(), Error> {
        if let Some(batch_id) = error.batch_id {
            let batch = match &mut self.connection {
                Connection::Open(session) => session
                    .batches
                    .iter()
                    .position(|b| b.id == batch_id)
                    .and_then(|i| session.batches.remove(i)),
                _ => None,
            };
            if let Some(batch) = batch {
                let reason = format!("{}: {}", error.code.as_str(), error.message);
                self.retry_or_fail(&batch.entries, &reason)?;
                self.schedule_retry_timer()?;
            }
            return Ok(());
        }
        if let Some(id) = error.request_id {
            self.answer(id, ServerMessage::Error(error));
            return Ok(());
        }
        if let Some(space) = &error.space {
            // Not a member (any more): stop waiting for that space.
            if let Connection::Open(session) = &mut self.connection {
                session.spaces.remove(space);
            }
            self.status_changed = true;
            return Ok(());
        }
        self.last_error = Some(SyncError::new(
            SyncErrorKind::Server,
            format!("{}: {}", error.code.as_str(), error.message),
        ));
        if error.fatal {
            // The server closes next; say why now, so the reconnect
            // refreshes credentials or stops.
            let reason = match error.code {
                ErrorCode::Unauthorized | ErrorCode::Revoked => {
                    DisconnectReason::Unauthorized(error.message)
                }
                ErrorCode::UnsupportedProtocol => DisconnectReason::UnsupportedProtocol,
                code => {
                    DisconnectReason::Transport(format!("{}: {}", code.as_str(), error.message))
                }
            };
            self.out.push(Action::Disconnect);
            self.on_disconnected(reason)?;
        }
        Ok(())
    }

    fn on_ack(&mut self, ack: Ack) -> Result<(), Error> {
        let batch = match &mut self.connection {
            Connection::Open(session) => session
                .batches
                .iter()
                .position(|b| b.id == ack.batch_id)
                .and_then(|i| session.batches.remove(i)),
            _ => None,
        };
        let Some(batch) = batch else {
            return Ok(());
        };
        // A crash between receiving the ack and recording it (which removes
        // the entries or marks them acknowledged): the outbox still holds
        // them as in flight, so they go out again and the server answers
        // `duplicate`.
        fail::fail_point!("core.outbox.after_ack_before_delete", |_| {
            self.out.push(Action::Disconnect);
            self.on_disconnected(DisconnectReason::Transport(
                "fail point core.outbox.after_ack_before_delete".into(),
            ))
        });
        let by_id: HashMap<MutationId, &OutboxEntry> = batch
            .entries
            .iter()
            .map(|e| (e.mutation.mutation_id, e))
            .collect();
        // Every acknowledgement and refusal of the batch in one
        // transaction; conflicts wait for the app (`settle.rs`).
        let mut outcomes = Vec::with_capacity(ack.results.len());
        let mut failures = Vec::new();
        for result in ack.results {
            let Some(entry) = by_id.get(&result.mutation_id) else {
                continue;
            };
            match result.outcome {
                Outcome::Applied { rev } | Outcome::Duplicate { rev } => {
                    outcomes.push((result.mutation_id, EntryOutcome::Acked { rev }));
                }
                Outcome::Conflict { document } => {
                    self.ask_about_conflict(entry, document.map(|d| *d))?;
                }
                Outcome::Rejected { code, reason, .. } => {
                    if code == RejectCode::ClockSkew {
                        // Every write of this device will be refused until
                        // its clock is set right: say so where the app looks
                        // for the state of the link, not only per write.
                        tracing::warn!(target: "tandem_core", %reason, "the server refused a write: this device's clock is ahead");
                        self.last_error =
                            Some(SyncError::new(SyncErrorKind::Clock, reason.clone()));
                    }
                    let reason = format!("{}: {reason}", code.as_str());
                    outcomes.push((
                        result.mutation_id,
                        EntryOutcome::Failed {
                            reason: reason.clone(),
                        },
                    ));
                    failures.push(failure_of(entry, reason));
                }
            }
        }
        self.store.record_outcomes(&outcomes)?;
        self.report_failures(failures);
        // A crash after the acks are recorded, before the changes that
        // carry them arrive and remove the entries: tests make it panic
        // (the app dies here), and after a restart the acknowledged
        // entries wait for their changes without being sent again.
        fail::fail_point!("core.outbox.after_ack_recorded");
        self.status_changed = true;
        self.fill_pipeline()
    }

    /// Fails `entry` for good and tells the app.
    fn fail(&mut self, entry: &OutboxEntry, reason: &str) -> Result<(), Error> {
        let reason = reason.to_owned();
        self.store.record_outcomes(&[(
            entry.mutation.mutation_id,
            EntryOutcome::Failed {
                reason: reason.clone(),
            },
        )])?;
        self.report_failures(vec![failure_of(entry, reason)]);
        Ok(())
    }

    /// Tells the app about writes that failed for good.
    fn report_failures(&mut self, failures: Vec<MutationFailure>) {
        if failures.is_empty() {
            return;
        }
        for failure in failures {
            self.out
                .push(Action::Notify(Notice::MutationFailed(failure)));
        }
        self.status_changed = true;
    }

    /// Sends of `entries` failed in a way that may pass: each is retried
    /// with backoff, or fails once its attempts run out. One transaction.
    fn retry_or_fail(&mut self, entries: &[OutboxEntry], reason: &str) -> Result<(), Error> {
        let mut outcomes = Vec::with_capacity(entries.len());
        let mut failures = Vec::new();
        for entry in entries {
            let id = entry.mutation.mutation_id;
            let failures_so_far = entry.attempt.saturating_add(1);
            if failures_so_far >= self.tuning.max_attempts {
                let reason = format!("gave up after {failures_so_far} attempts: {reason}");
                failures.push(failure_of(entry, reason.clone()));
                outcomes.push((id, EntryOutcome::Failed { reason }));
            } else {
                let delay = self
                    .tuning
                    .retry
                    .delay(failures_so_far - 1, self.jitter.as_mut());
                let at_ms = self.clock.now_ms() + millis(delay);
                outcomes.push((id, EntryOutcome::Retry { at_ms }));
            }
        }
        self.store.record_outcomes(&outcomes)?;
        self.report_failures(failures);
        Ok(())
    }

    /// Arms the retry timer for the earliest retrying entry.
    fn schedule_retry_timer(&mut self) -> Result<(), Error> {
        let now = self.clock.now_ms();
        if let Some(at) = self.store.next_retry_at(now)? {
            self.out.push(Action::Schedule {
                timer: Timer::Retry,
                after: Duration::from_millis(at.saturating_sub(now)),
            });
        }
        Ok(())
    }

    /// Sends what may be sent, up to the outstanding-batch limit.
    fn fill_pipeline(&mut self) -> Result<(), Error> {
        let now = self.clock.now_ms();
        let max_outstanding = self.tuning.max_outstanding_batches.max(1);
        let mut sent_any = false;
        loop {
            let Connection::Open(session) = &mut self.connection else {
                return Ok(());
            };
            if !session.welcomed || session.batches.len() >= max_outstanding {
                break;
            }
            let server_limit = session.limits.map_or(usize::MAX, |l| {
                usize::try_from(l.max_batch_mutations).unwrap_or(usize::MAX)
            });
            // A push must fit the frame the server accepts, or it is
            // refused whole at every reconnect and nothing more is sent.
            let frame_bytes = session.limits.map_or(usize::MAX, |l| {
                usize::try_from(l.max_frame_bytes).unwrap_or(usize::MAX)
            });
            let limit = BatchLimit {
                mutations: self.tuning.max_batch.min(server_limit).max(1),
                bytes: frame_bytes.saturating_sub(PUSH_ENVELOPE_BYTES),
            };
            let entries = self.store.take_sendable(limit, now)?;
            if entries.is_empty() {
                break;
            }
            if let [entry] = entries.as_slice()
                && entry.encoded_len > limit.bytes
            {
                // Alone and still over the frame: no send can ever carry
                // it. Failed (the app can discard it, or write it smaller)
                // rather than retried forever.
                let reason = format!(
                    "frame_too_large: the write is {} bytes as JSON, over the server's frame limit of {frame_bytes} bytes",
                    entry.encoded_len
                );
                self.fail(entry, &reason)?;
                continue;
            }
            let Connection::Open(session) = &mut self.connection else {
                return Ok(());
            };
            let id = self.next_batch_id;
            self.next_batch_id += 1;
            let mutations = entries.iter().map(|e| e.mutation.clone()).collect();
            if session.batches.is_empty() {
                self.out.push(Action::Schedule {
                    timer: Timer::AckTimeout,
                    after: self.tuning.ack_timeout,
                });
            }
            session.batches.push_back(Batch {
                id,
                entries,
                sent_at: now,
            });
            self.out.push(Action::Send(ClientMessage::Push(Push {
                batch_id: id,
                mutations,
            })));
            sent_any = true;
        }
        if sent_any {
            self.status_changed = true;
        }
        self.schedule_retry_timer()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What the app hears of a write that failed for good.
fn failure_of(entry: &OutboxEntry, reason: String) -> MutationFailure {
    let m = &entry.mutation;
    MutationFailure {
        mutation_id: m.mutation_id.to_string(),
        space: m.space.to_string(),
        collection: m.collection.to_string(),
        doc_id: m.doc_id.to_string(),
        reason,
    }
}

fn fields_text(doc: &Document) -> String {
    serde_json::Value::Object(doc.fields()).to_string()
}

fn parse_fields(text: &str) -> Result<serde_json::Map<String, serde_json::Value>, Error> {
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(other) => Err(Error::NotAnObject {
            found: crate::error::json_type_name(&other),
        }),
        Err(e) => Err(Error::InvalidJson(e.to_string())),
    }
}
