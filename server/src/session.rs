//! One WebSocket session: handshake, catch-up, live changes and pushes.
//!
//! The session is one task. Its loop takes, in this order of priority: a
//! disconnection by the hub (slow consumer, revoked device), shutdown, the
//! result of the push being committed, live events, inbound frames, the
//! heartbeat, and one page of catch-up. Doing everything on one task keeps
//! the order of what a device sees simple:
//!
//! - **Catch-up and live never overlap or leave a gap.** The session registers
//!   with the hub before it reads anything from the store. While a space is
//!   catching up its live events are ignored (the catch-up reads a snapshot
//!   taken after they were committed, so it contains them). Once caught up at
//!   revision `w` (the head of the last page's snapshot), live changes at or
//!   below `w` are dropped; if one arrives above `w + 1`, the space goes back
//!   to catching up from `w`.
//! - **A push's `ack` comes before its live changes.** The store answers a
//!   push before it announces the commit, and the session sends a ready `ack`
//!   before any live event.
//! - **Pushes of one connection are applied in the order they were sent.**
//!   One push is in flight at a time; later ones wait in a short queue, and the
//!   session stops reading frames while that queue is full.
//!
//! The session runs in a `session` span naming its user and device (inside
//! the span of its connection, see [`crate::listener`]): every line it logs,
//! and those of the store calls and tasks it makes, carries them.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::future::BoxFuture;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tandem_protocol::wire::{
    Ack, DEFAULT_GUARD_WINDOW_MS, Devices, ErrorMessage, Guard, GuardResult, Heartbeat, Hello,
    Limits, MAX_GUARD_CONTENT_BYTES, MAX_GUARD_SCOPE_BYTES, MAX_GUARD_WINDOW_MS, MAX_ROLE_BYTES,
    MutationResult, Push, Renew, Spaces, Subscribe, Welcome, valid_role_name,
};
use tandem_protocol::{ClientMessage, ErrorCode, PROTOCOL_VERSION, ServerMessage, SpaceId};
use tokio::time::{Instant, MissedTickBehavior, timeout, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error_span, info};

use crate::fanout::{LiveChanges, LiveEvent, Registration, encode_live};
use crate::feed::{self, FeedNext, needs_reset};
use crate::screen::{self, Refusals};
use crate::state::{ServerState, now_ms};
use crate::store::{DeviceIdentity, RoleRequest, StoreError};

/// Pushes a session holds (one in flight, the rest waiting) before it stops
/// reading frames.
const MAX_QUEUED_PUSHES: usize = 16;

/// How long the last frames (an `error`, the close) may take to write.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(2);

/// How a session ends.
#[derive(Debug)]
enum End {
    /// The device closed the connection, or it broke.
    Peer,
    /// The device fell silent for longer than the idle timeout.
    Idle,
    /// An error the device is told about before the close.
    Fatal(ErrorCode, String),
}

fn fatal(code: ErrorCode, message: impl Into<String>) -> End {
    End::Fatal(code, message.into())
}

/// Where a space's feed is for this session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Feed {
    /// Reading pages after `after`; `reset` marks the first page of a feed
    /// restarted from 0.
    CatchingUp { after: u64, reset: bool },
    /// Caught up; everything up to `watermark` has been sent.
    Live { watermark: u64 },
}

struct InflightPush {
    batch_id: u64,
    result: BoxFuture<'static, Result<Vec<MutationResult>, StoreError>>,
}

/// A push waiting its turn, with the answers its text already decided.
struct QueuedPush {
    push: Push,
    refusals: Refusals,
}

struct Session {
    state: Arc<ServerState>,
    identity: DeviceIdentity,
    sink: SplitSink<WebSocket, Message>,
    stream: SplitStream<WebSocket>,
    kill: CancellationToken,
    last_sent: Instant,
    last_received: Instant,
    feeds: HashMap<SpaceId, Feed>,
    catch_up: VecDeque<SpaceId>,
    queued_pushes: VecDeque<QueuedPush>,
    inflight: Option<InflightPush>,
    next_ping: u64,
    /// Counted in this instance's presence (undone when the session ends).
    welcomed: bool,
    /// The presence stamp of this connection, while it runs.
    presence: Option<tokio::task::JoinHandle<()>>,
    /// The devices and roles were sent after the first catch-up.
    coordination_sent: bool,
}

/// Runs a session on an upgraded socket of an authenticated device.
pub async fn run(state: Arc<ServerState>, identity: DeviceIdentity, socket: WebSocket) {
    // At ERROR level, as the connection's span: on whenever any line is.
    let span = error_span!("session", user = %identity.user, device = %identity.device);
    serve_session(state, identity, socket)
        .instrument(span)
        .await;
}

async fn serve_session(state: Arc<ServerState>, identity: DeviceIdentity, socket: WebSocket) {
    state.metrics.connection_opened();
    let (sink, stream) = socket.split();
    let now = Instant::now();
    let mut session = Session {
        state: state.clone(),
        identity,
        sink,
        stream,
        kill: CancellationToken::new(),
        last_sent: now,
        last_received: now,
        feeds: HashMap::new(),
        catch_up: VecDeque::new(),
        queued_pushes: VecDeque::new(),
        inflight: None,
        next_ping: 1,
        welcomed: false,
        presence: None,
        coordination_sent: false,
    };
    let end = session.run().await;
    session.farewell(end).await;
    if let Some(stamp) = session.presence.take() {
        let _ = stamp.await;
    }
    if session.welcomed {
        crate::coordination::disconnected(&state, &session.identity).await;
    }
    state.metrics.connection_closed();
}

impl Session {
    async fn run(&mut self) -> End {
        let hello = match self.handshake().await {
            Ok(hello) => hello,
            Err(end) => return end,
        };
        let mut hub = self
            .state
            .fanout
            .register(self.identity.clone(), self.state.config.feed.outbound_queue);
        self.kill = hub.kill_token();
        if let Err(end) = self.welcome(&hub, hello).await {
            return end;
        }
        match self.serve(&mut hub).await {
            Ok(()) => End::Peer,
            Err(End::Fatal(code, message)) if self.kill.is_cancelled() => {
                let reason = hub.kill_reason();
                if reason == code {
                    End::Fatal(code, message)
                } else {
                    killed(reason)
                }
            }
            Err(end) => end,
        }
    }

    /// Waits for `hello` and checks it.
    async fn handshake(&mut self) -> Result<Hello, End> {
        let limit = self.state.config.limits.handshake_timeout;
        let deadline = Instant::now() + limit;
        loop {
            let frame = match timeout_at(deadline, self.stream.next()).await {
                Err(_) => {
                    return Err(fatal(
                        ErrorCode::HandshakeTimeout,
                        format!("hello did not arrive within {} s", limit.as_secs_f32()),
                    ));
                }
                Ok(frame) => frame,
            };
            let Some((message, _)) = self.decode(frame)? else {
                continue;
            };
            let hello = match message {
                ClientMessage::Hello(hello) => hello,
                _ => {
                    return Err(fatal(
                        ErrorCode::HelloRequired,
                        "the first message must be hello",
                    ));
                }
            };
            if hello.protocol != PROTOCOL_VERSION {
                return Err(fatal(
                    ErrorCode::UnsupportedProtocol,
                    format!(
                        "this server speaks protocol {PROTOCOL_VERSION}, not {}",
                        hello.protocol
                    ),
                ));
            }
            if hello.device_id != self.identity.device {
                return Err(fatal(
                    ErrorCode::Unauthorized,
                    "hello.device_id is not the device of the access token",
                ));
            }
            return Ok(hello);
        }
    }

    /// Decodes one inbound frame, keeping its text; `None` for control
    /// frames.
    fn decode(
        &mut self,
        frame: Option<Result<Message, axum::Error>>,
    ) -> Result<Option<(ClientMessage, Utf8Bytes)>, End> {
        let message = match frame {
            None => return Err(End::Peer),
            Some(Err(e)) => return Err(read_error(&e, self.state.config.limits.max_frame_bytes)),
            Some(Ok(message)) => message,
        };
        self.last_received = Instant::now();
        match message {
            Message::Text(text) => ClientMessage::decode(&text)
                .map(|message| Some((message, text)))
                .map_err(|e| fatal(ErrorCode::BadFrame, e.to_string())),
            Message::Binary(_) => Err(fatal(
                ErrorCode::BadFrame,
                "binary frames are not accepted; send JSON text frames",
            )),
            Message::Close(_) => Err(End::Peer),
            Message::Ping(_) | Message::Pong(_) => Ok(None),
        }
    }

    /// Subscribes to every space of the user, sends `welcome`, and queues
    /// every space for catch-up from its cursor.
    async fn welcome(&mut self, hub: &Registration, hello: Hello) -> Result<(), End> {
        let store = &self.state.store;
        let user = self.identity.user.clone();
        let spaces: Vec<SpaceId> = store
            .spaces_of(user.clone())
            .await
            .map_err(store_failure)?
            .into_iter()
            .map(|s| s.space)
            .collect();
        // Registered before anything is read: no change committed from now
        // on can be missed.
        for space in &spaces {
            hub.subscribe(space);
        }
        let positions = store
            .feed_positions(user.clone(), spaces.clone())
            .await
            .map_err(store_failure)?;
        let mut reset_required = Vec::new();
        for (space, position) in &positions {
            let cursor = hello.cursors.get(space).copied().unwrap_or(0);
            let feed = if needs_reset(cursor, position.head, position.horizon) {
                reset_required.push(space.clone());
                Feed::CatchingUp {
                    after: 0,
                    reset: true,
                }
            } else {
                Feed::CatchingUp {
                    after: cursor,
                    reset: false,
                }
            };
            self.feeds.insert(space.clone(), feed);
            self.catch_up.push_back(space.clone());
        }
        let limits = &self.state.config.limits;
        let welcome = ServerMessage::Welcome(Welcome {
            protocol: PROTOCOL_VERSION,
            user,
            device_id: self.identity.device.clone(),
            spaces: positions.iter().map(|(s, _)| s.clone()).collect(),
            policies: self.state.config.schema.policies(),
            reset_required,
            limits: Limits {
                max_frame_bytes: limits.max_frame_bytes as u64,
                max_batch_mutations: u32::try_from(limits.max_batch_mutations).unwrap_or(u32::MAX),
                max_document_bytes: limits.max_document_bytes as u64,
            },
        });
        self.send(&welcome).await?;
        for space in hello.cursors.keys() {
            if !self.feeds.contains_key(space) {
                self.send_error(
                    ErrorCode::Forbidden,
                    format!("not a member of space {space}"),
                    None,
                    Some(space.clone()),
                )
                .await?;
            }
        }
        info!(spaces = self.feeds.len(), "device connected");
        // Stamped off the session's path: the catch-up starts at once (a
        // device's first push then races it as before). The session waits
        // for the stamp before it removes it.
        let (state, identity) = (self.state.clone(), self.identity.clone());
        self.presence = Some(tokio::spawn(
            async move {
                crate::coordination::connected(&state, &identity).await;
            }
            .in_current_span(),
        ));
        self.welcomed = true;
        Ok(())
    }

    /// The user's roles and devices, once the first catch-up is done (live
    /// changes of them may come before; these are read later, so they are
    /// at least as new). The devices come last: a device that has them
    /// knows every role (docs/PROTOCOL.md).
    async fn send_coordination(&mut self) -> Result<(), End> {
        self.coordination_sent = true;
        if let Some(stamp) = self.presence.as_mut() {
            // The list says this device is online.
            let _ = stamp.await;
            self.presence = None;
        }
        let store = self.state.store.clone();
        for role in store
            .roles_of(self.identity.user.clone())
            .await
            .map_err(store_failure)?
        {
            self.send(&ServerMessage::Role(role)).await?;
        }
        let devices = store
            .devices_of(self.identity.user.clone())
            .await
            .map_err(store_failure)?;
        self.send(&ServerMessage::Devices(Devices { devices }))
            .await?;
        Ok(())
    }

    async fn serve(&mut self, hub: &mut Registration) -> Result<(), End> {
        let limits = self.state.config.limits;
        let mut heartbeat = tokio::time::interval_at(
            Instant::now() + limits.heartbeat_interval,
            limits.heartbeat_interval,
        );
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let shutdown = self.state.shutdown.clone();
        let kill = self.kill.clone();
        let mut draining = false;
        loop {
            if self.inflight.is_none()
                && let Some(push) = self.queued_pushes.pop_front()
            {
                self.start_push(push);
            }
            if draining && self.inflight.is_none() {
                return Err(fatal(
                    ErrorCode::ShuttingDown,
                    "the server is shutting down; reconnect later",
                ));
            }
            let read_frames = !draining && self.queued_pushes.len() < MAX_QUEUED_PUSHES;
            let catching_up = !draining && !self.catch_up.is_empty();
            if !draining && !catching_up && !self.coordination_sent {
                self.send_coordination().await?;
            }
            tokio::select! {
                biased;
                _ = kill.cancelled() => {
                    return Err(killed(hub.kill_reason()));
                }
                _ = shutdown.cancelled(), if !draining => {
                    // Pushes not yet started are not acked: the device sends
                    // them again. The one in flight is finished and acked.
                    draining = true;
                    self.queued_pushes.clear();
                }
                result = pending_result(&mut self.inflight), if self.inflight.is_some() => {
                    self.finish_push(result).await?;
                }
                event = hub.next() => {
                    match event {
                        Some(event) => self.live(hub, event).await?,
                        None => return Err(fatal(ErrorCode::Internal, "fan-out stopped")),
                    }
                }
                frame = self.stream.next(), if read_frames => {
                    if let Some((message, text)) = self.decode(frame)? {
                        self.state.presence.touch(&self.identity);
                        self.handle(hub, message, &text).await?;
                    }
                }
                _ = heartbeat.tick() => {
                    if self.last_received.elapsed() > limits.idle_timeout {
                        return Err(End::Idle);
                    }
                    if self.last_sent.elapsed() >= limits.heartbeat_interval {
                        let nonce = self.next_ping;
                        self.next_ping += 1;
                        self.send(&ServerMessage::Ping(Heartbeat { nonce })).await?;
                    }
                }
                _ = std::future::ready(()), if catching_up => {
                    self.catch_up_one(hub).await?;
                }
            }
        }
    }

    async fn handle(
        &mut self,
        hub: &Registration,
        message: ClientMessage,
        text: &str,
    ) -> Result<(), End> {
        match message {
            ClientMessage::Hello(_) => Err(fatal(ErrorCode::HelloRequired, "hello came twice")),
            ClientMessage::Push(push) => self.accept_push(push, text).await,
            ClientMessage::Subscribe(subscribe) => {
                self.subscribe(hub, subscribe);
                Ok(())
            }
            ClientMessage::Ping(beat) => self.send(&ServerMessage::Pong(beat)).await,
            ClientMessage::Pong(_) => Ok(()),
            ClientMessage::Claim(claim) => {
                let request = RoleRequest::Claim {
                    priority: claim.priority,
                };
                self.role_request(claim.request_id, claim.role, request)
                    .await
            }
            ClientMessage::Release(release) => {
                self.role_request(release.request_id, release.role, RoleRequest::Release)
                    .await
            }
            ClientMessage::Handoff(handoff) => {
                let request = RoleRequest::Handoff { to: handoff.to };
                self.role_request(handoff.request_id, handoff.role, request)
                    .await
            }
            ClientMessage::Renew(renew) => self.renew(renew).await,
            ClientMessage::Guard(guard) => self.guard(guard).await,
        }
    }

    /// `claim`, `release`, `handoff`: answered with the role's state, or an
    /// error naming the request.
    async fn role_request(
        &mut self,
        request_id: u64,
        role: String,
        request: RoleRequest,
    ) -> Result<(), End> {
        if !valid_role_name(&role) {
            return self
                .request_error(
                    request_id,
                    ErrorCode::InvalidRequest,
                    format!(
                        "a role name is 1 to {MAX_ROLE_BYTES} ASCII letters, digits, _, -, ., :"
                    ),
                )
                .await;
        }
        let leases = crate::coordination::leases(&self.state.config.coordination);
        let result = self
            .state
            .store
            .change_role(self.identity.clone(), role, request, leases)
            .await;
        match result {
            Ok(change) => {
                let mut state = change.state;
                state.request_id = Some(request_id);
                self.send(&ServerMessage::Role(state)).await
            }
            Err(StoreError::Closed) => Err(store_failure(StoreError::Closed)),
            Err(e) => {
                self.request_error(request_id, e.code(), e.to_string())
                    .await
            }
        }
    }

    /// `renew`: extends each lease this device holds; for one it does not,
    /// the device is told the role's current state.
    async fn renew(&mut self, renew: Renew) -> Result<(), End> {
        let leases = crate::coordination::leases(&self.state.config.coordination);
        for fence in renew.leases {
            if !valid_role_name(&fence.role) {
                continue;
            }
            let request = RoleRequest::Renew { epoch: fence.epoch };
            let result = self
                .state
                .store
                .change_role(self.identity.clone(), fence.role.clone(), request, leases)
                .await;
            match result {
                Ok(_) => {}
                Err(StoreError::StaleEpoch(_)) => {
                    let roles = self
                        .state
                        .store
                        .roles_of(self.identity.user.clone())
                        .await
                        .map_err(store_failure)?;
                    if let Some(state) = roles.into_iter().find(|r| r.role == fence.role) {
                        self.send(&ServerMessage::Role(state)).await?;
                    }
                }
                Err(StoreError::Closed) => return Err(store_failure(StoreError::Closed)),
                Err(e) => debug!(error = %e, "renewing a lease failed"),
            }
        }
        Ok(())
    }

    /// `guard`: normalizes and hashes the content, and asks the store.
    async fn guard(&mut self, guard: Guard) -> Result<(), End> {
        let request_id = guard.request_id;
        let invalid = if guard.scope.is_empty()
            || guard.scope.len() > MAX_GUARD_SCOPE_BYTES
            || guard.scope.chars().any(char::is_control)
        {
            Some(format!(
                "a guard scope is 1 to {MAX_GUARD_SCOPE_BYTES} bytes without control characters"
            ))
        } else if guard.content.len() > MAX_GUARD_CONTENT_BYTES {
            Some(format!(
                "guarded content is at most {MAX_GUARD_CONTENT_BYTES} bytes"
            ))
        } else if guard
            .window_ms
            .is_some_and(|w| w == 0 || w > MAX_GUARD_WINDOW_MS)
        {
            Some(format!(
                "a guard window is 1 to {MAX_GUARD_WINDOW_MS} milliseconds"
            ))
        } else {
            None
        };
        if let Some(message) = invalid {
            return self
                .request_error(request_id, ErrorCode::InvalidRequest, message)
                .await;
        }
        let hash = crate::guard::guard_hash(&guard.scope, &guard.content);
        let window = guard.window_ms.unwrap_or(DEFAULT_GUARD_WINDOW_MS);
        let result = self
            .state
            .store
            .guard(self.identity.clone(), hash, window, guard.fence)
            .await;
        match result {
            Ok(result) => {
                self.send(&ServerMessage::GuardResult(GuardResult {
                    request_id,
                    result,
                }))
                .await
            }
            Err(StoreError::Closed) => Err(store_failure(StoreError::Closed)),
            Err(e) => {
                self.request_error(request_id, e.code(), e.to_string())
                    .await
            }
        }
    }

    async fn request_error(
        &mut self,
        request_id: u64,
        code: ErrorCode,
        message: String,
    ) -> Result<(), End> {
        self.state.metrics.error(code);
        self.send(&ServerMessage::request_error(request_id, code, message))
            .await
    }

    async fn accept_push(&mut self, push: Push, text: &str) -> Result<(), End> {
        let limits = &self.state.config.limits;
        let n = push.mutations.len();
        if n > limits.max_batch_mutations {
            let message = format!(
                "{n} mutations in one push; the limit is {}",
                limits.max_batch_mutations
            );
            return self
                .send_error(ErrorCode::BatchTooLarge, message, Some(push.batch_id), None)
                .await;
        }
        if !self.state.rate_limit.allow(&self.identity, n) {
            return self
                .send_error(
                    ErrorCode::RateLimited,
                    "too many mutations from this device; send this batch again later",
                    Some(push.batch_id),
                    None,
                )
                .await;
        }
        let Push {
            batch_id,
            mutations,
        } = push;
        let (mutations, refusals) = screen::screen(text, mutations);
        self.queued_pushes.push_back(QueuedPush {
            push: Push {
                batch_id,
                mutations,
            },
            refusals,
        });
        Ok(())
    }

    fn start_push(&mut self, queued: QueuedPush) {
        let store = self.state.store.clone();
        let author = self.identity.clone();
        let QueuedPush { push, refusals } = queued;
        let mutations = push.mutations;
        let result: BoxFuture<'static, _> = if mutations.is_empty() {
            Box::pin(std::future::ready(Ok(refusals.merge(Vec::new()))))
        } else {
            Box::pin(async move {
                let stored = store.push(author, mutations, now_ms()).await?;
                Ok(refusals.merge(stored))
            })
        };
        self.inflight = Some(InflightPush {
            batch_id: push.batch_id,
            result,
        });
    }

    async fn finish_push(
        &mut self,
        (batch_id, result): (u64, Result<Vec<MutationResult>, StoreError>),
    ) -> Result<(), End> {
        match result {
            Ok(results) => {
                // A crash between the batch's commit and its ack: the
                // connection drops without an answer, and the device's
                // retry is answered from the recorded outcomes.
                fail::fail_point!("server.push.after_apply_before_ack", |_| Err(End::Peer));
                self.state
                    .metrics
                    .pushed(results.iter().map(|r| &r.outcome));
                self.send(&ServerMessage::Ack(Ack { batch_id, results }))
                    .await
            }
            Err(StoreError::Closed) => Err(fatal(
                ErrorCode::ShuttingDown,
                "the server is shutting down; reconnect later",
            )),
            Err(e) => {
                self.send_error(
                    e.code(),
                    format!("the batch was not applied: {e}"),
                    Some(batch_id),
                    None,
                )
                .await
            }
        }
    }

    fn subscribe(&mut self, hub: &Registration, subscribe: Subscribe) {
        // Registered before the first read, which checks membership.
        hub.subscribe(&subscribe.space);
        self.feeds.insert(
            subscribe.space.clone(),
            Feed::CatchingUp {
                after: subscribe.cursor,
                reset: false,
            },
        );
        if !self.catch_up.contains(&subscribe.space) {
            self.catch_up.push_back(subscribe.space);
        }
    }

    /// Sends one page of the first space waiting for catch-up.
    async fn catch_up_one(&mut self, hub: &Registration) -> Result<(), End> {
        let Some(space) = self.catch_up.pop_front() else {
            return Ok(());
        };
        let Some(Feed::CatchingUp { after, reset }) = self.feeds.get(&space).copied() else {
            return Ok(());
        };
        let limit = feed::page_limit(
            &space,
            self.state.config.feed.page_size,
            self.state.config.limits.max_frame_bytes,
        );
        let page = feed::read_page(
            self.state.store.as_ref(),
            &self.identity.user,
            &space,
            after,
            reset,
            limit,
        )
        .await;
        match page {
            Ok(page) => {
                let n = page.message.changes.len();
                self.send(&ServerMessage::Changes(page.message)).await?;
                self.state.metrics.changes_sent(n);
                match page.next {
                    FeedNext::More(after) => {
                        self.feeds.insert(
                            space.clone(),
                            Feed::CatchingUp {
                                after,
                                reset: false,
                            },
                        );
                        self.catch_up.push_back(space);
                    }
                    FeedNext::CaughtUp(watermark) => {
                        self.feeds.insert(space, Feed::Live { watermark });
                    }
                }
                Ok(())
            }
            Err(StoreError::Forbidden(message)) => {
                self.feeds.remove(&space);
                hub.unsubscribe(&space);
                self.send_error(ErrorCode::Forbidden, message, None, Some(space))
                    .await
            }
            Err(e) => Err(store_failure(e)),
        }
    }

    async fn live(&mut self, hub: &Registration, event: LiveEvent) -> Result<(), End> {
        match event {
            LiveEvent::Changes(live) => self.live_changes(&live).await,
            LiveEvent::Spaces { spaces, removed } => {
                if let Some(space) = removed {
                    hub.unsubscribe(&space);
                    self.feeds.remove(&space);
                    self.catch_up.retain(|s| s != &space);
                }
                self.send(&ServerMessage::Spaces(Spaces { spaces })).await
            }
            // Before the roles and devices that follow the catch-up, a live
            // `devices` (this device's own presence, say) would tell the
            // device it knows every role when it has heard none. Those sent
            // after the catch-up are read later, so nothing is lost.
            LiveEvent::Role(_) | LiveEvent::Devices(_) if !self.coordination_sent => Ok(()),
            LiveEvent::Role(state) => self.send(&ServerMessage::Role(state)).await,
            LiveEvent::Devices(devices) => {
                self.send(&ServerMessage::Devices(Devices {
                    devices: devices.as_ref().clone(),
                }))
                .await
            }
        }
    }

    async fn live_changes(&mut self, live: &LiveChanges) -> Result<(), End> {
        let batch = &live.batch;
        let Some(Feed::Live { watermark }) = self.feeds.get(&batch.space).copied() else {
            // Not subscribed, or catching up: the catch-up covers it.
            return Ok(());
        };
        let (Some(first), Some(last)) = (batch.changes.first(), batch.changes.last()) else {
            return Ok(());
        };
        if last.rev <= watermark {
            return Ok(());
        }
        let first_new = batch
            .changes
            .iter()
            .find(|c| c.rev > watermark)
            .map_or(last.rev, |c| c.rev);
        if first_new > watermark + 1 {
            debug!(space = %batch.space, watermark, first_new, "gap in live changes; reading the store");
            self.feeds.insert(
                batch.space.clone(),
                Feed::CatchingUp {
                    after: watermark,
                    reset: false,
                },
            );
            self.catch_up.push_back(batch.space.clone());
            return Ok(());
        }
        let max_frame_bytes = self.state.config.limits.max_frame_bytes;
        let (frames, n) = if first.rev > watermark {
            (live.encoded(max_frame_bytes), batch.changes.len())
        } else {
            let n = batch.changes.iter().filter(|c| c.rev > watermark).count();
            (encode_live(batch, watermark, max_frame_bytes), n)
        };
        self.feeds.insert(
            batch.space.clone(),
            Feed::Live {
                watermark: last.rev,
            },
        );
        for frame in frames.iter() {
            self.send_text(frame.clone()).await?;
        }
        self.state.metrics.changes_sent(n);
        Ok(())
    }

    async fn send(&mut self, message: &ServerMessage) -> Result<(), End> {
        self.send_text(Utf8Bytes::from(message.encode())).await
    }

    /// Writes one frame, giving up when the hub disconnects the session or
    /// the write takes longer than the write timeout (the device is not
    /// reading).
    async fn send_text(&mut self, text: Utf8Bytes) -> Result<(), End> {
        let write_timeout = self.state.config.feed.write_timeout;
        let kill = self.kill.clone();
        tokio::select! {
            biased;
            _ = kill.cancelled() => Err(fatal(ErrorCode::Internal, "disconnected by the hub")),
            written = timeout(write_timeout, self.sink.send(Message::Text(text))) => match written {
                Ok(Ok(())) => {
                    self.last_sent = Instant::now();
                    Ok(())
                }
                Ok(Err(_)) => Err(End::Peer),
                Err(_) => Err(killed(ErrorCode::SlowConsumer)),
            },
        }
    }

    async fn send_error(
        &mut self,
        code: ErrorCode,
        message: impl Into<String>,
        batch_id: Option<u64>,
        space: Option<SpaceId>,
    ) -> Result<(), End> {
        self.state.metrics.error(code);
        self.send(&ServerMessage::Error(ErrorMessage {
            code,
            message: message.into(),
            fatal: false,
            batch_id,
            space,
            request_id: None,
        }))
        .await
    }

    /// Tells the device why the session ends (if it should know) and closes.
    async fn farewell(&mut self, end: End) {
        let (code, message) = match end {
            End::Peer => return,
            End::Idle => (None, String::new()),
            End::Fatal(code, message) => (Some(code), message),
        };
        let close_code = match code {
            Some(code) => {
                self.state.metrics.error(code);
                debug!(code = code.as_str(), %message, "closing session");
                let frame = ServerMessage::Error(ErrorMessage {
                    code,
                    message,
                    fatal: true,
                    batch_id: None,
                    space: None,
                    request_id: None,
                });
                let _ = timeout(
                    FAREWELL_TIMEOUT,
                    self.sink
                        .send(Message::Text(Utf8Bytes::from(frame.encode()))),
                )
                .await;
                close_code(code)
            }
            None => 1001,
        };
        let close = Message::Close(Some(CloseFrame {
            code: close_code,
            reason: Utf8Bytes::from(code.map_or("idle", |c| c.as_str())),
        }));
        let _ = timeout(FAREWELL_TIMEOUT, self.sink.send(close)).await;
    }
}

async fn pending_result(
    inflight: &mut Option<InflightPush>,
) -> (u64, Result<Vec<MutationResult>, StoreError>) {
    match inflight {
        Some(push) => {
            let result = push.result.as_mut().await;
            let batch_id = push.batch_id;
            *inflight = None;
            (batch_id, result)
        }
        None => std::future::pending().await,
    }
}

fn killed(reason: ErrorCode) -> End {
    let message = match reason {
        ErrorCode::SlowConsumer => {
            "the device did not read its changes fast enough; reconnect and resume from the cursor"
        }
        ErrorCode::Revoked => "the device's credentials were revoked",
        _ => "disconnected by the server",
    };
    fatal(reason, message)
}

fn store_failure(e: StoreError) -> End {
    match e {
        StoreError::Closed => fatal(
            ErrorCode::ShuttingDown,
            "the server is shutting down; reconnect later",
        ),
        other => fatal(other.code(), other.to_string()),
    }
}

fn read_error(e: &axum::Error, max_frame_bytes: usize) -> End {
    let text = e.to_string();
    // tungstenite reports an over-long frame or message as a capacity error.
    if text.contains("Space limit exceeded") {
        fatal(
            ErrorCode::FrameTooLarge,
            format!("a frame or message is larger than {max_frame_bytes} bytes"),
        )
    } else {
        End::Peer
    }
}

/// The WebSocket close code that goes with an error code.
fn close_code(code: ErrorCode) -> u16 {
    match code {
        ErrorCode::FrameTooLarge => 1009,
        ErrorCode::Internal => 1011,
        ErrorCode::ShuttingDown => 1012,
        ErrorCode::SlowConsumer | ErrorCode::RateLimited => 1013,
        _ => 1008,
    }
}
