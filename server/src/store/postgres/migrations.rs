//! The PostgreSQL schema and its migrations.
//!
//! Migrations are numbered; the `schema_version` table holds the number of
//! migrations applied. Each migration runs in one transaction that ends by
//! setting that number, under a transaction-scoped advisory lock, so that
//! several instances starting at once on one database migrate it exactly
//! once. [`CURRENT_SCHEMA`] is the schema a fresh database gets, kept beside
//! the migrations so a reader sees the tables in one place; a test checks
//! that migrating an empty database gives the same tables and that migrating
//! again changes nothing.
//!
//! Every table lives in the store's schema (the connection's `search_path`),
//! so one database can hold several independent Tandem deployments.

use tokio_postgres::Client;

use super::pg_error;
use crate::store::StoreError;

/// The tables of device coordination, in migration 2 and in the current
/// schema. Times are Unix milliseconds of the database's clock
/// (`clock_timestamp()`), the one clock every instance shares: leases and
/// windows are decided against it, not against an instance's own clock.
macro_rules! coordination_tables {
    () => {
        r#"
-- Who is connected where: one row per device and instance, stamped by the
-- instance every second while the device is connected. A crashed
-- instance's rows run out (expires_at) and its devices go offline.
CREATE TABLE presence (
    user_id     text NOT NULL,
    device_id   text NOT NULL,
    instance    text NOT NULL,
    last_active bigint NOT NULL,
    expires_at  bigint NOT NULL,
    PRIMARY KEY (user_id, device_id, instance)
);
CREATE INDEX presence_by_expiry ON presence (expires_at);

-- A role of a user: holder, epoch (the fencing token, which only grows)
-- and the holder's lease. Every change locks the row (FOR UPDATE); a push
-- or guard whose fence names the role reads it FOR SHARE, so a fenced
-- write and a change of holder are ordered the same on every instance.
CREATE TABLE roles (
    user_id          text NOT NULL,
    role             text NOT NULL,
    holder           text,
    epoch            bigint NOT NULL DEFAULT 0,
    lease_expires_at bigint,
    PRIMARY KEY (user_id, role)
);

-- The devices that claimed a role and have not released it.
CREATE TABLE role_candidates (
    user_id    text NOT NULL,
    role       text NOT NULL,
    device_id  text NOT NULL,
    priority   integer NOT NULL,
    claimed_at bigint NOT NULL,
    PRIMARY KEY (user_id, role, device_id)
);

-- The duplicate guard: the first occurrence of a (scope, normalized
-- content) hash per user until its window runs out. The primary key
-- decides between instances: insert-or-take-over-if-expired is one
-- statement.
CREATE TABLE guards (
    user_id    text NOT NULL,
    hash       bytea NOT NULL,
    device_id  text NOT NULL,
    expires_at bigint NOT NULL,
    PRIMARY KEY (user_id, hash)
);
CREATE INDEX guards_by_expiry ON guards (expires_at);
"#
    };
}

/// The schema of the first release (migration 1).
const SCHEMA_1: &str = r#"
-- A user's device; keyed by user and the device's self-chosen id.
CREATE TABLE devices (
    user_id       text NOT NULL,
    device_id     text NOT NULL,
    name          text NOT NULL,
    platform      text NOT NULL,
    app_version   text NOT NULL,
    registered_at bigint NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- Device credentials, by the SHA-256 of the token. kind: 0 access, 1 refresh.
-- A rotated refresh token is kept (rotated_at set) until it expires, so that
-- its reuse is recognised and revokes the device.
CREATE TABLE credentials (
    token_hash bytea PRIMARY KEY,
    kind       smallint NOT NULL,
    user_id    text NOT NULL,
    device_id  text NOT NULL,
    expires_at bigint NOT NULL,
    rotated_at bigint
);
CREATE INDEX credentials_by_device ON credentials (user_id, device_id);

-- One row per space: its feed head, the checksum of its live documents at
-- head, and the compaction horizon (cursors below it must reset). Every
-- write to a space locks this row first (SELECT ... FOR UPDATE), so the
-- writers of one space take turns across all instances and revisions are
-- handed out without gaps or duplicates.
CREATE TABLE spaces (
    space      text PRIMARY KEY,
    owner      text NOT NULL,
    head       bigint NOT NULL DEFAULT 0,
    checksum   bigint NOT NULL DEFAULT 0,
    horizon    bigint NOT NULL DEFAULT 0,
    changed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX spaces_by_change ON spaces (changed_at);

CREATE TABLE members (
    space   text NOT NULL,
    user_id text NOT NULL,
    PRIMARY KEY (space, user_id)
);
CREATE INDEX members_by_user ON members (user_id, space);

-- Documents are the change feed: version is the revision of the last change,
-- and the feed since cursor c is every row of the space with version > c.
-- The unique index is the last line of defence against two writers handing
-- out one revision.
CREATE TABLE documents (
    space       text NOT NULL,
    collection  text NOT NULL,
    doc_id      text NOT NULL,
    version     bigint NOT NULL,
    checksum    bigint NOT NULL,
    state       text NOT NULL,
    deleted     boolean NOT NULL,
    origin      text,
    mutation_id uuid,
    updated_at  bigint NOT NULL,
    PRIMARY KEY (space, collection, doc_id)
);
CREATE UNIQUE INDEX documents_feed ON documents (space, version);

-- The result of every mutation, for idempotent retries. The primary key
-- decides between two instances applying the same mutation id at once.
CREATE TABLE mutations (
    mutation_id uuid PRIMARY KEY,
    user_id     text NOT NULL,
    device_id   text NOT NULL,
    outcome     text NOT NULL,
    created_at  bigint NOT NULL
);
CREATE INDEX mutations_by_age ON mutations (created_at);

-- Membership changes (kind 'm') and revocations (kind 'r'), kept for a day
-- so that an instance whose listener reconnected can replay what it missed.
CREATE TABLE announcements (
    id        bigserial PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    kind      text NOT NULL,
    user_id   text NOT NULL,
    space     text,
    device_id text
);
CREATE INDEX announcements_by_time ON announcements (at);
"#;

/// Every migration, in order; `schema_version.version` is the number of
/// migrations applied.
pub const MIGRATIONS: &[&str] = &[SCHEMA_1, MIGRATION_2_COORDINATION];

/// Migration 2: device coordination (registry details, presence, roles,
/// guards, push tokens).
const MIGRATION_2_COORDINATION: &str = concat!(
    r#"
ALTER TABLE devices
    ADD COLUMN last_seen bigint,
    ADD COLUMN revoked_at bigint,
    ADD COLUMN push_token text,
    ADD COLUMN push_provider text,
    ADD COLUMN last_hint_at bigint;
"#,
    coordination_tables!()
);

/// The whole current schema.
///
/// Differences from the SQLite schema, and why:
/// - `user` is a reserved word in PostgreSQL, so the column is `user_id`.
/// - `spaces.changed_at` says when a space's feed last moved (database
///   clock, shared by every instance): an instance whose notification
///   listener reconnects re-reads the spaces that moved while it was deaf.
/// - `documents.checksum` is the space's checksum right after the row's
///   change: an instance that turns another instance's notification into
///   live changes reads rows from the feed and needs the checksum at the last
///   of them.
/// - `announcements` keeps membership changes and revocations for a while,
///   for the same replay after a reconnect.
pub const CURRENT_SCHEMA: &str = concat!(
    r#"
-- A user's device; keyed by user and the device's self-chosen id.
CREATE TABLE devices (
    user_id       text NOT NULL,
    device_id     text NOT NULL,
    name          text NOT NULL,
    platform      text NOT NULL,
    app_version   text NOT NULL,
    registered_at bigint NOT NULL,
    last_seen     bigint,
    revoked_at    bigint,
    push_token    text,
    push_provider text,
    last_hint_at  bigint,
    PRIMARY KEY (user_id, device_id)
);

-- Device credentials, by the SHA-256 of the token. kind: 0 access, 1 refresh.
-- A rotated refresh token is kept (rotated_at set) until it expires, so that
-- its reuse is recognised and revokes the device.
CREATE TABLE credentials (
    token_hash bytea PRIMARY KEY,
    kind       smallint NOT NULL,
    user_id    text NOT NULL,
    device_id  text NOT NULL,
    expires_at bigint NOT NULL,
    rotated_at bigint
);
CREATE INDEX credentials_by_device ON credentials (user_id, device_id);

-- One row per space: its feed head, the checksum of its live documents at
-- head, and the compaction horizon (cursors below it must reset). Every
-- write to a space locks this row first (SELECT ... FOR UPDATE), so the
-- writers of one space take turns across all instances and revisions are
-- handed out without gaps or duplicates.
CREATE TABLE spaces (
    space      text PRIMARY KEY,
    owner      text NOT NULL,
    head       bigint NOT NULL DEFAULT 0,
    checksum   bigint NOT NULL DEFAULT 0,
    horizon    bigint NOT NULL DEFAULT 0,
    changed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX spaces_by_change ON spaces (changed_at);

CREATE TABLE members (
    space   text NOT NULL,
    user_id text NOT NULL,
    PRIMARY KEY (space, user_id)
);
CREATE INDEX members_by_user ON members (user_id, space);

-- Documents are the change feed: version is the revision of the last change,
-- and the feed since cursor c is every row of the space with version > c.
-- The unique index is the last line of defence against two writers handing
-- out one revision.
CREATE TABLE documents (
    space       text NOT NULL,
    collection  text NOT NULL,
    doc_id      text NOT NULL,
    version     bigint NOT NULL,
    checksum    bigint NOT NULL,
    state       text NOT NULL,
    deleted     boolean NOT NULL,
    origin      text,
    mutation_id uuid,
    updated_at  bigint NOT NULL,
    PRIMARY KEY (space, collection, doc_id)
);
CREATE UNIQUE INDEX documents_feed ON documents (space, version);

-- The result of every mutation, for idempotent retries. The primary key
-- decides between two instances applying the same mutation id at once.
CREATE TABLE mutations (
    mutation_id uuid PRIMARY KEY,
    user_id     text NOT NULL,
    device_id   text NOT NULL,
    outcome     text NOT NULL,
    created_at  bigint NOT NULL
);
CREATE INDEX mutations_by_age ON mutations (created_at);

-- Membership changes (kind 'm') and revocations (kind 'r'), kept for a day
-- so that an instance whose listener reconnected can replay what it missed.
CREATE TABLE announcements (
    id        bigserial PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    kind      text NOT NULL,
    user_id   text NOT NULL,
    space     text,
    device_id text
);
CREATE INDEX announcements_by_time ON announcements (at);
"#,
    coordination_tables!()
);

/// Brings the database (the connection's schema) up to the current schema.
/// Safe to run from several instances at once.
pub async fn migrate(client: &mut Client, lock_key: i64) -> Result<(), StoreError> {
    for (index, migration) in MIGRATIONS.iter().enumerate() {
        let number = i32::try_from(index + 1).unwrap_or(i32::MAX);
        let tx = client.transaction().await.map_err(pg_error)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock_key])
            .await
            .map_err(pg_error)?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
            .await
            .map_err(pg_error)?;
        let applied: Option<i32> = tx
            .query_opt("SELECT version FROM schema_version", &[])
            .await
            .map_err(pg_error)?
            .map(|row| row.get(0));
        if applied.unwrap_or(0) >= number {
            tx.commit().await.map_err(pg_error)?;
            continue;
        }
        tx.batch_execute(migration).await.map_err(pg_error)?;
        if applied.is_some() {
            tx.execute("UPDATE schema_version SET version = $1", &[&number])
                .await
                .map_err(pg_error)?;
        } else {
            tx.execute(
                "INSERT INTO schema_version (version) VALUES ($1)",
                &[&number],
            )
            .await
            .map_err(pg_error)?;
        }
        tx.commit().await.map_err(pg_error)?;
    }
    Ok(())
}

/// The number of migrations applied to the connection's schema (0 for an
/// empty one).
pub async fn applied_version(client: &Client) -> Result<i32, StoreError> {
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM information_schema.tables
             WHERE table_schema = current_schema() AND table_name = 'schema_version')",
            &[],
        )
        .await
        .map_err(pg_error)?
        .get(0);
    if !exists {
        return Ok(0);
    }
    Ok(client
        .query_opt("SELECT version FROM schema_version", &[])
        .await
        .map_err(pg_error)?
        .map_or(0, |row| row.get(0)))
}
