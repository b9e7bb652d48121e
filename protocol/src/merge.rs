//! Merge rules as pure functions.
//!
//! - [`apply_mutation`] is the server's rule: it decides what a mutation does
//!   to the committed document under the collection's policy.
//! - [`apply_local`] is the device's optimistic rule for its local view: the
//!   same as the server's for `lww` and set fields, and "my write, as if it
//!   will be accepted" for the version-checked policies (the server's answer
//!   corrects it later).
//! - [`apply_change`] applies a committed change the server sent. It is
//!   idempotent and insensitive to order for every policy: `lww` joins states
//!   (a CRDT join), the others keep the highest revision.
//! - [`join`] is the `lww` state join: commutative, associative, idempotent.

use serde_json::Value;

use crate::canonical::to_canonical_string;
use crate::document::{DocState, Document};
use crate::hlc::Hlc;
use crate::mutation::{Mutation, Op};
use crate::policy::{CollectionPolicy, Policy};
use crate::wire::RejectCode;

/// What the server's rule decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeOutcome {
    /// The document's new state.
    Changed(DocState),
    /// The mutation is accepted but changes nothing (an older `lww` write, or
    /// an `append_only` create of an id that exists).
    Unchanged,
    /// The mutation's `base_version` is not the document's version (the
    /// version-checked policies): the server's document wins.
    Conflict,
    /// The mutation is not allowed.
    Rejected(Rejection),
}

/// Why a mutation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// A stable code.
    pub code: RejectCode,
    /// A sentence for people.
    pub reason: String,
    /// The field at fault, if one is.
    pub field: Option<String>,
}

impl Rejection {
    /// A rejection with `code` and `reason`.
    pub fn new(code: RejectCode, reason: impl Into<String>) -> Rejection {
        Rejection {
            code,
            reason: reason.into(),
            field: None,
        }
    }

    /// The same rejection, naming `field`.
    pub fn with_field(mut self, field: impl Into<String>) -> Rejection {
        self.field = Some(field.into());
        self
    }
}

/// Checks a mutation against its collection's policy, before any state is
/// consulted.
pub fn validate(m: &Mutation, policy: &CollectionPolicy) -> Result<(), Rejection> {
    match &m.op {
        Op::Put { fields } | Op::Patch { fields } => {
            for name in fields.keys() {
                if name.is_empty() {
                    return Err(Rejection::new(
                        RejectCode::InvalidMutation,
                        "field names must not be empty",
                    ));
                }
                if policy.is_set_field(name) {
                    return Err(Rejection::new(
                        RejectCode::SetFieldWrite,
                        format!("{name} is a set field: change it with set_add and set_remove"),
                    )
                    .with_field(name));
                }
            }
            if policy.policy == Policy::AppendOnly && matches!(m.op, Op::Patch { .. }) {
                return Err(update_not_allowed(m));
            }
        }
        Op::Delete {} => {
            if policy.policy == Policy::AppendOnly {
                return Err(update_not_allowed(m));
            }
        }
        Op::SetAdd { field, values } | Op::SetRemove { field, values, .. } => {
            if !policy.is_set_field(field) {
                return Err(Rejection::new(
                    RejectCode::NotASetField,
                    format!("{field} is not declared as a set field of {}", m.collection),
                )
                .with_field(field));
            }
            if values.is_empty() {
                return Err(Rejection::new(
                    RejectCode::InvalidMutation,
                    format!("{} needs at least one value", m.op.name()),
                )
                .with_field(field));
            }
        }
    }
    Ok(())
}

fn update_not_allowed(m: &Mutation) -> Rejection {
    Rejection::new(
        RejectCode::UpdateNotAllowed,
        format!(
            "{} is append_only: documents cannot be changed with {}",
            m.collection,
            m.op.name()
        ),
    )
}

/// The server's rule: what `m` does to `current` (the committed document, if
/// any) under `policy`.
pub fn apply_mutation(
    current: Option<&Document>,
    m: &Mutation,
    policy: &CollectionPolicy,
) -> MergeOutcome {
    if let Err(rejection) = validate(m, policy) {
        return MergeOutcome::Rejected(rejection);
    }
    let base = current.map(|d| &d.state);
    if m.op.is_set_op() {
        return changed_or_unchanged(base, lww_apply(base, m));
    }
    match policy.policy {
        Policy::Lww => changed_or_unchanged(base, lww_apply(base, m)),
        Policy::AppendOnly => match current {
            Some(_) => MergeOutcome::Unchanged,
            None => MergeOutcome::Changed(lww_apply(None, m)),
        },
        Policy::ServerWins | Policy::Manual => {
            if m.base_version != current.and_then(|d| d.version) {
                MergeOutcome::Conflict
            } else {
                changed_or_unchanged(base, force_apply(base, m))
            }
        }
    }
}

/// The device's rule for its local view: `m` applied to `current` as if the
/// server will accept it. `Ok(None)` means the view does not change.
pub fn apply_local(
    current: Option<&DocState>,
    m: &Mutation,
    policy: &CollectionPolicy,
) -> Result<Option<DocState>, Rejection> {
    validate(m, policy)?;
    let next = if m.op.is_set_op() {
        lww_apply(current, m)
    } else {
        match policy.policy {
            Policy::Lww => lww_apply(current, m),
            Policy::AppendOnly => match current {
                Some(_) => return Ok(None),
                None => lww_apply(None, m),
            },
            Policy::ServerWins | Policy::Manual => force_apply(current, m),
        }
    };
    Ok(if current == Some(&next) {
        None
    } else {
        Some(next)
    })
}

/// Applies a committed change to the device's confirmed copy. Returns the new
/// document, or `None` if nothing changed (a duplicate or an older change).
pub fn apply_change(
    current: Option<&Document>,
    change: &crate::change::Change,
    policy: &CollectionPolicy,
) -> Option<Document> {
    let Some(current) = current else {
        let mut document = change.to_document();
        if policy.policy == Policy::Lww {
            // Normalize (drop what the state's own clear stamp hides) so
            // the result equals what a join would give in any order.
            document.state = join(&DocState::default(), &change.state);
        }
        return Some(document);
    };
    if policy.policy == Policy::Lww {
        let state = join(&current.state, &change.state);
        let version = current.version.max(Some(change.rev));
        if state == current.state && version == current.version {
            return None;
        }
        Some(Document {
            version,
            state,
            ..current.clone()
        })
    } else if current.version >= Some(change.rev) {
        None
    } else {
        Some(change.to_document())
    }
}

/// The `lww` join of two states.
pub fn join(a: &DocState, b: &DocState) -> DocState {
    let mut out = a.clone();
    for (name, b_clock) in &b.clocks {
        let b_value = b.fields.get(name);
        let b_wins = match out.clocks.get(name) {
            None => true,
            Some(a_clock) => {
                register_key(b_clock, b_value) > register_key(a_clock, out.fields.get(name))
            }
        };
        if b_wins {
            out.clocks.insert(name.clone(), b_clock.clone());
            match b_value {
                Some(v) => out.fields.insert(name.clone(), v.clone()),
                None => out.fields.remove(name),
            };
        }
    }
    for (name, set) in &b.sets {
        out.sets.entry(name.clone()).or_default().merge(set);
    }
    out.alive_at = max_stamp(&out.alive_at, &b.alive_at);
    out.deleted_at = max_stamp(&out.deleted_at, &b.deleted_at);
    out.cleared_at = max_stamp(&out.cleared_at, &b.cleared_at);
    out.compact();
    out
}

/// Registers are ordered by stamp; an exact tie (which real clocks never
/// produce, since stamps carry the device id) is broken by the canonical text
/// of the value so that the join stays commutative whatever the input.
fn register_key<'a>(clock: &'a Hlc, value: Option<&Value>) -> (&'a Hlc, Option<String>) {
    (clock, value.map(to_canonical_string))
}

fn max_stamp(a: &Option<Hlc>, b: &Option<Hlc>) -> Option<Hlc> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y).clone()),
        (x, y) => x.clone().or_else(|| y.clone()),
    }
}

fn changed_or_unchanged(base: Option<&DocState>, next: DocState) -> MergeOutcome {
    if base == Some(&next) {
        MergeOutcome::Unchanged
    } else {
        MergeOutcome::Changed(next)
    }
}

/// The state fragment a mutation writes, stamped with its clock.
fn delta(m: &Mutation) -> DocState {
    let t = m.hlc.clone();
    let mut d = DocState::default();
    match &m.op {
        Op::Put { fields } => {
            for (name, value) in fields {
                d.clocks.insert(name.clone(), t.clone());
                if !value.is_null() {
                    d.fields.insert(name.clone(), value.clone());
                }
            }
            d.alive_at = Some(t.clone());
            d.cleared_at = Some(t);
        }
        Op::Patch { fields } => {
            for (name, value) in fields {
                d.clocks.insert(name.clone(), t.clone());
                if !value.is_null() {
                    d.fields.insert(name.clone(), value.clone());
                }
            }
            d.alive_at = Some(t);
        }
        Op::Delete {} => {
            d.deleted_at = Some(t.clone());
            d.cleared_at = Some(t);
        }
        Op::SetAdd { field, values } => {
            let set = d.sets.entry(field.clone()).or_default();
            for value in values {
                set.add(value, &t);
            }
            d.alive_at = Some(t);
        }
        Op::SetRemove {
            field,
            values,
            observed,
        } => {
            let set = d.sets.entry(field.clone()).or_default();
            for value in values {
                set.remove(value, observed);
            }
        }
    }
    d
}

fn lww_apply(base: Option<&DocState>, m: &Mutation) -> DocState {
    let delta = delta(m);
    match base {
        Some(base) => join(base, &delta),
        None => join(&DocState::default(), &delta),
    }
}

/// The version-checked policies have already serialized the write against
/// the committed version, so it is applied as given, whatever the stamps say
/// (a device whose clock runs behind must not lose a write it was allowed to
/// make).
fn force_apply(base: Option<&DocState>, m: &Mutation) -> DocState {
    let t = m.hlc.clone();
    let mut s = base.cloned().unwrap_or_default();
    match &m.op {
        Op::Put { fields } => {
            s.fields.clear();
            s.clocks.clear();
            s.sets.clear();
            for (name, value) in fields {
                s.clocks.insert(name.clone(), t.clone());
                if !value.is_null() {
                    s.fields.insert(name.clone(), value.clone());
                }
            }
            s.alive_at = Some(t);
            s.deleted_at = None;
        }
        Op::Patch { fields } => {
            if s.is_deleted() {
                s = DocState::default();
            }
            for (name, value) in fields {
                s.clocks.insert(name.clone(), t.clone());
                if value.is_null() {
                    s.fields.remove(name);
                } else {
                    s.fields.insert(name.clone(), value.clone());
                }
            }
            s.alive_at = Some(t);
        }
        Op::Delete {} => {
            s = DocState {
                deleted_at: Some(t),
                ..DocState::default()
            };
        }
        Op::SetAdd { .. } | Op::SetRemove { .. } => return lww_apply(base, m),
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::Change;
    use crate::ids::{Collection, DeviceId, DocId, MutationId, SpaceId};
    use serde_json::{Map, json};

    fn dev(s: &str) -> DeviceId {
        DeviceId::new(s).unwrap()
    }

    fn at(ms: u64, node: &str) -> Hlc {
        Hlc::new(ms, 0, dev(node))
    }

    fn fields(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn mutation(op: Op, hlc: Hlc, base_version: Option<u64>) -> Mutation {
        Mutation {
            mutation_id: MutationId::generate(),
            space: SpaceId::new("personal:u").unwrap(),
            collection: Collection::new("things").unwrap(),
            doc_id: DocId::new("d1").unwrap(),
            op,
            base_version,
            device_id: hlc.node.clone(),
            hlc,
            fence: None,
        }
    }

    fn doc(state: DocState, version: u64) -> Document {
        Document {
            space: SpaceId::new("personal:u").unwrap(),
            collection: Collection::new("things").unwrap(),
            id: DocId::new("d1").unwrap(),
            version: Some(version),
            state,
        }
    }

    fn changed(outcome: MergeOutcome) -> DocState {
        match outcome {
            MergeOutcome::Changed(s) => s,
            other => panic!("expected a change, got {other:?}"),
        }
    }

    #[test]
    fn lww_keeps_the_later_write_per_field() {
        let lww = CollectionPolicy::lww();
        let s1 = changed(apply_mutation(
            None,
            &mutation(
                Op::Put {
                    fields: fields(json!({"a": 1, "b": 1})),
                },
                at(10, "x"),
                None,
            ),
            &lww,
        ));
        let d1 = doc(s1, 1);
        let s2 = changed(apply_mutation(
            Some(&d1),
            &mutation(
                Op::Patch {
                    fields: fields(json!({"a": 2})),
                },
                at(20, "y"),
                None,
            ),
            &lww,
        ));
        let d2 = doc(s2, 2);
        // An older write to b loses to nothing newer, so it applies; an older
        // write to a loses.
        let s3 = changed(apply_mutation(
            Some(&d2),
            &mutation(
                Op::Patch {
                    fields: fields(json!({"a": 0, "b": 5})),
                },
                at(15, "z"),
                None,
            ),
            &lww,
        ));
        assert_eq!(Value::Object(doc(s3, 3).fields()), json!({"a": 2, "b": 5}));
    }

    #[test]
    fn a_put_replaces_older_fields_whatever_the_order() {
        let lww = CollectionPolicy::lww();
        let patch = mutation(
            Op::Patch {
                fields: fields(json!({"y": 1})),
            },
            at(4, "b"),
            None,
        );
        let put = mutation(
            Op::Put {
                fields: fields(json!({"x": 1})),
            },
            at(5, "a"),
            None,
        );
        let one = lww_apply(Some(&lww_apply(None, &patch)), &put);
        let two = lww_apply(Some(&lww_apply(None, &put)), &patch);
        assert_eq!(one, two);
        assert_eq!(Value::Object(one.visible_fields()), json!({"x": 1}));
        let _ = lww;
    }

    #[test]
    fn delete_then_later_patch_revives_with_only_the_new_fields() {
        let lww = CollectionPolicy::lww();
        let put = mutation(
            Op::Put {
                fields: fields(json!({"a": 1})),
            },
            at(1, "a"),
            None,
        );
        let del = mutation(Op::Delete {}, at(2, "a"), None);
        let patch = mutation(
            Op::Patch {
                fields: fields(json!({"b": 2})),
            },
            at(3, "b"),
            None,
        );
        let s = lww_apply(Some(&lww_apply(Some(&lww_apply(None, &put)), &del)), &patch);
        assert!(!s.is_deleted());
        assert_eq!(Value::Object(s.visible_fields()), json!({"b": 2}));
        let deleted = lww_apply(Some(&lww_apply(None, &put)), &del);
        assert!(deleted.is_deleted());
        assert!(deleted.visible_fields().is_empty());
        let _ = lww;
    }

    #[test]
    fn server_wins_checks_the_base_version() {
        let sw = CollectionPolicy::of(Policy::ServerWins);
        let create = mutation(
            Op::Put {
                fields: fields(json!({"n": 1})),
            },
            at(1, "a"),
            None,
        );
        let d1 = doc(changed(apply_mutation(None, &create, &sw)), 7);
        let stale = mutation(
            Op::Patch {
                fields: fields(json!({"n": 2})),
            },
            at(9, "b"),
            Some(6),
        );
        assert_eq!(
            apply_mutation(Some(&d1), &stale, &sw),
            MergeOutcome::Conflict
        );
        let fresh = mutation(
            Op::Patch {
                fields: fields(json!({"n": 3})),
            },
            at(0, "b"),
            Some(7),
        );
        let s = changed(apply_mutation(Some(&d1), &fresh, &sw));
        // Applied although its clock is behind: the version check decided.
        assert_eq!(s.visible_fields()["n"], json!(3));
        // Creating a document that exists is a conflict too.
        assert_eq!(
            apply_mutation(Some(&d1), &create, &sw),
            MergeOutcome::Conflict
        );
    }

    #[test]
    fn append_only_creates_once_and_refuses_updates() {
        let ao = CollectionPolicy::of(Policy::AppendOnly);
        let create = mutation(
            Op::Put {
                fields: fields(json!({"t": "hi"})),
            },
            at(1, "a"),
            None,
        );
        let d1 = doc(changed(apply_mutation(None, &create, &ao)), 1);
        let again = mutation(
            Op::Put {
                fields: fields(json!({"t": "other"})),
            },
            at(2, "b"),
            None,
        );
        assert_eq!(
            apply_mutation(Some(&d1), &again, &ao),
            MergeOutcome::Unchanged
        );
        let patch = mutation(
            Op::Patch {
                fields: fields(json!({"t": "x"})),
            },
            at(3, "a"),
            None,
        );
        let MergeOutcome::Rejected(r) = apply_mutation(Some(&d1), &patch, &ao) else {
            panic!("patch of an append_only document must be rejected")
        };
        assert_eq!(r.code, RejectCode::UpdateNotAllowed);
        let MergeOutcome::Rejected(r) =
            apply_mutation(Some(&d1), &mutation(Op::Delete {}, at(4, "a"), None), &ao)
        else {
            panic!("delete of an append_only document must be rejected")
        };
        assert_eq!(r.code, RejectCode::UpdateNotAllowed);
    }

    #[test]
    fn sets_are_add_wins_and_observed_remove() {
        let mut policy = CollectionPolicy::of(Policy::AppendOnly);
        policy.set_fields.insert("read_by".into());
        let add_a = mutation(
            Op::SetAdd {
                field: "read_by".into(),
                values: vec![json!("phone")],
            },
            at(1, "a"),
            None,
        );
        let s1 = lww_apply(None, &add_a);
        let observed = s1.sets["read_by"].live_tags(&json!("phone"));
        assert_eq!(observed, vec![at(1, "a")]);
        // A concurrent add (not observed by the remove) survives the remove.
        let add_b = mutation(
            Op::SetAdd {
                field: "read_by".into(),
                values: vec![json!("phone")],
            },
            at(2, "b"),
            None,
        );
        let remove = mutation(
            Op::SetRemove {
                field: "read_by".into(),
                values: vec![json!("phone")],
                observed,
            },
            at(3, "a"),
            None,
        );
        let both = lww_apply(Some(&lww_apply(Some(&s1), &add_b)), &remove);
        assert!(both.sets["read_by"].contains(&json!("phone")));
        let only_observed = lww_apply(Some(&s1), &remove);
        assert!(!only_observed.sets["read_by"].contains(&json!("phone")));
        assert_eq!(only_observed.visible_fields()["read_by"], json!([]));
        assert!(apply_mutation(None, &add_a, &policy) != MergeOutcome::Unchanged);
    }

    #[test]
    fn set_fields_are_only_changed_by_set_ops() {
        let mut policy = CollectionPolicy::lww();
        policy.set_fields.insert("tags".into());
        let put = mutation(
            Op::Put {
                fields: fields(json!({"tags": ["x"]})),
            },
            at(1, "a"),
            None,
        );
        let MergeOutcome::Rejected(r) = apply_mutation(None, &put, &policy) else {
            panic!()
        };
        assert_eq!(
            (r.code, r.field.as_deref()),
            (RejectCode::SetFieldWrite, Some("tags"))
        );
        let add = mutation(
            Op::SetAdd {
                field: "other".into(),
                values: vec![json!(1)],
            },
            at(1, "a"),
            None,
        );
        let MergeOutcome::Rejected(r) = apply_mutation(None, &add, &policy) else {
            panic!()
        };
        assert_eq!(r.code, RejectCode::NotASetField);
    }

    #[test]
    fn changes_apply_idempotently_by_revision() {
        let sw = CollectionPolicy::of(Policy::ServerWins);
        let mk = |n: i64, rev: u64| {
            let s = lww_apply(
                None,
                &mutation(
                    Op::Put {
                        fields: fields(json!({"n": n})),
                    },
                    at(rev, "a"),
                    None,
                ),
            );
            Change::from_document(&doc(s, rev), None, None)
        };
        let c5 = mk(5, 5);
        let c3 = mk(3, 3);
        let d = apply_change(None, &c5, &sw).unwrap();
        assert_eq!(apply_change(Some(&d), &c3, &sw), None);
        assert_eq!(apply_change(Some(&d), &c5, &sw), None);
    }

    #[test]
    fn local_view_is_optimistic_for_version_checked_policies() {
        let sw = CollectionPolicy::of(Policy::ServerWins);
        let base = lww_apply(
            None,
            &mutation(
                Op::Put {
                    fields: fields(json!({"n": 1})),
                },
                at(100, "b"),
                None,
            ),
        );
        let mine = mutation(
            Op::Patch {
                fields: fields(json!({"n": 2})),
            },
            at(1, "a"),
            Some(3),
        );
        let view = apply_local(Some(&base), &mine, &sw).unwrap().unwrap();
        assert_eq!(view.visible_fields()["n"], json!(2));
    }

    #[test]
    fn a_first_change_is_normalized_like_a_join() {
        // A state whose own clear stamp hides a field gives the same
        // document whether it arrives first or second.
        let lww = CollectionPolicy::lww();
        let put = lww_apply(
            None,
            &mutation(
                Op::Put {
                    fields: fields(json!({"a": 1})),
                },
                at(1, "a"),
                None,
            ),
        );
        let mut stale = put.clone();
        stale.cleared_at = Some(at(5, "b"));
        stale.deleted_at = Some(at(5, "b"));
        let hidden = Change::from_document(&doc(stale, 2), None, None);
        let older = Change::from_document(&doc(put, 1), None, None);
        let first = apply_change(None, &hidden, &lww).unwrap();
        assert!(
            first.state.fields.is_empty(),
            "hidden registers are dropped at once"
        );
        assert!(first.state.clocks.is_empty());
        let one = apply_change(Some(&first), &older, &lww).unwrap_or(first);
        let two = apply_change(None, &older, &lww).unwrap();
        let two = apply_change(Some(&two), &hidden, &lww).unwrap();
        assert_eq!(one, two);
    }
}
