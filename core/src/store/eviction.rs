//! Keeping the database within a byte budget by evicting documents.
//!
//! An app may give the client a budget ([`ClientConfig::cache_limit_bytes`])
//! and name the collections whose documents may be dropped from the device
//! and fetched again when needed ([`ClientConfig::evictable_collections`]):
//! photos, message history, anything the server keeps anyway. When the
//! database's used pages exceed the budget, the least recently used
//! documents of those collections are evicted, oldest first, until it fits
//! or nothing more may go.
//!
//! - Never evicted: documents with any outbox entry (pending or failed),
//!   documents never confirmed by the server, documents of other
//!   collections.
//! - "Used" is when the app last read (`get`) or wrote the document on this
//!   device. Reads are noted in memory and written to `document_access`
//!   when eviction runs, so reading stays free of writes.
//! - What stays: a row in `evicted` with the document's version. The space's
//!   checksum still counts the document at that version, so a later change
//!   subtracts the right hash (`store/remote.rs`) and brings the document
//!   back; a re-sync forgets the rows (everything is sent again).
//! - A later `get` answers [`Error::NotLocal`]; `Client::fetch` asks the
//!   server for exactly that document (the pull endpoint from `version - 1`
//!   with a limit of one: versions are unique per space, and an evicted
//!   document is at its recorded version, or its change would have brought
//!   it back).
//!
//! [`ClientConfig::cache_limit_bytes`]: crate::ClientConfig::cache_limit_bytes
//! [`ClientConfig::evictable_collections`]: crate::ClientConfig::evictable_collections

use std::collections::HashMap;
use std::sync::Mutex;

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use crate::clock::now_millis;
use crate::document::DocRef;
use crate::error::Error;
use crate::store::{Store, from_sql_int, lock, to_sql_int};

/// Candidates read per round; a round evicts only as many as free the
/// excess (by their stored size), so the database ends close under its
/// budget rather than far below.
const ROUND: i64 = 256;

/// The budget and what may be evicted.
#[derive(Debug, Default)]
pub(crate) struct CachePolicy {
    /// The budget for the database's used pages, in bytes.
    pub limit_bytes: Option<u64>,
    /// Collections whose documents may be evicted.
    pub evictable: Vec<String>,
    /// Reads noted since eviction last ran: document → ms since the epoch.
    pub touched: Mutex<HashMap<DocRef, u64>>,
}

impl CachePolicy {
    /// Notes that the app used `doc` now (only if eviction can concern it).
    pub fn touch(&self, doc: &DocRef) {
        if self.limit_bytes.is_some()
            && self
                .evictable
                .iter()
                .any(|c| c.as_str() == doc.collection.as_str())
        {
            lock(&self.touched).insert(doc.clone(), now_millis());
        }
    }
}

impl Store {
    /// Whether `doc` was evicted (and is not on the device now); its
    /// version if so.
    pub(crate) fn evicted_version(&self, doc: &DocRef) -> Result<Option<u64>, Error> {
        self.readers.with(|conn| {
            conn.prepare_cached(
                "SELECT version FROM evicted WHERE space = ?1 AND collection = ?2 AND id = ?3",
            )?
            .query_row(
                params![doc.space.as_str(), doc.collection.as_str(), doc.id.as_str()],
                |row| row.get::<_, i64>(0),
            )
            .optional()?
            .map(|v| from_sql_int(v, "evicted version"))
            .transpose()
        })
    }

    /// Evicts least recently used documents of evictable collections until
    /// the database's used pages fit the budget. Returns how many were
    /// evicted. Does nothing without a budget.
    pub(crate) fn enforce_cache_limit(&self) -> Result<usize, Error> {
        let Some(limit) = self.cache.limit_bytes else {
            return Ok(0);
        };
        if self.cache.evictable.is_empty() {
            return Ok(0);
        }
        let touched: Vec<(DocRef, u64)> = lock(&self.cache.touched).drain().collect();
        let (evicted, changed) = self.with_writer(|writer| {
            let tx = writer
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut note = tx.prepare_cached(
                    "INSERT INTO document_access (space, collection, id, at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (space, collection, id) DO UPDATE SET at = excluded.at",
                )?;
                for (doc, at) in &touched {
                    note.execute(params![
                        doc.space.as_str(),
                        doc.collection.as_str(),
                        doc.id.as_str(),
                        to_sql_int(*at)
                    ])?;
                }
            }
            let evictable = serde_json::to_string(&self.cache.evictable)
                .map_err(|e| Error::CorruptStore(format!("evictable collections: {e}")))?;
            let mut evicted = 0usize;
            let mut changed = Vec::new();
            loop {
                let (pages, free, page_size): (i64, i64, i64) = tx.query_row(
                    "SELECT (SELECT page_count FROM pragma_page_count()),
                            (SELECT freelist_count FROM pragma_freelist_count()),
                            (SELECT page_size FROM pragma_page_size())",
                    [],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )?;
                let used = from_sql_int((pages - free).max(0) * page_size, "database size")?;
                if used <= limit {
                    break;
                }
                let excess = used - limit;
                let victims: Vec<(String, String, String, i64, i64)> = {
                    let mut stmt = tx.prepare_cached(
                        "SELECT d.space, d.collection, d.id, d.version,
                                length(d.state) + length(d.fields)
                         FROM documents AS d
                         LEFT JOIN document_access AS a
                           ON a.space = d.space AND a.collection = d.collection AND a.id = d.id
                         WHERE d.collection IN (SELECT value FROM json_each(?1))
                           AND d.pending = 0 AND d.version IS NOT NULL
                           AND NOT EXISTS (SELECT 1 FROM outbox AS o
                               WHERE o.space = d.space AND o.collection = d.collection
                                 AND o.doc_id = d.id)
                         ORDER BY coalesce(a.at, 0), d.space, d.collection, d.id
                         LIMIT ?2",
                    )?;
                    let rows = stmt.query_map(params![evictable, ROUND], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?))
                    })?;
                    rows.collect::<Result<_, _>>()?
                };
                if victims.is_empty() {
                    break;
                }
                let mut freed = 0u64;
                for (space, collection, id, version, bytes) in victims {
                    if freed >= excess {
                        break;
                    }
                    freed += u64::try_from(bytes).unwrap_or(0);
                    let key = params![space, collection, id];
                    tx.prepare_cached(
                        "INSERT INTO evicted (space, collection, id, version) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (space, collection, id) DO UPDATE SET version = excluded.version",
                    )?
                    .execute(params![space, collection, id, version])?;
                    for sql in [
                        "DELETE FROM documents WHERE space = ?1 AND collection = ?2 AND id = ?3",
                        "DELETE FROM confirmed WHERE space = ?1 AND collection = ?2 AND id = ?3",
                        "DELETE FROM document_access WHERE space = ?1 AND collection = ?2 AND id = ?3",
                    ] {
                        tx.prepare_cached(sql)?.execute(key)?;
                    }
                    changed.push(crate::store::outbox::doc_ref(&space, &collection, &id)?);
                    evicted += 1;
                }
            }
            tx.commit()?;
            Ok((evicted, changed))
        })?;
        self.announce(changed);
        Ok(evicted)
    }
}
