//! The PostgreSQL store: several server instances share one database.
//!
//! Each instance opens its own [`PostgresStore`] on the same database and
//! schema. What keeps them correct together:
//!
//! - **Revisions.** Every write to a space first locks the space's row
//!   (`SELECT ... FOR UPDATE`, several spaces in one statement in name
//!   order, so two writers never wait on each other in a cycle). The row
//!   holds the head; the next revision is head + 1, written in the same
//!   transaction. Writers of one space therefore take turns across all
//!   instances, a rolled-back transaction gives its revisions back, and the
//!   unique index on `documents (space, version)` refuses a duplicate should
//!   anything else go wrong. The isolation level is READ COMMITTED: each
//!   statement after the lock sees everything committed before it.
//! - **Idempotency.** The `mutations` table records every mutation's result
//!   under its id. A retry on any instance reads the record (after the space
//!   lock, so a concurrent first attempt in the same space has committed).
//!   Two instances applying the same id in different spaces at once are
//!   decided by the primary key: the loser's transaction sees its insert
//!   refused, rolls back and runs again, and then answers from the record.
//! - **Group commit.** Pushes queue for a few writer tasks; a writer takes
//!   every batch waiting (up to a limit) and applies them together in one
//!   transaction with a handful of set-based statements, so one commit (one
//!   WAL flush) makes many batches durable ([`pushes`]).
//! - **Announcements.** Every transaction that produces [`StoreEvent`]s also
//!   sends a `NOTIFY` on the schema's channel (space and revisions, user and
//!   space, user and device). PostgreSQL delivers notifications in commit
//!   order, so each instance's listener hands events to its
//!   [`CommitListener`] in the database's commit order — its own events too,
//!   which it keeps in memory until their notification arrives. Changes
//!   committed by other instances are read from the store
//!   ([`announce`]).
//!
//! Adding a store operation: write it as a function of a
//! [`WriteTx`] (or a read of a client) in [`writes`] or [`reads`]; events it
//! pushes on the `WriteTx` are announced everywhere after the commit, and
//! [`PostgresStore::write`] retries it on a serialization failure or
//! deadlock. Then add one line to the implementation of the store's part
//! it belongs to ([`AuthStore`] or [`FeedStore`]). A coordination operation
//! is written once for both stores, in `store::coordination::transactions`,
//! over the seam that `coordination` implements here.

mod announce;
mod coordination;
pub mod migrations;
mod pushes;
mod reads;
#[cfg(feature = "conformance")]
pub mod testing;
mod writes;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures::future::BoxFuture;
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;
use tracing::warn;

use self::announce::Announcer;
use self::coordination::{PgReads, PgTx};
use self::pushes::PushQueue;
use super::coordination::seam::CoordinationTx;
use super::coordination::transactions;
use super::{
    AuthStore, ChangePage, CommitListener, CompactionReport, CompactionRule, CoordinationStore,
    DeviceIdentity, DeviceRegistration, FeedPosition, FeedStore, NewCredentials, PageLimit,
    PushRules, RefreshOutcome, Store, StoreError, StoreEvent, StoreFuture,
};
use super::{HintClaim, HintedSpace, Leases, PresenceStamp, RoleChange, RoleRequest};
use crate::auth::TokenHash;
use tandem_protocol::api::{PushToken, SpaceMembers, SpaceSummary};
use tandem_protocol::wire::{DeviceInfo, GuardVerdict, MutationResult, RoleState};
use tandem_protocol::{Mutation, RoleFence, SpaceId, UserId};

/// Options of the PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// A libpq-style connection string: `postgresql://user@host:port/db` or
    /// `host=/run/postgresql port=5432 user=tandem dbname=tandem`.
    pub url: String,
    /// The schema holding Tandem's tables (created if missing). Instances
    /// that share a database and a schema share everything.
    pub schema: String,
    /// Connections in the pool (reads, writes and the writer tasks).
    pub pool_size: usize,
    /// Writer tasks applying groups of pushes at once.
    pub writers: usize,
    /// Most mutations in one group transaction.
    pub max_group_mutations: usize,
}

impl PostgresOptions {
    /// Defaults for everything but the connection string.
    pub fn new(url: impl Into<String>) -> PostgresOptions {
        PostgresOptions {
            url: url.into(),
            schema: "tandem".into(),
            pool_size: 16,
            writers: 2,
            max_group_mutations: 2_000,
        }
    }
}

/// The PostgreSQL implementation of [`Store`].
pub struct PostgresStore {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pool: Pool,
    rules: PushRules,
    announcer: Arc<Announcer>,
    pushes: PushQueue,
    /// Held by the instance that compacts, so only one does at a time.
    compaction_lock: i64,
    closed: AtomicBool,
    listener_task: std::sync::Mutex<Option<JoinHandle<()>>>,
    writer_tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

/// Converts a PostgreSQL error into a store error.
pub(crate) fn pg_error(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => StoreError::Backend(format!("{}: {}", db.code().code(), db.message())),
        None => StoreError::Backend(e.to_string()),
    }
}

/// Whether running the transaction again may succeed.
fn is_transient(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(&SqlState::T_R_SERIALIZATION_FAILURE) | Some(&SqlState::T_R_DEADLOCK_DETECTED)
    )
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_error(e),
        other => StoreError::Backend(other.to_string()),
    }
}

/// Why a transaction failed: worth another try, or not.
pub(crate) enum TxError {
    /// A serialization failure, a deadlock, or a lost race for a unique key:
    /// run the transaction again.
    Retry(String),
    /// Give up with this error.
    Fail(StoreError),
}

impl From<tokio_postgres::Error> for TxError {
    fn from(e: tokio_postgres::Error) -> TxError {
        if is_transient(&e) {
            TxError::Retry(e.to_string())
        } else {
            TxError::Fail(pg_error(e))
        }
    }
}

impl From<TxError> for StoreError {
    fn from(e: TxError) -> StoreError {
        match e {
            TxError::Retry(why) => StoreError::Backend(why),
            TxError::Fail(e) => e,
        }
    }
}

impl From<StoreError> for TxError {
    fn from(e: StoreError) -> TxError {
        TxError::Fail(e)
    }
}

/// How many times a transaction is tried before its error is returned.
const ATTEMPTS: usize = 5;

/// A write transaction and what it will announce once committed.
pub(crate) struct WriteTx<'a> {
    /// The transaction.
    pub tx: deadpool_postgres::Transaction<'a>,
    /// What to announce.
    events: Vec<StoreEvent>,
}

impl WriteTx<'_> {
    /// Queues `event` for announcement after the commit.
    pub fn announce(&mut self, event: StoreEvent) {
        self.events.push(event);
    }
}

/// Quotes an identifier for SQL.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A stable 63-bit key for advisory locks and channel names of a schema.
fn schema_key(schema: &str) -> i64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(schema.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(bytes) >> 1) as i64
}

/// Parses the connection string and applies the store's session settings.
fn connection_config(
    options: &PostgresOptions,
    application: &str,
) -> Result<tokio_postgres::Config, StoreError> {
    let mut config: tokio_postgres::Config = options
        .url
        .parse()
        .map_err(|e| StoreError::InvalidRequest(format!("bad PostgreSQL URL: {e}")))?;
    config.application_name(application);
    config.options(format!(
        "-c search_path={} -c idle_in_transaction_session_timeout=60000",
        quote_ident(&options.schema)
    ));
    config.connect_timeout(Duration::from_secs(10));
    config.keepalives(true);
    Ok(config)
}

impl PostgresStore {
    /// Connects, creates the schema if needed and migrates it, starts the
    /// notification listener and the writer tasks. Commits (of every
    /// instance on the same schema) are announced to `listener`.
    pub async fn open(
        options: PostgresOptions,
        rules: PushRules,
        listener: Arc<dyn CommitListener>,
    ) -> Result<PostgresStore, StoreError> {
        if options.schema.is_empty() {
            return Err(StoreError::InvalidRequest(
                "the schema name is empty".into(),
            ));
        }
        let config = connection_config(&options, "tandem-server")?;
        let lock_key = schema_key(&options.schema);
        {
            let (mut client, connection) = config.connect(NoTls).await.map_err(pg_error)?;
            let driver = tokio::spawn(connection);
            let tx = client.transaction().await.map_err(pg_error)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock_key])
                .await
                .map_err(pg_error)?;
            tx.batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {}",
                quote_ident(&options.schema)
            ))
            .await
            .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)?;
            migrations::migrate(&mut client, lock_key).await?;
            drop(client);
            let _ = driver.await;
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(options.writers + 2))
            .build()
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        let channel = format!("tandem_{:x}", lock_key);
        let instance = uuid::Uuid::now_v7();
        let listen_config = connection_config(&options, &format!("tandem-listener {instance}"))?;
        let (announcer, listener_task) =
            Announcer::start(instance, listen_config, pool.clone(), channel, listener).await?;
        let inner = Arc::new(Inner {
            pool,
            rules,
            announcer,
            pushes: PushQueue::new(options.max_group_mutations.max(1)),
            compaction_lock: lock_key ^ 1,
            closed: AtomicBool::new(false),
            listener_task: std::sync::Mutex::new(Some(listener_task)),
            writer_tasks: std::sync::Mutex::new(Vec::new()),
        });
        let writers: Vec<_> = (0..options.writers.max(1))
            .map(|_| tokio::spawn(pushes::run_writer(inner.clone())))
            .collect();
        if let Ok(mut tasks) = inner.writer_tasks.lock() {
            tasks.extend(writers);
        }
        Ok(PostgresStore { inner })
    }

    /// Drops the schema and everything in it. For tests and benchmarks that
    /// made a schema of their own.
    pub async fn drop_schema(options: &PostgresOptions) -> Result<(), StoreError> {
        let config = connection_config(options, "tandem-admin")?;
        let (client, connection) = config.connect(NoTls).await.map_err(pg_error)?;
        let driver = tokio::spawn(connection);
        client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                quote_ident(&options.schema)
            ))
            .await
            .map_err(pg_error)?;
        drop(client);
        let _ = driver.await;
        Ok(())
    }

    /// This instance's id: it names the instance's notifications and its
    /// listening connection (`application_name` `tandem-listener <id>`).
    pub fn instance_id(&self) -> uuid::Uuid {
        self.inner.announcer.instance()
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(StoreError::Closed)
        } else {
            Ok(())
        }
    }

    /// Runs `work` in a transaction, trying again on a transient failure;
    /// announces what it pushed once committed.
    async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        F: for<'t, 'c> Fn(&'t mut WriteTx<'c>) -> BoxFuture<'t, Result<T, TxError>>,
    {
        self.check_open()?;
        self.inner.write(work).await
    }

    /// Runs `work` with a pooled connection.
    async fn read<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        F: for<'c> FnOnce(&'c deadpool_postgres::Client) -> BoxFuture<'c, Result<T, StoreError>>,
    {
        self.check_open()?;
        let client = self.inner.pool.get().await.map_err(pool_error)?;
        work(&client).await
    }
}

impl Inner {
    pub(crate) async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        F: for<'t, 'c> Fn(&'t mut WriteTx<'c>) -> BoxFuture<'t, Result<T, TxError>>,
    {
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(5 << attempt)).await;
            }
            let mut client = self.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(pg_error)?;
            let mut wtx = WriteTx {
                tx,
                events: Vec::new(),
            };
            let value = match work(&mut wtx).await {
                Ok(value) => value,
                Err(TxError::Retry(why)) => {
                    last = why;
                    continue;
                }
                Err(TxError::Fail(e)) => return Err(e),
            };
            let WriteTx { tx, events } = wtx;
            match self.announcer.commit(tx, events).await {
                Ok(commit) => {
                    commit.ready();
                    return Ok(value);
                }
                Err(TxError::Retry(why)) => last = why,
                Err(TxError::Fail(e)) => return Err(e),
            }
        }
        Err(StoreError::Backend(format!(
            "gave up after {ATTEMPTS} attempts: {last}"
        )))
    }
}

impl AuthStore for PostgresStore {
    fn register_device(
        &self,
        device: DeviceRegistration,
        credentials: NewCredentials,
        max_devices: usize,
        now_ms: u64,
    ) -> StoreFuture<'_, ()> {
        Box::pin(self.write(move |w| {
            let device = device.clone();
            Box::pin(async move {
                writes::register_device(w, &device, &credentials, max_devices, now_ms).await
            })
        }))
    }

    fn device_for_access_token(
        &self,
        access: TokenHash,
        now_ms: u64,
    ) -> StoreFuture<'_, Option<DeviceIdentity>> {
        Box::pin(self.read(move |c| {
            Box::pin(async move { reads::device_for_access_token(c, &access, now_ms).await })
        }))
    }

    fn refresh_credentials(
        &self,
        presented: TokenHash,
        next: NewCredentials,
        now_ms: u64,
    ) -> StoreFuture<'_, RefreshOutcome> {
        Box::pin(self.write(move |w| {
            Box::pin(async move { writes::refresh_credentials(w, &presented, &next, now_ms).await })
        }))
    }

    fn revoke_device(&self, device: DeviceIdentity) -> StoreFuture<'_, ()> {
        Box::pin(self.write(move |w| {
            let device = device.clone();
            Box::pin(async move { writes::revoke_device(w, &device).await })
        }))
    }

    fn create_space(&self, owner: UserId, space: SpaceId) -> StoreFuture<'_, SpaceMembers> {
        Box::pin(self.write(move |w| {
            let owner = owner.clone();
            let space = space.clone();
            Box::pin(async move { writes::create_space(w, &owner, &space).await })
        }))
    }

    fn add_member(
        &self,
        actor: UserId,
        space: SpaceId,
        member: UserId,
    ) -> StoreFuture<'_, SpaceMembers> {
        Box::pin(self.write(move |w| {
            let actor = actor.clone();
            let space = space.clone();
            let member = member.clone();
            Box::pin(async move { writes::add_member(w, &actor, &space, &member).await })
        }))
    }

    fn remove_member(
        &self,
        actor: UserId,
        space: SpaceId,
        member: UserId,
    ) -> StoreFuture<'_, SpaceMembers> {
        Box::pin(self.write(move |w| {
            let actor = actor.clone();
            let space = space.clone();
            let member = member.clone();
            Box::pin(async move { writes::remove_member(w, &actor, &space, &member).await })
        }))
    }

    fn spaces_of(&self, user: UserId) -> StoreFuture<'_, Vec<SpaceSummary>> {
        Box::pin(self.read(move |c| Box::pin(async move { reads::spaces_of_user(c, &user).await })))
    }

    fn space_members(&self, actor: UserId, space: SpaceId) -> StoreFuture<'_, SpaceMembers> {
        Box::pin(
            self.read(move |c| {
                Box::pin(async move { reads::space_members(c, &actor, &space).await })
            }),
        )
    }
}

impl FeedStore for PostgresStore {
    fn push(
        &self,
        author: DeviceIdentity,
        mutations: Vec<Mutation>,
        now_ms: u64,
    ) -> StoreFuture<'_, Vec<MutationResult>> {
        Box::pin(async move {
            self.check_open()?;
            self.inner.pushes.submit(author, mutations, now_ms).await
        })
    }

    fn read_changes(
        &self,
        reader: UserId,
        space: SpaceId,
        after: u64,
        limit: PageLimit,
    ) -> StoreFuture<'_, ChangePage> {
        Box::pin(self.read(move |c| {
            Box::pin(async move { reads::read_changes(c, &reader, &space, after, limit).await })
        }))
    }

    fn feed_positions(
        &self,
        reader: UserId,
        spaces: Vec<SpaceId>,
    ) -> StoreFuture<'_, Vec<(SpaceId, FeedPosition)>> {
        Box::pin(self.read(move |c| {
            Box::pin(async move { reads::feed_positions(c, &reader, &spaces).await })
        }))
    }

    fn compact(&self, rule: CompactionRule) -> StoreFuture<'_, CompactionReport> {
        let lock = self.inner.compaction_lock;
        Box::pin(
            self.write(move |w| Box::pin(async move { writes::compact(w, &rule, lock).await })),
        )
    }
}

impl CoordinationStore for PostgresStore {
    fn devices_of(&self, user: UserId) -> StoreFuture<'_, Vec<DeviceInfo>> {
        Box::pin(
            self.read(move |c| Box::pin(async move { coordination::devices_of(c, &user).await })),
        )
    }

    fn rename_device(&self, device: DeviceIdentity, name: String) -> StoreFuture<'_, ()> {
        Box::pin(self.write(move |w| {
            let (device, name) = (device.clone(), name.clone());
            Box::pin(
                async move { transactions::rename_device(&mut PgTx::new(w), &device, &name).await },
            )
        }))
    }

    fn set_push_token(
        &self,
        device: DeviceIdentity,
        token: Option<PushToken>,
    ) -> StoreFuture<'_, ()> {
        Box::pin(self.write(move |w| {
            let (device, token) = (device.clone(), token.clone());
            Box::pin(async move { PgTx::new(w).set_push_token(&device, token.as_ref()).await })
        }))
    }

    fn claim_push_hints(
        &self,
        spaces: Vec<HintedSpace>,
        min_interval_ms: u64,
    ) -> StoreFuture<'_, HintClaim> {
        Box::pin(self.write(move |w| {
            let spaces = spaces.clone();
            Box::pin(async move {
                transactions::claim_push_hints(&mut PgTx::new(w), &spaces, min_interval_ms).await
            })
        }))
    }

    fn presence_connected(
        &self,
        instance: String,
        stamp: PresenceStamp,
        leases: Leases,
    ) -> StoreFuture<'_, ()> {
        Box::pin(self.write(move |w| {
            let (instance, stamp) = (instance.clone(), stamp.clone());
            Box::pin(async move {
                transactions::presence_connected(&mut PgTx::new(w), &instance, &stamp, leases).await
            })
        }))
    }

    fn presence_disconnected(
        &self,
        instance: String,
        device: DeviceIdentity,
    ) -> StoreFuture<'_, ()> {
        Box::pin(self.write(move |w| {
            let (instance, device) = (instance.clone(), device.clone());
            Box::pin(async move {
                transactions::presence_disconnected(&mut PgTx::new(w), &instance, &device).await
            })
        }))
    }

    fn presence_heartbeat(
        &self,
        instance: String,
        stamps: Vec<PresenceStamp>,
        leases: Leases,
    ) -> StoreFuture<'_, ()> {
        Box::pin(self.write(move |w| {
            let (instance, stamps) = (instance.clone(), stamps.clone());
            Box::pin(async move {
                transactions::presence_heartbeat(&mut PgTx::new(w), &instance, &stamps, leases)
                    .await
            })
        }))
    }

    fn change_role(
        &self,
        actor: DeviceIdentity,
        role: String,
        request: RoleRequest,
        leases: Leases,
    ) -> StoreFuture<'_, RoleChange> {
        Box::pin(self.write(move |w| {
            let (actor, role, request) = (actor.clone(), role.clone(), request.clone());
            Box::pin(async move {
                transactions::change_role(&mut PgTx::new(w), &actor, &role, &request, leases).await
            })
        }))
    }

    fn roles_of(&self, user: UserId) -> StoreFuture<'_, Vec<RoleState>> {
        Box::pin(self.read(move |c| {
            Box::pin(async move { Ok(transactions::roles_of(&PgReads::new(c), &user).await?) })
        }))
    }

    fn roles_to_check(&self) -> StoreFuture<'_, Vec<(UserId, String)>> {
        Box::pin(self.read(move |c| {
            Box::pin(async move { Ok(transactions::roles_to_check(&PgReads::new(c)).await?) })
        }))
    }

    fn guard(
        &self,
        author: DeviceIdentity,
        hash: [u8; 32],
        window_ms: u64,
        fence: Option<RoleFence>,
    ) -> StoreFuture<'_, GuardVerdict> {
        Box::pin(self.write(move |w| {
            let (author, fence) = (author.clone(), fence.clone());
            Box::pin(async move {
                transactions::guard(&mut PgTx::new(w), &author, &hash, window_ms, fence.as_ref())
                    .await
            })
        }))
    }

    fn sweep_guards(&self) -> StoreFuture<'_, u64> {
        Box::pin(self.write(move |w| {
            Box::pin(async move { transactions::sweep_guards(&mut PgTx::new(w)).await })
        }))
    }
}

impl Store for PostgresStore {
    fn close(&self) -> StoreFuture<'_, ()> {
        let inner = self.inner.clone();
        Box::pin(async move {
            if inner.closed.swap(true, Ordering::AcqRel) {
                return Ok(());
            }
            // Queued pushes are applied and answered; then the writers stop.
            inner.pushes.close();
            let writers: Vec<JoinHandle<()>> = match inner.writer_tasks.lock() {
                Ok(mut tasks) => tasks.drain(..).collect(),
                Err(_) => Vec::new(),
            };
            for writer in writers {
                if let Err(e) = writer.await {
                    warn!(error = %e, "a store writer failed");
                }
            }
            // The listener hands on the last commits' events, then stops.
            inner.announcer.stop();
            let listener = inner.listener_task.lock().ok().and_then(|mut t| t.take());
            if let Some(listener) = listener
                && let Err(e) = listener.await
            {
                warn!(error = %e, "the notification listener failed");
            }
            inner.pool.close();
            Ok(())
        })
    }
}
