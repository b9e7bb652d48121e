//! The server's settings, with the defaults `tandem serve` uses.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::auth::UserTokenVerifier;
use crate::collection_rules::Schema;
use crate::store::PostgresOptions;
use crate::tls::TlsIdentity;

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
    /// Roles, presence and guards.
    pub coordination: CoordinationConfig,
    /// Push hints to offline devices.
    pub push: PushConfig,
    /// Terminate TLS with this certificate and key (`https://`, `wss://`);
    /// `None` serves plain HTTP, for local use or behind a load balancer
    /// that terminates TLS.
    pub tls: Option<TlsIdentity>,
    /// Web origins (`https://app.example.com`) whose pages may call the
    /// HTTP routes (CORS). None by default: a browser page of any origin
    /// then gets no CORS headers, and its reads of the answers fail.
    pub cors_origins: Vec<String>,
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
            coordination: CoordinationConfig::default(),
            push: PushConfig::default(),
            tls: None,
            cors_origins: Vec::new(),
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
    /// WebSocket connections one device may have open on this instance; an
    /// upgrade over the cap is refused with `429 rate_limited`. A device
    /// needs one; the rest leaves room for reconnects while connections
    /// that went silent (a network that dropped them) wait for the idle
    /// timeout.
    pub max_connections_per_device: usize,
    /// Mutations one device may push in a burst.
    pub device_mutation_burst: u32,
    /// How far ahead of the server's clock a mutation's clock reading may
    /// be. A reading further ahead is refused (`rejected clock_skew`): it
    /// would win every later write to its fields, and every device that
    /// saw it would stamp its own writes that far ahead too.
    pub max_clock_skew: Duration,
    /// Devices (registered, not revoked) one user may have. Registering
    /// another is refused with `too_many_devices` until one is revoked;
    /// registering a device again never counts twice.
    pub max_devices_per_user: usize,
    /// Time a connection has to send a request's headers: from the accept
    /// (or the end of the previous request) to the blank line. A client that
    /// trickles its upgrade request, or sends nothing, is cut off after this
    /// instead of holding a socket and a task forever.
    pub request_header_timeout: Duration,
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
            max_clock_skew: Duration::from_secs(5 * 60),
            max_devices_per_user: 100,
            max_connections_per_device: 64,
            request_header_timeout: Duration::from_secs(10),
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

/// Device coordination settings.
#[derive(Debug, Clone, Copy)]
pub struct CoordinationConfig {
    /// A role's lease: a holder that does not renew within this loses the
    /// role (default 1.5 s; devices renew every 0.5 s).
    pub role_lease: Duration,
    /// How often the server looks for leases that ran out and roles whose
    /// holder left (default 100 ms).
    pub role_check_interval: Duration,
    /// How often an instance stamps its connected devices' presence
    /// (default 1 s).
    pub presence_heartbeat: Duration,
    /// How long a presence stamp lasts: the devices of an instance that
    /// stopped stamping (crashed) go offline after this (default 3 s).
    pub presence_ttl: Duration,
    /// How often guard records whose window ran out are deleted (default
    /// 10 s).
    pub guard_sweep_interval: Duration,
}

impl Default for CoordinationConfig {
    fn default() -> Self {
        CoordinationConfig {
            role_lease: Duration::from_millis(1_500),
            role_check_interval: Duration::from_millis(100),
            presence_heartbeat: Duration::from_secs(1),
            presence_ttl: Duration::from_secs(3),
            guard_sweep_interval: Duration::from_secs(10),
        }
    }
}

/// Push hints: where to send them and how often.
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// The app's push sender: the server POSTs each hint (JSON, see
    /// `tandem_protocol::api::PushHint`) here. `None`: no hints.
    pub webhook: Option<String>,
    /// At most one hint per device per this long (default 10 s); changes in
    /// between are named by the next hint.
    pub min_interval: Duration,
    /// Changes are collected this long before hints go out (default
    /// 200 ms), so a burst of writes makes one hint.
    pub batch_delay: Duration,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            webhook: None,
            min_interval: Duration::from_secs(10),
            batch_delay: Duration::from_millis(200),
        }
    }
}
