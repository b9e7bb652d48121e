//! Conflicts: asking the app, and settling its answer in one transaction.
//!
//! A `conflict` answer to a write parks it: the engine hands the app a
//! [`Conflict`] through [`Action::ResolveConflict`] and keeps the write in
//! flight, so the app's handler runs wherever its host puts it (off the
//! engine's task; a dialog may take minutes). [`Event::ConflictResolved`]
//! settles it in one transaction (`Store::settle_conflict`): the server's
//! document becomes the confirmed copy, the document's unconfirmed
//! entries are discarded, the resolution is written on top as a new entry
//! and the conflict log records it. A crash anywhere before the commit
//! leaves the write in the outbox: it goes out again, meets the conflict
//! again, and the app is asked again.
//!
//! An answer that comes after the connection was lost is ignored for the
//! same reason: the write was queued again with the connection's other
//! in-flight entries, and the server's next answer asks again.

use tandem_protocol::Document;

use super::{Action, Connection, Engine, fields_text, parse_fields};
use crate::document::DocRef;
use crate::error::Error;
use crate::store::{ConflictLogEntry, OutboxEntry, Settlement, Write};
use crate::sync::conflict::{Conflict, Resolution};

/// A conflict the app is deciding.
#[derive(Debug, Clone)]
pub(super) struct Parked {
    doc: DocRef,
    /// The server's document (`None`: it has none).
    remote: Option<Document>,
    /// What the handler was shown.
    conflict: Conflict,
}

impl Engine {
    /// A `conflict` answer to `entry`: ask the app.
    pub(super) fn ask_about_conflict(
        &mut self,
        entry: &OutboxEntry,
        remote: Option<Document>,
    ) -> Result<(), Error> {
        let m = &entry.mutation;
        let doc = DocRef {
            space: m.space.clone(),
            collection: m.collection.clone(),
            id: m.doc_id.clone(),
        };
        let policy = self
            .store
            .policies()
            .get(&doc.collection)
            .cloned()
            .unwrap_or_default();
        let local_json = self
            .store
            .get(&doc)?
            .filter(|d| !d.deleted)
            .map(|d| d.fields_json);
        let base_json = self
            .store
            .confirmed(&doc)?
            .filter(|d| !d.is_deleted())
            .map(|d| fields_text(&d));
        let remote_json = remote.as_ref().filter(|d| !d.is_deleted()).map(fields_text);
        let conflict = Conflict {
            space: doc.space.to_string(),
            collection: doc.collection.to_string(),
            doc_id: doc.id.to_string(),
            policy: policy.policy.name().to_owned(),
            local_json,
            remote_json,
            remote_version: remote.as_ref().and_then(|d| d.version),
            base_json,
        };
        let Connection::Open(session) = &mut self.connection else {
            return Ok(());
        };
        let id = self.next_conflict_id;
        self.next_conflict_id += 1;
        session.conflicts.insert(
            id,
            Parked {
                doc,
                remote,
                conflict: conflict.clone(),
            },
        );
        self.out.push(Action::ResolveConflict { id, conflict });
        Ok(())
    }

    /// The app decided conflict `id`: settle it in one transaction.
    pub(super) fn on_conflict_resolved(
        &mut self,
        id: u64,
        resolution: Resolution,
    ) -> Result<(), Error> {
        let Connection::Open(session) = &mut self.connection else {
            return Ok(());
        };
        let Some(parked) = session.conflicts.remove(&id) else {
            // Asked on a connection that is gone: asked again since.
            return Ok(());
        };
        let Parked {
            doc,
            remote,
            conflict,
        } = parked;
        // The local side as it is now: a write made while the app was
        // deciding is part of what "keep local" keeps.
        let local_now = self
            .store
            .get(&doc)?
            .filter(|d| !d.deleted)
            .map(|d| d.fields_json);
        let keep_local = || -> Result<Settlement, Error> {
            Ok(Settlement::Write {
                winner: "local",
                write: match &local_now {
                    Some(fields) => Write::Put(parse_fields(fields)?),
                    None => Write::Delete,
                },
            })
        };
        let settlement = match resolution {
            Resolution::KeepRemote => Settlement::KeepRemote,
            Resolution::KeepLocal => keep_local()?,
            Resolution::Merged { fields_json } => match parse_fields(&fields_json) {
                Ok(fields) => Settlement::Write {
                    winner: "merged",
                    write: Write::Put(fields),
                },
                Err(e) => {
                    // Losing the user's version over a handler's bad answer
                    // would be worse than keeping it.
                    tracing::warn!(target: "tandem_core", doc = %doc.id, error = %e, "the conflict handler's merged value is not a JSON object: keeping the local version");
                    keep_local()?
                }
            },
        };
        let log = ConflictLogEntry {
            rule: &conflict.policy,
            local: local_now.as_deref(),
            remote: conflict.remote_json.as_deref(),
        };
        let merged = matches!(
            settlement,
            Settlement::Write {
                winner: "merged",
                ..
            }
        );
        match self
            .store
            .settle_conflict(&doc, remote.as_ref(), settlement, &log)
        {
            Ok(_) => {}
            Err(e) if merged && e.is_invalid_input() => {
                // Nothing was written (the transaction rolled back whole).
                tracing::warn!(target: "tandem_core", doc = %doc.id, error = %e, "the conflict handler's merged value cannot be written: keeping the local version");
                self.store
                    .settle_conflict(&doc, remote.as_ref(), keep_local()?, &log)?;
            }
            Err(e) => return Err(e),
        }
        if let (Some(remote), Connection::Open(session)) = (&remote, &mut self.connection) {
            let cursor = self
                .store
                .cursors()?
                .get(doc.space.as_str())
                .map_or(0, |c| c.rev);
            if let Some(v) = remote.version
                && v > cursor
            {
                let ahead = session.ahead.entry(doc.space.clone()).or_insert(0);
                *ahead = (*ahead).max(v);
            }
            // The document is local now: a catch-up page listing it must
            // merge with it.
            if let Some(sp) = session.spaces.get_mut(&doc.space) {
                sp.fresh = false;
                sp.fresh_below = None;
            }
        }
        self.status_changed = true;
        // The settled entries left the outbox: later writes may go.
        self.fill_pipeline()
    }
}
