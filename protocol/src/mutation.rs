//! Mutations: a device's intent to change one document.
//!
//! A mutation is what the outbox stores and what a `push` carries. Its
//! `mutation_id` is the idempotency key: however often it is sent, the server
//! applies it once.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::hlc::Hlc;
use crate::ids::{Collection, DeviceId, DocId, MutationId, SpaceId};

/// One write to one document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mutation {
    /// Idempotency key, a UUIDv7 chosen when the write was made.
    pub mutation_id: MutationId,
    /// The space of the document.
    pub space: SpaceId,
    /// The collection of the document.
    pub collection: Collection,
    /// The document.
    pub doc_id: DocId,
    /// What to do.
    pub op: Op,
    /// The version of the document the author saw, if it had one; checked by
    /// the `server_wins` and `manual` policies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_version: Option<u64>,
    /// When the write was made, on the author's clock.
    pub hlc: Hlc,
    /// The author's device.
    pub device_id: DeviceId,
    /// The role epoch the write was made under, if it was made on behalf of a
    /// role; the server rejects it when the epoch is stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<RoleFence>,
}

/// What a mutation does to its document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    /// Replace the whole document with `fields`.
    Put {
        /// The new fields.
        fields: Map<String, Value>,
    },
    /// Change the named fields; a `null` value removes the field.
    Patch {
        /// The changed fields.
        fields: Map<String, Value>,
    },
    /// Delete the document (it becomes a tombstone).
    Delete {},
    /// Add `values` to the set field `field`.
    SetAdd {
        /// A field declared as a set.
        field: String,
        /// The elements to add.
        values: Vec<Value>,
    },
    /// Remove `values` from the set field `field`, covering the add tags the
    /// author had observed for them.
    SetRemove {
        /// A field declared as a set.
        field: String,
        /// The elements to remove.
        values: Vec<Value>,
        /// The add tags of those elements the author had seen.
        observed: Vec<Hlc>,
    },
}

impl Op {
    /// The operation's name as the protocol spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Put { .. } => "put",
            Op::Patch { .. } => "patch",
            Op::Delete {} => "delete",
            Op::SetAdd { .. } => "set_add",
            Op::SetRemove { .. } => "set_remove",
        }
    }

    /// Whether this is a set operation (these commute, so no policy needs a
    /// version check for them).
    pub fn is_set_op(&self) -> bool {
        matches!(self, Op::SetAdd { .. } | Op::SetRemove { .. })
    }
}

/// The role and epoch a write claims to act under (fencing token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleFence {
    /// The role's name.
    pub role: String,
    /// The epoch the author held it at.
    pub epoch: u64,
}
