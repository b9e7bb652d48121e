//! Applying the server's state: change pages, conflict documents, re-syncs
//! and spaces that are gone.
//!
//! Every function here runs in one transaction on the writer and ends by
//! announcing the documents whose view changed, so observers get one
//! coalesced update per page.
//!
//! # Applying a change
//!
//! A change is merged into the document's confirmed copy
//! ([`merge::apply_change`]); the space's checksum (the sum of the hashes of
//! its live confirmed documents) moves by the difference; an outbox entry
//! whose `mutation_id` the change carries is removed (it is confirmed); the
//! view is rebuilt as confirmed state plus the remaining pending entries.
//! A document with no outbox entries takes the fast path: its view is the
//! confirmed state, written without reading anything back, which is what
//! makes a large initial sync cheap.
//!
//! # Cursors and acknowledged entries
//!
//! After a page the space's cursor is the page's end (the last change's
//! `rev` in the middle of a catch-up, `head` on a final page or a live
//! message). Outbox entries that the server acknowledged at a revision the
//! cursor has now reached are removed in the same transaction: their
//! effect is in the confirmed state.
//!
//! # Re-sync (mark and sweep)
//!
//! When a space must be fetched again from revision 0 (a `reset` page,
//! `reset_required`, a checksum mismatch), its confirmed documents are
//! marked instead of dropped, so the app keeps showing them. Each change
//! of the re-sync replaces the confirmed copy with the server's and
//! unmarks it; the final page deletes what is still marked (the server no
//! longer has it). The checksum restarts from zero, and a marked document's
//! old hash is never subtracted because it was never added.
//!
//! # Evicted documents
//!
//! An evicted document (`store/eviction.rs`) has no confirmed copy but
//! still counts in the checksum; its row in `evicted` keeps the version
//! whose hash was added, so a later change subtracts the right one and
//! brings the document back.

use rusqlite::{OptionalExtension, Transaction, TransactionBehavior, params};
use std::collections::HashMap;

use tandem_protocol::{
    Change, Collection, CollectionPolicy, Document, HybridClock, SpaceChecksum, SpaceId, merge,
};

use crate::clock::now_millis;
use crate::document::DocRef;
use crate::error::Error;
use crate::store::cursors::{Cursor, load_cursors};
use crate::store::outbox::{self, doc_ref, remove_in};
use crate::store::policies::set_policy_in;
use crate::store::sync_state::{self, ConflictLogEntry, log_conflict_in};
use crate::store::views::{
    ConfirmedIn, latest_stamp, read_confirmed, read_confirmed_from, rebuild_view, write_view,
};
use crate::store::writes::{Write, write_in};
use crate::store::{Store, Writer, device, from_sql_int, policy_of, to_sql_int};

/// The writer's policies.
type Policies = HashMap<Collection, CollectionPolicy>;

/// Where a page stands in a re-sync of its space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resync {
    /// No re-sync: changes merge into the confirmed copies.
    No,
    /// A page of a re-sync that more pages follow.
    Page,
    /// The final page of a re-sync: sweep what is still marked.
    Final,
}

/// How one `changes` message is applied.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PageEnd {
    /// The space's cursor after the page.
    pub rev: u64,
    /// The page's place in a re-sync.
    pub resync: Resync,
    /// In a catch-up from revision 0 into a space this device held nothing
    /// of: the head when the catch-up began. A change at or below it is
    /// the document's first appearance (the feed lists each document once,
    /// at its version; a document changed during the catch-up shows up
    /// again only above this head), so unless the document has outbox
    /// entries there is nothing local to read or merge with.
    pub fresh_below: Option<u64>,
    /// The checksum the server gave with the page (a final page or a live
    /// message), to compare with the device's once the page is applied.
    pub check: Option<PageCheck>,
    /// The page completes the device's sync (the last space caught up):
    /// record this time as the last sync, unless the checksums disagree.
    pub synced_at: Option<u64>,
}

/// A page's checksum and when it is comparable.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PageCheck {
    /// The server's checksum of the space at the page's revision.
    pub expected: SpaceChecksum,
    /// The device's checksum is comparable only once its cursor reaches
    /// this revision (a conflict answer may have applied a document ahead
    /// of the feed).
    pub comparable_from: u64,
}

/// What applying a page came to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PageApplied {
    /// The space's cursor after the page.
    pub cursor: Cursor,
    /// The checksums disagree (counted in the same transaction; the space
    /// must be fetched again).
    pub mismatch: bool,
}

/// How the app settled a conflict: what goes on top of the server's
/// document.
pub(crate) enum Settlement {
    /// Nothing: the server's document stands.
    KeepRemote,
    /// A new local write (the local value again, or a merge).
    Write {
        /// What the log calls the winner: `local` or `merged`.
        winner: &'static str,
        /// The write.
        write: Write,
    },
}

/// Per-transaction facts that let most changes skip work.
struct Shortcuts {
    /// The outbox has entries at all (else no change can confirm one).
    outbox: bool,
    /// Some document is evicted.
    evicted: bool,
    /// See [`PageEnd::fresh_below`].
    fresh_below: Option<u64>,
}

impl Shortcuts {
    fn load(tx: &Transaction<'_>) -> Result<Shortcuts, Error> {
        let (outbox, evicted): (bool, bool) = tx
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM outbox), EXISTS (SELECT 1 FROM evicted)")?
            .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(Shortcuts {
            outbox,
            evicted,
            fresh_below: None,
        })
    }
}

/// Applies one change inside `tx`. Returns whether the document's view
/// changed.
fn apply_one(
    tx: &Transaction<'_>,
    policies: &Policies,
    clock: &mut HybridClock,
    shortcuts: &Shortcuts,
    cursor: &mut Cursor,
    change: Change,
    resync: bool,
) -> Result<Option<DocRef>, Error> {
    let doc = DocRef {
        space: change.space.clone(),
        collection: change.collection.clone(),
        id: change.doc_id.clone(),
    };
    let policy = policy_of(policies, &doc.collection);
    if let Some(stamp) = latest_stamp(&change.state) {
        clock.observe(stamp, now_millis());
    }
    let key = params![doc.space.as_str(), doc.collection.as_str(), doc.id.as_str()];
    let has_entries = shortcuts.outbox
        && tx
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM outbox
                 WHERE space = ?1 AND collection = ?2 AND doc_id = ?3)",
            )?
            .query_row(key, |row| row.get::<_, bool>(0))?;
    let first_appearance =
        !has_entries && shortcuts.fresh_below.is_some_and(|head| change.rev <= head);
    let (current, place) = if first_appearance {
        (None, None)
    } else {
        match read_confirmed_from(tx, &doc)? {
            Some((d, place)) => (Some(d), Some(place)),
            None => (None, None),
        }
    };
    // The version whose hash the checksum holds for this document, if any.
    let mut counted: Option<u64> = current
        .as_ref()
        .filter(|d| !d.is_deleted())
        .and_then(|d| d.version);
    let mut evicted_version = None;
    if current.is_none() && shortcuts.evicted && !first_appearance {
        evicted_version = tx
            .prepare_cached(
                "DELETE FROM evicted WHERE space = ?1 AND collection = ?2 AND id = ?3
                 RETURNING version",
            )?
            .query_row(key, |row| row.get::<_, i64>(0))
            .optional()?
            .map(|v| from_sql_int(v, "evicted version"))
            .transpose()?;
        counted = evicted_version;
        if evicted_version.is_some() {
            // Back on the device because it changed: count that as a use,
            // or the next eviction would take it again first.
            tx.prepare_cached(
                "INSERT INTO document_access (space, collection, id, at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (space, collection, id) DO UPDATE SET at = excluded.at",
            )?
            .execute(params![
                doc.space.as_str(),
                doc.collection.as_str(),
                doc.id.as_str(),
                to_sql_int(now_millis())
            ])?;
        }
    }
    if resync {
        let marked = tx
            .prepare_cached(
                "DELETE FROM resync_marks WHERE space = ?1 AND collection = ?2 AND id = ?3",
            )?
            .execute(key)?
            == 1;
        if marked {
            counted = None;
        }
    }
    let mutation_id = change.mutation_id;
    let next = if resync {
        // The server's copy is the truth: replace, never join (a restored
        // server may be behind this device's copy).
        let same = current
            .as_ref()
            .is_some_and(|d| d.version == Some(change.rev) && d.state == change.state);
        (!same).then(|| into_document(change))
    } else if let Some(version) = evicted_version {
        // The same version too: that is fetching an evicted document again.
        (change.rev >= version).then(|| into_document(change))
    } else if current.is_none() {
        Some(into_document(change))
    } else {
        merge::apply_change(current.as_ref(), &change, &policy)
    };
    let result = next.as_ref().or(current.as_ref());
    let now_counted = result.filter(|d| !d.is_deleted()).and_then(|d| d.version);
    if let Some(v) = counted {
        cursor
            .checksum
            .remove(doc.collection.as_str(), doc.id.as_str(), v);
    }
    if let Some(v) = now_counted {
        cursor
            .checksum
            .add(doc.collection.as_str(), doc.id.as_str(), v);
    }
    let acked = match (has_entries, mutation_id) {
        (true, Some(id)) => remove_in(tx, &id)?.is_some(),
        _ => false,
    };
    let Some(next) = next else {
        if acked {
            rebuild_view(tx, &doc, &policy)?;
            return Ok(Some(doc));
        }
        return Ok(None);
    };
    let state_json = serde_json::to_string(&next.state)
        .map_err(|e| Error::CorruptStore(format!("confirmed state of {}: {e}", doc.id)))?;
    if has_entries {
        tx.prepare_cached(
            "INSERT INTO confirmed (space, collection, id, version, state)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (space, collection, id) DO UPDATE SET
                 version = excluded.version, state = excluded.state",
        )?
        .execute(params![
            doc.space.as_str(),
            doc.collection.as_str(),
            doc.id.as_str(),
            to_sql_int(next.version.unwrap_or(0)),
            state_json
        ])?;
        rebuild_view(tx, &doc, &policy)?;
    } else {
        // No pending writes: the view is the confirmed state, kept once.
        write_view(tx, &doc, &state_json, &next.state, next.version, 0)?;
        if place == Some(ConfirmedIn::Table) {
            tx.prepare_cached(
                "DELETE FROM confirmed WHERE space = ?1 AND collection = ?2 AND id = ?3",
            )?
            .execute(key)?;
        }
    }
    Ok(Some(doc))
}

/// The document a change describes, taking the change's state rather than
/// copying it.
fn into_document(change: Change) -> Document {
    Document {
        space: change.space,
        collection: change.collection,
        id: change.doc_id,
        version: Some(change.rev),
        state: change.state,
    }
}

/// Stores `cursor` for `space`.
fn save_cursor(tx: &Transaction<'_>, space: &str, cursor: &Cursor) -> Result<(), Error> {
    tx.prepare_cached(
        "INSERT INTO cursors (space, rev, checksum, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (space) DO UPDATE SET
             rev = excluded.rev, checksum = excluded.checksum, updated_at = excluded.updated_at",
    )?
    .execute(params![
        space,
        to_sql_int(cursor.rev),
        cursor.checksum.to_string(),
        to_sql_int(now_millis())
    ])?;
    Ok(())
}

/// Removes the entries of `space` acknowledged at or below `rev`; rebuilds
/// their views.
fn sweep_acked(
    tx: &Transaction<'_>,
    policies: &Policies,
    space: &str,
    rev: u64,
    changed: &mut Vec<DocRef>,
) -> Result<(), Error> {
    let docs = doc_rows(
        &mut *tx.prepare_cached(
            "DELETE FROM outbox WHERE space = ?1 AND acked_rev IS NOT NULL AND acked_rev <= ?2
             RETURNING collection, doc_id",
        )?,
        params![space, to_sql_int(rev)],
        space,
    )?;
    for doc in docs {
        rebuild_view(tx, &doc, &policy_of(policies, &doc.collection))?;
        changed.push(doc);
    }
    Ok(())
}

/// Deletes the confirmed copies of `space` still marked by a re-sync and
/// rebuilds their views (pending local writes stay).
fn sweep_marked(
    tx: &Transaction<'_>,
    policies: &Policies,
    space: &str,
    changed: &mut Vec<DocRef>,
) -> Result<(), Error> {
    let docs = doc_rows(
        &mut *tx
            .prepare_cached("DELETE FROM resync_marks WHERE space = ?1 RETURNING collection, id")?,
        [space],
        space,
    )?;
    for doc in docs {
        let key = params![doc.space.as_str(), doc.collection.as_str(), doc.id.as_str()];
        tx.prepare_cached(
            "DELETE FROM confirmed WHERE space = ?1 AND collection = ?2 AND id = ?3",
        )?
        .execute(key)?;
        // A view without pending writes is the confirmed copy itself.
        tx.prepare_cached(
            "DELETE FROM documents WHERE space = ?1 AND collection = ?2 AND id = ?3
               AND pending = 0",
        )?
        .execute(key)?;
        rebuild_view(tx, &doc, &policy_of(policies, &doc.collection))?;
        changed.push(doc);
    }
    Ok(())
}

impl Store {
    /// Applies one `changes` message of `space` in one transaction and
    /// moves the space's cursor to `end.rev`. Returns the cursor after it
    /// (its checksum is what the engine compares with the server's).
    pub(crate) fn apply_page(
        &self,
        space: &SpaceId,
        changes: Vec<Change>,
        end: PageEnd,
    ) -> Result<PageApplied, Error> {
        let (applied, changed) = self.with_writer(|writer| {
            let Writer {
                conn,
                clock,
                policies,
            } = writer;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut shortcuts = Shortcuts::load(&tx)?;
            shortcuts.fresh_below = end.fresh_below;
            let mut cursor = load_cursors(&tx)?.remove(space.as_str()).unwrap_or(Cursor {
                rev: 0,
                checksum: SpaceChecksum::default(),
            });
            let resync = end.resync != Resync::No;
            let mut changed = Vec::new();
            for change in changes {
                if change.space != *space {
                    return Err(Error::CorruptStore(format!(
                        "a change of {} in a page of {space}",
                        change.space
                    )));
                }
                if let Some(doc) = apply_one(
                    &tx,
                    policies,
                    clock,
                    &shortcuts,
                    &mut cursor,
                    change,
                    resync,
                )? {
                    changed.push(doc);
                }
            }
            if end.resync == Resync::Final {
                sweep_marked(&tx, policies, space.as_str(), &mut changed)?;
            }
            cursor.rev = if resync {
                end.rev
            } else {
                cursor.rev.max(end.rev)
            };
            save_cursor(&tx, space.as_str(), &cursor)?;
            sweep_acked(&tx, policies, space.as_str(), cursor.rev, &mut changed)?;
            device::save_clock(&tx, &clock.last())?;
            let mismatch = end.check.is_some_and(|check| {
                cursor.rev >= check.comparable_from && check.expected != cursor.checksum
            });
            if mismatch {
                sync_state::count_checksum_mismatch_in(&tx)?;
            } else if let Some(at_ms) = end.synced_at {
                sync_state::mark_synced_in(&tx, at_ms)?;
            }
            tx.commit()?;
            Ok((PageApplied { cursor, mismatch }, changed))
        })?;
        self.announce(changed);
        Ok(applied)
    }

    /// Applies committed changes of any spaces in one transaction, each
    /// space's cursor moving to its highest revision here (see
    /// [`Store::apply_page`] for a page of one space). Returns how many
    /// views changed.
    #[cfg_attr(not(test), expect(dead_code, reason = "the engine applies pages"))]
    pub(crate) fn apply_remote_changes(&self, changes: &[Change]) -> Result<usize, Error> {
        let changed = self.with_writer(|writer| {
            let Writer {
                conn,
                clock,
                policies,
            } = writer;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let shortcuts = Shortcuts::load(&tx)?;
            let mut cursors = load_cursors(&tx)?;
            let mut changed = Vec::new();
            for change in changes {
                let cursor = cursors.entry(change.space.to_string()).or_insert(Cursor {
                    rev: 0,
                    checksum: SpaceChecksum::default(),
                });
                cursor.rev = cursor.rev.max(change.rev);
                if let Some(doc) = apply_one(
                    &tx,
                    policies,
                    clock,
                    &shortcuts,
                    cursor,
                    change.clone(),
                    false,
                )? {
                    changed.push(doc);
                }
            }
            for (space, cursor) in &cursors {
                save_cursor(&tx, space, cursor)?;
                sweep_acked(&tx, policies, space, cursor.rev, &mut changed)?;
            }
            device::save_clock(&tx, &clock.last())?;
            tx.commit()?;
            Ok(changed)
        })?;
        let n = changed.len();
        self.announce(changed);
        Ok(n)
    }

    /// Applies the server's document from a `conflict` answer to the
    /// confirmed copy, without moving the cursor (the change that made it
    /// arrives through the feed, where it is then a no-op). The checksum
    /// follows the confirmed copies, as always.
    pub(crate) fn apply_conflict_document(&self, document: &Document) -> Result<(), Error> {
        let change = Change::from_document(document, None, None);
        let changed = self.with_writer(|writer| {
            let Writer {
                conn,
                clock,
                policies,
            } = writer;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let shortcuts = Shortcuts::load(&tx)?;
            let mut cursor = load_cursors(&tx)?
                .remove(document.space.as_str())
                .unwrap_or(Cursor {
                    rev: 0,
                    checksum: SpaceChecksum::default(),
                });
            let changed = apply_one(&tx, policies, clock, &shortcuts, &mut cursor, change, false)?;
            save_cursor(&tx, document.space.as_str(), &cursor)?;
            device::save_clock(&tx, &clock.last())?;
            tx.commit()?;
            Ok(changed)
        })?;
        self.announce(changed.into_iter().collect());
        Ok(())
    }

    /// Settles a conflict in one transaction: the server's document (if
    /// any) becomes the confirmed copy, the document's unconfirmed entries
    /// (the write in conflict and those made on top of it) are discarded,
    /// the resolution is written on top as a new entry, and the conflict
    /// log records it. A crash anywhere inside leaves everything as it was
    /// before, the local entries included: the write goes out again, meets
    /// the conflict again, and is settled again. Returns the fields the
    /// document ends with (`None`: deleted or absent).
    pub(crate) fn settle_conflict(
        &self,
        doc: &DocRef,
        remote: Option<&Document>,
        settlement: Settlement,
        log: &ConflictLogEntry<'_>,
    ) -> Result<Option<String>, Error> {
        let (changed, resolved) = self.with_writer(|writer| {
            let Writer {
                conn,
                clock,
                policies,
            } = writer;
            let policy = policy_of(policies, &doc.collection);
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut changed = Vec::new();
            if let Some(document) = remote {
                let shortcuts = Shortcuts::load(&tx)?;
                let mut cursor = load_cursors(&tx)?
                    .remove(document.space.as_str())
                    .unwrap_or(Cursor {
                        rev: 0,
                        checksum: SpaceChecksum::default(),
                    });
                let change = Change::from_document(document, None, None);
                changed.extend(apply_one(
                    &tx,
                    policies,
                    clock,
                    &shortcuts,
                    &mut cursor,
                    change,
                    false,
                )?);
                save_cursor(&tx, document.space.as_str(), &cursor)?;
            }
            for id in outbox::unconfirmed_of(&tx, doc)? {
                outbox::remove_in(&tx, &id)?;
            }
            rebuild_view(&tx, doc, &policy)?;
            // A crash here used to lose the user's version: its entries were
            // discarded in transactions of their own before the resolution
            // was written. Now it rolls back with the rest.
            fail::fail_point!("core.conflict.before_resolution");
            let (winner, resolved) = match settlement {
                Settlement::KeepRemote => ("remote", log.remote.map(str::to_owned)),
                Settlement::Write { winner, write } => {
                    let (written, _) = write_in(
                        &tx,
                        clock,
                        &policy,
                        self.max_document_bytes,
                        doc,
                        write,
                        None,
                    )?;
                    (winner, (!written.deleted).then_some(written.fields_json))
                }
            };
            log_conflict_in(&tx, doc, log, winner, resolved.as_deref())?;
            device::save_clock(&tx, &clock.last())?;
            tx.commit()?;
            changed.push(doc.clone());
            Ok((changed, resolved))
        })?;
        self.announce(changed);
        Ok(resolved)
    }

    /// Starts a re-sync of `space` from revision 0: marks its confirmed
    /// documents, forgets its evicted ones (the server sends everything
    /// again) and resets its cursor and checksum.
    pub(crate) fn begin_resync(&self, space: &SpaceId) -> Result<(), Error> {
        self.with_writer(|writer| {
            let tx = writer
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            begin_resync_in(&tx, space)?;
            tx.commit()?;
            Ok(())
        })
    }

    /// What a `welcome` changes, in one transaction: the collections'
    /// policies (`policies`, each rebuilding the views it affects), spaces
    /// to fetch again from 0 (`resync`) and spaces the user left
    /// (`dropped`).
    pub(crate) fn apply_welcome(
        &self,
        policies: &[(Collection, CollectionPolicy)],
        resync: &[SpaceId],
        dropped: &[SpaceId],
    ) -> Result<(), Error> {
        if policies.is_empty() && resync.is_empty() && dropped.is_empty() {
            return Ok(());
        }
        let changed = self.with_writer(|writer| {
            let tx = writer
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut changed = Vec::new();
            for (collection, policy) in policies {
                changed.extend(set_policy_in(&tx, collection, policy)?);
            }
            for space in resync {
                begin_resync_in(&tx, space)?;
            }
            let mut known = writer.policies.clone();
            for (collection, policy) in policies {
                known.insert(collection.clone(), policy.clone());
            }
            for space in dropped {
                changed.extend(drop_space_in(&tx, &known, space)?);
            }
            tx.commit()?;
            writer.policies = known;
            Ok(changed)
        })?;
        self.announce(changed);
        Ok(())
    }

    /// The spaces with a re-sync that has not finished (after a restart it
    /// starts over).
    pub(crate) fn resyncing_spaces(&self) -> Result<Vec<SpaceId>, Error> {
        self.with_writer(|writer| {
            let mut stmt = writer
                .conn
                .prepare_cached("SELECT DISTINCT space FROM resync_marks")?;
            let rows = stmt.query_map([], |row| row.get::<_, String>(0))?;
            let mut out = Vec::new();
            for row in rows {
                out.push(
                    SpaceId::new(row?).map_err(|e| Error::CorruptStore(format!("space: {e}")))?,
                );
            }
            Ok(out)
        })
    }

    /// The user is no longer a member of `space`: its confirmed documents,
    /// cursor and bookkeeping go; documents with pending writes keep them
    /// (the server will refuse those, and they fail).
    pub(crate) fn drop_space(&self, space: &SpaceId) -> Result<(), Error> {
        let changed = self.with_writer(|writer| {
            let tx = writer
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let changed = drop_space_in(&tx, &writer.policies, space)?;
            tx.commit()?;
            Ok(changed)
        })?;
        self.announce(changed);
        Ok(())
    }

    /// The confirmed copy of one document (for conflict handlers).
    pub(crate) fn confirmed(&self, doc: &DocRef) -> Result<Option<Document>, Error> {
        self.with_writer(|writer| {
            let tx = writer.conn.transaction()?;
            let found = read_confirmed(&tx, doc)?;
            tx.commit()?;
            Ok(found)
        })
    }
}

impl Store {
    /// Rebuilds the view of one document (see [`rebuild_view`]).
    #[cfg_attr(not(test), expect(dead_code, reason = "for tests and repairs"))]
    pub(crate) fn rebuild(
        &self,
        doc: &DocRef,
    ) -> Result<Option<crate::document::LocalDocument>, Error> {
        let view = self.with_writer(|writer| {
            let tx = writer
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let view = rebuild_view(&tx, doc, &policy_of(&writer.policies, &doc.collection))?;
            tx.commit()?;
            Ok(view)
        })?;
        self.announce(vec![doc.clone()]);
        Ok(view)
    }
}
/// The documents of `space` a statement returns as `(collection, id)`
/// rows.
fn doc_rows(
    stmt: &mut rusqlite::Statement<'_>,
    params: impl rusqlite::Params,
    space: &str,
) -> Result<Vec<DocRef>, Error> {
    let rows = stmt.query_map(params, |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
    })?;
    let mut docs = Vec::new();
    for row in rows {
        let (collection, id) = row?;
        docs.push(doc_ref(space, &collection, &id)?);
    }
    Ok(docs)
}

/// Starts a re-sync of `space` inside `tx` (see [`Store::begin_resync`]).
fn begin_resync_in(tx: &Transaction<'_>, space: &SpaceId) -> Result<(), Error> {
    tx.execute(
        "DELETE FROM resync_marks WHERE space = ?1",
        [space.as_str()],
    )?;
    tx.execute(
        "INSERT INTO resync_marks (space, collection, id)
         SELECT space, collection, id FROM confirmed WHERE space = ?1
         UNION
         SELECT space, collection, id FROM documents
         WHERE space = ?1 AND version IS NOT NULL",
        [space.as_str()],
    )?;
    tx.execute("DELETE FROM evicted WHERE space = ?1", [space.as_str()])?;
    save_cursor(
        tx,
        space.as_str(),
        &Cursor {
            rev: 0,
            checksum: SpaceChecksum::default(),
        },
    )?;
    Ok(())
}

/// Drops `space` inside `tx` (see [`Store::drop_space`]); returns the
/// documents whose view changed or went.
fn drop_space_in(
    tx: &Transaction<'_>,
    policies: &HashMap<Collection, CollectionPolicy>,
    space: &SpaceId,
) -> Result<Vec<DocRef>, Error> {
    let s = space.as_str();
    let pending = doc_rows(
        &mut tx.prepare("SELECT DISTINCT collection, doc_id FROM outbox WHERE space = ?1")?,
        [s],
        s,
    )?;
    let gone = doc_rows(
        &mut tx.prepare(
            "DELETE FROM documents WHERE space = ?1 AND pending = 0 RETURNING collection, id",
        )?,
        [s],
        s,
    )?;
    for table in ["confirmed", "resync_marks", "evicted", "document_access"] {
        tx.execute(&format!("DELETE FROM {table} WHERE space = ?1"), [s])?;
    }
    tx.execute("DELETE FROM cursors WHERE space = ?1", [s])?;
    for doc in &pending {
        rebuild_view(tx, doc, &policy_of(policies, &doc.collection))?;
    }
    Ok(pending.into_iter().chain(gone).collect())
}
