//! The local view of each document: reading and writing it, the confirmed
//! state it rests on, and rebuilding it.
//!
//! The local view of a document is always
//!
//! ```text
//! view = confirmed state (the server's, if any)
//!        + every outbox entry of the document, applied in seq order
//!          with merge::apply_local under the collection's policy
//! ```
//!
//! The confirmed state lives in `confirmed` only while the document has
//! pending writes; without them the view is the confirmed state (see
//! [`read_confirmed_from`]).
//!
//! Local writes extend the view incrementally (`store/writes.rs`); when the
//! confirmed state changes (a remote change arrives, an entry is
//! acknowledged or discarded, a policy changes) the view is rebuilt from
//! scratch by [`rebuild_view`], in the same transaction. Pending writes
//! thus stay visible on top of the newest server state, and the UI never
//! flickers back to an older value.

use rusqlite::{OptionalExtension, Transaction, params};
use tandem_protocol::{CollectionPolicy, DocState, Document, Hlc, Mutation, merge};

use crate::document::{DocRef, LocalDocument};
use crate::error::Error;
use crate::store::{from_sql_int, to_sql_int};

/// Where a document's confirmed copy is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConfirmedIn {
    /// In `confirmed`: the document has (or had) pending writes, so the
    /// view differs from the server's state.
    Table,
    /// Nowhere else: the view has no pending writes and is the confirmed
    /// state itself (`documents` with `pending = 0` and a version).
    View,
}

/// The confirmed document and where it is kept, if the server has
/// confirmed one.
///
/// A document's confirmed state is stored twice only while it has pending
/// writes: otherwise the view *is* the confirmed state, and keeping a
/// second copy would double what a large initial sync writes. The rule
/// that keeps this sound: before a local write puts a pending entry on top
/// of a view, the view is copied to `confirmed` (`store/writes.rs`).
pub(crate) fn read_confirmed_from(
    tx: &Transaction<'_>,
    doc: &DocRef,
) -> Result<Option<(Document, ConfirmedIn)>, Error> {
    let key = params![doc.space.as_str(), doc.collection.as_str(), doc.id.as_str()];
    let mut found = tx
        .prepare_cached(
            "SELECT version, state FROM confirmed WHERE space = ?1 AND collection = ?2 AND id = ?3",
        )?
        .query_row(key, |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
        })
        .optional()?
        .map(|row| (row, ConfirmedIn::Table));
    if found.is_none() {
        found = tx
            .prepare_cached(
                "SELECT version, state FROM documents
                 WHERE space = ?1 AND collection = ?2 AND id = ?3
                   AND pending = 0 AND version IS NOT NULL",
            )?
            .query_row(key, |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
            })
            .optional()?
            .map(|row| (row, ConfirmedIn::View));
    }
    let Some(((version, state), place)) = found else {
        return Ok(None);
    };
    Ok(Some((
        Document {
            space: doc.space.clone(),
            collection: doc.collection.clone(),
            id: doc.id.clone(),
            version: Some(from_sql_int(version, "confirmed version")?),
            state: serde_json::from_str(&state)
                .map_err(|e| Error::CorruptStore(format!("confirmed state of {}: {e}", doc.id)))?,
        },
        place,
    )))
}

/// The confirmed document, if the server has confirmed one (see
/// [`read_confirmed_from`]).
pub(crate) fn read_confirmed(
    tx: &Transaction<'_>,
    doc: &DocRef,
) -> Result<Option<Document>, Error> {
    Ok(read_confirmed_from(tx, doc)?.map(|(d, _)| d))
}

/// Recomputes the local view of `doc` from its confirmed state and its
/// outbox entries in seq order, and stores it. A document with neither is
/// removed from the view. Returns the new view.
///
/// An entry the policy now rejects (the server announced a stricter policy
/// after the write) is left out of the view but stays in the outbox, where
/// the server's answer will fail it.
pub(crate) fn rebuild_view(
    tx: &Transaction<'_>,
    doc: &DocRef,
    policy: &CollectionPolicy,
) -> Result<Option<LocalDocument>, Error> {
    let confirmed = read_confirmed(tx, doc)?;
    let pending = pending_of(tx, doc)?;
    if confirmed.is_none() && pending.is_empty() {
        tx.prepare_cached(
            "DELETE FROM documents WHERE space = ?1 AND collection = ?2 AND id = ?3",
        )?
        .execute(params![
            doc.space.as_str(),
            doc.collection.as_str(),
            doc.id.as_str()
        ])?;
        return Ok(None);
    }
    let version = confirmed.as_ref().and_then(|d| d.version);
    let mut state: Option<DocState> = confirmed.map(|d| d.state);
    for mutation in &pending {
        if let Ok(Some(next)) = merge::apply_local(state.as_ref(), mutation, policy) {
            state = Some(next);
        }
    }
    let state = state.unwrap_or_default();
    let state_json = serde_json::to_string(&state)
        .map_err(|e| Error::CorruptStore(format!("state of {}: {e}", doc.id)))?;
    let pending = u64::try_from(pending.len()).unwrap_or(u64::MAX);
    write_view(tx, doc, &state_json, &state, version, pending).map(Some)
}

/// The latest stamp in a state: what the device clock must move past once
/// the device has seen the state.
pub(crate) fn latest_stamp(state: &DocState) -> Option<&Hlc> {
    state
        .clocks
        .values()
        .chain(&state.alive_at)
        .chain(&state.deleted_at)
        .chain(&state.cleared_at)
        .max()
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
pub(crate) fn to_local(doc: &DocRef, view: &StoredView) -> Result<LocalDocument, Error> {
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

/// The pending mutations of one document, in seq order: what the view
/// rests on besides the confirmed state. Failed entries are not pending:
/// the server refused them, so the view is rolled back without them until
/// the app retries one.
pub(crate) fn pending_of(tx: &Transaction<'_>, doc: &DocRef) -> Result<Vec<Mutation>, Error> {
    let mut stmt = tx.prepare_cached(
        "SELECT seq, mutation FROM outbox
         WHERE space = ?1 AND collection = ?2 AND doc_id = ?3 AND state != 'failed'
         ORDER BY seq",
    )?;
    let rows = stmt.query_map(
        params![doc.space.as_str(), doc.collection.as_str(), doc.id.as_str()],
        |row| Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?)),
    )?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, json) = row?;
        out.push(
            serde_json::from_str(&json)
                .map_err(|e| Error::CorruptStore(format!("outbox entry {seq}: {e}")))?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::now_millis;
    use crate::store::Write;
    use crate::store::test_support::{count, open_store};
    use serde_json::{Map, Value, json};
    use tandem_protocol::{
        Change, Collection, DeviceId, DocId, MutationId, Op, Policy, SpaceChecksum, SpaceId,
    };

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

    /// A change another device made, as the server would send it.
    fn remote_change(id: &str, rev: u64, millis: u64, op: Op, base: Option<&DocState>) -> Change {
        let other = DeviceId::new("other-device").unwrap();
        let m = Mutation {
            mutation_id: MutationId::generate(),
            space: doc(id).space,
            collection: doc(id).collection,
            doc_id: doc(id).id,
            op,
            base_version: None,
            hlc: Hlc::new(millis, 0, other.clone()),
            device_id: other.clone(),
            fence: None,
        };
        let state = merge::apply_local(base, &m, &CollectionPolicy::lww())
            .unwrap()
            .unwrap();
        Change {
            space: m.space,
            rev,
            collection: m.collection,
            doc_id: m.doc_id,
            deleted: state.is_deleted(),
            state,
            origin: Some(other),
            mutation_id: Some(m.mutation_id),
        }
    }

    #[test]
    fn the_view_is_confirmed_state_plus_pending_writes_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        // Two pending local writes to different fields.
        store
            .write(&doc("t1"), Write::Patch(obj(json!({"title": "mine"}))))
            .unwrap();
        store
            .write(&doc("t1"), Write::Patch(obj(json!({"done": true}))))
            .unwrap();
        // The server's state arrives: another device wrote `title` earlier
        // (its stamp is older) and `note`.
        let change = remote_change(
            "t1",
            7,
            1,
            Op::Patch {
                fields: obj(json!({"title": "theirs", "note": "from the server"})),
            },
            None,
        );
        assert_eq!(store.apply_remote_changes(&[change]).unwrap(), 1);

        let view = store.get(&doc("t1")).unwrap().unwrap();
        assert_eq!(
            view.fields().unwrap(),
            obj(json!({"title": "mine", "done": true, "note": "from the server"})),
            "pending writes stay on top of the newer confirmed state"
        );
        assert_eq!(view.version, Some(7));
        assert!(view.pending);

        // Rebuilding from scratch gives the same view as the incremental
        // path.
        let rebuilt = store.rebuild(&doc("t1")).unwrap().unwrap();
        assert_eq!(rebuilt, view);

        // The cursor moved and its checksum counts the document.
        let cursors = store.cursors().unwrap();
        let cursor = cursors["personal:alice"];
        assert_eq!(cursor.rev, 7);
        let mut expected = SpaceChecksum::default();
        expected.add("tasks", "t1", 7);
        assert_eq!(cursor.checksum, expected);
    }

    #[test]
    fn a_change_carrying_a_pending_mutation_acknowledges_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        store
            .write(&doc("t1"), Write::Put(obj(json!({"title": "milk"}))))
            .unwrap();
        let entry = store.pending_mutations().unwrap().remove(0);
        let mutation: Mutation = serde_json::from_str(&entry.mutation_json).unwrap();
        // The server applied it as revision 3 and sends it back.
        let state = merge::apply_local(None, &mutation, &CollectionPolicy::lww())
            .unwrap()
            .unwrap();
        let change = Change {
            space: mutation.space.clone(),
            rev: 3,
            collection: mutation.collection.clone(),
            doc_id: mutation.doc_id.clone(),
            deleted: false,
            state,
            origin: Some(mutation.device_id.clone()),
            mutation_id: Some(mutation.mutation_id),
        };
        store.apply_remote_changes(&[change]).unwrap();
        let view = store.get(&doc("t1")).unwrap().unwrap();
        assert_eq!(view.fields().unwrap(), obj(json!({"title": "milk"})));
        assert_eq!(view.version, Some(3));
        assert!(!view.pending);
        assert_eq!(count(&store, "SELECT count(*) FROM outbox"), 0);
        assert_eq!(store.outbox_counts().unwrap(), (0, 0));
    }

    #[test]
    fn local_writes_after_seeing_a_remote_stamp_win_over_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        // A remote write stamped far in the future (a device whose clock
        // runs ahead).
        let future = now_millis() + 3_600_000;
        let change = remote_change(
            "t1",
            1,
            future,
            Op::Put {
                fields: obj(json!({"title": "future"})),
            },
            None,
        );
        store.apply_remote_changes(&[change]).unwrap();
        let view = store
            .write(&doc("t1"), Write::Patch(obj(json!({"title": "now"}))))
            .unwrap();
        assert_eq!(view.fields().unwrap()["title"], json!("now"));
    }

    #[test]
    fn a_new_policy_rebuilds_pending_views() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        // Written under the default lww policy...
        store
            .write(&doc("t1"), Write::Put(obj(json!({"title": "a"}))))
            .unwrap();
        // ...then the server says the collection is append_only with a set
        // field: the put is still a create, so the view keeps it.
        let mut policy = CollectionPolicy::of(Policy::AppendOnly);
        policy.set_fields.insert("tags".into());
        store.set_policy(&doc("t1").collection, &policy).unwrap();
        let view = store.get(&doc("t1")).unwrap().unwrap();
        assert_eq!(view.fields().unwrap(), obj(json!({"title": "a"})));
        // Set operations now work on `tags`; patches are refused.
        let view = store
            .write(
                &doc("t1"),
                Write::SetAdd {
                    field: "tags".into(),
                    values: vec![json!("x")],
                },
            )
            .unwrap();
        assert_eq!(view.fields().unwrap()["tags"], json!(["x"]));
        assert!(matches!(
            store.write(&doc("t1"), Write::Patch(obj(json!({"title": "b"})))),
            Err(Error::Rejected { .. })
        ));
        // The policy survives a restart.
        store.close();
        let store = open_store(dir.path());
        assert!(matches!(
            store.write(&doc("t1"), Write::Patch(obj(json!({"title": "b"})))),
            Err(Error::Rejected { .. })
        ));
    }
}
