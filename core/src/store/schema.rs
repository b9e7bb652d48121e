//! The database schema and its migrations.
//!
//! [`CURRENT_SCHEMA`] is the whole schema as it is today: read it to know
//! the tables. A new database is created from it directly. A database made
//! by an older build is brought up to date by [`MIGRATIONS`], numbered from
//! 1; each runs in one transaction that ends by setting `PRAGMA
//! user_version` to its number, so a crash leaves the database at the old
//! version or the new one, never between. The test at the bottom checks
//! that every older version, upgraded, has exactly the schema of a new
//! database.
//!
//! To change the schema: change [`CURRENT_SCHEMA`], append a migration that
//! makes the same change, and run the tests.
//!
//! Indexes the app declares on document fields are not part of the schema:
//! they are created at run time (see `store/indexes.rs`) and listed in
//! `declared_indexes`.

use rusqlite::{Connection, TransactionBehavior};

use crate::error::Error;

/// The schema of a new database, at version [`CURRENT_VERSION`].
///
/// - `device`: this installation's identity, fixed at creation (one row).
///   `last_hlc` is the last clock reading handed out, written in the same
///   transaction as the write it stamped, so the clock resumes past it after
///   a restart.
/// - `documents`: the local view, one row per document, clustered by
///   (space, collection, id) so a collection's documents sit together.
///   `state` is the merge state of the view, `fields` its visible fields
///   (what queries and declared indexes read), `version` the confirmed
///   server version, `pending` the number of outbox entries of the document.
/// - `confirmed`: the server's state of each document it has confirmed,
///   kept apart from the view so the view can be rebuilt as confirmed state
///   plus pending mutations.
/// - `outbox`: mutations waiting for the server, in `seq` order (see
///   `store/outbox.rs` for the states). The rowid `seq` is not
///   AUTOINCREMENT: a new entry always gets a seq above every entry present,
///   which is all the ordering needs, and AUTOINCREMENT would cost a write
///   to `sqlite_sequence` on every local write.
/// - `cursors`: per space, the last revision applied and the checksum at it.
/// - `policies`: per collection, the merge policy the server announced
///   (absent: `lww`).
/// - `declared_indexes`: the field indexes the app declared.
/// - `outbox.acked_rev`: the revision an acknowledged entry was applied at
///   (it leaves the outbox when the cursor reaches it). Written after
///   `created_at` on a line of its own because migration 3 adds it with
///   `ALTER TABLE`, which SQLite records that way, and the upgrade test
///   compares the recorded schema text.
/// - `credentials`: the device's access and refresh tokens for its server.
/// - `sync_state`: when the device was last caught up, checksum mismatches.
/// - `conflicts`: the conflict log (`Client::conflicts`).
/// - `resync_marks`: confirmed documents of a space being fetched again
///   from revision 0, not yet seen in the re-sync (mark and sweep).
/// - `evicted`: documents dropped to keep within the cache budget, with the
///   version the space's checksum still counts.
/// - `document_access`: when the app last used a document (eviction order).
pub const CURRENT_SCHEMA: &str = "
CREATE TABLE device (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    device_id TEXT NOT NULL,
    device_name TEXT NOT NULL,
    user_id TEXT NOT NULL,
    last_hlc TEXT,
    created_at INTEGER NOT NULL
) STRICT;

CREATE TABLE documents (
    space TEXT NOT NULL,
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    fields TEXT NOT NULL,
    state TEXT NOT NULL,
    version INTEGER,
    pending INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    PRIMARY KEY (space, collection, id)
) STRICT, WITHOUT ROWID;

CREATE TABLE confirmed (
    space TEXT NOT NULL,
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (space, collection, id)
) STRICT, WITHOUT ROWID;

CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY,
    mutation_id TEXT NOT NULL UNIQUE,
    space TEXT NOT NULL,
    collection TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    mutation TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'in_flight', 'retrying', 'failed')),
    attempt INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,
    failure TEXT,
    created_at INTEGER NOT NULL
, acked_rev INTEGER) STRICT;

CREATE INDEX outbox_by_document ON outbox (space, collection, doc_id);

CREATE INDEX outbox_failed ON outbox (seq) WHERE state = 'failed';

CREATE TABLE cursors (
    space TEXT PRIMARY KEY,
    rev INTEGER NOT NULL,
    checksum TEXT NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE policies (
    collection TEXT PRIMARY KEY,
    policy TEXT NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE declared_indexes (
    collection TEXT NOT NULL,
    fields TEXT NOT NULL,
    name TEXT NOT NULL UNIQUE,
    PRIMARY KEY (collection, fields)
) STRICT, WITHOUT ROWID;
CREATE TABLE credentials (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    server_url TEXT NOT NULL,
    user_id TEXT NOT NULL,
    access_token TEXT NOT NULL,
    access_expires_at INTEGER NOT NULL,
    refresh_token TEXT NOT NULL,
    refresh_expires_at INTEGER NOT NULL
) STRICT;

CREATE TABLE sync_state (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    last_synced INTEGER,
    checksum_mismatches INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE TABLE conflicts (
    id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    space TEXT NOT NULL,
    collection TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    rule TEXT NOT NULL,
    winner TEXT NOT NULL,
    local TEXT,
    remote TEXT,
    resolved TEXT
) STRICT;

CREATE TABLE resync_marks (
    space TEXT NOT NULL,
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    PRIMARY KEY (space, collection, id)
) STRICT, WITHOUT ROWID;

CREATE TABLE evicted (
    space TEXT NOT NULL,
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (space, collection, id)
) STRICT, WITHOUT ROWID;

CREATE TABLE document_access (
    space TEXT NOT NULL,
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (space, collection, id)
) STRICT, WITHOUT ROWID;

CREATE INDEX document_access_by_time ON document_access (at);
";

/// Migration `n` (1-based) brings a database from version `n - 1` to `n`.
pub const MIGRATIONS: &[&str] = &[
    // 1: the device, the local view, confirmed state, the outbox, cursors.
    "
CREATE TABLE device (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    device_id TEXT NOT NULL,
    device_name TEXT NOT NULL,
    user_id TEXT NOT NULL,
    last_hlc TEXT,
    created_at INTEGER NOT NULL
) STRICT;

CREATE TABLE documents (
    space TEXT NOT NULL,
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    fields TEXT NOT NULL,
    state TEXT NOT NULL,
    version INTEGER,
    pending INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    PRIMARY KEY (space, collection, id)
) STRICT, WITHOUT ROWID;

CREATE TABLE confirmed (
    space TEXT NOT NULL,
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (space, collection, id)
) STRICT, WITHOUT ROWID;

CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY,
    mutation_id TEXT NOT NULL UNIQUE,
    space TEXT NOT NULL,
    collection TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    mutation TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'in_flight', 'retrying', 'failed')),
    attempt INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,
    failure TEXT,
    created_at INTEGER NOT NULL
) STRICT;

CREATE INDEX outbox_by_document ON outbox (space, collection, doc_id);

CREATE TABLE cursors (
    space TEXT PRIMARY KEY,
    rev INTEGER NOT NULL,
    checksum TEXT NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
",
    // 2: collection policies and declared field indexes; failed outbox
    // entries findable without a scan (status counts them).
    "
CREATE INDEX outbox_failed ON outbox (seq) WHERE state = 'failed';

CREATE TABLE policies (
    collection TEXT PRIMARY KEY,
    policy TEXT NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE declared_indexes (
    collection TEXT NOT NULL,
    fields TEXT NOT NULL,
    name TEXT NOT NULL UNIQUE,
    PRIMARY KEY (collection, fields)
) STRICT, WITHOUT ROWID;
",
    // 3: the sync engine: acknowledged entries waiting for their change,
    // device credentials, sync bookkeeping, the conflict log, re-sync marks,
    // evicted documents and the access times eviction orders by.
    "
ALTER TABLE outbox ADD COLUMN acked_rev INTEGER;

CREATE TABLE credentials (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    server_url TEXT NOT NULL,
    user_id TEXT NOT NULL,
    access_token TEXT NOT NULL,
    access_expires_at INTEGER NOT NULL,
    refresh_token TEXT NOT NULL,
    refresh_expires_at INTEGER NOT NULL
) STRICT;

CREATE TABLE sync_state (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    last_synced INTEGER,
    checksum_mismatches INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE TABLE conflicts (
    id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    space TEXT NOT NULL,
    collection TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    rule TEXT NOT NULL,
    winner TEXT NOT NULL,
    local TEXT,
    remote TEXT,
    resolved TEXT
) STRICT;

CREATE TABLE resync_marks (
    space TEXT NOT NULL,
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    PRIMARY KEY (space, collection, id)
) STRICT, WITHOUT ROWID;

CREATE TABLE evicted (
    space TEXT NOT NULL,
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (space, collection, id)
) STRICT, WITHOUT ROWID;

CREATE TABLE document_access (
    space TEXT NOT NULL,
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (space, collection, id)
) STRICT, WITHOUT ROWID;

CREATE INDEX document_access_by_time ON document_access (at);
",
];

/// The schema version of a database this build creates.
pub const CURRENT_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database on `conn` to [`CURRENT_VERSION`]: creates it if it
/// is new, migrates it if it is older, refuses it if it is newer.
pub fn prepare(conn: &mut Connection) -> Result<(), Error> {
    migrate(conn, CURRENT_VERSION)
}

/// Brings the database to `target`, which is [`CURRENT_VERSION`] except in
/// tests that build old databases.
fn migrate(conn: &mut Connection, target: i64) -> Result<(), Error> {
    loop {
        // IMMEDIATE, and the version read inside the transaction: two
        // processes opening the same new database must not both create it.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
        if version > CURRENT_VERSION {
            return Err(Error::IncompatibleDatabase {
                found: version,
                supported: CURRENT_VERSION,
            });
        }
        if version >= target {
            return Ok(());
        }
        let next = if version == 0 && target == CURRENT_VERSION {
            tx.execute_batch(CURRENT_SCHEMA)?;
            CURRENT_VERSION
        } else {
            let index = usize::try_from(version).map_err(|_| Error::IncompatibleDatabase {
                found: version,
                supported: CURRENT_VERSION,
            })?;
            tx.execute_batch(MIGRATIONS[index])?;
            version + 1
        };
        tx.pragma_update(None, "user_version", next)?;
        tx.commit()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schema as SQLite records it, with whitespace normalized, plus the
    /// version.
    fn schema_of(conn: &Connection) -> (Vec<(String, String, String, String)>, i64) {
        let mut stmt = conn
            .prepare("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name")
            .unwrap();
        let rows = stmt
            .query_map([], |row| {
                let sql: Option<String> = row.get(3)?;
                let sql = sql
                    .unwrap_or_default()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, sql))
            })
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let version = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        (rows, version)
    }

    #[test]
    fn every_older_version_upgrades_to_the_current_schema() {
        let dir = tempfile::tempdir().unwrap();
        let mut fresh = Connection::open(dir.path().join("fresh.db")).unwrap();
        prepare(&mut fresh).unwrap();
        let expected = schema_of(&fresh);
        assert_eq!(expected.1, CURRENT_VERSION);
        assert!(
            expected.0.iter().any(|t| t.1 == "outbox"),
            "the schema has the outbox"
        );

        for old in 1..CURRENT_VERSION {
            let path = dir.path().join(format!("v{old}.db"));
            let mut conn = Connection::open(&path).unwrap();
            migrate(&mut conn, old).unwrap();
            assert_eq!(schema_of(&conn).1, old);
            // Data written at the old version survives the upgrade.
            conn.execute(
                "INSERT INTO device (singleton, device_id, device_name, user_id, created_at)
                 VALUES (1, 'd1', 'phone', 'alice', 0)",
                [],
            )
            .unwrap();
            drop(conn);

            let mut conn = Connection::open(&path).unwrap();
            prepare(&mut conn).unwrap();
            assert_eq!(schema_of(&conn), expected, "upgraded from version {old}");
            let device: String = conn
                .query_row("SELECT device_id FROM device", [], |row| row.get(0))
                .unwrap();
            assert_eq!(device, "d1");
        }
    }

    #[test]
    fn a_newer_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("new.db")).unwrap();
        conn.pragma_update(None, "user_version", CURRENT_VERSION + 1)
            .unwrap();
        assert!(matches!(
            prepare(&mut conn),
            Err(Error::IncompatibleDatabase { .. })
        ));
    }

    #[test]
    fn preparing_twice_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("t.db")).unwrap();
        prepare(&mut conn).unwrap();
        let before = schema_of(&conn);
        prepare(&mut conn).unwrap();
        assert_eq!(schema_of(&conn), before);
    }
}
