//! The database schema and its migrations.
//!
//! Migrations are numbered; each runs in one transaction that ends by setting
//! `PRAGMA user_version` to its number. [`CURRENT_SCHEMA`] is the schema a
//! fresh database gets, kept beside the migrations so a reader sees the
//! tables in one place; a test checks that migrating gives the same tables.

use rusqlite::Connection;

/// Every migration, in order; the database's `user_version` is the number of
/// migrations applied.
const MIGRATIONS: &[&str] = &[SCHEMA_1, MIGRATION_2_COORDINATION];

/// The schema of the first release (migration 1).
const SCHEMA_1: &str = r#"
-- A user's device; keyed by user and the device's self-chosen id.
CREATE TABLE devices (
    user          TEXT NOT NULL,
    device_id     TEXT NOT NULL,
    name          TEXT NOT NULL,
    platform      TEXT NOT NULL,
    app_version   TEXT NOT NULL,
    registered_at INTEGER NOT NULL,
    PRIMARY KEY (user, device_id)
) WITHOUT ROWID;

-- Device credentials, by the SHA-256 of the token. kind: 0 access, 1 refresh.
-- A rotated refresh token is kept (rotated_at set) until it expires, so that
-- its reuse is recognised and revokes the device.
CREATE TABLE credentials (
    token_hash BLOB PRIMARY KEY,
    kind       INTEGER NOT NULL,
    user       TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    rotated_at INTEGER
) WITHOUT ROWID;
CREATE INDEX credentials_by_device ON credentials (user, device_id);

-- One row per space: its feed head, the checksum of its live documents at
-- head, and the compaction horizon (cursors below it must reset).
CREATE TABLE spaces (
    space    TEXT PRIMARY KEY,
    owner    TEXT NOT NULL,
    head     INTEGER NOT NULL DEFAULT 0,
    checksum INTEGER NOT NULL DEFAULT 0,
    horizon  INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

CREATE TABLE members (
    space TEXT NOT NULL,
    user  TEXT NOT NULL,
    PRIMARY KEY (space, user)
) WITHOUT ROWID;
CREATE INDEX members_by_user ON members (user, space);

-- Documents are the change feed: version is the revision of the last change,
-- and the feed since cursor c is every row of the space with version > c.
CREATE TABLE documents (
    space       TEXT NOT NULL,
    collection  TEXT NOT NULL,
    doc_id      TEXT NOT NULL,
    version     INTEGER NOT NULL,
    state       TEXT NOT NULL,
    deleted     INTEGER NOT NULL,
    origin      TEXT,
    mutation_id BLOB,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (space, collection, doc_id)
);
CREATE UNIQUE INDEX documents_feed ON documents (space, version);

-- The result of every mutation, for idempotent retries.
CREATE TABLE mutations (
    mutation_id BLOB PRIMARY KEY,
    user        TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    created_at  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX mutations_by_age ON mutations (created_at);
"#;

/// Migration 2: device coordination (registry details, presence, roles,
/// guards, push tokens).
const MIGRATION_2_COORDINATION: &str = r#"
ALTER TABLE devices ADD COLUMN last_seen INTEGER;
ALTER TABLE devices ADD COLUMN revoked_at INTEGER;
ALTER TABLE devices ADD COLUMN push_token TEXT;
ALTER TABLE devices ADD COLUMN push_provider TEXT;
ALTER TABLE devices ADD COLUMN last_hint_at INTEGER;

-- Who is connected where: one row per device and server instance, stamped
-- by the instance while the device is connected. Cleared at start (a row
-- outlives only the process that wrote it).
CREATE TABLE presence (
    user        TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    instance    TEXT NOT NULL,
    last_active INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (user, device_id, instance)
) WITHOUT ROWID;

-- A role of a user: its holder, its epoch (the fencing token, which only
-- grows) and the holder's lease.
CREATE TABLE roles (
    user             TEXT NOT NULL,
    role             TEXT NOT NULL,
    holder           TEXT,
    epoch            INTEGER NOT NULL DEFAULT 0,
    lease_expires_at INTEGER,
    PRIMARY KEY (user, role)
) WITHOUT ROWID;

-- The devices that claimed a role and have not released it.
CREATE TABLE role_candidates (
    user       TEXT NOT NULL,
    role       TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    priority   INTEGER NOT NULL,
    claimed_at INTEGER NOT NULL,
    PRIMARY KEY (user, role, device_id)
) WITHOUT ROWID;

-- The duplicate guard: the first occurrence of a (scope, normalized
-- content) hash per user, until its window runs out.
CREATE TABLE guards (
    user       TEXT NOT NULL,
    hash       BLOB NOT NULL,
    device_id  TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (user, hash)
) WITHOUT ROWID;
CREATE INDEX guards_by_expiry ON guards (expires_at);
"#;

/// The whole current schema.
pub const CURRENT_SCHEMA: &str = r#"
-- A user's device; keyed by user and the device's self-chosen id.
CREATE TABLE devices (
    user          TEXT NOT NULL,
    device_id     TEXT NOT NULL,
    name          TEXT NOT NULL,
    platform      TEXT NOT NULL,
    app_version   TEXT NOT NULL,
    registered_at INTEGER NOT NULL,
    last_seen     INTEGER,
    revoked_at    INTEGER,
    push_token    TEXT,
    push_provider TEXT,
    last_hint_at  INTEGER,
    PRIMARY KEY (user, device_id)
) WITHOUT ROWID;

-- Device credentials, by the SHA-256 of the token. kind: 0 access, 1 refresh.
-- A rotated refresh token is kept (rotated_at set) until it expires, so that
-- its reuse is recognised and revokes the device.
CREATE TABLE credentials (
    token_hash BLOB PRIMARY KEY,
    kind       INTEGER NOT NULL,
    user       TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    rotated_at INTEGER
) WITHOUT ROWID;
CREATE INDEX credentials_by_device ON credentials (user, device_id);

-- One row per space: its feed head, the checksum of its live documents at
-- head, and the compaction horizon (cursors below it must reset).
CREATE TABLE spaces (
    space    TEXT PRIMARY KEY,
    owner    TEXT NOT NULL,
    head     INTEGER NOT NULL DEFAULT 0,
    checksum INTEGER NOT NULL DEFAULT 0,
    horizon  INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

CREATE TABLE members (
    space TEXT NOT NULL,
    user  TEXT NOT NULL,
    PRIMARY KEY (space, user)
) WITHOUT ROWID;
CREATE INDEX members_by_user ON members (user, space);

-- Documents are the change feed: version is the revision of the last change,
-- and the feed since cursor c is every row of the space with version > c.
CREATE TABLE documents (
    space       TEXT NOT NULL,
    collection  TEXT NOT NULL,
    doc_id      TEXT NOT NULL,
    version     INTEGER NOT NULL,
    state       TEXT NOT NULL,
    deleted     INTEGER NOT NULL,
    origin      TEXT,
    mutation_id BLOB,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (space, collection, doc_id)
);
CREATE UNIQUE INDEX documents_feed ON documents (space, version);

-- The result of every mutation, for idempotent retries.
CREATE TABLE mutations (
    mutation_id BLOB PRIMARY KEY,
    user        TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    created_at  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX mutations_by_age ON mutations (created_at);

-- Who is connected where: one row per device and server instance, stamped
-- by the instance while the device is connected. Cleared at start (a row
-- outlives only the process that wrote it).
CREATE TABLE presence (
    user        TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    instance    TEXT NOT NULL,
    last_active INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (user, device_id, instance)
) WITHOUT ROWID;

-- A role of a user: its holder, its epoch (the fencing token, which only
-- grows) and the holder's lease.
CREATE TABLE roles (
    user             TEXT NOT NULL,
    role             TEXT NOT NULL,
    holder           TEXT,
    epoch            INTEGER NOT NULL DEFAULT 0,
    lease_expires_at INTEGER,
    PRIMARY KEY (user, role)
) WITHOUT ROWID;

-- The devices that claimed a role and have not released it.
CREATE TABLE role_candidates (
    user       TEXT NOT NULL,
    role       TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    priority   INTEGER NOT NULL,
    claimed_at INTEGER NOT NULL,
    PRIMARY KEY (user, role, device_id)
) WITHOUT ROWID;

-- The duplicate guard: the first occurrence of a (scope, normalized
-- content) hash per user, until its window runs out.
CREATE TABLE guards (
    user       TEXT NOT NULL,
    hash       BLOB NOT NULL,
    device_id  TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (user, hash)
) WITHOUT ROWID;
CREATE INDEX guards_by_expiry ON guards (expires_at);
"#;

/// Brings `conn`'s database up to the current schema.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let applied: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let applied = usize::try_from(applied).unwrap_or(0);
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction()?;
        tx.execute_batch(migration)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", index + 1))?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every table's columns (name, type, not null, default, key) and
    /// every index's definition: what a migration must reproduce (the text
    /// of a table altered by `ALTER TABLE` differs from a fresh one's).
    fn tables(conn: &Connection) -> Vec<String> {
        let mut out = Vec::new();
        let mut stmt = conn
            .prepare(
                "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name",
            )
            .unwrap();
        let rows: Vec<(String, String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        for (kind, name, sql) in rows {
            if kind == "index" {
                out.push(sql);
                continue;
            }
            let query = format!(
                "SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info('{name}') ORDER BY name"
            );
            let mut columns = conn.prepare(&query).unwrap();
            let cols: Vec<String> = columns
                .query_map([], |r| {
                    Ok(format!(
                        "{name}.{} {} {} {:?} {}",
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, i64>(4)?
                    ))
                })
                .unwrap()
                .map(|r| r.unwrap())
                .collect();
            out.extend(cols);
            out.push(format!(
                "{name} without rowid: {}",
                sql.contains("WITHOUT ROWID")
            ));
        }
        out
    }

    #[test]
    fn migrating_gives_the_current_schema() {
        let mut migrated = Connection::open_in_memory().unwrap();
        migrate(&mut migrated).unwrap();
        migrate(&mut migrated).unwrap();
        let fresh = Connection::open_in_memory().unwrap();
        fresh.execute_batch(CURRENT_SCHEMA).unwrap();
        assert_eq!(tables(&migrated), tables(&fresh));
        let version: i64 = migrated
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version as usize, MIGRATIONS.len());
    }
}
