//! The per-space checksum.
//!
//! Definition (also in `docs/PROTOCOL.md`): for every document of the space
//! that is not deleted, take the 64-bit FNV-1a hash of the bytes
//! `collection 0x00 doc_id 0x00 version` (version in decimal ASCII); the
//! space's checksum is the sum of these hashes modulo 2^64. On the wire it is
//! 16 lowercase hex digits.
//!
//! Because it is a sum, both sides maintain it incrementally: when a document
//! changes, subtract its old hash (if it was live) and add its new one (if it
//! is live). A device whose confirmed state matches the server's at revision R
//! computes the same value the server sends for R; any missed, extra or stale
//! document makes them differ.

use std::fmt;

use serde::{Deserialize, Serialize};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The checksum of a space's live documents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SpaceChecksum(pub u64);

/// The hash one live document contributes to its space's checksum.
pub fn document_hash(collection: &str, doc_id: &str, version: u64) -> u64 {
    let mut h = FNV_OFFSET;
    let version = version.to_string();
    let parts: [&[u8]; 5] = [
        collection.as_bytes(),
        &[0],
        doc_id.as_bytes(),
        &[0],
        version.as_bytes(),
    ];
    for part in parts {
        for byte in part {
            h ^= u64::from(*byte);
            h = h.wrapping_mul(FNV_PRIME);
        }
    }
    h
}

impl SpaceChecksum {
    /// Counts a live document in.
    pub fn add(&mut self, collection: &str, doc_id: &str, version: u64) {
        self.0 = self
            .0
            .wrapping_add(document_hash(collection, doc_id, version));
    }

    /// Takes a live document out.
    pub fn remove(&mut self, collection: &str, doc_id: &str, version: u64) {
        self.0 = self
            .0
            .wrapping_sub(document_hash(collection, doc_id, version));
    }
}

impl fmt::Display for SpaceChecksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl TryFrom<String> for SpaceChecksum {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        if value.len() != 16 {
            return Err(format!("a checksum is 16 hex digits, got {value:?}"));
        }
        u64::from_str_radix(&value, 16)
            .map(SpaceChecksum)
            .map_err(|_| format!("a checksum is 16 hex digits, got {value:?}"))
    }
}

impl From<SpaceChecksum> for String {
    fn from(c: SpaceChecksum) -> String {
        c.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        // Fixed so that implementations in other languages can check theirs.
        assert_eq!(document_hash("tasks", "t1", 3), 0x58fd_9677_122b_9d01);
        let mut c = SpaceChecksum::default();
        c.add("tasks", "t1", 3);
        c.add("tasks", "t2", 4);
        let mut d = SpaceChecksum::default();
        d.add("tasks", "t2", 4);
        d.add("tasks", "t1", 3);
        assert_eq!(c, d, "order does not matter");
        d.remove("tasks", "t2", 4);
        d.add("tasks", "t2", 5);
        assert_ne!(c, d, "a changed version changes the checksum");
    }

    #[test]
    fn hex_form() {
        let c = SpaceChecksum(0xab);
        assert_eq!(serde_json::to_string(&c).unwrap(), "\"00000000000000ab\"");
        assert!(serde_json::from_str::<SpaceChecksum>("\"xyz\"").is_err());
    }
}
