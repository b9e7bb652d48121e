//! The server's settings, with the defaults `tandem serve` uses.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::auth::UserTokenVerifier;
use crate::schema::Schema;
use crate::store::PostgresOptions;

/// Everything a server needs to start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where to listen; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The SQLite database file (unused when `postgres` is set).
    pub database: PathBuf,
    /// Store everything in PostgreSQL instead of SQLite. Several servers
    /// with the same URL and schema are instances of one service.
    pub postgres: Option<PostgresOptions>,
    /// Collections' policies and field rules.
    pub schema: Schema,
    /// How user tokens are checked at device registration.
    pub user_tokens: UserTokenVerifier,
    /// Limits on what devices may send.
    pub limits: Limits,
    /// Lifetimes of device credentials.
    pub credentials: CredentialLifetimes,
    /// Change feed and fan-out settings.
    pub feed: FeedConfig,
    /// Durability of SQLite commits: `false` (the default) syncs the WAL at
    /// checkpoints only, so a commit survives a crash of the server process
    /// but not of the machine; `true` syncs every commit. (PostgreSQL
    /// commits are as durable as the database's `synchronous_commit`.)
    pub durable_commits: bool,
}

impl ServerConfig {
    /// Defaults for everything but the listen address, the database and the
    /// user-token check.
    pub fn new(listen: SocketAddr, database: PathBuf, user_tokens: UserTokenVerifier) -> Self {
        ServerConfig {
            listen,
            database,
            postgres: None,
            schema: Schema::default(),
            user_tokens,
            limits: Limits::default(),
            credentials: CredentialLifetimes::default(),
            feed: FeedConfig::default(),
            durable_commits: false,
        }
    }
}

/// Limits on input; breaking one gets a stable error code, never a crash.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest WebSocket frame or message, and largest HTTP body, in bytes.
    pub max_frame_bytes: usize,
    /// Most mutations in one push.
    pub max_batch_mutations: usize,
    /// Largest document state (JSON), in bytes.
    pub max_document_bytes: usize,
    /// Mutations per second one device may push (sustained).
    pub device_mutations_per_sec: u32,
    /// Mutations one device may push in a burst.
    pub device_mutation_burst: u32,
    /// Time a connection has to send `hello` after the upgrade.
    pub handshake_timeout: Duration,
    /// The server sends `ping` after this much silence...
    pub heartbeat_interval: Duration,
    /// ...and closes a connection that has sent nothing for this long.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 1 << 20,
            max_batch_mutations: 500,
            max_document_bytes: 1 << 20,
            device_mutations_per_sec: 1_000,
            device_mutation_burst: 2_000,
            handshake_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
        }
    }
}

/// How long device credentials last.
#[derive(Debug, Clone, Copy)]
pub struct CredentialLifetimes {
    /// Access tokens are short-lived: a stolen one is useful briefly.
    pub access: Duration,
    /// Refresh tokens rotate on every use; this bounds an idle device.
    pub refresh: Duration,
}

impl Default for CredentialLifetimes {
    fn default() -> Self {
        CredentialLifetimes {
            access: Duration::from_secs(15 * 60),
            refresh: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// Change feed, fan-out and compaction settings.
#[derive(Debug, Clone, Copy)]
pub struct FeedConfig {
    /// Changes per catch-up page.
    pub page_size: usize,
    /// Events a connection may have queued before it is disconnected as a
    /// slow consumer.
    pub outbound_queue: usize,
    /// How long one frame may take to write before the connection is
    /// considered stuck.
    pub write_timeout: Duration,
    /// Tombstones older than this are purged by compaction (`None`: never).
    pub tombstone_retention: Option<Duration>,
    /// Idempotency records of mutations older than this are purged (a retry
    /// after that is applied again, or answered by the merge rules).
    pub mutation_retention: Duration,
    /// How often compaction runs.
    pub compaction_interval: Duration,
}

impl Default for FeedConfig {
    fn default() -> Self {
        FeedConfig {
            page_size: 1_000,
            outbound_queue: 1_024,
            write_timeout: Duration::from_secs(30),
            tombstone_retention: Some(Duration::from_secs(30 * 24 * 3600)),
            mutation_retention: Duration::from_secs(60 * 24 * 3600),
            compaction_interval: Duration::from_secs(3600),
        }
    }
}
