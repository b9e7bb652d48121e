//! Local writes.
//!
//! A local write is one SQLite transaction on the writer connection:
//!
//! 1. read the document's current local view;
//! 2. stamp a new [`Mutation`] with the device clock (`base_version`: the
//!    confirmed version the view rests on);
//! 3. compute the new view with [`merge::apply_local`] under the
//!    collection's policy (a policy rejection stops here, nothing written);
//! 4. write the view (SQLite updates the declared field indexes with it)
//!    and append the mutation to the outbox (whose stamp is what the clock
//!    resumes from after a restart: `device::last_reading`);
//! 5. commit, then tell observers.
//!
//! Validation that does not need the database (JSON, ids) happens before
//! the writer is taken, so bad input never waits for it.

use rusqlite::{Transaction, TransactionBehavior, params};
use serde_json::{Map, Value};
use tandem_protocol::{CollectionPolicy, HybridClock, Mutation, MutationId, Op, merge};

use crate::clock::now_millis;
use crate::document::{DocRef, LocalDocument};
use crate::error::Error;
use crate::store::views::{read_view, to_local, write_view};
use crate::store::{Store, outbox, policy_of};

/// What the app asks to do to a document: an [`Op`] before it is stamped
/// (`set_remove` learns which adds it removes from the current view).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Write {
    Put(Map<String, Value>),
    Patch(Map<String, Value>),
    Delete,
    SetAdd { field: String, values: Vec<Value> },
    SetRemove { field: String, values: Vec<Value> },
}

impl Store {
    /// Applies `write` to `doc` locally: view, outbox entry and clock in one
    /// transaction. Returns the document's new local view.
    pub fn write(&self, doc: &DocRef, write: Write) -> Result<LocalDocument, Error> {
        self.write_fenced(doc, write, None)
    }

    /// [`Store::write`] on behalf of a role: the mutation carries `fence`,
    /// and the server refuses it unless this device holds the role at that
    /// epoch when it commits.
    pub fn write_fenced(
        &self,
        doc: &DocRef,
        write: Write,
        fence: Option<tandem_protocol::RoleFence>,
    ) -> Result<LocalDocument, Error> {
        let result = self.with_writer(|writer| {
            let policy = policy_of(&writer.policies, &doc.collection);
            let tx = writer
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let written = write_in(
                &tx,
                &mut writer.clock,
                &policy,
                self.max_document_bytes,
                doc,
                write,
                fence,
            )?;
            if written.1 {
                tx.commit()?;
            }
            Ok(written)
        });
        let (local, changed) = result?;
        if changed {
            self.announce(vec![doc.clone()]);
        }
        Ok(local)
    }
}

/// Applies `write` to `doc` inside `tx` (steps 1 to 4 of the module doc):
/// the view and the outbox entry. Returns the new view and `true`, or the
/// unchanged view and `false` when the policy makes the write a no-op (an
/// `append_only` create of an existing id; then nothing is written).
pub(crate) fn write_in(
    tx: &Transaction<'_>,
    clock: &mut HybridClock,
    policy: &CollectionPolicy,
    max_document_bytes: usize,
    doc: &DocRef,
    write: Write,
    fence: Option<tandem_protocol::RoleFence>,
) -> Result<(LocalDocument, bool), Error> {
    let current = read_view(tx, doc)?;
    if let Some(view) = &current
        && view.pending == 0
        && view.version.is_some()
    {
        // The view is the confirmed state (views.rs keeps no second copy
        // of it); keep one now that a pending write goes on top.
        tx.prepare_cached(
            "INSERT OR IGNORE INTO confirmed (space, collection, id, version, state)
             SELECT space, collection, id, version, state FROM documents
             WHERE space = ?1 AND collection = ?2 AND id = ?3",
        )?
        .execute(params![
            doc.space.as_str(),
            doc.collection.as_str(),
            doc.id.as_str()
        ])?;
    }
    let current_state = current.as_ref().map(|v| &v.state);
    let op = match write {
        Write::Put(fields) => Op::Put { fields },
        Write::Patch(fields) => Op::Patch { fields },
        Write::Delete => Op::Delete {},
        Write::SetAdd { field, values } => Op::SetAdd { field, values },
        Write::SetRemove { field, values } => {
            // Observed-remove: the remove covers exactly the adds this
            // device has seen, so a concurrent add elsewhere survives it.
            let observed = current_state
                .and_then(|s| s.sets.get(&field))
                .map(|set| values.iter().flat_map(|v| set.live_tags(v)).collect())
                .unwrap_or_default();
            Op::SetRemove {
                field,
                values,
                observed,
            }
        }
    };
    let view_version = current.as_ref().and_then(|v| v.version);
    // In a version-checked collection a write made on top of an entry the
    // server has acknowledged, whose change has not arrived yet (the view
    // still has the version before it), is based on that entry's revision:
    // on the version before, the server would find it in conflict with
    // this device's own earlier write. (Entries written before the ack get
    // the revision from `mark_acked`.)
    let base_version = if policy.policy.checks_version() {
        view_version.max(outbox::latest_acked_rev(tx, doc)?)
    } else {
        view_version
    };
    let hlc = clock.tick(now_millis());
    let mutation = Mutation {
        mutation_id: MutationId::generate(),
        space: doc.space.clone(),
        collection: doc.collection.clone(),
        doc_id: doc.id.clone(),
        op,
        base_version,
        device_id: hlc.node.clone(),
        hlc,
        fence,
    };
    let Some(next) = merge::apply_local(current_state, &mutation, policy)? else {
        // The policy makes this write a no-op (an `append_only` create of
        // an existing id): nothing to send either.
        return match &current {
            Some(view) => to_local(doc, view).map(|d| (d, false)),
            None => Err(Error::CorruptStore(
                "a write to a missing document changed nothing".into(),
            )),
        };
    };
    // The limit is on the state as JSON, which is exactly the text stored
    // (DocState::encoded_len), so it costs no extra encoding.
    let state_json = serde_json::to_string(&next)
        .map_err(|e| Error::CorruptStore(format!("state of {}: {e}", doc.id)))?;
    if state_json.len() > max_document_bytes {
        return Err(Error::DocumentTooLarge {
            size: state_json.len(),
            limit: max_document_bytes,
        });
    }
    let pending = current.as_ref().map_or(0, |v| v.pending) + 1;
    let version = current.as_ref().and_then(|v| v.version);
    let local = write_view(tx, doc, &state_json, &next, version, pending)?;
    outbox::append(tx, &mutation)?;
    Ok((local, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::{count, open_store};
    use serde_json::json;
    use tandem_protocol::{Collection, DocId, SpaceId};

    fn doc(id: &str) -> DocRef {
        DocRef {
            space: SpaceId::new("personal:alice").unwrap(),
            collection: Collection::new("tasks").unwrap(),
            id: DocId::new(id).unwrap(),
        }
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_write_stores_the_view_and_its_outbox_entry_together() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let local = store
            .write(&doc("t1"), Write::Put(obj(json!({"title": "milk"}))))
            .unwrap();
        assert_eq!(local.fields().unwrap(), obj(json!({"title": "milk"})));
        assert!(local.pending);
        assert_eq!(local.version, None);
        assert_eq!(count(&store, "SELECT count(*) FROM documents"), 1);
        assert_eq!(count(&store, "SELECT count(*) FROM outbox"), 1);
        assert_eq!(
            count(&store, "SELECT pending FROM documents WHERE id = 't1'"),
            1
        );

        let local = store
            .write(&doc("t1"), Write::Patch(obj(json!({"done": true}))))
            .unwrap();
        assert_eq!(
            local.fields().unwrap(),
            obj(json!({"title": "milk", "done": true}))
        );
        assert_eq!(count(&store, "SELECT count(*) FROM outbox"), 2);
        assert_eq!(
            count(&store, "SELECT pending FROM documents WHERE id = 't1'"),
            2
        );

        let local = store.write(&doc("t1"), Write::Delete).unwrap();
        assert!(local.deleted);
        assert_eq!(local.fields_json, "{}");
    }

    #[test]
    fn the_clock_resumes_past_every_stamp_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let hlc_of_last_write = |store: &Store| -> tandem_protocol::Hlc {
            let entries = store.pending_mutations().unwrap();
            let m: Mutation = serde_json::from_str(&entries.last().unwrap().mutation_json).unwrap();
            m.hlc
        };
        let first = {
            let store = open_store(dir.path());
            store
                .write(&doc("t1"), Write::Put(obj(json!({"a": 1}))))
                .unwrap();
            store
                .write(&doc("t1"), Write::Put(obj(json!({"a": 2}))))
                .unwrap();
            let first = hlc_of_last_write(&store);
            // The newest entry goes away (discarded): its stamp must not.
            let id = store.pending_mutations().unwrap()[1]
                .mutation_id
                .parse()
                .unwrap();
            assert!(store.discard(&id).unwrap());
            store.close();
            first
        };
        // The resumed clock starts at or after the discarded stamp, whatever
        // the wall clock says.
        let store = open_store(dir.path());
        let resumed = store.with_writer(|w| Ok(w.clock.last())).unwrap();
        assert!(resumed >= first, "{resumed} < {first}");
        store
            .write(&doc("t2"), Write::Put(obj(json!({"b": 1}))))
            .unwrap();
        assert!(hlc_of_last_write(&store) > first);
    }
}
