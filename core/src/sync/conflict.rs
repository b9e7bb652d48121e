//! Conflicts the app resolves.
//!
//! In a `server_wins` or `manual` collection the server refuses a write
//! whose `base_version` is not the document's current version and answers
//! with its own document. The engine then applies the server's document to
//! the confirmed state and decides:
//!
//! - `server_wins` without a handler: the server's document wins; the
//!   local change is dropped.
//! - `server_wins` with a handler, and `manual` always: the handler gets
//!   the local view, the server's document and the base the local change
//!   was made on, and returns a [`Resolution`]. Keeping the local side or
//!   a merge is written as a new mutation based on the server's version, so
//!   it goes through the same checks as any write. (`manual` without a
//!   handler behaves like `server_wins`: nothing stays wedged.)
//!
//! The engine asks through an action and hears the answer as an event
//! (`engine/settle.rs`), and settles it in one transaction.
//!
//! Every decision goes into the conflict log
//! ([`Client::conflicts`](crate::Client::conflicts)).

use serde::Serialize;

/// One conflict, as the handler sees it. Fields are JSON object text;
/// `None` means the side has no live document (absent or deleted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    /// The document's space.
    pub space: String,
    /// The document's collection.
    pub collection: String,
    /// The document's id.
    pub doc_id: String,
    /// `server_wins` or `manual`.
    pub policy: String,
    /// The device's view with its pending changes.
    pub local_json: Option<String>,
    /// The server's document.
    pub remote_json: Option<String>,
    /// The server's version.
    pub remote_version: Option<u64>,
    /// The confirmed state the local changes were made on.
    pub base_json: Option<String>,
}

/// What the handler decides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// The server's document stays; the local change is dropped.
    KeepRemote,
    /// The local view is written again on top of the server's version.
    KeepLocal,
    /// These fields (a JSON object) are written on top of the server's
    /// version.
    Merged {
        /// The merged fields.
        fields_json: String,
    },
}

/// Resolves conflicts. Called off the sync engine's task (the native
/// driver runs it on a blocking thread), one conflict at a time per
/// write; syncing goes on meanwhile, and the write in conflict waits. A
/// handler may take its time (ask the user), but the answer counts only
/// while the connection that brought the conflict lasts: after a
/// reconnect the server answers the write again and the handler is asked
/// again.
pub trait ConflictHandler: Send + Sync {
    /// Decides one conflict.
    fn resolve(&self, conflict: Conflict) -> Resolution;
}

/// Where the app's conflict handler is kept; the client replaces it at any
/// time, and the driver reads it for each conflict.
pub type ConflictSlot =
    std::sync::Arc<std::sync::RwLock<Option<std::sync::Arc<dyn ConflictHandler>>>>;
