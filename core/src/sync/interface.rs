//! The engine's seam: what happens to it ([`Event`]) and what it asks its
//! host to do ([`Action`]).
//!
//! A host (the native driver in `driver.rs`, a browser's event loop, a
//! test, a simulator) feeds events to [`Engine::handle`](super::Engine)
//! and carries out the actions it returns, in order. Nothing else crosses:
//! the engine never calls the app, touches a socket or reads the time
//! except through its injected [`Clock`](crate::clock::Clock). Every
//! type here serializes, so a whole session can be recorded as a trace
//! (`engine/tests/traces.rs`).

use std::time::Duration;

use serde::Serialize;
use tandem_protocol::wire::{DeviceInfo, RoleState};
use tandem_protocol::{ClientMessage, ServerMessage};

use crate::sync::conflict::{Conflict, Resolution};
use crate::sync::status::{MutationFailure, SyncError};

/// Why a connection ended (or never opened).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DisconnectReason {
    /// The socket closed or failed.
    Transport(String),
    /// The TLS handshake failed (an untrusted certificate, a server that
    /// does not speak TLS); retried with backoff like any failure, since
    /// the server may be fixed or the network may be intercepting.
    Tls(String),
    /// The server refused the credentials (401 at the upgrade, or a fatal
    /// `unauthorized`/`revoked`).
    Unauthorized(String),
    /// The server speaks another protocol version: reconnecting cannot
    /// help.
    UnsupportedProtocol,
}

/// The engine's timers. Each is armed at most once at a time: scheduling
/// one again replaces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Timer {
    /// Time to reconnect.
    Reconnect,
    /// Check the connection's liveness; ping if quiet.
    Heartbeat,
    /// A retrying entry is due.
    Retry,
    /// The oldest batch may be overdue.
    AckTimeout,
    /// Time to refresh the access token.
    RefreshCredentials,
    /// Time for the role holder's heartbeat (`renew`).
    RenewRoles,
}

/// What happens to the engine.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// The driver is ready: connect if the network allows.
    Start,
    /// The connection is open (the upgrade succeeded).
    Connected,
    /// The connection ended, or opening it failed.
    Disconnected {
        /// Why.
        reason: DisconnectReason,
    },
    /// A frame arrived.
    FrameReceived(ServerMessage),
    /// A timer fired.
    TimerFired(Timer),
    /// The app wrote locally: there may be something to send.
    LocalWrite,
    /// The host says the network is (un)available.
    NetworkChanged(bool),
    /// The app asks to sync now.
    SyncNow,
    /// The driver stored fresh credentials.
    CredentialsUpdated {
        /// When the new access token expires, in ms since the Unix epoch.
        access_expires_at: u64,
    },
    /// Refreshing or registering failed.
    CredentialsFailed {
        /// Why.
        reason: SyncError,
    },
    /// The app asks the server something (`claim`, `release`, `handoff`,
    /// `guard`): `message` carries `id` as its request id. Sent once the
    /// connection is welcomed; answered with [`Action::Reply`].
    Request {
        /// The request id.
        id: u64,
        /// The message.
        message: ClientMessage,
    },
    /// The app gave up waiting for request `id`.
    CancelRequest(u64),
    /// The app decided conflict `id` (asked with
    /// [`Action::ResolveConflict`]).
    ConflictResolved {
        /// The conflict's id.
        id: u64,
        /// The decision.
        resolution: Resolution,
    },
}

/// What the engine asks the driver to do.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Open the connection (getting credentials first if needed), then
    /// report [`Event::Connected`] or [`Event::Disconnected`].
    Connect,
    /// Close the connection. The driver reports nothing more about it: the
    /// engine has already moved on.
    Disconnect,
    /// Send a frame on the open connection.
    Send(ClientMessage),
    /// Arm `timer` to fire after `after` (replacing it if armed).
    Schedule {
        /// Which timer.
        timer: Timer,
        /// When.
        #[serde(rename = "after_ms", serialize_with = "as_millis")]
        after: Duration,
    },
    /// Refresh the access token (or register again), then report
    /// [`Event::CredentialsUpdated`] or [`Event::CredentialsFailed`].
    RefreshCredentials,
    /// Tell the app something.
    Notify(Notice),
    /// Ask the app's conflict handler (off the engine's task: it may show
    /// a dialog), then report [`Event::ConflictResolved`] with `id`. A
    /// host without a handler answers [`Resolution::KeepRemote`] at once.
    /// The engine holds the write in flight until then; an answer that
    /// comes after the connection was lost is ignored (the write goes out
    /// again and the server answers again).
    ResolveConflict {
        /// The conflict's id.
        id: u64,
        /// What the handler is shown.
        conflict: Conflict,
    },
    /// The answer to request `id`: the server's message (`role`,
    /// `guard_result`, or an `error` naming the request), or why there is
    /// none (the connection was lost after it was sent).
    Reply {
        /// The request id.
        id: u64,
        /// The answer.
        answer: Result<ServerMessage, String>,
    },
}

/// What the app hears from the engine.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Notice {
    /// The status changed (read it with [`Engine::status`]).
    StatusChanged,
    /// A mutation failed for good.
    MutationFailed(MutationFailure),
    /// A role's holder or epoch changed (or its state was first heard).
    RoleChanged(RoleState),
    /// The user's devices changed (registry or presence).
    DevicesChanged(Vec<DeviceInfo>),
    /// The connection was welcomed (`true`) or lost (`false`).
    Online(bool),
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
