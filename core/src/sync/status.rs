//! The sync status an app shows and observes.

use std::collections::BTreeMap;

use serde::Serialize;

/// The state of the link to the sync server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionState {
    /// Not connected (syncing is not started, the network is away, or the
    /// next attempt is waiting for its backoff).
    Offline,
    /// Connecting or handshaking.
    Connecting,
    /// Connected and syncing.
    Online,
}

/// Catch-up progress of one space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SpaceProgress {
    /// The revision applied so far.
    pub applied: u64,
    /// The space's latest revision, as the server last said.
    pub head: Option<u64>,
}

/// Everything the device knows about its sync state: the CLI's `status`
/// object, and what status observers receive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyncStatus {
    /// The link to the server.
    pub connection: ConnectionState,
    /// Outbox entries not yet confirmed by the server (queued, in flight,
    /// retrying, or acknowledged and waiting for their change).
    pub pending: u64,
    /// Outbox entries the server refused or whose attempts ran out.
    pub failed: u64,
    /// When the device was last caught up with every space, in ms since
    /// the Unix epoch.
    pub last_synced: Option<u64>,
    /// Per space, the last revision applied.
    pub cursors: BTreeMap<String, u64>,
    /// Spaces still catching up on this connection, with their progress.
    pub catching_up: BTreeMap<String, SpaceProgress>,
    /// How many times a space's checksum did not match the server's (each
    /// one re-synced the space).
    pub checksum_mismatches: u64,
    /// The last connection or credential error, or the server's refusal
    /// of a write because this device's clock is ahead (`clock_skew`),
    /// until the next successful connection.
    pub last_error: Option<SyncError>,
}

/// What kind of trouble syncing met last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncErrorKind {
    /// The server could not be reached, or the connection broke.
    Network,
    /// The TLS connection failed: the server's certificate is not trusted
    /// (unknown authority, wrong host name, expired, no pinned key), or
    /// the server does not speak TLS.
    Tls,
    /// The server refused the device's credentials, or the app's token
    /// provider has no user token.
    Unauthorized,
    /// The server reported an error (rate limited, internal, ...); the
    /// message starts with its code.
    Server,
    /// The server speaks another protocol version: syncing stopped.
    Protocol,
    /// A space's checksum did not match the server's; it is fetched again.
    Checksum,
    /// The server refused a write because this device's clock is ahead of
    /// its own by more than it allows (`clock_skew`): every write will be
    /// refused until the device's clock is set right.
    Clock,
}

impl SyncErrorKind {
    /// The kind's name, as it is serialized (`network`, `tls`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            SyncErrorKind::Network => "network",
            SyncErrorKind::Tls => "tls",
            SyncErrorKind::Unauthorized => "unauthorized",
            SyncErrorKind::Server => "server",
            SyncErrorKind::Protocol => "protocol",
            SyncErrorKind::Checksum => "checksum",
            SyncErrorKind::Clock => "clock",
        }
    }
}

/// The last error syncing met: its kind, and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyncError {
    /// What kind of error.
    pub kind: SyncErrorKind,
    /// What happened, without the kind in front.
    pub message: String,
}

impl SyncError {
    /// An error of `kind`.
    pub fn new(kind: SyncErrorKind, message: impl Into<String>) -> SyncError {
        SyncError {
            kind,
            message: message.into(),
        }
    }

    /// The kind of error a failed call into the server's HTTP API (or the
    /// token provider) means for syncing.
    pub(crate) fn from_error(error: &crate::Error) -> SyncError {
        use crate::Error;
        let kind = match error {
            Error::Tls(_) => SyncErrorKind::Tls,
            Error::Unauthorized(_)
            | Error::Token(crate::sync::TokenError::SignedOut(_))
            | Error::Server {
                code: tandem_protocol::ErrorCode::Unauthorized | tandem_protocol::ErrorCode::Revoked,
                ..
            } => SyncErrorKind::Unauthorized,
            Error::Server { .. } => SyncErrorKind::Server,
            _ => SyncErrorKind::Network,
        };
        let message = match error {
            Error::Server { code, message } => format!("{}: {message}", code.as_str()),
            other => other.reason(),
        };
        SyncError { kind, message }
    }
}

impl std::fmt::Display for SyncError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

/// Receives the sync status. Called on the client's observer task (never
/// the sync engine's), in order: return quickly (hand the value to the
/// app's own queue), or other observers wait.
pub trait StatusObserver: Send + Sync {
    /// The status: first the current one, then each time it changes.
    fn on_status(&self, status: SyncStatus);

    /// The server refused a mutation for good (or its attempts ran out): it
    /// is now failed, and rolled back from the view.
    fn on_mutation_failed(&self, failure: MutationFailure) {
        let _ = failure;
    }
}

/// A mutation that became failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MutationFailure {
    /// The mutation's id.
    pub mutation_id: String,
    /// Its document's space.
    pub space: String,
    /// Its document's collection.
    pub collection: String,
    /// Its document's id.
    pub doc_id: String,
    /// Why, as `code: reason`.
    pub reason: String,
}
