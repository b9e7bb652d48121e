//! The outbox: the durable queue of this device's mutations.
//!
//! Every local write appends one entry (a protocol [`Mutation`], whose
//! `mutation_id` is the idempotency key) in the same transaction that
//! changes the document's local view, so there is never a view change
//! without its entry or an entry without its view change.
//!
//! # Ordering
//!
//! Entries are numbered by `seq` in commit order (there is one writer). The
//! sync engine sends them in `seq` order, in batches, several batches in
//! flight (the server applies a connection's batches in order). Within one
//! document order is kept strictly: no entry is sent while an earlier entry
//! of the same document waits for a retry, so the server applies a
//! document's writes in the order they were made. In a version-checked
//! collection (`server_wins`, `manual`) an entry also waits until every
//! earlier entry of its document is acknowledged, and is then sent with the
//! earlier one's revision as its `base_version` (it was written on top of
//! that entry, so checking it against the version before would make it
//! conflict with itself; an entry written after that ack, before the
//! change carrying it arrives, takes the revision when it is written).
//! Entries of different documents never wait for each other.
//!
//! # States
//!
//! ```text
//! queued ──send──▶ in_flight ──ack──▶ (removed)
//!    ▲                 │
//!    │                 ├─transient error──▶ retrying (attempt n, next_attempt_at) ──due──▶ sent again
//!    │                 └─permanent error or attempts exhausted──▶ failed (reason)
//!    └──────────── app retries a failed entry ◀─────────────────────────┘
//! ```
//!
//! - `queued`: written, not sent on the current connection.
//! - `in_flight`: sent on the current connection, no answer yet.
//! - `retrying`: a send failed in a way that may pass (connection lost,
//!   server busy, rate limited); `attempt` counts the failures and
//!   `next_attempt_at` (ms since the epoch) is when to send again. The
//!   engine chooses the time: exponential backoff with jitter, capped.
//! - `failed`: the server refused the mutation for good (policy,
//!   validation, permission) or the attempts ran out; `failure` says why.
//! - acknowledged (`in_flight` with `acked_rev` set): the server applied it
//!   at `acked_rev`. It stays in the view until the space's cursor reaches
//!   that revision, and is deleted in the transaction that applies the
//!   change carrying it (or, for an ack of a revision the cursor already
//!   passed, at once), so the local view never falls back to the old value
//!   in between. It is never sent again.
//!
//! Whatever deletes entries saves the device clock first, in the same
//! transaction: the newest entry's stamp is where the clock resumes after a
//! restart (`store/device.rs`).
//!
//! # Wedged states
//!
//! Nothing stops the queue as a whole. A `failed` entry stays, rolled back
//! from the local view (the view is rebuilt without it), until the app
//! retries it (back to `queued`, and into the view again) or discards it
//! (deleted); it holds back nothing, not even later entries of its own
//! document, which the server judges on their own. A `retrying`
//! entry holds back only later entries of its own document, and only until
//! it is due. `in_flight` cannot outlive its connection: the engine puts
//! in-flight entries back to `queued` when the connection drops.
//!
//! # Restart
//!
//! The outbox is in the database, so it survives the app being killed and
//! the device rebooting (within the limits of the configured
//! [`Durability`](crate::Durability)). A crash during a write leaves either
//! both the view change and the entry or neither. On open, `in_flight`
//! entries go back to `queued`: whether the server received them is
//! unknown, and sending them again is safe because the server applies a
//! `mutation_id` at most once and answers a repeat with the first result.
//! `retrying` entries keep their attempt count and time; `failed` entries
//! stay failed.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};
use tandem_protocol::{Collection, CollectionPolicy, HybridClock, Mutation, MutationId};

use crate::clock::now_millis;
use crate::document::DocRef;
use crate::error::Error;
use crate::store::views::rebuild_view;
use crate::store::{Store, Writer, device, from_sql_int, policy_of, to_sql_int};

/// The state of an outbox entry (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum OutboxState {
    /// Waiting to be sent.
    Queued,
    /// Sent on the current connection, not answered yet.
    InFlight,
    /// A send failed and will be retried.
    Retrying {
        /// How many sends have failed.
        attempt: u32,
        /// When to send again, in ms since the Unix epoch.
        next_attempt_at_ms: u64,
    },
    /// Refused for good; waits for the app to retry or discard it.
    Failed {
        /// Why.
        reason: String,
    },
}

/// An outbox entry as the app sees it ([`Client::pending_mutations`](crate::Client::pending_mutations)).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PendingMutation {
    /// Position in the outbox; entries are sent in this order.
    pub seq: u64,
    /// The idempotency key.
    pub mutation_id: String,
    /// The document's space.
    pub space: String,
    /// The document's collection.
    pub collection: String,
    /// The document's id.
    pub doc_id: String,
    /// `put`, `patch`, `delete`, `set_add` or `set_remove`.
    pub operation: String,
    /// Where it is in its life.
    #[serde(flatten)]
    pub state: OutboxState,
    /// How many sends of it failed: transient failures counted for its
    /// retries, and for a failed entry the send that failed it too (a
    /// dropped connection counts nothing). Back to 0 when the app retries
    /// a failed entry.
    pub attempts: u32,
    /// When the write was made, in ms since the Unix epoch.
    pub created_at_ms: u64,
    /// The whole mutation as the protocol encodes it.
    pub mutation_json: String,
}

/// An outbox entry as the sync engine handles it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OutboxEntry {
    pub seq: u64,
    pub mutation: Mutation,
    pub state: OutboxState,
    /// How many sends of it have failed so far.
    pub attempt: u32,
    /// The size of the mutation as JSON: what it adds to a `push`.
    pub encoded_len: usize,
}

/// How much one `push` may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchLimit {
    /// Mutations, at most.
    pub mutations: usize,
    /// Bytes of the mutations as JSON, at most (the server's frame limit
    /// less the envelope); a batch holds at least one mutation whatever its
    /// size.
    pub bytes: usize,
}

impl BatchLimit {
    /// A limit on the count only.
    #[cfg(test)]
    pub fn mutations(mutations: usize) -> BatchLimit {
        BatchLimit {
            mutations,
            bytes: usize::MAX,
        }
    }
}

/// Appends `mutation` as a queued entry; part of the write's transaction.
pub(crate) fn append(tx: &Transaction<'_>, mutation: &Mutation) -> Result<(), Error> {
    let json = serde_json::to_string(mutation)
        .map_err(|e| Error::CorruptStore(format!("mutation {}: {e}", mutation.mutation_id)))?;
    tx.prepare_cached(
        "INSERT INTO outbox (mutation_id, space, collection, doc_id, mutation, state, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, 'queued', ?6)",
    )?
    .execute(params![
        mutation.mutation_id.to_string(),
        mutation.space.as_str(),
        mutation.collection.as_str(),
        mutation.doc_id.as_str(),
        json,
        to_sql_int(now_millis()),
    ])?;
    Ok(())
}

/// Puts every in-flight entry back in the queue (at open, and when the
/// connection that carried them is gone).
pub(crate) fn requeue_in_flight(conn: &Connection) -> Result<usize, Error> {
    // An acknowledged entry waiting for its change is done: the server has
    // it, so it is never sent again.
    Ok(conn.execute(
        "UPDATE outbox SET state = 'queued' WHERE state = 'in_flight' AND acked_rev IS NULL",
        [],
    )?)
}

const ENTRY_COLUMNS: &str = "seq, mutation, state, attempt, next_attempt_at, failure, created_at";

fn state_of(row: &Row<'_>) -> rusqlite::Result<Result<OutboxState, Error>> {
    let state: String = row.get(2)?;
    let attempt: i64 = row.get(3)?;
    let next: Option<i64> = row.get(4)?;
    let failure: Option<String> = row.get(5)?;
    Ok(match state.as_str() {
        "queued" => Ok(OutboxState::Queued),
        "in_flight" => Ok(OutboxState::InFlight),
        "retrying" => u32::try_from(attempt)
            .map_err(|_| Error::CorruptStore(format!("outbox attempt {attempt}")))
            .and_then(|attempt| {
                Ok(OutboxState::Retrying {
                    attempt,
                    next_attempt_at_ms: from_sql_int(next.unwrap_or(0), "next attempt")?,
                })
            }),
        "failed" => Ok(OutboxState::Failed {
            reason: failure.unwrap_or_default(),
        }),
        other => Err(Error::CorruptStore(format!("outbox state {other:?}"))),
    })
}

fn entry_of(row: &Row<'_>) -> rusqlite::Result<Result<(OutboxEntry, String, u64), Error>> {
    let seq: i64 = row.get(0)?;
    let json: String = row.get(1)?;
    let created: i64 = row.get(6)?;
    let state = state_of(row)?;
    let attempt: i64 = row.get(3)?;
    Ok((|| {
        let mutation: Mutation = serde_json::from_str(&json)
            .map_err(|e| Error::CorruptStore(format!("outbox entry {seq}: {e}")))?;
        Ok((
            OutboxEntry {
                seq: from_sql_int(seq, "outbox seq")?,
                mutation,
                state: state?,
                attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
                encoded_len: json.len(),
            },
            json,
            from_sql_int(created, "created_at")?,
        ))
    })())
}

/// Every entry, in seq order.
pub(crate) fn list(conn: &Connection) -> Result<Vec<PendingMutation>, Error> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {ENTRY_COLUMNS} FROM outbox ORDER BY seq"))?;
    let rows = stmt.query_map([], entry_of)?;
    let mut out = Vec::new();
    for row in rows {
        let (entry, json, created_at_ms) = row??;
        let m = entry.mutation;
        // The column counts the transient failures; the refusal (or the
        // last failure, when the attempts ran out) that failed an entry is
        // not added to it.
        let attempts = match entry.state {
            OutboxState::Failed { .. } => entry.attempt.saturating_add(1),
            _ => entry.attempt,
        };
        out.push(PendingMutation {
            seq: entry.seq,
            mutation_id: m.mutation_id.to_string(),
            space: m.space.to_string(),
            collection: m.collection.to_string(),
            doc_id: m.doc_id.to_string(),
            operation: m.op.name().to_owned(),
            state: entry.state,
            attempts,
            created_at_ms,
            mutation_json: json,
        });
    }
    Ok(out)
}

/// (entries not failed, failed entries).
pub(crate) fn counts(conn: &Connection) -> Result<(u64, u64), Error> {
    let (all, failed): (i64, i64) = conn
        .prepare_cached(
            "SELECT (SELECT count(*) FROM outbox),
                    (SELECT count(*) FROM outbox WHERE state = 'failed')",
        )?
        .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))?;
    let all = from_sql_int(all, "outbox count")?;
    let failed = from_sql_int(failed, "failed count")?;
    Ok((all.saturating_sub(failed), failed))
}

/// The highest revision at which the server acknowledged an entry of `doc`
/// whose change has not arrived yet.
pub(crate) fn latest_acked_rev(tx: &Transaction<'_>, doc: &DocRef) -> Result<Option<u64>, Error> {
    let rev: Option<i64> = tx
        .prepare_cached(
            "SELECT max(acked_rev) FROM outbox
             WHERE space = ?1 AND collection = ?2 AND doc_id = ?3 AND state != 'failed'",
        )?
        .query_row(
            params![doc.space.as_str(), doc.collection.as_str(), doc.id.as_str()],
            |row| row.get(0),
        )?;
    rev.map(|r| from_sql_int(r, "acked rev")).transpose()
}

impl Store {
    /// Every outbox entry, in seq order.
    pub fn pending_mutations(&self) -> Result<Vec<PendingMutation>, Error> {
        self.readers.with(list)
    }

    /// (entries not failed, failed entries).
    pub fn outbox_counts(&self) -> Result<(u64, u64), Error> {
        self.readers.with(counts)
    }
}

/// The transitions the sync engine drives.
impl Store {
    /// Up to `limit` entries that may be sent now, in seq order, marked
    /// `in_flight`: queued entries and retrying entries that are due, except
    /// those behind a not-yet-due retry of the same document, and, in
    /// version-checked collections (`server_wins`, `manual`), those behind
    /// any unacknowledged entry of the same document: such an entry was
    /// written on top of the earlier one, so it is sent once the earlier
    /// one's revision is known and becomes its `base_version`
    /// ([`EntryOutcome::Acked`]).
    pub(crate) fn take_sendable(
        &self,
        limit: BatchLimit,
        now_ms: u64,
    ) -> Result<Vec<OutboxEntry>, Error> {
        self.with_writer(|writer| {
            let tx = writer
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let entries = {
                let mut stmt = tx.prepare_cached(&format!(
                    "SELECT {ENTRY_COLUMNS} FROM outbox AS o
                     WHERE (state = 'queued' OR (state = 'retrying' AND next_attempt_at <= ?1))
                       AND NOT EXISTS (
                           SELECT 1 FROM outbox AS e
                           WHERE e.space = o.space AND e.collection = o.collection
                             AND e.doc_id = o.doc_id AND e.seq < o.seq
                             AND e.state = 'retrying' AND e.next_attempt_at > ?1)
                       AND NOT (
                           o.collection IN (SELECT collection FROM policies
                               WHERE json_extract(policy, '$.policy') IN ('server_wins', 'manual'))
                           AND json_extract(o.mutation, '$.op.type') NOT IN ('set_add', 'set_remove')
                           AND EXISTS (
                               SELECT 1 FROM outbox AS e
                               WHERE e.space = o.space AND e.collection = o.collection
                                 AND e.doc_id = o.doc_id AND e.seq < o.seq
                                 AND e.state != 'failed' AND e.acked_rev IS NULL))
                     ORDER BY seq LIMIT ?2"
                ))?;
                let rows = stmt.query_map(
                    params![
                        to_sql_int(now_ms),
                        i64::try_from(limit.mutations).unwrap_or(i64::MAX)
                    ],
                    entry_of,
                )?;
                let mut entries: Vec<OutboxEntry> = Vec::new();
                let mut bytes = 0usize;
                for row in rows {
                    let entry = row??.0;
                    // A comma between mutations.
                    let more = entry.encoded_len + 1;
                    if !entries.is_empty() && bytes + more > limit.bytes {
                        break;
                    }
                    bytes += more;
                    entries.push(entry);
                }
                entries
            };
            if entries.is_empty() {
                // Nothing to mark: no write (the transaction rolls back).
                return Ok(entries);
            }
            {
                let mut mark =
                    tx.prepare_cached("UPDATE outbox SET state = 'in_flight' WHERE seq = ?1")?;
                for entry in &entries {
                    mark.execute([to_sql_int(entry.seq)])?;
                }
            }
            tx.commit()?;
            Ok(entries
                .into_iter()
                .map(|e| OutboxEntry {
                    state: OutboxState::InFlight,
                    ..e
                })
                .collect())
        })
    }

    /// The connection that carried the in-flight entries is gone.
    pub(crate) fn requeue_in_flight(&self) -> Result<usize, Error> {
        self.with_writer(|writer| requeue_in_flight(&writer.conn))
    }

    /// Records what became of sent entries, in one transaction: an answer
    /// to a whole batch (every acknowledgement and refusal of a 500-entry
    /// `ack`), or the retries of a batch that went unanswered. Views of
    /// the documents whose entries failed or left the outbox are rebuilt
    /// in the same transaction; observers hear of them after the commit.
    pub(crate) fn record_outcomes(
        &self,
        outcomes: &[(MutationId, EntryOutcome)],
    ) -> Result<usize, Error> {
        if outcomes.is_empty() {
            return Ok(0);
        }
        let changed = self.with_writer(|writer| {
            let Writer {
                conn,
                clock,
                policies,
            } = writer;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut changed = Vec::new();
            let mut clock_saved = false;
            for (id, outcome) in outcomes {
                match outcome {
                    EntryOutcome::Acked { rev } => {
                        if let Some(doc) =
                            acked_in(&tx, policies, clock, id, *rev, &mut clock_saved)?
                        {
                            changed.push(doc);
                        }
                    }
                    EntryOutcome::Failed { reason } => {
                        if let Some(doc) = failed_in(&tx, policies, id, reason)? {
                            changed.push(doc);
                        }
                    }
                    EntryOutcome::Retry { at_ms } => retrying_in(&tx, id, *at_ms)?,
                }
            }
            tx.commit()?;
            Ok(changed)
        })?;
        let n = changed.len();
        self.announce(changed);
        Ok(n)
    }

    /// The app asks to send a failed entry again; its effect is back in the
    /// view.
    pub(crate) fn retry_failed(&self, id: &MutationId) -> Result<bool, Error> {
        let doc = self.with_writer(|writer| {
            let tx = writer
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let changed = tx.execute(
                "UPDATE outbox SET state = 'queued', attempt = 0, next_attempt_at = NULL,
                 failure = NULL WHERE mutation_id = ?1 AND state = 'failed'",
                [id.to_string()],
            )? == 1;
            let doc = if changed {
                doc_of_entry(&tx, id)?
            } else {
                None
            };
            if let Some(doc) = &doc {
                rebuild_view(&tx, doc, &policy_of(&writer.policies, &doc.collection))?;
            }
            tx.commit()?;
            Ok(doc)
        })?;
        let retried = doc.is_some();
        self.announce(doc.into_iter().collect());
        Ok(retried)
    }

    /// The earliest time after `now_ms` at which a retrying entry becomes
    /// due. (Entries already due are sent by the next pipeline fill, which
    /// every answer triggers; a timer for them would spin while they wait
    /// for room or for an earlier entry of their document.)
    pub(crate) fn next_retry_at(&self, now_ms: u64) -> Result<Option<u64>, Error> {
        self.with_writer(|writer| {
            let at: Option<i64> = writer
                .conn
                .prepare_cached(
                    "SELECT min(next_attempt_at) FROM outbox
                     WHERE state = 'retrying' AND next_attempt_at > ?1",
                )?
                .query_row([to_sql_int(now_ms)], |row| row.get(0))?;
            at.map(|v| from_sql_int(v, "next attempt")).transpose()
        })
    }

    /// Whether some entry could be sent at `now_ms` (queued, or retrying
    /// and due).
    pub(crate) fn has_sendable(&self, now_ms: u64) -> Result<bool, Error> {
        self.with_writer(|writer| {
            Ok(writer
                .conn
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM outbox WHERE state = 'queued'
                        OR (state = 'retrying' AND next_attempt_at <= ?1))",
                )?
                .query_row([to_sql_int(now_ms)], |row| row.get(0))?)
        })
    }

    /// Whether any entry is acknowledged but not yet confirmed by a change.
    pub(crate) fn has_acked_entries(&self) -> Result<bool, Error> {
        self.with_writer(|writer| {
            Ok(writer
                .conn
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM outbox WHERE acked_rev IS NOT NULL)")?
                .query_row([], |row| row.get(0))?)
        })
    }

    /// The app discards entry `id`: it is deleted and its document's view
    /// rebuilt without it. (An acknowledged entry is deleted by
    /// `apply_remote_change`, together with the confirmed state.)
    pub(crate) fn discard(&self, id: &MutationId) -> Result<bool, Error> {
        let doc = self.with_writer(|writer| {
            let tx = writer
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            // The entry may carry the clock's latest stamp.
            device::save_clock(&tx, &writer.clock.last())?;
            let Some(doc) = remove_in(&tx, id)? else {
                return Ok(None);
            };
            rebuild_view(&tx, &doc, &policy_of(&writer.policies, &doc.collection))?;
            tx.commit()?;
            Ok(Some(doc))
        })?;
        let removed = doc.is_some();
        self.announce(doc.into_iter().collect());
        Ok(removed)
    }
}

/// The entries of the document `doc` that are neither failed nor
/// acknowledged, in seq order: the local changes a conflict concerns.
pub(crate) fn unconfirmed_of(tx: &Transaction<'_>, doc: &DocRef) -> Result<Vec<MutationId>, Error> {
    let mut stmt = tx.prepare_cached(
        "SELECT mutation_id FROM outbox
         WHERE space = ?1 AND collection = ?2 AND doc_id = ?3
           AND state != 'failed' AND acked_rev IS NULL ORDER BY seq",
    )?;
    let rows = stmt.query_map(
        params![doc.space.as_str(), doc.collection.as_str(), doc.id.as_str()],
        |row| row.get::<_, String>(0),
    )?;
    let mut out = Vec::new();
    for row in rows {
        out.push(
            row?.parse()
                .map_err(|e| Error::CorruptStore(format!("outbox mutation id: {e}")))?,
        );
    }
    Ok(out)
}

/// The document of entry `id`.
fn doc_of_entry(tx: &Transaction<'_>, id: &MutationId) -> Result<Option<DocRef>, Error> {
    let row: Option<(String, String, String)> = tx
        .prepare_cached("SELECT space, collection, doc_id FROM outbox WHERE mutation_id = ?1")?
        .query_row([id.to_string()], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .optional()?;
    row.map(|(space, collection, id)| doc_ref(&space, &collection, &id))
        .transpose()
}

/// A document address read back from the database.
pub(crate) fn doc_ref(space: &str, collection: &str, id: &str) -> Result<DocRef, Error> {
    let corrupt = |e: tandem_protocol::IdError| Error::CorruptStore(format!("document key: {e}"));
    Ok(DocRef {
        space: space.parse().map_err(corrupt)?,
        collection: collection.parse().map_err(corrupt)?,
        id: id.parse().map_err(corrupt)?,
    })
}

/// Deletes entry `id`, returning its document.
pub(crate) fn remove_in(tx: &Transaction<'_>, id: &MutationId) -> Result<Option<DocRef>, Error> {
    let mut stmt = tx.prepare_cached(
        "DELETE FROM outbox WHERE mutation_id = ?1 RETURNING space, collection, doc_id",
    )?;
    let mut rows = stmt.query([id.to_string()])?;
    let Some(row) = rows.next()? else {
        return Ok(None);
    };
    let (space, collection, doc_id): (String, String, String) =
        (row.get(0)?, row.get(1)?, row.get(2)?);
    let corrupt = |e: tandem_protocol::IdError| Error::CorruptStore(format!("outbox entry: {e}"));
    Ok(Some(DocRef {
        space: space.parse().map_err(corrupt)?,
        collection: collection.parse().map_err(corrupt)?,
        id: doc_id.parse().map_err(corrupt)?,
    }))
}

/// What became of one sent entry (see [`Store::record_outcomes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EntryOutcome {
    /// The server applied it (or had already) at revision `rev`. The
    /// entry stays in the view until the space's cursor reaches `rev` (the
    /// change carrying it then confirms it, or the sweep in `remote.rs`
    /// removes it), so the value never falls back in between; if the
    /// cursor is already there it is removed now. In a version-checked
    /// collection, the later entries of the document that were written on
    /// top of it take `rev` as their `base_version`.
    Acked {
        /// The revision the server gave it.
        rev: u64,
    },
    /// The server refused it for good (or the attempts ran out): kept as
    /// failed with `reason`, and its document's view rebuilt without it.
    Failed {
        /// Why, for the app.
        reason: String,
    },
    /// A send failed in a way that may pass: count the attempt and send
    /// again at `at_ms`. Only an entry still in flight changes (an answer
    /// may race a dropped connection).
    Retry {
        /// When to send it again, in ms since the Unix epoch.
        at_ms: u64,
    },
}

/// Records an acknowledgement; returns the document if its entry left
/// the outbox now.
fn acked_in(
    tx: &Transaction<'_>,
    policies: &HashMap<Collection, CollectionPolicy>,
    clock: &HybridClock,
    id: &MutationId,
    rev: u64,
    clock_saved: &mut bool,
) -> Result<Option<DocRef>, Error> {
    let row: Option<(i64, String, String, String, Option<i64>)> = tx
        .prepare_cached(
            "SELECT seq, space, collection, doc_id,
                    json_extract(mutation, '$.base_version')
             FROM outbox WHERE mutation_id = ?1",
        )?
        .query_row([id.to_string()], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
            ))
        })
        .optional()?;
    let Some((seq, space, collection, doc_id, base)) = row else {
        return Ok(None);
    };
    let doc = doc_ref(&space, &collection, &doc_id)?;
    let policy = policy_of(policies, &doc.collection);
    if policy.policy.checks_version() {
        // Later entries whose base is this one's base were written on top
        // of it.
        tx.prepare_cached(
            "UPDATE outbox SET mutation = json_set(mutation, '$.base_version', ?1)
             WHERE space = ?2 AND collection = ?3 AND doc_id = ?4 AND seq > ?5
               AND state != 'failed' AND acked_rev IS NULL
               AND json_extract(mutation, '$.base_version') IS ?6
               AND json_extract(mutation, '$.op.type') NOT IN ('set_add', 'set_remove')",
        )?
        .execute(params![
            to_sql_int(rev),
            space,
            collection,
            doc_id,
            seq,
            base
        ])?;
    }
    let cursor: Option<i64> = tx
        .prepare_cached("SELECT rev FROM cursors WHERE space = ?1")?
        .query_row([&space], |row| row.get(0))
        .optional()?;
    if cursor.is_some_and(|c| c >= to_sql_int(rev)) {
        if !*clock_saved {
            device::save_clock(tx, &clock.last())?;
            *clock_saved = true;
        }
        remove_in(tx, id)?;
        rebuild_view(tx, &doc, &policy)?;
        Ok(Some(doc))
    } else {
        tx.prepare_cached(
            "UPDATE outbox SET acked_rev = ?2, state = 'in_flight' WHERE mutation_id = ?1",
        )?
        .execute(params![id.to_string(), to_sql_int(rev)])?;
        Ok(None)
    }
}

/// Fails an entry for good; returns its document, if the entry exists.
fn failed_in(
    tx: &Transaction<'_>,
    policies: &HashMap<Collection, CollectionPolicy>,
    id: &MutationId,
    reason: &str,
) -> Result<Option<DocRef>, Error> {
    let doc = doc_of_entry(tx, id)?;
    tx.prepare_cached(
        "UPDATE outbox SET state = 'failed', failure = ?2, next_attempt_at = NULL
         WHERE mutation_id = ?1",
    )?
    .execute(params![id.to_string(), reason])?;
    if let Some(doc) = &doc {
        rebuild_view(tx, doc, &policy_of(policies, &doc.collection))?;
    }
    Ok(doc)
}

/// Counts an attempt of an in-flight entry and sets when it goes again.
fn retrying_in(tx: &Transaction<'_>, id: &MutationId, at_ms: u64) -> Result<(), Error> {
    tx.prepare_cached(
        "UPDATE outbox SET state = 'retrying', attempt = attempt + 1, next_attempt_at = ?2
         WHERE mutation_id = ?1 AND acked_rev IS NULL",
    )?
    .execute(params![id.to_string(), to_sql_int(at_ms)])?;
    Ok(())
}

/// One outcome at a time, for the store's own tests.
#[cfg(test)]
impl Store {
    pub(crate) fn mark_acked(&self, id: &MutationId, rev: u64) -> Result<bool, Error> {
        Ok(self.record_outcomes(&[(*id, EntryOutcome::Acked { rev })])? == 1)
    }

    pub(crate) fn mark_failed(&self, id: &MutationId, reason: &str) -> Result<(), Error> {
        let reason = reason.to_owned();
        self.record_outcomes(&[(*id, EntryOutcome::Failed { reason })])
            .map(drop)
    }

    pub(crate) fn mark_retrying(&self, id: &MutationId, at_ms: u64) -> Result<(), Error> {
        self.record_outcomes(&[(*id, EntryOutcome::Retry { at_ms })])
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Write;
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

    fn put(store: &Store, id: &str, n: i64) {
        store
            .write(
                &doc(id),
                Write::Put(json!({ "n": n }).as_object().unwrap().clone()),
            )
            .unwrap();
    }

    fn ids(entries: &[OutboxEntry]) -> Vec<(String, u64)> {
        entries
            .iter()
            .map(|e| (e.mutation.doc_id.to_string(), e.seq))
            .collect()
    }

    #[test]
    fn entries_are_sent_in_order_and_a_retry_holds_back_only_its_document() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        put(&store, "a", 1);
        put(&store, "b", 1);
        put(&store, "a", 2);

        let sent = store
            .take_sendable(BatchLimit::mutations(10), 1_000)
            .unwrap();
        assert_eq!(
            ids(&sent),
            vec![("a".into(), 1), ("b".into(), 2), ("a".into(), 3)]
        );
        assert!(sent.iter().all(|e| e.state == OutboxState::InFlight));
        assert!(
            store
                .take_sendable(BatchLimit::mutations(10), 1_000)
                .unwrap()
                .is_empty(),
            "all in flight"
        );

        // The first write of `a` fails transiently; the connection drops.
        let first_a = sent[0].mutation.mutation_id;
        store.mark_retrying(&first_a, 5_000).unwrap();
        store.requeue_in_flight().unwrap();
        // Before it is due: `b` goes, the later write of `a` waits.
        assert_eq!(
            ids(&store
                .take_sendable(BatchLimit::mutations(10), 2_000)
                .unwrap()),
            vec![("b".into(), 2)]
        );
        store.requeue_in_flight().unwrap();
        // When due: both writes of `a`, in order, and `b`.
        assert_eq!(
            ids(&store
                .take_sendable(BatchLimit::mutations(10), 5_000)
                .unwrap()),
            vec![("a".into(), 1), ("b".into(), 2), ("a".into(), 3)]
        );
        let listed = store.pending_mutations().unwrap();
        assert_eq!(listed[0].state, OutboxState::InFlight);
        store.requeue_in_flight().unwrap();
        store.mark_retrying(&first_a, 9_000).unwrap();
        let listed = store.pending_mutations().unwrap();
        assert_eq!(
            listed[0].state,
            OutboxState::Retrying {
                attempt: 2,
                next_attempt_at_ms: 9_000
            }
        );
        assert_eq!(listed[0].attempts, 2);
        // Failing it counts the send that failed it.
        store.mark_failed(&first_a, "validation_failed: x").unwrap();
        assert_eq!(store.pending_mutations().unwrap()[0].attempts, 3);
    }

    #[test]
    fn a_failed_entry_blocks_nothing_and_can_be_retried() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        put(&store, "a", 1);
        put(&store, "a", 2);
        let sent = store.take_sendable(BatchLimit::mutations(1), 0).unwrap();
        let first = sent[0].mutation.mutation_id;
        store
            .mark_failed(&first, "rejected: validation_failed")
            .unwrap();
        assert_eq!(store.outbox_counts().unwrap(), (1, 1));
        // The later write of the same document still goes.
        assert_eq!(
            ids(&store.take_sendable(BatchLimit::mutations(10), 0).unwrap()),
            vec![("a".into(), 2)]
        );
        assert_eq!(
            store.pending_mutations().unwrap()[0].state,
            OutboxState::Failed {
                reason: "rejected: validation_failed".into()
            }
        );
        assert_eq!(store.pending_mutations().unwrap()[0].attempts, 1);
        assert!(store.retry_failed(&first).unwrap());
        assert_eq!(store.outbox_counts().unwrap(), (2, 0));
        assert_eq!(store.pending_mutations().unwrap()[0].attempts, 0);
        assert_eq!(
            ids(&store.take_sendable(BatchLimit::mutations(10), 0).unwrap()),
            vec![("a".into(), 1)]
        );
    }

    #[test]
    fn in_flight_entries_are_queued_again_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open_store(dir.path());
            put(&store, "a", 1);
            assert_eq!(
                store
                    .take_sendable(BatchLimit::mutations(10), 0)
                    .unwrap()
                    .len(),
                1
            );
            store.close();
        }
        let store = open_store(dir.path());
        assert_eq!(
            store.pending_mutations().unwrap()[0].state,
            OutboxState::Queued
        );
        assert_eq!(
            store
                .take_sendable(BatchLimit::mutations(10), 0)
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn a_write_on_top_of_an_acknowledged_entry_is_based_on_its_revision() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let notes = Collection::new("notes").unwrap();
        store
            .set_policy(
                &notes,
                &tandem_protocol::CollectionPolicy::of(tandem_protocol::Policy::ServerWins),
            )
            .unwrap();
        let note = DocRef {
            collection: notes,
            ..doc("n")
        };
        let put = |n: i64| {
            store
                .write(
                    &note,
                    Write::Put(json!({ "n": n }).as_object().unwrap().clone()),
                )
                .unwrap();
        };
        put(1);
        let first = store.take_sendable(BatchLimit::mutations(10), 0).unwrap();
        assert_eq!(first[0].mutation.base_version, None);
        // The server applied it at revision 7; its change has not arrived.
        assert!(!store.mark_acked(&first[0].mutation.mutation_id, 7).unwrap());
        put(2);
        let second = store.take_sendable(BatchLimit::mutations(10), 0).unwrap();
        assert_eq!(
            second[0].mutation.base_version,
            Some(7),
            "made on top of the acknowledged write"
        );
    }

    #[test]
    fn discarding_an_entry_rebuilds_the_view_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        put(&store, "a", 1);
        put(&store, "a", 2);
        let entries = store.pending_mutations().unwrap();
        let second: MutationId = entries[1].mutation_id.parse().unwrap();
        assert!(store.discard(&second).unwrap());
        let view = store.get(&doc("a")).unwrap().unwrap();
        assert_eq!(view.fields().unwrap()["n"], json!(1));
        assert!(view.pending);
        let first: MutationId = entries[0].mutation_id.parse().unwrap();
        assert!(store.discard(&first).unwrap());
        // Nothing confirmed and nothing pending: the document is gone.
        assert!(store.get(&doc("a")).unwrap().is_none());
        assert_eq!(count(&store, "SELECT count(*) FROM outbox"), 0);
        assert!(!store.discard(&first).unwrap());
    }
}

#[cfg(test)]
#[path = "outbox_model_tests.rs"]
mod model_tests;
