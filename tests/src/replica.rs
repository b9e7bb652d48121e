//! A device's confirmed copy of its spaces, as the protocol says to keep it.

use std::collections::BTreeMap;

use tandem_protocol::wire::Changes;
use tandem_protocol::{Change, SpaceChecksum, SpaceId};

/// Documents by space, then by (collection, id), with cursors.
#[derive(Debug, Default, Clone)]
pub struct Replica {
    docs: BTreeMap<SpaceId, BTreeMap<(String, String), Change>>,
    cursors: BTreeMap<SpaceId, u64>,
    /// How many checksums were compared (and matched).
    pub checksums_checked: usize,
    /// How many resets were applied.
    pub resets: usize,
}

impl Replica {
    /// An empty replica.
    pub fn new() -> Replica {
        Replica::default()
    }

    /// Applies one `changes` message: a reset drops the space first; each
    /// change replaces an older version of its document; the cursor moves to
    /// `head` on a final page or live message, to the last change otherwise;
    /// a checksum, when present, must match the recomputed one.
    pub fn apply(&mut self, message: &Changes) -> Result<(), String> {
        let space = &message.space;
        if message.reset {
            self.docs.remove(space);
            self.cursors.insert(space.clone(), 0);
            self.resets += 1;
        }
        let docs = self.docs.entry(space.clone()).or_default();
        let mut last = None;
        for change in &message.changes {
            if &change.space != space {
                return Err(format!("a change of {} in a page of {space}", change.space));
            }
            if let Some(previous) = last
                && change.rev <= previous
            {
                return Err(format!(
                    "revisions out of order: {} after {previous}",
                    change.rev
                ));
            }
            last = Some(change.rev);
            let key = (change.collection.to_string(), change.doc_id.to_string());
            let newer = docs.get(&key).is_none_or(|old| old.rev < change.rev);
            if newer {
                docs.insert(key, change.clone());
            }
        }
        let cursor = self.cursors.entry(space.clone()).or_insert(0);
        let reached = if message.more {
            last
        } else {
            message.head.or(last)
        };
        if let Some(reached) = reached {
            *cursor = (*cursor).max(reached);
        }
        if let Some(expected) = message.checksum {
            let actual = self.checksum(space);
            if actual != expected {
                return Err(format!(
                    "checksum of {space} at {}: server {expected}, recomputed {actual}",
                    self.cursor(space)
                ));
            }
            self.checksums_checked += 1;
        }
        Ok(())
    }

    /// The checksum of the live documents of `space`, recomputed.
    pub fn checksum(&self, space: &SpaceId) -> SpaceChecksum {
        let mut sum = SpaceChecksum::default();
        if let Some(docs) = self.docs.get(space) {
            for change in docs.values().filter(|c| !c.deleted) {
                sum.add(
                    change.collection.as_str(),
                    change.doc_id.as_str(),
                    change.rev,
                );
            }
        }
        sum
    }

    /// The cursor of `space` (0 if none).
    pub fn cursor(&self, space: &SpaceId) -> u64 {
        self.cursors.get(space).copied().unwrap_or(0)
    }

    /// Every cursor, for a `hello`.
    pub fn cursors(&self) -> BTreeMap<SpaceId, u64> {
        self.cursors.clone()
    }

    /// The latest change of a document.
    pub fn document(&self, space: &SpaceId, collection: &str, id: &str) -> Option<&Change> {
        self.docs
            .get(space)?
            .get(&(collection.to_owned(), id.to_owned()))
    }

    /// The live documents of `space`.
    pub fn live(&self, space: &SpaceId) -> Vec<&Change> {
        self.docs
            .get(space)
            .map(|d| d.values().filter(|c| !c.deleted).collect())
            .unwrap_or_default()
    }

    /// Every document of `space`, tombstones included.
    pub fn all(&self, space: &SpaceId) -> Vec<&Change> {
        self.docs
            .get(space)
            .map(|d| d.values().collect())
            .unwrap_or_default()
    }
}
