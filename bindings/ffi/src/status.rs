//! Sync status and the outbox, as the app sees them.

use std::collections::HashMap;

/// The state of the link to the sync server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, uniffi::Enum)]
pub enum ConnectionState {
    /// Not connected.
    Offline,
    /// Connecting or handshaking.
    Connecting,
    /// Connected and syncing.
    Online,
}

/// What the device knows about its sync state.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SyncStatus {
    /// The link to the server.
    pub connection: ConnectionState,
    /// Writes not yet confirmed by the server (queued, in flight, retrying,
    /// or acknowledged and waiting for their change).
    pub pending: u64,
    /// Writes the server refused or whose attempts ran out, waiting for the
    /// app to retry or discard them.
    pub failed: u64,
    /// When the device was last caught up with every space, in ms since the
    /// Unix epoch.
    pub last_synced_ms: Option<u64>,
    /// Per space, the last server revision applied.
    pub cursors: HashMap<String, u64>,
    /// Spaces still catching up on this connection, with their progress
    /// (for a first-sync progress bar).
    pub catching_up: HashMap<String, SpaceProgress>,
    /// How many times a space's checksum did not match the server's (each
    /// one re-synced the space).
    pub checksum_mismatches: u64,
    /// The last connection or credential error, until the next successful
    /// connection.
    pub last_error: Option<SyncError>,
}

/// What kind of trouble syncing met last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, uniffi::Enum)]
pub enum SyncErrorKind {
    /// The server could not be reached, or the connection broke.
    Network,
    /// The TLS connection failed: the server's certificate is not trusted
    /// (unknown authority, wrong host name, expired, no pinned key), or
    /// the server does not speak TLS. The message says what to fix.
    Tls,
    /// The server refused the device's credentials, or the token provider
    /// has no user token: sign the user in again.
    Unauthorized,
    /// The server reported an error (rate limited, internal, ...).
    Server,
    /// The server speaks another protocol version: syncing stopped.
    Protocol,
    /// A space's checksum did not match the server's; it is fetched again.
    Checksum,
    /// The server refused a write because this device's clock is ahead by
    /// more than it allows: ask the user to set the clock right.
    Clock,
}

/// The last error syncing met.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SyncError {
    /// What kind of error.
    pub kind: SyncErrorKind,
    /// What happened, for people and logs.
    pub message: String,
}

impl From<tandem_core::SyncError> for SyncError {
    fn from(error: tandem_core::SyncError) -> SyncError {
        use tandem_core::SyncErrorKind as Core;
        SyncError {
            kind: match error.kind {
                Core::Network => SyncErrorKind::Network,
                Core::Tls => SyncErrorKind::Tls,
                Core::Unauthorized => SyncErrorKind::Unauthorized,
                Core::Server => SyncErrorKind::Server,
                Core::Protocol => SyncErrorKind::Protocol,
                Core::Checksum => SyncErrorKind::Checksum,
                Core::Clock => SyncErrorKind::Clock,
            },
            message: error.message,
        }
    }
}

/// How far a space has caught up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct SpaceProgress {
    /// The revision applied so far.
    pub applied: u64,
    /// The space's latest revision, as the server last said.
    pub head: Option<u64>,
}

impl From<tandem_core::SyncStatus> for SyncStatus {
    fn from(status: tandem_core::SyncStatus) -> SyncStatus {
        SyncStatus {
            connection: match status.connection {
                tandem_core::ConnectionState::Offline => ConnectionState::Offline,
                tandem_core::ConnectionState::Connecting => ConnectionState::Connecting,
                tandem_core::ConnectionState::Online => ConnectionState::Online,
            },
            pending: status.pending,
            failed: status.failed,
            last_synced_ms: status.last_synced,
            cursors: status.cursors.into_iter().collect(),
            catching_up: status
                .catching_up
                .into_iter()
                .map(|(space, p)| {
                    let progress = SpaceProgress {
                        applied: p.applied,
                        head: p.head,
                    };
                    (space, progress)
                })
                .collect(),
            checksum_mismatches: status.checksum_mismatches,
            last_error: status.last_error.map(SyncError::from),
        }
    }
}

/// A write that the server refused for good (or whose attempts ran out):
/// it is now failed and rolled back from the view.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct MutationFailure {
    /// The mutation's id (for `retry_mutation` or `discard_mutation`).
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

impl From<tandem_core::MutationFailure> for MutationFailure {
    fn from(f: tandem_core::MutationFailure) -> MutationFailure {
        MutationFailure {
            mutation_id: f.mutation_id,
            space: f.space,
            collection: f.collection,
            doc_id: f.doc_id,
            reason: f.reason,
        }
    }
}

/// Where an outbox entry is in its life.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum OutboxState {
    /// Waiting to be sent.
    Queued,
    /// Sent on the current connection, not answered yet.
    InFlight,
    /// A send failed and will be retried.
    Retrying {
        /// How many sends have failed.
        attempt: u32,
        /// When to send again, in ms since the Unix epoch.
        next_attempt_at_ms: u64,
    },
    /// Refused for good; waits for the app to retry or discard it.
    Failed {
        /// Why.
        reason: String,
    },
}

/// A write in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct PendingMutation {
    /// Position in the outbox; entries are sent in this order.
    pub seq: u64,
    /// The idempotency key.
    pub mutation_id: String,
    /// The document's space.
    pub space: String,
    /// The document's collection.
    pub collection: String,
    /// The document's id.
    pub doc_id: String,
    /// `put`, `patch`, `delete`, `set_add` or `set_remove`.
    pub operation: String,
    /// Where it is in its life.
    pub state: OutboxState,
    /// When the write was made, in ms since the Unix epoch.
    pub created_at_ms: u64,
    /// The whole mutation as the protocol encodes it (JSON).
    pub mutation_json: String,
}

impl From<tandem_core::PendingMutation> for PendingMutation {
    fn from(m: tandem_core::PendingMutation) -> PendingMutation {
        PendingMutation {
            seq: m.seq,
            mutation_id: m.mutation_id,
            space: m.space,
            collection: m.collection,
            doc_id: m.doc_id,
            operation: m.operation,
            state: match m.state {
                tandem_core::OutboxState::Queued => OutboxState::Queued,
                tandem_core::OutboxState::InFlight => OutboxState::InFlight,
                tandem_core::OutboxState::Retrying {
                    attempt,
                    next_attempt_at_ms,
                } => OutboxState::Retrying {
                    attempt,
                    next_attempt_at_ms,
                },
                tandem_core::OutboxState::Failed { reason } => OutboxState::Failed { reason },
            },
            created_at_ms: m.created_at_ms,
            mutation_json: m.mutation_json,
        }
    }
}
