//! The device's local database.
//!
//! One SQLite database per device, in WAL mode, reached through:
//!
//! - one writer connection behind a mutex: every write of the store goes
//!   through it, so writes are serialized in the process and never meet
//!   `SQLITE_BUSY` from each other;
//! - a few reader connections (`readers`): in WAL mode readers see the
//!   last committed state and neither block nor are blocked by the writer;
//! - a checkpointer with its own connection (`checkpoint`), run as a
//!   background task (`crate::background`), so WAL checkpoints happen off
//!   the write path; `writer_lock` is the fair lock it shares with writes.
//!
//! The submodules are the rooms: `schema` (tables and migrations),
//! `writes` (local writes), `reads` (get and query), `indexes`
//! (declared field indexes), `outbox` (the queue of mutations and what the
//! server's answers do to it), `views` (reading, writing and rebuilding a
//! document's local view on its confirmed state), `cursors` (each space's
//! revision and checksum), `policies` (each collection's merge policy),
//! `remote` (applying the server's pages, conflict documents, re-syncs),
//! `sync_state` (credentials, sync bookkeeping, the conflict log),
//! `eviction` (the cache budget), `device` (identity and clock), `commits`
//! (the listener that hears of every commit).
//!
//! Only [`open_writer`], [`Checkpointer`] and [`WriterLock`] are public:
//! the benchmarks use them to measure a bare SQLite write with exactly the
//! store's settings.

mod checkpoint;
mod commits;
mod cursors;
mod device;
mod eviction;
mod indexes;
mod outbox;
mod policies;
mod readers;
mod reads;
#[cfg(feature = "encryption")]
mod rekey;
mod remote;
mod schema;
mod sync_state;
mod views;
mod writer_lock;
mod writes;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use rusqlite::Connection;
use tandem_protocol::{Collection, CollectionPolicy, HybridClock};

pub use checkpoint::{CheckpointSettings, CheckpointStats, Checkpointer};
pub(crate) use commits::CommitListener;
#[cfg(test)]
pub(crate) use commits::NoListener;
pub(crate) use device::LocalIdentity;
pub(crate) use indexes::IndexCatalog;
pub(crate) use outbox::{BatchLimit, EntryOutcome, OutboxEntry};
pub use outbox::{OutboxState, PendingMutation};
pub(crate) use remote::{PageCheck, PageEnd, Resync, Settlement};
pub(crate) use sync_state::ConflictLogEntry;
pub use sync_state::{ConflictRecord, StoredCredentials};
pub use writer_lock::WriterLock;
pub(crate) use writes::Write;

use crate::background::Background;
use crate::config::{ClientConfig, DATABASE_FILE, DatabaseKey, Durability};
use crate::document::DocRef;
use crate::error::Error;
use readers::ReaderPool;

/// How many reader connections the store keeps: one for the observer
/// thread and two for the app's own reads, on phones with a handful of
/// cores.
const READER_CONNECTIONS: usize = 3;

/// How long a connection waits for a lock another connection holds (the
/// checkpointer's RESTART, another process on the same directory) before
/// failing with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Statements kept prepared per connection: the fixed statements of the
/// write and read paths plus the query shapes an app uses.
const STATEMENT_CACHE: usize = 64;

/// Opens a connection for writing to the database at `path` with the
/// store's settings, and starts its background checkpointer on
/// `background`. `writers` is the lock that every write through the
/// connection holds (the checkpointer holds it to restart an oversized
/// WAL).
pub fn open_writer<T: Send + 'static>(
    path: &Path,
    key: Option<&DatabaseKey>,
    durability: Durability,
    checkpoints: CheckpointSettings,
    writers: Arc<WriterLock<T>>,
    background: &dyn Background,
) -> Result<(Connection, Checkpointer), Error> {
    let mut conn = connect(path, key)?;
    // WAL: a commit appends to the log instead of rewriting pages in place
    // (one sequential write), and readers keep reading the last committed
    // state while a write is in progress. The mode is stored in the file,
    // so every later connection gets it too.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // NORMAL (default) or FULL: see `Durability` for what each survives.
    conn.pragma_update(None, "synchronous", durability.synchronous_pragma())?;
    // No checkpoints inside commits: the checkpointer thread runs them
    // (store/checkpoint.rs). Must come before the WAL hook is installed,
    // because setting it replaces the hook.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    // When the WAL starts over, give back the file space beyond 128 MiB.
    // SQLite truncates in the first commit after the restart, on the write
    // path, so the limit sits above what the checkpointer lets the WAL
    // reach (64 MiB and a little more): it only trims after something
    // unusual, such as a reader holding an old snapshot for a long time.
    conn.pragma_update(None, "journal_size_limit", 128 * 1024 * 1024)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    let checkpointer = Checkpointer::start(path, key, &mut conn, writers, checkpoints, background)?;
    Ok((conn, checkpointer))
}

/// The first bytes of every plain SQLite file; an encrypted one starts
/// with its random salt instead.
const PLAIN_HEADER: &[u8] = b"SQLite format 3\0";

/// Opens a connection to the database at `path`, unlocked with `key` when
/// given (SQLCipher needs the key before anything else is read), and reads
/// the schema once, so a wrong key fails here, before anything is written.
pub(crate) fn connect(path: &Path, key: Option<&DatabaseKey>) -> Result<Connection, Error> {
    let conn = Connection::open(path)?;
    // SQLCipher logs a failed decryption to stderr; a wrong key is an error
    // the caller gets, not something for the app's console.
    #[cfg(feature = "encryption")]
    conn.execute_batch("PRAGMA cipher_log_level = NONE")?;
    if let Some(key) = key {
        unlock(&conn, key)?;
    }
    match conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(())) {
        Ok(()) => Ok(conn),
        Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::NotADatabase) => {
            Err(wrong_key(path, key))
        }
        Err(e) => Err(e.into()),
    }
}

/// Why a database that is a database did not open with `key`.
fn wrong_key(path: &Path, key: Option<&DatabaseKey>) -> Error {
    let mut header = [0u8; 16];
    let plain = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut header))
        .is_ok_and(|()| header == PLAIN_HEADER);
    Error::WrongKey(match (key, plain) {
        (Some(_), true) => "the database is not encrypted: open it without a key, \
             or encrypt it first (change_encryption_key)"
            .to_owned(),
        (Some(_), false) => "the database is encrypted with another key".to_owned(),
        (None, _) => "the database is encrypted: open it with its key".to_owned(),
    })
}

#[cfg(feature = "encryption")]
fn unlock(conn: &Connection, key: &DatabaseKey) -> Result<(), Error> {
    // The literal holds only hex digits: nothing to escape.
    conn.execute_batch(&format!("PRAGMA key = \"{}\"", key.raw_literal()))?;
    Ok(())
}

#[cfg(not(feature = "encryption"))]
fn unlock(_conn: &Connection, _key: &DatabaseKey) -> Result<(), Error> {
    Err(Error::InvalidConfig(
        "this build has no database encryption (the `encryption` feature of tandem-core)".into(),
    ))
}

/// Changes the key the database in `data_dir` is encrypted with (`None`:
/// plain). No client may have it open.
#[cfg(feature = "encryption")]
pub(crate) fn change_key(
    data_dir: &Path,
    current: Option<&DatabaseKey>,
    new: Option<&DatabaseKey>,
) -> Result<(), Error> {
    rekey::change_key(data_dir, current, new)
}

#[cfg(not(feature = "encryption"))]
pub(crate) fn change_key(
    _data_dir: &Path,
    _current: Option<&DatabaseKey>,
    _new: Option<&DatabaseKey>,
) -> Result<(), Error> {
    Err(Error::InvalidConfig(
        "this build has no database encryption (the `encryption` feature of tandem-core)".into(),
    ))
}

/// Opens a read-only connection with the store's settings.
fn open_reader(path: &Path, key: Option<&DatabaseKey>) -> Result<Connection, Error> {
    let conn = connect(path, key)?;
    // A reader that tried to write would race the writer's transactions;
    // make that an error instead.
    conn.pragma_update(None, "query_only", true)?;
    // ORDER BY on a field no index orders is sorted in memory rather than
    // in a temporary file.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// The writer connection and what only writes read and change.
pub(crate) struct Writer {
    pub conn: Connection,
    /// The device's clock; its last reading is persisted with each write.
    pub clock: HybridClock,
    /// The policies of the `policies` table. Only the writer changes that
    /// table, so this copy is always current.
    pub policies: HashMap<Collection, CollectionPolicy>,
}

/// The policy of `collection` (`lww` unless one was stored). A function of
/// the map rather than of the `Writer`, so it can be called while a
/// transaction borrows the connection.
pub(crate) fn policy_of(
    policies: &HashMap<Collection, CollectionPolicy>,
    collection: &Collection,
) -> CollectionPolicy {
    policies.get(collection).cloned().unwrap_or_default()
}

/// The local database of one device.
pub(crate) struct Store {
    path: PathBuf,
    /// Shared with the checkpointer, which holds it to restart the WAL.
    writer: Arc<WriterLock<Option<Writer>>>,
    checkpointer: Mutex<Option<Checkpointer>>,
    readers: ReaderPool,
    indexes: RwLock<IndexCatalog>,
    identity: LocalIdentity,
    max_document_bytes: usize,
    commits: Box<dyn CommitListener>,
    cache: eviction::CachePolicy,
}

impl Store {
    /// Opens (creating or upgrading) the database in `config.data_dir`.
    /// Committed changes are announced to `commits`; checkpoints run on
    /// `config.background`.
    pub fn open(
        config: &ClientConfig,
        checkpoints: CheckpointSettings,
        commits: Box<dyn CommitListener>,
    ) -> Result<Store, Error> {
        std::fs::create_dir_all(&config.data_dir)?;
        let path = Path::new(&config.data_dir).join(DATABASE_FILE);
        let writer = Arc::new(WriterLock::new(None));
        let key = config.encryption_key.as_ref();
        let (mut conn, checkpointer) = open_writer(
            &path,
            key,
            config.durability,
            checkpoints,
            Arc::clone(&writer),
            config.background.as_ref(),
        )?;
        schema::prepare(&mut conn)?;
        let identity = device::load_or_create(&conn, &config.user_id, &config.device_name)?;
        outbox::requeue_in_flight(&conn)?;
        let last = device::last_reading(&conn, identity.last_hlc.clone())?;
        let clock = HybridClock::resume(identity.device_id.clone(), last.as_ref());
        let policies = policies::load_policies(&conn)?;
        let indexes = IndexCatalog::load(&conn)?;
        let mut readers = Vec::with_capacity(READER_CONNECTIONS);
        for _ in 0..READER_CONNECTIONS {
            readers.push(open_reader(&path, key)?);
        }
        *writer.lock() = Some(Writer {
            conn,
            clock,
            policies,
        });
        Ok(Store {
            path,
            writer,
            checkpointer: Mutex::new(Some(checkpointer)),
            readers: ReaderPool::new(readers),
            indexes: RwLock::new(indexes),
            identity,
            max_document_bytes: config.max_document_bytes,
            commits,
            cache: eviction::CachePolicy {
                limit_bytes: config.cache_limit_bytes,
                evictable: config.evictable_collections.clone(),
                touched: Mutex::new(HashMap::new()),
            },
        })
    }

    /// The device's identity.
    pub fn identity(&self) -> &LocalIdentity {
        &self.identity
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with the writer, or fails with [`Error::Closed`].
    fn with_writer<T>(&self, f: impl FnOnce(&mut Writer) -> Result<T, Error>) -> Result<T, Error> {
        let mut guard = self.writer.lock();
        let writer = guard.as_mut().ok_or(Error::Closed)?;
        f(writer)
    }

    /// Announces committed changes to observers.
    fn announce(&self, docs: Vec<DocRef>) {
        if !docs.is_empty() {
            self.commits.committed(docs);
        }
    }

    /// The stored collection policies.
    pub(crate) fn policies(&self) -> HashMap<Collection, CollectionPolicy> {
        self.writer
            .lock()
            .as_ref()
            .map(|w| w.policies.clone())
            .unwrap_or_default()
    }

    /// Notes that the app used `doc` (eviction evicts the least recently
    /// used first).
    pub(crate) fn touch(&self, doc: &DocRef) {
        self.cache.touch(doc);
    }

    /// Whether [`Store::close`] has not been called.
    pub fn is_open(&self) -> bool {
        self.readers.is_open()
    }

    /// Closes every connection. Idempotent. The checkpointer stops first and
    /// the writer closes last: when the last connection to a WAL database
    /// closes, SQLite checkpoints and removes the WAL.
    pub fn close(&self) {
        if let Some(mut checkpointer) = lock(&self.checkpointer).take() {
            checkpointer.stop();
        }
        self.readers.close();
        self.writer.lock().take();
    }

    /// What the checkpointer has done so far.
    #[cfg_attr(not(test), expect(dead_code, reason = "for diagnostics and tests"))]
    pub fn checkpoint_stats(&self) -> CheckpointStats {
        lock(&self.checkpointer)
            .as_ref()
            .map(Checkpointer::stats)
            .unwrap_or_default()
    }
}

/// Locks `m`. The store's mutexes guard connections and caches that a
/// panic cannot leave half-changed (an open transaction rolls back when it
/// is dropped during unwinding), so a poisoned lock is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// SQLite integers are signed; counts and versions are not. Values beyond
/// `i64::MAX` cannot come from this store, so they saturate.
pub(crate) fn to_sql_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The inverse of [`to_sql_int`]: a negative value is damage.
pub(crate) fn from_sql_int(v: i64, what: &str) -> Result<u64, Error> {
    u64::try_from(v).map_err(|_| Error::CorruptStore(format!("{what} is negative: {v}")))
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A store in a fresh temporary directory, for user `alice`.
    pub fn open_store(dir: &Path) -> Store {
        open_store_with(dir, CheckpointSettings::default())
    }

    pub fn open_store_with(dir: &Path, checkpoints: CheckpointSettings) -> Store {
        let config = ClientConfig::new(dir.to_str().unwrap(), "alice", "phone");
        Store::open(&config, checkpoints, Box::new(NoListener)).unwrap()
    }

    /// Counts the transactions the store's writer commits from now on.
    pub fn count_commits(store: &Store) -> Arc<AtomicUsize> {
        let commits = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&commits);
        store
            .with_writer(|writer| {
                writer.conn.commit_hook(Some(move || {
                    counter.fetch_add(1, Ordering::SeqCst);
                    false
                }))?;
                Ok(())
            })
            .unwrap();
        commits
    }

    /// Runs `sql` (a count) on a connection of its own.
    pub fn count(store: &Store, sql: &str) -> i64 {
        let conn = Connection::open(store.path()).unwrap();
        conn.query_row(sql, [], |row| row.get(0)).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::open_store_with;
    use super::*;
    use serde_json::json;
    use tandem_protocol::{DocId, SpaceId};

    fn pragma(conn: &Connection, name: &str) -> i64 {
        conn.pragma_query_value(None, name, |row| row.get(0))
            .unwrap()
    }

    #[test]
    fn the_writer_has_the_documented_pragmas() {
        let dir = tempfile::tempdir().unwrap();
        for (durability, synchronous) in [(Durability::Normal, 1), (Durability::Full, 2)] {
            let path = dir.path().join(format!("{durability:?}.db"));
            let (conn, _checkpointer) = open_writer(
                &path,
                None,
                durability,
                CheckpointSettings::default(),
                Arc::new(WriterLock::new(())),
                &crate::background::Threads,
            )
            .unwrap();
            assert_eq!(pragma(&conn, "synchronous"), synchronous);
            assert_eq!(pragma(&conn, "wal_autocheckpoint"), 0);
            let mode: String = conn
                .pragma_query_value(None, "journal_mode", |row| row.get(0))
                .unwrap();
            assert_eq!(mode, "wal");
        }
    }

    #[test]
    fn the_checkpointer_copies_the_wal_off_the_write_path() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store_with(
            dir.path(),
            CheckpointSettings {
                passive_pages: 8,
                restart_pages: 1 << 20,
            },
        );
        let wal = dir.path().join(format!("{DATABASE_FILE}-wal"));
        let mut n = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        // With autocheckpoint off, only the checkpointer thread can
        // checkpoint; the WAL hook wakes it once the WAL passes 8 pages.
        while store.checkpoint_stats().frames_checkpointed == 0 {
            assert!(std::time::Instant::now() < deadline, "no checkpoint ran");
            n += 1;
            let doc = DocRef {
                space: SpaceId::new("personal:alice").unwrap(),
                collection: Collection::new("tasks").unwrap(),
                id: DocId::new(format!("t{n}")).unwrap(),
            };
            let fields = json!({ "n": n }).as_object().unwrap().clone();
            store.write(&doc, Write::Put(fields)).unwrap();
        }
        assert!(wal.exists());
        store.close();
        assert!(
            !wal.exists(),
            "closing the last connection checkpoints and removes the WAL"
        );
    }
}
