//! The outbox against a reference model: random sequences of what the app
//! and the sync engine do to it (writes, sends, acks, refusals, transient
//! failures, retries, discards, dropped connections, restarts, the cursor
//! moving on, time passing) run on a real store in a temporary directory
//! and on a plain in-memory list of entries, and after every step
//! everything the outbox shows must be the same in both: the entries in
//! order with their states, attempts and failure reasons, the counts,
//! what may be sent (returned by each send, in order, with its attempt
//! count), and when the next retry is due.
//!
//! The model states the rules of `outbox.rs` directly: an entry may be
//! sent when queued, or retrying and due, unless an earlier entry of its
//! document is retrying and not yet due, or (in a version-checked
//! collection, for anything but a set operation) an earlier entry of its
//! document is neither failed nor acknowledged; a failed entry holds back
//! nothing; an acknowledgement in a version-checked collection becomes the
//! `base_version` of the later entries written on top of it; an
//! acknowledged entry is never sent again and leaves when the cursor
//! reaches its revision; a dropped connection and a restart put
//! unacknowledged in-flight entries back in the queue.

use std::path::Path;

use proptest::prelude::*;
use serde_json::json;
use tandem_protocol::{Collection, CollectionPolicy, DocId, Mutation, MutationId, Policy, SpaceId};

use super::OutboxState;
use crate::document::DocRef;
use crate::store::test_support::open_store;
use crate::store::{BatchLimit, PageEnd, Resync, Store, Write};

/// Documents the writes go to: few, so entries of one document pile up.
/// The first [`LWW_DOCS`] are in `tasks` (`lww`), the rest in `notes`
/// (`server_wins`, version-checked).
const DOCS: usize = 5;
const LWW_DOCS: usize = 3;

/// The set field of both collections.
const SET_FIELD: &str = "tags";

/// Transient failures before an entry fails for good (the engine's
/// `max_attempts`, small so the limit is reached).
const MAX_ATTEMPTS: u32 = 3;

#[derive(Debug, Clone, Copy)]
enum WriteKind {
    Put,
    Patch,
    Delete,
    SetAdd,
}

/// One step. `pick` chooses among the entries the step applies to.
#[derive(Debug, Clone)]
enum Step {
    /// The app writes a document.
    Write { doc: usize, kind: WriteKind },
    /// The engine takes what may be sent, up to `limit`.
    Send { limit: usize },
    /// The server acknowledges an in-flight entry (`applied`).
    Ack { pick: usize },
    /// The server answers an acknowledged entry again (`duplicate`).
    AckAgain { pick: usize },
    /// The server refuses an in-flight entry for good.
    Reject { pick: usize },
    /// A send of an in-flight entry fails in a way that may pass.
    Transient { pick: usize, delay_ms: u64 },
    /// The connection drops.
    Disconnect,
    /// The app retries an entry (only a failed one changes).
    Retry { pick: usize },
    /// The app discards an entry.
    Discard { pick: usize },
    /// The app is killed and opened again on the same database.
    Restart,
    /// Time passes.
    Advance { ms: u64 },
    /// A page moves the space's cursor forward by up to `by` revisions.
    Confirm { by: u64 },
}

fn step() -> impl Strategy<Value = Step> {
    let kind = prop_oneof![
        Just(WriteKind::Put),
        Just(WriteKind::Patch),
        Just(WriteKind::Delete),
        Just(WriteKind::SetAdd)
    ];
    prop_oneof![
        5 => (0..DOCS, kind).prop_map(|(doc, kind)| Step::Write { doc, kind }),
        3 => (1usize..5).prop_map(|limit| Step::Send { limit }),
        2 => any::<usize>().prop_map(|pick| Step::Ack { pick }),
        1 => any::<usize>().prop_map(|pick| Step::AckAgain { pick }),
        1 => any::<usize>().prop_map(|pick| Step::Reject { pick }),
        2 => (any::<usize>(), 1u64..2_000).prop_map(|(pick, delay_ms)| Step::Transient { pick, delay_ms }),
        1 => Just(Step::Disconnect),
        1 => any::<usize>().prop_map(|pick| Step::Retry { pick }),
        1 => any::<usize>().prop_map(|pick| Step::Discard { pick }),
        1 => Just(Step::Restart),
        2 => (1u64..1_500).prop_map(|ms| Step::Advance { ms }),
        1 => (0u64..4).prop_map(|by| Step::Confirm { by }),
    ]
}

/// An entry's state in the model; `acked_rev` is kept beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ModelState {
    Queued,
    InFlight,
    Retrying { at_ms: u64 },
    Failed { reason: String },
}

#[derive(Debug, Clone)]
struct ModelEntry {
    id: MutationId,
    doc: usize,
    state: ModelState,
    /// Failed sends so far (reset by the app's retry).
    attempt: u32,
    /// The revision the server acknowledged it at.
    acked_rev: Option<u64>,
    /// The version the write was made on.
    base_version: Option<u64>,
    /// A set operation (never waits for earlier entries to be
    /// acknowledged, and keeps its base).
    set_op: bool,
}

impl ModelEntry {
    /// Sent only once every earlier entry of its document is acknowledged
    /// or failed.
    fn waits_for_acks(&self) -> bool {
        self.doc >= LWW_DOCS && !self.set_op
    }
}

#[derive(Debug, Default)]
struct Model {
    /// In seq order.
    entries: Vec<ModelEntry>,
    now_ms: u64,
    /// The space's cursor.
    cursor: u64,
    /// The revision the server gives the next acknowledged entry.
    next_rev: u64,
}

impl Model {
    fn new() -> Model {
        Model {
            now_ms: 1_000,
            next_rev: 1,
            ..Model::default()
        }
    }

    /// The entries that may be sent now, in order.
    fn sendable(&self) -> Vec<usize> {
        let now = self.now_ms;
        (0..self.entries.len())
            .filter(|&i| {
                let e = &self.entries[i];
                let ready = match e.state {
                    ModelState::Queued => true,
                    ModelState::Retrying { at_ms } => at_ms <= now,
                    _ => false,
                };
                let held_back = self.entries[..i].iter().any(|earlier| {
                    earlier.doc == e.doc
                        && (matches!(earlier.state, ModelState::Retrying { at_ms } if at_ms > now)
                            || (e.waits_for_acks()
                                && !matches!(earlier.state, ModelState::Failed { .. })
                                && earlier.acked_rev.is_none()))
                });
                ready && !held_back
            })
            .collect()
    }

    /// The in-flight entries the server has not answered yet.
    fn unanswered(&self) -> Vec<usize> {
        (0..self.entries.len())
            .filter(|&i| {
                self.entries[i].state == ModelState::InFlight && self.entries[i].acked_rev.is_none()
            })
            .collect()
    }

    fn requeue(&mut self) -> usize {
        let mut n = 0;
        for e in &mut self.entries {
            if e.state == ModelState::InFlight && e.acked_rev.is_none() {
                e.state = ModelState::Queued;
                n += 1;
            }
        }
        n
    }

    /// The base of a new write of `doc`. No page here carries a change,
    /// so views have no version; in a version-checked collection a write
    /// made on top of an acknowledged entry is based on its revision.
    fn base_for(&self, doc: usize) -> Option<u64> {
        if doc < LWW_DOCS {
            return None;
        }
        self.entries
            .iter()
            .filter(|e| e.doc == doc && !matches!(e.state, ModelState::Failed { .. }))
            .filter_map(|e| e.acked_rev)
            .max()
    }

    /// Entry `i` is acknowledged at `rev`: in a version-checked
    /// collection the later entries written on top of it (same base) take
    /// `rev` as their base.
    fn acknowledge(&mut self, i: usize, rev: u64) {
        let acked = self.entries[i].clone();
        if acked.doc >= LWW_DOCS {
            for later in &mut self.entries[i + 1..] {
                if later.doc == acked.doc
                    && !matches!(later.state, ModelState::Failed { .. })
                    && later.acked_rev.is_none()
                    && !later.set_op
                    && later.base_version == acked.base_version
                {
                    later.base_version = Some(rev);
                }
            }
        }
        if self.cursor >= rev {
            self.entries.remove(i);
        } else {
            self.entries[i].acked_rev = Some(rev);
        }
    }

    /// What `pending_mutations` must list: id, document, state, base.
    fn listed(&self) -> Vec<(String, String, OutboxState, Option<u64>)> {
        self.entries
            .iter()
            .map(|e| {
                let state = match &e.state {
                    ModelState::Queued => OutboxState::Queued,
                    ModelState::InFlight => OutboxState::InFlight,
                    ModelState::Retrying { at_ms } => OutboxState::Retrying {
                        attempt: e.attempt,
                        next_attempt_at_ms: *at_ms,
                    },
                    ModelState::Failed { reason } => OutboxState::Failed {
                        reason: reason.clone(),
                    },
                };
                (e.id.to_string(), doc_name(e.doc), state, e.base_version)
            })
            .collect()
    }
}

fn space() -> SpaceId {
    SpaceId::new("personal:alice").unwrap()
}

fn doc_name(doc: usize) -> String {
    format!("d{doc}")
}

fn collection_of(doc: usize) -> Collection {
    Collection::new(if doc < LWW_DOCS { "tasks" } else { "notes" }).unwrap()
}

fn doc_ref(doc: usize) -> DocRef {
    DocRef {
        space: space(),
        collection: collection_of(doc),
        id: DocId::new(doc_name(doc)).unwrap(),
    }
}

/// A real store with both collections' policies.
fn open(dir: &Path) -> Store {
    let store = open_store(dir);
    for (doc, policy) in [(0, Policy::Lww), (LWW_DOCS, Policy::ServerWins)] {
        let mut policy = CollectionPolicy::of(policy);
        policy.set_fields.insert(SET_FIELD.into());
        store.set_policy(&collection_of(doc), &policy).unwrap();
    }
    store
}

/// The pick-th of `candidates`, if there are any.
fn choose(candidates: &[usize], pick: usize) -> Option<usize> {
    (!candidates.is_empty()).then(|| candidates[pick % candidates.len()])
}

/// Runs `steps` on a real store in `dir` and on the model, comparing after
/// each.
fn run(dir: &Path, steps: &[Step]) {
    let mut store = open(dir);
    let mut model = Model::new();
    let mut written = 0u64;
    for (n, step) in steps.iter().enumerate() {
        apply(&mut store, &mut model, dir, step, &mut written);
        compare(&store, &model, n, step);
    }
    store.close();
}

fn apply(store: &mut Store, model: &mut Model, dir: &Path, step: &Step, written: &mut u64) {
    let now = model.now_ms;
    match *step {
        Step::Write { doc, kind } => {
            *written += 1;
            let n = *written;
            let write = match kind {
                WriteKind::Put => Write::Put(json!({ "n": n }).as_object().unwrap().clone()),
                WriteKind::Patch => Write::Patch(json!({ "m": n }).as_object().unwrap().clone()),
                WriteKind::Delete => Write::Delete,
                WriteKind::SetAdd => Write::SetAdd {
                    field: SET_FIELD.into(),
                    values: vec![json!(n)],
                },
            };
            store.write(&doc_ref(doc), write).unwrap();
            let last = store.pending_mutations().unwrap().pop().unwrap();
            assert_eq!(last.doc_id, doc_name(doc), "a write appends its entry last");
            model.entries.push(ModelEntry {
                id: last.mutation_id.parse().unwrap(),
                doc,
                state: ModelState::Queued,
                attempt: 0,
                acked_rev: None,
                base_version: model.base_for(doc),
                set_op: matches!(kind, WriteKind::SetAdd),
            });
        }
        Step::Send { limit } => {
            let taken = store
                .take_sendable(BatchLimit::mutations(limit), now)
                .unwrap();
            let expected: Vec<usize> = model.sendable().into_iter().take(limit).collect();
            let taken_view: Vec<_> = taken
                .iter()
                .map(|e| {
                    (
                        e.mutation.mutation_id.to_string(),
                        e.attempt,
                        e.state.clone(),
                        e.mutation.base_version,
                    )
                })
                .collect();
            let expected_view: Vec<_> = expected
                .iter()
                .map(|&i| {
                    let e = &model.entries[i];
                    (
                        e.id.to_string(),
                        e.attempt,
                        OutboxState::InFlight,
                        e.base_version,
                    )
                })
                .collect();
            assert_eq!(taken_view, expected_view, "what is sent, in order");
            for i in expected {
                model.entries[i].state = ModelState::InFlight;
            }
        }
        Step::Ack { pick } => {
            if let Some(i) = choose(&model.unanswered(), pick) {
                let rev = model.next_rev;
                model.next_rev += 1;
                let removed = store.mark_acked(&model.entries[i].id, rev).unwrap();
                let reached = model.cursor >= rev;
                assert_eq!(removed, reached, "removed at once only below the cursor");
                model.acknowledge(i, rev);
            }
        }
        Step::AckAgain { pick } => {
            let acked: Vec<usize> = (0..model.entries.len())
                .filter(|&i| model.entries[i].acked_rev.is_some())
                .collect();
            if let Some(i) = choose(&acked, pick) {
                let rev = model.entries[i].acked_rev.unwrap_or_default();
                // Still above the cursor, or a page would have removed it.
                assert!(!store.mark_acked(&model.entries[i].id, rev).unwrap());
                model.acknowledge(i, rev);
            }
        }
        Step::Reject { pick } => {
            if let Some(i) = choose(&model.unanswered(), pick) {
                let reason = format!("validation_failed: step {written}");
                store.mark_failed(&model.entries[i].id, &reason).unwrap();
                model.entries[i].state = ModelState::Failed { reason };
            }
        }
        Step::Transient { pick, delay_ms } => {
            // What the engine's `retry_or_fail` does.
            if let Some(i) = choose(&model.unanswered(), pick) {
                let e = &mut model.entries[i];
                let failures = e.attempt + 1;
                if failures >= MAX_ATTEMPTS {
                    let reason = format!("gave up after {failures} attempts");
                    store.mark_failed(&e.id, &reason).unwrap();
                    e.state = ModelState::Failed { reason };
                } else {
                    store.mark_retrying(&e.id, now + delay_ms).unwrap();
                    e.attempt = failures;
                    e.state = ModelState::Retrying {
                        at_ms: now + delay_ms,
                    };
                }
            }
        }
        Step::Disconnect => {
            let n = store.requeue_in_flight().unwrap();
            assert_eq!(n, model.requeue(), "entries put back in the queue");
        }
        Step::Retry { pick } => {
            let all: Vec<usize> = (0..model.entries.len()).collect();
            if let Some(i) = choose(&all, pick) {
                let retried = store.retry_failed(&model.entries[i].id).unwrap();
                let e = &mut model.entries[i];
                let failed = matches!(e.state, ModelState::Failed { .. });
                assert_eq!(retried, failed, "only a failed entry is retried");
                if failed {
                    e.state = ModelState::Queued;
                    e.attempt = 0;
                }
            }
        }
        Step::Discard { pick } => {
            let all: Vec<usize> = (0..model.entries.len()).collect();
            if let Some(i) = choose(&all, pick) {
                assert!(store.discard(&model.entries[i].id).unwrap());
                model.entries.remove(i);
            }
        }
        Step::Restart => {
            store.close();
            *store = open(dir);
            model.requeue();
        }
        Step::Advance { ms } => model.now_ms += ms,
        Step::Confirm { by } => {
            let target = (model.cursor + by).min(model.next_rev);
            let cursor = store
                .apply_page(
                    &space(),
                    Vec::new(),
                    PageEnd {
                        rev: target,
                        resync: Resync::No,
                        fresh_below: None,
                        check: None,
                        synced_at: None,
                    },
                )
                .unwrap()
                .cursor;
            model.cursor = model.cursor.max(target);
            assert_eq!(cursor.rev, model.cursor);
            let cursor = model.cursor;
            model
                .entries
                .retain(|e| e.acked_rev.is_none_or(|rev| rev > cursor));
        }
    }
}

fn compare(store: &Store, model: &Model, n: usize, step: &Step) {
    let context = format!("after step {n}: {step:?}");
    let listed: Vec<_> = store
        .pending_mutations()
        .unwrap()
        .into_iter()
        .map(|p| {
            let mutation: Mutation = serde_json::from_str(&p.mutation_json).unwrap();
            (p.mutation_id, p.doc_id, p.state, mutation.base_version)
        })
        .collect();
    assert_eq!(listed, model.listed(), "the entries, {context}");
    let failed = model
        .entries
        .iter()
        .filter(|e| matches!(e.state, ModelState::Failed { .. }))
        .count() as u64;
    assert_eq!(
        store.outbox_counts().unwrap(),
        (model.entries.len() as u64 - failed, failed),
        "the counts, {context}"
    );
    let now = model.now_ms;
    let ready = model.entries.iter().any(|e| match e.state {
        ModelState::Queued => true,
        ModelState::Retrying { at_ms } => at_ms <= now,
        _ => false,
    });
    assert_eq!(
        store.has_sendable(now).unwrap(),
        ready,
        "something to send, {context}"
    );
    let next_retry = model
        .entries
        .iter()
        .filter_map(|e| match e.state {
            ModelState::Retrying { at_ms } if at_ms > now => Some(at_ms),
            _ => None,
        })
        .min();
    assert_eq!(
        store.next_retry_at(now).unwrap(),
        next_retry,
        "the next retry, {context}"
    );
    assert_eq!(
        store.has_acked_entries().unwrap(),
        model.entries.iter().any(|e| e.acked_rev.is_some()),
        "acknowledged entries, {context}"
    );
}

proptest! {
    // Each case opens a real database; 96 cases of up to 60 steps run in a
    // few seconds in a debug build.
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn the_outbox_behaves_as_its_model(steps in proptest::collection::vec(step(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        run(dir.path(), &steps);
    }
}
