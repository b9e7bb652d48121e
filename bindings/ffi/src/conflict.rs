//! Conflicts the app resolves itself.
//!
//! In a `manual` collection (and a `server_wins` one, if a handler is set)
//! a write that the server refuses because the document changed meanwhile
//! is handed to the app's [`ConflictHandler`] with the three versions; its
//! choice is written as a new mutation, and every resolution goes into the
//! device's conflict log.

/// A write of this device that conflicts with the server's document.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Conflict {
    /// The document's space.
    pub space: String,
    /// Its collection.
    pub collection: String,
    /// Its id.
    pub id: String,
    /// The fields this device wants (JSON object text); none if this device
    /// deleted the document.
    pub local_fields_json: Option<String>,
    /// The server's current fields; none if the server's document is
    /// deleted.
    pub remote_fields_json: Option<String>,
    /// The fields both started from; none if the document did not exist.
    pub base_fields_json: Option<String>,
    /// The server's current version of the document.
    pub remote_version: u64,
}

/// What the app decides about a conflict.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum ConflictResolution {
    /// Write this device's version again, on top of the server's.
    KeepLocal,
    /// Take the server's version and drop the local change.
    TakeRemote,
    /// Write these fields (a JSON object) on top of the server's version.
    Merge {
        /// The merged fields.
        fields_json: String,
    },
}

/// Resolves conflicts; implemented by the app.
#[uniffi::export(callback_interface)]
pub trait ConflictHandler: Send + Sync {
    /// Decides one conflict. Called on a Rust thread, one conflict at a
    /// time; the sync of that document waits for the answer. If it throws,
    /// the server's version is kept and the conflict is logged.
    fn resolve(&self, conflict: Conflict) -> ConflictResolution;
}
