//! The document model.
//!
//! A [`Document`] is `{space, collection, id, version, state}`. Its
//! [`DocState`] is a small state-based CRDT, so that merging two states is
//! commutative, associative and idempotent:
//!
//! - every top-level field is a last-writer-wins register: a value (or its
//!   absence, for a removed field) and the [`Hlc`] stamp of the write;
//! - `cleared_at` is the stamp of the last `put` or `delete`: registers older
//!   than it are gone (a `put` replaces the whole document);
//! - `alive_at` / `deleted_at` are the stamps of the last write and the last
//!   delete; the document is deleted when the delete is the later of the two;
//! - fields declared as sets are observed-remove sets ([`OrSet`]): an element
//!   is present while some tag of an add is not covered by a remove.
//!
//! Registers and set tags older than `cleared_at` can never become visible
//! again, so they are dropped ([`DocState::compact`]); this keeps states small
//! without changing what any merge produces.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::canonical::to_canonical_string;
use crate::hlc::Hlc;
use crate::ids::{Collection, DocId, SpaceId};

/// A document as the server has committed it, or as a device sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// The space the document lives in.
    pub space: SpaceId,
    /// Its collection.
    pub collection: Collection,
    /// Its id, unique within the collection.
    pub id: DocId,
    /// The per-space revision of the last change to it, or `None` if the
    /// server has never confirmed it.
    pub version: Option<u64>,
    /// Its merge state.
    pub state: DocState,
}

impl Document {
    /// Whether the document is a tombstone.
    pub fn is_deleted(&self) -> bool {
        self.state.is_deleted()
    }

    /// The fields an app sees: register values and set fields as arrays.
    pub fn fields(&self) -> Map<String, Value> {
        self.state.visible_fields()
    }
}

/// The mergeable state of a document (see the module documentation).
///
/// Decoding checks the invariants the merge rules rely on: every present
/// field has a stamp, and a set field is not also a register.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawDocState")]
pub struct DocState {
    /// Register values of the fields that are present.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub fields: Map<String, Value>,
    /// The stamp of every register, including removed fields (a stamp with no
    /// value in `fields`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub clocks: BTreeMap<String, Hlc>,
    /// Set fields.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sets: BTreeMap<String, OrSet>,
    /// Stamp of the last write that was not a delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alive_at: Option<Hlc>,
    /// Stamp of the last delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<Hlc>,
    /// Stamp of the last `put` or `delete`; older registers are gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleared_at: Option<Hlc>,
}

/// A [`DocState`] as decoded, before its invariants are checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDocState {
    #[serde(default)]
    fields: Map<String, Value>,
    #[serde(default)]
    clocks: BTreeMap<String, Hlc>,
    #[serde(default)]
    sets: BTreeMap<String, OrSet>,
    #[serde(default)]
    alive_at: Option<Hlc>,
    #[serde(default)]
    deleted_at: Option<Hlc>,
    #[serde(default)]
    cleared_at: Option<Hlc>,
}

impl TryFrom<RawDocState> for DocState {
    type Error = String;

    fn try_from(raw: RawDocState) -> Result<DocState, String> {
        if let Some(name) = raw
            .fields
            .keys()
            .find(|name| !raw.clocks.contains_key(*name))
        {
            return Err(format!("field {name:?} has a value but no clock"));
        }
        if let Some(name) = raw.sets.keys().find(|name| raw.clocks.contains_key(*name)) {
            return Err(format!("field {name:?} is both a set and a register"));
        }
        Ok(DocState {
            fields: raw.fields,
            clocks: raw.clocks,
            sets: raw.sets,
            alive_at: raw.alive_at,
            deleted_at: raw.deleted_at,
            cleared_at: raw.cleared_at,
        })
    }
}

impl DocState {
    /// Whether the document is deleted: a delete is later than every other
    /// write.
    pub fn is_deleted(&self) -> bool {
        match (&self.deleted_at, &self.alive_at) {
            (Some(deleted), Some(alive)) => deleted > alive,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    /// Fields as the app sees them: present register values, and each set
    /// field as an array of its present elements in the order they were first
    /// added. A deleted document has no fields.
    pub fn visible_fields(&self) -> Map<String, Value> {
        let mut out = Map::new();
        if self.is_deleted() {
            return out;
        }
        for (name, value) in &self.fields {
            out.insert(name.clone(), value.clone());
        }
        for (name, set) in &self.sets {
            out.insert(name.clone(), Value::Array(set.present_values()));
        }
        out
    }

    /// Drops registers and set tags that `cleared_at` has made invisible
    /// forever. Called after every merge.
    pub fn compact(&mut self) {
        let Some(cleared) = self.cleared_at.clone() else {
            return;
        };
        let stale: Vec<String> = self
            .clocks
            .iter()
            .filter(|(_, c)| **c < cleared)
            .map(|(k, _)| k.clone())
            .collect();
        for key in stale {
            self.clocks.remove(&key);
            self.fields.remove(&key);
        }
        for set in self.sets.values_mut() {
            set.drop_tags_before(&cleared);
        }
        self.sets.retain(|_, set| !set.is_empty());
    }

    /// The size of this state as JSON text, in bytes: what the document-size
    /// limit measures.
    pub fn encoded_len(&self) -> usize {
        serde_json::to_vec(self)
            .map(|v| v.len())
            .unwrap_or(usize::MAX)
    }
}

/// An observed-remove set: add-wins under concurrency, and a remove takes
/// away only the adds its author had seen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Vec<OrElement>", into = "Vec<OrElement>")]
pub struct OrSet {
    elements: BTreeMap<String, OrElement>,
}

/// One element of an [`OrSet`] with its add and remove tags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrElement {
    /// The element.
    pub value: Value,
    /// Tags (stamps) of the adds of this element.
    pub adds: BTreeSet<Hlc>,
    /// Add tags that a remove has covered.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub removes: BTreeSet<Hlc>,
}

impl OrElement {
    fn live_tags(&self) -> impl Iterator<Item = &Hlc> {
        self.adds.iter().filter(|t| !self.removes.contains(t))
    }
}

impl From<Vec<OrElement>> for OrSet {
    fn from(items: Vec<OrElement>) -> OrSet {
        let mut set = OrSet::default();
        for item in items {
            set.merge_element(item);
        }
        set
    }
}

impl From<OrSet> for Vec<OrElement> {
    fn from(set: OrSet) -> Vec<OrElement> {
        set.elements.into_values().collect()
    }
}

impl OrSet {
    /// Whether the set holds no elements at all (present or removed).
    pub fn is_empty(&self) -> bool {
        self.elements.is_empty()
    }

    /// Adds `value` under `tag`.
    pub fn add(&mut self, value: &Value, tag: &Hlc) {
        let key = to_canonical_string(value);
        let element = self.elements.entry(key).or_insert_with(|| OrElement {
            value: value.clone(),
            adds: BTreeSet::new(),
            removes: BTreeSet::new(),
        });
        element.adds.insert(tag.clone());
    }

    /// Removes `value`: covers the add tags in `observed` that belong to it.
    pub fn remove(&mut self, value: &Value, observed: &[Hlc]) {
        let key = to_canonical_string(value);
        if let Some(element) = self.elements.get_mut(&key) {
            for tag in observed {
                element.removes.insert(tag.clone());
            }
        } else if !observed.is_empty() {
            // The add has not arrived here yet: keep the remove so that it
            // still covers the add when it does.
            self.elements.insert(
                key,
                OrElement {
                    value: value.clone(),
                    adds: BTreeSet::new(),
                    removes: observed.iter().cloned().collect(),
                },
            );
        }
    }

    /// Whether `value` is present.
    pub fn contains(&self, value: &Value) -> bool {
        self.elements
            .get(&to_canonical_string(value))
            .is_some_and(|e| e.live_tags().next().is_some())
    }

    /// The live add tags of `value`: what a remove of it must cover.
    pub fn live_tags(&self, value: &Value) -> Vec<Hlc> {
        self.elements
            .get(&to_canonical_string(value))
            .map(|e| e.live_tags().cloned().collect())
            .unwrap_or_default()
    }

    /// Present elements, in the order of their earliest live add.
    pub fn present_values(&self) -> Vec<Value> {
        let mut present: Vec<(&Hlc, &String, &Value)> = self
            .elements
            .iter()
            .filter_map(|(key, e)| e.live_tags().min().map(|first| (first, key, &e.value)))
            .collect();
        present.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        present.into_iter().map(|(_, _, v)| v.clone()).collect()
    }

    /// Union of both sets' tags.
    pub fn merge(&mut self, other: &OrSet) {
        for element in other.elements.values() {
            self.merge_element(element.clone());
        }
    }

    fn merge_element(&mut self, item: OrElement) {
        let key = to_canonical_string(&item.value);
        match self.elements.get_mut(&key) {
            Some(existing) => {
                existing.adds.extend(item.adds);
                existing.removes.extend(item.removes);
            }
            None => {
                self.elements.insert(key, item);
            }
        }
    }

    fn drop_tags_before(&mut self, cleared: &Hlc) {
        for element in self.elements.values_mut() {
            element.adds.retain(|t| t >= cleared);
            element.removes.retain(|t| t >= cleared);
        }
        self.elements
            .retain(|_, e| !e.adds.is_empty() || !e.removes.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_that_break_the_invariants_do_not_decode() {
        let no_clock = r#"{"fields":{"title":"x"}}"#;
        let err = serde_json::from_str::<DocState>(no_clock).unwrap_err();
        assert!(err.to_string().contains("no clock"), "{err}");
        let both = r#"{"clocks":{"tags":"1-0-a"},"sets":{"tags":[]}}"#;
        assert!(serde_json::from_str::<DocState>(both).is_err());
        let fine = r#"{"fields":{"title":"x"},"clocks":{"title":"1-0-a"}}"#;
        assert!(serde_json::from_str::<DocState>(fine).is_ok());
    }
}
