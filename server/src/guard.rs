//! The duplicate guard's key: normalized content hashed with its scope.
//!
//! Two devices that want to send "the same" answer rarely produce the same
//! bytes: one trims, one adds a trailing newline, one composes an accent
//! differently. The content is therefore normalized before hashing: leading
//! and trailing whitespace removed, Unicode NFC, every run of whitespace
//! inside as one space. The hash is SHA-256 over the scope, a zero byte and
//! the normalized content, so equal content in two scopes does not collide.
//! The store keeps one row per (user, hash) (see [`crate::store::CoordinationStore::guard`]).

use sha2::{Digest, Sha256};
use unicode_normalization::UnicodeNormalization;

/// `content` trimmed, in NFC, with each run of whitespace as one space.
pub fn normalize(content: &str) -> String {
    let composed: String = content.trim().nfc().collect();
    let mut out = String::with_capacity(composed.len());
    let mut in_space = false;
    for ch in composed.chars() {
        if ch.is_whitespace() {
            if !in_space {
                out.push(' ');
            }
            in_space = true;
        } else {
            out.push(ch);
            in_space = false;
        }
    }
    out
}

/// The guard key of `content` in `scope`.
pub fn guard_hash(scope: &str, content: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(scope.as_bytes());
    hasher.update([0u8]);
    hasher.update(normalize(content).as_bytes());
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_trims_composes_and_collapses() {
        assert_eq!(normalize("  On my\t\n way!  "), "On my way!");
        // "é" as e + combining acute accent, and precomposed.
        assert_eq!(normalize("caf\u{65}\u{301}"), normalize("caf\u{e9}"));
        assert_eq!(
            guard_hash("s", "caf\u{65}\u{301} "),
            guard_hash("s", "café")
        );
    }

    #[test]
    fn the_scope_is_part_of_the_key() {
        assert_ne!(guard_hash("a", "hello"), guard_hash("b", "hello"));
        assert_ne!(guard_hash("s", "hello"), guard_hash("s", "hello!"));
    }
}
