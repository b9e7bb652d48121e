//! What the sync engine keeps besides documents: the device's credentials,
//! when it last finished syncing, how many checksum mismatches it has seen,
//! and the conflict log.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::clock::now_millis;
use crate::document::DocRef;
use crate::error::Error;
use crate::store::{Store, from_sql_int, to_sql_int};

/// The device's credentials for one server, as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredCredentials {
    /// The server they are for.
    pub server_url: String,
    /// The user the server registered the device for.
    pub user_id: String,
    /// Bearer token for the sync socket and the device endpoints.
    pub access_token: String,
    /// When the access token stops working, in ms since the Unix epoch.
    pub access_expires_at: u64,
    /// Single-use token that buys the next pair.
    pub refresh_token: String,
    /// When the refresh token stops working, in ms since the Unix epoch.
    pub refresh_expires_at: u64,
}

impl std::fmt::Debug for StoredCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the tokens: a Debug print ends up in logs.
        f.debug_struct("StoredCredentials")
            .field("server_url", &self.server_url)
            .field("user_id", &self.user_id)
            .field("access_expires_at", &self.access_expires_at)
            .field("refresh_expires_at", &self.refresh_expires_at)
            .finish_non_exhaustive()
    }
}

/// One resolved conflict, as the conflict log keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConflictRecord {
    /// Position in the log (newer is larger).
    pub id: u64,
    /// When it was resolved, in ms since the Unix epoch.
    pub at_ms: u64,
    /// The document's space.
    pub space: String,
    /// The document's collection.
    pub collection: String,
    /// The document's id.
    pub doc_id: String,
    /// The collection's policy that decided (`server_wins` or `manual`).
    pub rule: String,
    /// Which side won: `remote`, `local` or `merged`.
    pub winner: String,
    /// The local fields that lost or were merged (JSON object text; `None`
    /// for a delete).
    pub local_json: Option<String>,
    /// The server's fields (JSON object text; `None` if the server has no
    /// live document).
    pub remote_json: Option<String>,
    /// The fields the document ended with (JSON object text; `None` if it
    /// ended deleted or absent).
    pub resolved_json: Option<String>,
}

impl Store {
    /// The stored credentials, if the device has registered.
    pub(crate) fn credentials(&self) -> Result<Option<StoredCredentials>, Error> {
        self.with_writer(|writer| {
            let row: Option<(String, String, String, i64, String, i64)> = writer
                .conn
                .prepare_cached(
                    "SELECT server_url, user_id, access_token, access_expires_at,
                            refresh_token, refresh_expires_at
                     FROM credentials WHERE singleton = 1",
                )?
                .query_row([], |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                        row.get(5)?,
                    ))
                })
                .optional()?;
            row.map(
                |(server_url, user_id, access, access_exp, refresh, refresh_exp)| {
                    Ok(StoredCredentials {
                        server_url,
                        user_id,
                        access_token: access,
                        access_expires_at: from_sql_int(access_exp, "access expiry")?,
                        refresh_token: refresh,
                        refresh_expires_at: from_sql_int(refresh_exp, "refresh expiry")?,
                    })
                },
            )
            .transpose()
        })
    }

    /// Stores new credentials (before they are used: a refresh token that
    /// was spent but not stored means registering again).
    pub(crate) fn save_credentials(&self, c: &StoredCredentials) -> Result<(), Error> {
        self.with_writer(|writer| {
            writer
                .conn
                .prepare_cached(
                    "INSERT INTO credentials (singleton, server_url, user_id, access_token,
                     access_expires_at, refresh_token, refresh_expires_at)
                 VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (singleton) DO UPDATE SET
                     server_url = excluded.server_url, user_id = excluded.user_id,
                     access_token = excluded.access_token,
                     access_expires_at = excluded.access_expires_at,
                     refresh_token = excluded.refresh_token,
                     refresh_expires_at = excluded.refresh_expires_at",
                )?
                .execute(params![
                    c.server_url,
                    c.user_id,
                    c.access_token,
                    to_sql_int(c.access_expires_at),
                    c.refresh_token,
                    to_sql_int(c.refresh_expires_at)
                ])?;
            Ok(())
        })
    }

    /// Removes the stored credentials so that no copy stays in the file:
    /// the freed pages are overwritten with zeros (`secure_delete`) and the
    /// WAL, which still holds the old pages, is checkpointed and truncated.
    pub(crate) fn erase_credentials(&self) -> Result<(), Error> {
        self.with_writer(|writer| {
            let conn = &writer.conn;
            conn.pragma_update(None, "secure_delete", true)?;
            let deleted = conn.execute("DELETE FROM credentials", []);
            conn.pragma_update(None, "secure_delete", false)?;
            deleted?;
            // (busy, log frames, checkpointed frames): a reader holding an
            // old snapshot keeps the WAL; the next checkpoint empties it.
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            Ok(())
        })
    }

    /// (last time the device was caught up with everything, checksum
    /// mismatches seen).
    pub(crate) fn sync_marks(&self) -> Result<(Option<u64>, u64), Error> {
        self.readers.with(|conn| {
            let row: Option<(Option<i64>, i64)> = conn
                .prepare_cached(
                    "SELECT last_synced, checksum_mismatches FROM sync_state WHERE singleton = 1",
                )?
                .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            let Some((last, mismatches)) = row else {
                return Ok((None, 0));
            };
            Ok((
                last.map(|v| from_sql_int(v, "last synced")).transpose()?,
                from_sql_int(mismatches, "checksum mismatches")?,
            ))
        })
    }

    /// The newest `limit` entries of the conflict log, newest first.
    pub(crate) fn conflicts(&self, limit: u32) -> Result<Vec<ConflictRecord>, Error> {
        self.readers.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, at, space, collection, doc_id, rule, winner, local, remote, resolved
                 FROM conflicts ORDER BY id DESC LIMIT ?1",
            )?;
            let rows = stmt.query_map([i64::from(limit)], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    ConflictRecord {
                        id: 0,
                        at_ms: 0,
                        space: row.get(2)?,
                        collection: row.get(3)?,
                        doc_id: row.get(4)?,
                        rule: row.get(5)?,
                        winner: row.get(6)?,
                        local_json: row.get(7)?,
                        remote_json: row.get(8)?,
                        resolved_json: row.get(9)?,
                    },
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, at, record) = row?;
                out.push(ConflictRecord {
                    id: from_sql_int(id, "conflict id")?,
                    at_ms: from_sql_int(at, "conflict time")?,
                    ..record
                });
            }
            Ok(out)
        })
    }
}

/// A resolved conflict, as the log records it.
pub(crate) struct ConflictLogEntry<'a> {
    /// The collection's policy that decided (`server_wins` or `manual`).
    pub rule: &'a str,
    /// The local fields (JSON object text; `None` for a delete).
    pub local: Option<&'a str>,
    /// The server's fields (`None` if it has no live document).
    pub remote: Option<&'a str>,
}

/// Adds a resolved conflict to the log, inside `tx`.
pub(crate) fn log_conflict_in(
    tx: &rusqlite::Transaction<'_>,
    doc: &DocRef,
    entry: &ConflictLogEntry<'_>,
    winner: &str,
    resolved: Option<&str>,
) -> Result<(), Error> {
    tx.prepare_cached(
        "INSERT INTO conflicts (at, space, collection, doc_id, rule, winner,
             local, remote, resolved)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        to_sql_int(now_millis()),
        doc.space.as_str(),
        doc.collection.as_str(),
        doc.id.as_str(),
        entry.rule,
        winner,
        entry.local,
        entry.remote,
        resolved
    ])?;
    Ok(())
}

/// Records `at_ms` as the last time the device was caught up (inside the
/// caller's transaction: the page that completed the sync).
pub(crate) fn mark_synced_in(conn: &Connection, at_ms: u64) -> Result<(), Error> {
    conn.prepare_cached(
        "INSERT INTO sync_state (singleton, last_synced) VALUES (1, ?1)
         ON CONFLICT (singleton) DO UPDATE SET last_synced = excluded.last_synced",
    )?
    .execute([to_sql_int(at_ms)])?;
    Ok(())
}

/// Counts a checksum mismatch (inside the page's transaction).
pub(crate) fn count_checksum_mismatch_in(conn: &Connection) -> Result<(), Error> {
    conn.execute(
        "INSERT INTO sync_state (singleton, checksum_mismatches) VALUES (1, 1)
         ON CONFLICT (singleton) DO UPDATE
         SET checksum_mismatches = checksum_mismatches + 1",
        [],
    )?;
    Ok(())
}
