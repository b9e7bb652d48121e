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

use rusqlite::{OptionalExtension, Transaction, TransactionBehavior, params};
use serde_json::{Map, Value};
use tandem_protocol::{CollectionPolicy, DocState, HybridClock, Mutation, MutationId, Op, merge};

use crate::clock::now_millis;
use crate::document::{DocRef, LocalDocument};
use crate::error::Error;
use crate::store::{Store, from_sql_int, outbox, policy_of, to_sql_int};

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

/// The local view of one document as stored.
pub(crate) struct StoredView {
    pub state: DocState,
    pub version: Option<u64>,
    pub pending: u64,
}

/// Reads the stored view of `doc`.
pub(crate) fn read_view(tx: &Transaction<'_>, doc: &DocRef) -> Result<Option<StoredView>, Error> {
    let row: Option<(String, Option<i64>, i64)> = tx
        .prepare_cached(
            "SELECT state, version, pending FROM documents
             WHERE space = ?1 AND collection = ?2 AND id = ?3",
        )?
        .query_row(
            params![doc.space.as_str(), doc.collection.as_str(), doc.id.as_str()],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .optional()?;
    let Some((state, version, pending)) = row else {
        return Ok(None);
    };
    Ok(Some(StoredView {
        state: serde_json::from_str(&state)
            .map_err(|e| Error::CorruptStore(format!("state of {}: {e}", doc.id)))?,
        version: version.map(|v| from_sql_int(v, "version")).transpose()?,
        pending: from_sql_int(pending, "pending count")?,
    }))
}

/// Writes the view of `doc`: its merge state, visible fields, confirmed
/// version and pending count. Returns the document as the app sees it.
pub(crate) fn write_view(
    tx: &Transaction<'_>,
    doc: &DocRef,
    state_json: &str,
    state: &DocState,
    version: Option<u64>,
    pending: u64,
) -> Result<LocalDocument, Error> {
    let deleted = state.is_deleted();
    // Without set fields the visible fields are the registers themselves:
    // encode them in place instead of copying them first (this runs for
    // every document of an initial sync).
    let fields_json = if !deleted && state.sets.is_empty() {
        serde_json::to_string(&state.fields)
    } else {
        serde_json::to_string(&state.visible_fields())
    }
    .map_err(|e| Error::CorruptStore(format!("fields of {}: {e}", doc.id)))?;
    tx.prepare_cached(
        "INSERT INTO documents (space, collection, id, fields, state, version, pending, deleted)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (space, collection, id) DO UPDATE SET
             fields = excluded.fields, state = excluded.state, version = excluded.version,
             pending = excluded.pending, deleted = excluded.deleted",
    )?
    .execute(params![
        doc.space.as_str(),
        doc.collection.as_str(),
        doc.id.as_str(),
        fields_json,
        state_json,
        version.map(to_sql_int),
        to_sql_int(pending),
        deleted,
    ])?;
    Ok(LocalDocument {
        space: doc.space.to_string(),
        collection: doc.collection.to_string(),
        id: doc.id.to_string(),
        fields_json,
        version,
        pending: pending > 0,
        deleted,
    })
}

/// The app-facing document of a stored view.
fn to_local(doc: &DocRef, view: &StoredView) -> Result<LocalDocument, Error> {
    Ok(LocalDocument {
        space: doc.space.to_string(),
        collection: doc.collection.to_string(),
        id: doc.id.to_string(),
        fields_json: serde_json::to_string(&view.state.visible_fields())
            .map_err(|e| Error::CorruptStore(format!("fields of {}: {e}", doc.id)))?,
        version: view.version,
        pending: view.pending > 0,
        deleted: view.state.is_deleted(),
    })
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
