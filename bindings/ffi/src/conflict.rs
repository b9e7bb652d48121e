//! Conflicts the app resolves itself.
//!
//! In a `server_wins` collection with a handler set, and in a `manual`
//! collection always, a write the server refuses because the document
//! changed meanwhile is handed to the app's [`ConflictHandler`] with the
//! local view, the server's document and the base; a `KeepLocal` or
//! `Merged` choice is written as a new mutation on the server's version.
//! Every decision goes into the device's conflict log
//! ([`Client::conflicts`](crate::Client::conflicts)).

use crate::error::{TandemError, call_foreign_or};

/// A write of this device that conflicts with the server's document.
/// Fields are JSON object text; none means that side has no live document
/// (absent or deleted).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Conflict {
    /// The document's space.
    pub space: String,
    /// Its collection.
    pub collection: String,
    /// Its id.
    pub doc_id: String,
    /// The collection's policy: `server_wins` or `manual`.
    pub policy: String,
    /// The device's view, with its pending changes.
    pub local_json: Option<String>,
    /// The server's document.
    pub remote_json: Option<String>,
    /// The server's version of it.
    pub remote_version: Option<u64>,
    /// The confirmed state the local changes were made on.
    pub base_json: Option<String>,
}

impl From<tandem_core::Conflict> for Conflict {
    fn from(c: tandem_core::Conflict) -> Conflict {
        Conflict {
            space: c.space,
            collection: c.collection,
            doc_id: c.doc_id,
            policy: c.policy,
            local_json: c.local_json,
            remote_json: c.remote_json,
            remote_version: c.remote_version,
            base_json: c.base_json,
        }
    }
}

/// What the app decides about a conflict.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
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

impl From<Resolution> for tandem_core::Resolution {
    fn from(r: Resolution) -> tandem_core::Resolution {
        match r {
            Resolution::KeepRemote => tandem_core::Resolution::KeepRemote,
            Resolution::KeepLocal => tandem_core::Resolution::KeepLocal,
            Resolution::Merged { fields_json } => tandem_core::Resolution::Merged { fields_json },
        }
    }
}

/// Resolves conflicts; implemented by the app.
#[uniffi::export(callback_interface)]
pub trait ConflictHandler: Send + Sync {
    /// Decides one conflict. Called on a thread of its own (never the sync
    /// engine's): syncing goes on while it decides, and the write in
    /// conflict waits. It may take its time (ask the user), but the answer
    /// counts only while the connection that brought the conflict lasts;
    /// after a reconnect it is asked again. If it throws, the server's
    /// document is kept (and the failure logged).
    fn resolve(&self, conflict: Conflict) -> Result<Resolution, TandemError>;
}

/// Adapts the app's conflict handler to the core's.
pub(crate) struct ConflictHandlerBridge(pub(crate) Box<dyn ConflictHandler>);

impl tandem_core::ConflictHandler for ConflictHandlerBridge {
    fn resolve(&self, conflict: tandem_core::Conflict) -> tandem_core::Resolution {
        let conflict = Conflict::from(conflict);
        call_foreign_or("the conflict handler", Resolution::KeepRemote, || {
            self.0.resolve(conflict)
        })
        .into()
    }
}

/// A resolved conflict, from the device's conflict log.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ConflictRecord {
    /// Position in the log (newer is larger).
    pub id: u64,
    /// When it was resolved, in ms since the Unix epoch.
    pub at_ms: u64,
    /// The document's space.
    pub space: String,
    /// Its collection.
    pub collection: String,
    /// Its id.
    pub doc_id: String,
    /// The policy that decided (`server_wins` or `manual`).
    pub rule: String,
    /// Which side won: `remote`, `local` or `merged`.
    pub winner: String,
    /// The local fields that lost or were merged; none for a delete.
    pub local_json: Option<String>,
    /// The server's fields; none if the server had no live document.
    pub remote_json: Option<String>,
    /// The fields the document ended with; none if it ended deleted.
    pub resolved_json: Option<String>,
}

impl From<tandem_core::ConflictRecord> for ConflictRecord {
    fn from(r: tandem_core::ConflictRecord) -> ConflictRecord {
        ConflictRecord {
            id: r.id,
            at_ms: r.at_ms,
            space: r.space,
            collection: r.collection,
            doc_id: r.doc_id,
            rule: r.rule,
            winner: r.winner,
            local_json: r.local_json,
            remote_json: r.remote_json,
            resolved_json: r.resolved_json,
        }
    }
}
