//! Property tests of the merge rules: the `lww` join is a semilattice, and
//! applying the same set of changes in any order, with any duplication, gives
//! the same document under every policy.
//!
//! Each policy (`lww`, `server_wins`, `append_only`, `manual`, each with a
//! set field) has a test of its own that delivers the server's changes in
//! an arbitrary permutation with arbitrary duplicates; set operations, and
//! `lww` mutations, converge the same way without the server ordering them.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use tandem_protocol::merge::{apply_change, apply_mutation, join};
use tandem_protocol::{
    Change, Collection, CollectionPolicy, DeviceId, DocId, DocState, Document, Hlc, MergeOutcome,
    Mutation, MutationId, Op, Policy, SpaceId,
};

const SET_FIELD: &str = "tags";

fn hlc() -> impl Strategy<Value = Hlc> {
    (0u64..30, 0u32..3, prop::sample::select(vec!["a", "b", "c"]))
        .prop_map(|(ms, c, node)| Hlc::new(ms, c, DeviceId::new(node).unwrap()))
}

fn small_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0i64..4).prop_map(|n| json!(n)),
        Just(Value::Null),
        prop::sample::select(vec!["x", "y"]).prop_map(|s| json!(s)),
    ]
}

fn field_map() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(
        prop::sample::select(vec!["a", "b", "c"]),
        small_value(),
        0..3,
    )
    .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        field_map().prop_map(|fields| Op::Put { fields }),
        field_map().prop_map(|fields| Op::Patch { fields }),
        Just(Op::Delete {}),
        prop::collection::vec((0i64..3).prop_map(|n| json!(n)), 1..3).prop_map(|values| {
            Op::SetAdd {
                field: SET_FIELD.into(),
                values,
            }
        }),
        (
            prop::collection::vec((0i64..3).prop_map(|n| json!(n)), 1..3),
            prop::collection::vec(hlc(), 0..3)
        )
            .prop_map(|(values, observed)| Op::SetRemove {
                field: SET_FIELD.into(),
                values,
                observed
            }),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    (op(), hlc(), prop::option::of(0u64..6)).prop_map(|(op, hlc, base_version)| Mutation {
        mutation_id: MutationId::generate(),
        space: SpaceId::new("personal:u").unwrap(),
        collection: Collection::new("things").unwrap(),
        doc_id: DocId::new("d").unwrap(),
        op,
        base_version,
        device_id: hlc.node.clone(),
        hlc,
        fence: None,
    })
}

fn policy() -> impl Strategy<Value = CollectionPolicy> {
    prop::sample::select(vec![
        Policy::Lww,
        Policy::ServerWins,
        Policy::AppendOnly,
        Policy::Manual,
    ])
    .prop_map(|p| {
        let mut policy = CollectionPolicy::of(p);
        policy.set_fields.insert(SET_FIELD.into());
        policy
    })
}

fn lww_policy() -> CollectionPolicy {
    let mut policy = CollectionPolicy::lww();
    policy.set_fields.insert(SET_FIELD.into());
    policy
}

/// The state left by applying `mutations` in order under `lww`.
fn lww_state(mutations: &[Mutation]) -> DocState {
    let policy = lww_policy();
    let mut doc: Option<Document> = None;
    for (i, m) in mutations.iter().enumerate() {
        if let MergeOutcome::Changed(state) = apply_mutation(doc.as_ref(), m, &policy) {
            doc = Some(Document {
                space: m.space.clone(),
                collection: m.collection.clone(),
                id: m.doc_id.clone(),
                version: Some(i as u64 + 1),
                state,
            });
        }
    }
    doc.map(|d| d.state).unwrap_or_default()
}

/// Runs `mutations` through the server rule, returning the committed
/// changes and the final document.
fn server_log(
    mutations: &[Mutation],
    policy: &CollectionPolicy,
) -> (Vec<Change>, Option<Document>) {
    let mut doc: Option<Document> = None;
    let mut changes = Vec::new();
    let mut rev = 0;
    for m in mutations {
        let mut m = m.clone();
        // Let version-checked writes sometimes hit the current version.
        if m.base_version == Some(0) {
            m.base_version = doc.as_ref().and_then(|d| d.version);
        }
        if let MergeOutcome::Changed(state) = apply_mutation(doc.as_ref(), &m, policy) {
            rev += 1;
            let next = Document {
                space: m.space.clone(),
                collection: m.collection.clone(),
                id: m.doc_id.clone(),
                version: Some(rev),
                state,
            };
            changes.push(Change::from_document(
                &next,
                Some(m.device_id.clone()),
                Some(m.mutation_id),
            ));
            doc = Some(next);
        }
    }
    (changes, doc)
}

/// `policy` with the set field.
fn with_set_field(policy: Policy) -> CollectionPolicy {
    let mut policy = CollectionPolicy::of(policy);
    policy.set_fields.insert(SET_FIELD.into());
    policy
}

/// The indices `0..n` (each once) and `extra` (duplicates), in the order
/// of the random sort `keys`: any permutation of any multiset that holds
/// every index at least once can come out.
fn shuffled_with_duplicates(n: usize, extra: &[prop::sample::Index], keys: &[u64]) -> Vec<usize> {
    let mut indices: Vec<usize> = (0..n).collect();
    if n > 0 {
        indices.extend(extra.iter().map(|i| i.index(n)));
    }
    let mut keyed: Vec<(u64, usize)> = indices
        .into_iter()
        .enumerate()
        .map(|(at, index)| (keys[at % keys.len()].wrapping_add(at as u64), index))
        .collect();
    keyed.sort_unstable();
    keyed.into_iter().map(|(_, index)| index).collect()
}

/// The server's changes of `ms` under `policy`, delivered to a device in
/// a shuffled order with duplicates, leave the device with the server's
/// document.
fn assert_changes_converge(
    policy: &CollectionPolicy,
    ms: &[Mutation],
    extra: &[prop::sample::Index],
    keys: &[u64],
) -> Result<(), TestCaseError> {
    let (changes, server_doc) = server_log(ms, policy);
    let mut device: Option<Document> = None;
    for i in shuffled_with_duplicates(changes.len(), extra, keys) {
        if let Some(next) = apply_change(device.as_ref(), &changes[i], policy) {
            device = Some(next);
        }
    }
    prop_assert_eq!(device, server_doc);
    Ok(())
}

/// Only set operations.
fn set_mutation() -> impl Strategy<Value = Mutation> {
    mutation().prop_filter("a set operation", |m| m.op.is_set_op())
}

/// Applies `mutations` in order under `policy` as a device does.
fn device_state(mutations: &[&Mutation], policy: &CollectionPolicy) -> Option<DocState> {
    let mut doc: Option<Document> = None;
    for (i, m) in mutations.iter().enumerate() {
        if let MergeOutcome::Changed(state) = apply_mutation(doc.as_ref(), m, policy) {
            doc = Some(Document {
                space: m.space.clone(),
                collection: m.collection.clone(),
                id: m.doc_id.clone(),
                version: Some(i as u64 + 1),
                state,
            });
        }
    }
    doc.map(|d| d.state)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn lww_changes_converge_in_any_permutation_with_duplicates(
        ms in prop::collection::vec(mutation(), 1..10),
        extra in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        keys in prop::collection::vec(any::<u64>(), 1..24),
    ) {
        assert_changes_converge(&with_set_field(Policy::Lww), &ms, &extra, &keys)?;
    }

    #[test]
    fn server_wins_changes_converge_in_any_permutation_with_duplicates(
        ms in prop::collection::vec(mutation(), 1..10),
        extra in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        keys in prop::collection::vec(any::<u64>(), 1..24),
    ) {
        assert_changes_converge(&with_set_field(Policy::ServerWins), &ms, &extra, &keys)?;
    }

    #[test]
    fn append_only_changes_converge_in_any_permutation_with_duplicates(
        ms in prop::collection::vec(mutation(), 1..10),
        extra in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        keys in prop::collection::vec(any::<u64>(), 1..24),
    ) {
        assert_changes_converge(&with_set_field(Policy::AppendOnly), &ms, &extra, &keys)?;
    }

    #[test]
    fn manual_changes_converge_in_any_permutation_with_duplicates(
        ms in prop::collection::vec(mutation(), 1..10),
        extra in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        keys in prop::collection::vec(any::<u64>(), 1..24),
    ) {
        assert_changes_converge(&with_set_field(Policy::Manual), &ms, &extra, &keys)?;
    }

    #[test]
    fn set_operations_converge_in_any_permutation_with_duplicates(
        policy in policy(),
        ms in prop::collection::vec(set_mutation(), 1..10),
        extra in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        keys in prop::collection::vec(any::<u64>(), 1..24),
    ) {
        // Set operations are not ordered by the server: a device applying
        // them in any order, some twice, ends where the server's order ends.
        let in_order: Vec<&Mutation> = ms.iter().collect();
        let delivered: Vec<&Mutation> = shuffled_with_duplicates(ms.len(), &extra, &keys)
            .into_iter()
            .map(|i| &ms[i])
            .collect();
        prop_assert_eq!(device_state(&delivered, &policy), device_state(&in_order, &policy));
    }

    #[test]
    fn lww_mutations_converge_in_any_permutation_with_duplicates(
        ms in prop::collection::vec(mutation(), 1..10),
        extra in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        keys in prop::collection::vec(any::<u64>(), 1..24),
    ) {
        let policy = lww_policy();
        let in_order: Vec<&Mutation> = ms.iter().collect();
        let delivered: Vec<&Mutation> = shuffled_with_duplicates(ms.len(), &extra, &keys)
            .into_iter()
            .map(|i| &ms[i])
            .collect();
        prop_assert_eq!(device_state(&delivered, &policy), device_state(&in_order, &policy));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn lww_join_is_commutative(a in prop::collection::vec(mutation(), 0..6), b in prop::collection::vec(mutation(), 0..6)) {
        let (a, b) = (lww_state(&a), lww_state(&b));
        prop_assert_eq!(join(&a, &b), join(&b, &a));
    }

    #[test]
    fn lww_join_is_associative(
        a in prop::collection::vec(mutation(), 0..5),
        b in prop::collection::vec(mutation(), 0..5),
        c in prop::collection::vec(mutation(), 0..5),
    ) {
        let (a, b, c) = (lww_state(&a), lww_state(&b), lww_state(&c));
        prop_assert_eq!(join(&join(&a, &b), &c), join(&a, &join(&b, &c)));
    }

    #[test]
    fn lww_join_is_idempotent(a in prop::collection::vec(mutation(), 0..8)) {
        let a = lww_state(&a);
        prop_assert_eq!(join(&a, &a), a);
    }

    #[test]
    fn lww_mutations_commute(ms in prop::collection::vec(mutation(), 0..8).prop_shuffle(), seed in any::<u64>()) {
        // The same mutations applied in another order give the same state.
        let mut shuffled = ms.clone();
        let len = shuffled.len().max(1);
        shuffled.rotate_left((seed as usize) % len);
        shuffled.reverse();
        let one = lww_state(&ms);
        let two = lww_state(&shuffled);
        prop_assert_eq!(one, two);
    }

    #[test]
    fn changes_converge_in_any_order_with_duplicates(
        policy in policy(),
        ms in prop::collection::vec(mutation(), 1..10),
        order in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        rotation in any::<prop::sample::Index>(),
    ) {
        let (changes, server_doc) = server_log(&ms, &policy);
        // Every change at least once, rotated and reversed, plus random
        // duplicates interleaved.
        let mut delivery: Vec<&Change> = changes.iter().collect();
        if !delivery.is_empty() {
            let k = rotation.index(delivery.len());
            delivery.rotate_left(k);
            delivery.reverse();
            for (i, idx) in order.iter().enumerate() {
                let dup = &changes[idx.index(changes.len())];
                let at = (i * 7) % (delivery.len() + 1);
                delivery.insert(at, dup);
            }
        }
        let mut device: Option<Document> = None;
        for change in delivery {
            if let Some(next) = apply_change(device.as_ref(), change, &policy) {
                device = Some(next);
            }
        }
        prop_assert_eq!(device, server_doc);
    }
}
