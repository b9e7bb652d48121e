//! Per-collection merge policies.
//!
//! The server owns them (its schema file; collections it does not name get
//! `lww`) and announces them in `welcome`, so every device merges the same way.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// How concurrent writes to a collection's documents are resolved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Field-level last-writer-wins by hybrid logical clock.
    #[default]
    Lww,
    /// A write must name the current version (`base_version`); otherwise it is
    /// a conflict and the server's document wins.
    ServerWins,
    /// Documents are created once and never changed (set fields excepted);
    /// creating an existing id again is an idempotent no-op.
    AppendOnly,
    /// Like `server_wins` on the server, but the device hands every conflict to
    /// the app's conflict handler, which writes the resolution.
    Manual,
}

impl Policy {
    /// The policy's name as the protocol spells it.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Lww => "lww",
            Policy::ServerWins => "server_wins",
            Policy::AppendOnly => "append_only",
            Policy::Manual => "manual",
        }
    }

    /// Whether writes under this policy are checked against `base_version`.
    pub fn checks_version(self) -> bool {
        matches!(self, Policy::ServerWins | Policy::Manual)
    }
}

/// A collection's policy and its set fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionPolicy {
    /// The merge policy.
    #[serde(default)]
    pub policy: Policy,
    /// Fields that are observed-remove sets, changed only by `set_add` and
    /// `set_remove`.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub set_fields: BTreeSet<String>,
}

impl CollectionPolicy {
    /// The policy of a collection nobody declared.
    pub fn lww() -> CollectionPolicy {
        CollectionPolicy::default()
    }

    /// A policy without set fields.
    pub fn of(policy: Policy) -> CollectionPolicy {
        CollectionPolicy {
            policy,
            set_fields: BTreeSet::new(),
        }
    }

    /// Whether `field` is declared as a set.
    pub fn is_set_field(&self, field: &str) -> bool {
        self.set_fields.contains(field)
    }
}
