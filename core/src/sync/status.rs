//! The sync status an app shows and observes.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::client::ConnectionState;

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
    /// of a write because this device's clock is ahead (`clock_skew: ...`),
    /// until the next successful connection.
    pub last_error: Option<String>,
}

/// Receives the sync status. Called on the sync engine's task, in order:
/// return quickly (hand the value to the app's own queue), or syncing
/// waits.
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
