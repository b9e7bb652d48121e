//! The SQLite store: embedded, one writer thread with group commit, a small
//! pool of read connections for feeds and lookups.
//!
//! Settings, and why:
//! - WAL journal, so readers never block the writer nor each other.
//! - `synchronous=NORMAL` by default: a commit survives a crash of the server
//!   process (the WAL is written before the answer), not a power loss; with
//!   [`SqliteOptions::durable`] it is `FULL` and every commit is synced.
//! - Automatic checkpoints are off on the writer; a background thread runs a
//!   passive checkpoint every second. Checkpoints, not commits, are what makes
//!   write latency spiky, so they stay off the write path.

mod coordination;
mod migrations;
mod reads;
mod writer;
mod writes;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::Semaphore;
use tracing::warn;

pub use migrations::CURRENT_SCHEMA;

use self::coordination::{SqliteReads, SqliteTx, ready};
use self::writer::{WriterHandle, backend};
use super::coordination::seam::CoordinationTx;
use super::coordination::transactions;
use super::{
    AuthStore, ChangePage, CommitListener, CompactionReport, CompactionRule, CoordinationStore,
    DeviceIdentity, DeviceRegistration, FeedPosition, FeedStore, NewCredentials, PageLimit,
    PushRules, RefreshOutcome, Store, StoreError, StoreFuture,
};
use super::{HintClaim, HintedSpace, Leases, PresenceStamp, RoleChange, RoleRequest};
use crate::auth::TokenHash;
use tandem_protocol::api::{PushToken, SpaceMembers, SpaceSummary};
use tandem_protocol::wire::{DeviceInfo, GuardVerdict, MutationResult, RoleState};
use tandem_protocol::{Mutation, RoleFence, SpaceId, UserId};

/// Options of the SQLite store.
#[derive(Debug, Clone, Copy)]
pub struct SqliteOptions {
    /// Sync every commit to disk (`synchronous=FULL`).
    pub durable: bool,
    /// Reads running at once.
    pub read_connections: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            durable: false,
            read_connections: 4,
        }
    }
}

/// The SQLite implementation of [`Store`].
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    rules: PushRules,
    writer: WriterHandle,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stop_checkpoints: Mutex<Option<mpsc::Sender<()>>>,
    readers: Mutex<Vec<Connection>>,
    read_permits: Semaphore,
}

/// The store's clock (see [`crate::store::coordination`]): this process's,
/// the only one on the database. Coordination reads it where its
/// transaction runs (on the writer thread, or on a reader).
fn clock() -> u64 {
    crate::state::now_ms()
}

fn configure(conn: &Connection, durable: bool) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", if durable { "FULL" } else { "NORMAL" })?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    Ok(())
}

impl SqliteStore {
    /// Opens (creating or migrating) the database at `path`. Commits are
    /// announced to `listener`.
    pub fn open(
        path: &Path,
        rules: PushRules,
        listener: Arc<dyn CommitListener>,
        options: SqliteOptions,
    ) -> Result<SqliteStore, StoreError> {
        let mut conn = Connection::open(path).map_err(backend)?;
        configure(&conn, options.durable).map_err(backend)?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(backend)?;
        migrations::migrate(&mut conn).map_err(backend)?;
        coordination::clear_presence(&conn)?;
        let (sender, jobs) = mpsc::channel();
        let writer_thread = std::thread::Builder::new()
            .name("tandem-store-writer".into())
            .spawn(move || writer::run(conn, jobs, listener))
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        let (stop, stopped) = mpsc::channel::<()>();
        let checkpoint_conn = Connection::open(path).map_err(backend)?;
        configure(&checkpoint_conn, options.durable).map_err(backend)?;
        let checkpoint_thread = std::thread::Builder::new()
            .name("tandem-store-checkpoint".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(Duration::from_secs(1))
                {
                    if let Err(e) = checkpoint_conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)")
                    {
                        warn!(error = %e, "checkpoint failed");
                    }
                }
            })
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                rules,
                writer: WriterHandle::new(sender),
                threads: Mutex::new(vec![writer_thread, checkpoint_thread]),
                stop_checkpoints: Mutex::new(Some(stop)),
                readers: Mutex::new(Vec::new()),
                read_permits: Semaphore::new(options.read_connections.max(1)),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn read<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let _permit = self
            .inner
            .read_permits
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let conn = inner.take_reader()?;
            let result = {
                let tx = conn.unchecked_transaction().map_err(backend)?;
                work(&tx)
            };
            inner.return_reader(conn);
            result
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))?
    }
}

impl Inner {
    fn take_reader(&self) -> Result<Connection, StoreError> {
        if self.read_permits.is_closed() {
            return Err(StoreError::Closed);
        }
        if let Some(conn) = self.readers.lock().ok().and_then(|mut r| r.pop()) {
            return Ok(conn);
        }
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(backend)?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(backend)?;
        Ok(conn)
    }

    fn return_reader(&self, conn: Connection) {
        if let Ok(mut readers) = self.readers.lock() {
            readers.push(conn);
        }
    }
}

impl AuthStore for SqliteStore {
    fn register_device(
        &self,
        device: DeviceRegistration,
        credentials: NewCredentials,
        max_devices: usize,
        now_ms: u64,
    ) -> StoreFuture<'_, ()> {
        Box::pin(self.inner.writer.write(move |ctx| {
            writes::register_device(ctx, &device, &credentials, max_devices, now_ms)
        }))
    }

    fn device_for_access_token(
        &self,
        access: TokenHash,
        now_ms: u64,
    ) -> StoreFuture<'_, Option<DeviceIdentity>> {
        Box::pin(self.read(move |conn| reads::device_for_access_token(conn, &access, now_ms)))
    }

    fn refresh_credentials(
        &self,
        presented: TokenHash,
        next: NewCredentials,
        now_ms: u64,
    ) -> StoreFuture<'_, RefreshOutcome> {
        Box::pin(
            self.inner
                .writer
                .write(move |ctx| writes::refresh_credentials(ctx, &presented, &next, now_ms)),
        )
    }

    fn revoke_device(&self, device: DeviceIdentity) -> StoreFuture<'_, ()> {
        Box::pin(
            self.inner
                .writer
                .write(move |ctx| writes::revoke_device(ctx, &device)),
        )
    }

    fn create_space(&self, owner: UserId, space: SpaceId) -> StoreFuture<'_, SpaceMembers> {
        Box::pin(
            self.inner
                .writer
                .write(move |ctx| writes::create_space(ctx, &owner, &space)),
        )
    }

    fn add_member(
        &self,
        actor: UserId,
        space: SpaceId,
        member: UserId,
    ) -> StoreFuture<'_, SpaceMembers> {
        Box::pin(
            self.inner
                .writer
                .write(move |ctx| writes::add_member(ctx, &actor, &space, &member)),
        )
    }

    fn remove_member(
        &self,
        actor: UserId,
        space: SpaceId,
        member: UserId,
    ) -> StoreFuture<'_, SpaceMembers> {
        Box::pin(
            self.inner
                .writer
                .write(move |ctx| writes::remove_member(ctx, &actor, &space, &member)),
        )
    }

    fn spaces_of(&self, user: UserId) -> StoreFuture<'_, Vec<SpaceSummary>> {
        Box::pin(self.read(move |conn| reads::spaces_of_user(conn, &user)))
    }

    fn space_members(&self, actor: UserId, space: SpaceId) -> StoreFuture<'_, SpaceMembers> {
        Box::pin(self.read(move |conn| reads::space_members(conn, &actor, &space)))
    }
}

impl FeedStore for SqliteStore {
    fn push(
        &self,
        author: DeviceIdentity,
        mutations: Vec<Mutation>,
        now_ms: u64,
    ) -> StoreFuture<'_, Vec<MutationResult>> {
        let rules = self.inner.rules.clone();
        Box::pin(
            self.inner
                .writer
                .write(move |ctx| writes::push(ctx, &rules, &author, &mutations, now_ms)),
        )
    }

    fn read_changes(
        &self,
        reader: UserId,
        space: SpaceId,
        after: u64,
        limit: PageLimit,
    ) -> StoreFuture<'_, ChangePage> {
        Box::pin(self.read(move |conn| reads::read_changes(conn, &reader, &space, after, limit)))
    }

    fn feed_positions(
        &self,
        reader: UserId,
        spaces: Vec<SpaceId>,
    ) -> StoreFuture<'_, Vec<(SpaceId, FeedPosition)>> {
        Box::pin(self.read(move |conn| reads::feed_positions(conn, &reader, &spaces)))
    }

    fn compact(&self, rule: CompactionRule) -> StoreFuture<'_, CompactionReport> {
        Box::pin(
            self.inner
                .writer
                .write(move |ctx| writes::compact(ctx, &rule)),
        )
    }
}

impl CoordinationStore for SqliteStore {
    fn devices_of(&self, user: UserId) -> StoreFuture<'_, Vec<DeviceInfo>> {
        Box::pin(
            self.read(move |conn| ready(transactions::devices_of(&SqliteReads::new(conn), &user))),
        )
    }

    fn rename_device(&self, device: DeviceIdentity, name: String) -> StoreFuture<'_, ()> {
        Box::pin(self.inner.writer.write(move |ctx| {
            ready(transactions::rename_device(
                &mut SqliteTx::new(ctx),
                &device,
                &name,
            ))
        }))
    }

    fn set_push_token(
        &self,
        device: DeviceIdentity,
        token: Option<PushToken>,
    ) -> StoreFuture<'_, ()> {
        Box::pin(
            self.inner.writer.write(move |ctx| {
                ready(SqliteTx::new(ctx).set_push_token(&device, token.as_ref()))
            }),
        )
    }

    fn claim_push_hints(
        &self,
        spaces: Vec<HintedSpace>,
        min_interval_ms: u64,
    ) -> StoreFuture<'_, HintClaim> {
        Box::pin(self.inner.writer.write(move |ctx| {
            ready(transactions::claim_push_hints(
                &mut SqliteTx::new(ctx),
                &spaces,
                min_interval_ms,
            ))
        }))
    }

    fn presence_connected(
        &self,
        instance: String,
        stamp: PresenceStamp,
        leases: Leases,
    ) -> StoreFuture<'_, ()> {
        Box::pin(self.inner.writer.write(move |ctx| {
            ready(transactions::presence_connected(
                &mut SqliteTx::new(ctx),
                &instance,
                &stamp,
                leases,
            ))
        }))
    }

    fn presence_disconnected(
        &self,
        instance: String,
        device: DeviceIdentity,
    ) -> StoreFuture<'_, ()> {
        Box::pin(self.inner.writer.write(move |ctx| {
            ready(transactions::presence_disconnected(
                &mut SqliteTx::new(ctx),
                &instance,
                &device,
            ))
        }))
    }

    fn presence_heartbeat(
        &self,
        instance: String,
        stamps: Vec<PresenceStamp>,
        leases: Leases,
    ) -> StoreFuture<'_, ()> {
        Box::pin(self.inner.writer.write(move |ctx| {
            ready(transactions::presence_heartbeat(
                &mut SqliteTx::new(ctx),
                &instance,
                &stamps,
                leases,
            ))
        }))
    }

    fn change_role(
        &self,
        actor: DeviceIdentity,
        role: String,
        request: RoleRequest,
        leases: Leases,
    ) -> StoreFuture<'_, RoleChange> {
        Box::pin(self.inner.writer.write(move |ctx| {
            ready(transactions::change_role(
                &mut SqliteTx::new(ctx),
                &actor,
                &role,
                &request,
                leases,
            ))
        }))
    }

    fn roles_of(&self, user: UserId) -> StoreFuture<'_, Vec<RoleState>> {
        Box::pin(
            self.read(move |conn| ready(transactions::roles_of(&SqliteReads::new(conn), &user))),
        )
    }

    fn roles_to_check(&self) -> StoreFuture<'_, Vec<(UserId, String)>> {
        Box::pin(
            self.read(move |conn| ready(transactions::roles_to_check(&SqliteReads::new(conn)))),
        )
    }

    fn guard(
        &self,
        author: DeviceIdentity,
        hash: [u8; 32],
        window_ms: u64,
        fence: Option<RoleFence>,
    ) -> StoreFuture<'_, GuardVerdict> {
        Box::pin(self.inner.writer.write(move |ctx| {
            ready(transactions::guard(
                &mut SqliteTx::new(ctx),
                &author,
                &hash,
                window_ms,
                fence.as_ref(),
            ))
        }))
    }

    fn sweep_guards(&self) -> StoreFuture<'_, u64> {
        Box::pin(
            self.inner
                .writer
                .write(move |ctx| ready(transactions::sweep_guards(&mut SqliteTx::new(ctx)))),
        )
    }
}

impl Store for SqliteStore {
    fn close(&self) -> StoreFuture<'_, ()> {
        let inner = self.inner.clone();
        Box::pin(async move {
            inner.writer.close();
            inner.read_permits.close();
            if let Ok(mut stop) = inner.stop_checkpoints.lock() {
                stop.take();
            }
            let threads: Vec<JoinHandle<()>> = match inner.threads.lock() {
                Ok(mut threads) => threads.drain(..).collect(),
                Err(_) => Vec::new(),
            };
            tokio::task::spawn_blocking(move || {
                for thread in threads {
                    let _ = thread.join();
                }
            })
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?;
            Ok(())
        })
    }
}
