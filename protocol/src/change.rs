//! Changes: the server's record of a committed write, sent to devices.
//!
//! A change carries the document's whole state after the write, not a delta.
//! That makes applying changes order-insensitive and idempotent (the highest
//! revision, or the CRDT join, wins) and lets the changes feed be read straight
//! from the documents table: the feed since cursor `c` is every document whose
//! version is greater than `c`, in version order.

use serde::{Deserialize, Serialize};

use crate::document::{DocState, Document};
use crate::ids::{Collection, DeviceId, DocId, MutationId, SpaceId};

/// One committed change to one document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    /// The space.
    pub space: SpaceId,
    /// The per-space revision assigned at commit; the document's new version.
    pub rev: u64,
    /// The collection.
    pub collection: Collection,
    /// The document.
    pub doc_id: DocId,
    /// The document's state after the change.
    pub state: DocState,
    /// Whether the document is now a tombstone (derived from `state`, for
    /// readers that do not implement the merge rules).
    pub deleted: bool,
    /// The device whose mutation made the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<DeviceId>,
    /// The mutation that made the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutation_id: Option<MutationId>,
}

impl Change {
    /// The length of this change as JSON text, in bytes: what it adds to a
    /// `changes` message (plus a comma between two changes). Counted
    /// without building the text.
    pub fn encoded_len(&self) -> usize {
        let mut counter = ByteCounter(0);
        match serde_json::to_writer(&mut counter, self) {
            Ok(()) => counter.0,
            Err(_) => usize::MAX,
        }
    }

    /// A change recording `document` at its version.
    pub fn from_document(
        document: &Document,
        origin: Option<DeviceId>,
        mutation_id: Option<MutationId>,
    ) -> Change {
        Change {
            space: document.space.clone(),
            rev: document.version.unwrap_or(0),
            collection: document.collection.clone(),
            doc_id: document.id.clone(),
            state: document.state.clone(),
            deleted: document.is_deleted(),
            origin,
            mutation_id,
        }
    }

    /// The document this change describes.
    pub fn to_document(&self) -> Document {
        Document {
            space: self.space.clone(),
            collection: self.collection.clone(),
            id: self.doc_id.clone(),
            version: Some(self.rev),
            state: self.state.clone(),
        }
    }
}

/// A writer that only counts what is written to it.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
