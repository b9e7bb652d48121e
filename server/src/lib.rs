//! Tandem's reference sync server.
//!
//! A library; the binary entry is `tandem serve` in the CLI. [`Server::start`]
//! opens the store, binds the listener and serves:
//!
//! - `/v1/sync`: the WebSocket sync protocol ([`session`]);
//! - HTTP endpoints for device registration and refresh, spaces and members,
//!   and push and pull for background use ([`http`]);
//! - `/healthz` and `/metrics` (Prometheus text, [`metrics`]).
//!
//! The path of a change: a device's `push` reaches its [`session`], which
//! hands the batch to the [`store`]; the store's single writer applies it
//! (idempotency record, membership, [`apply`]: policy, field rules, size
//! limit) in one transaction shared with other batches (group commit),
//! answers the session (which sends the `ack`), then announces the commit to
//! the [`fanout`] hub, which queues the changes for every connection
//! subscribed to the space; each session sends them as a `changes` message.
//! Devices that were offline read the same changes from the documents table
//! ([`feed`]) when they reconnect.
//!
//! With [`ServerConfig::postgres`] set, the store is PostgreSQL and several
//! servers on the same database and schema are instances of one service: a
//! device may connect to any of them. Each instance's hub hears every
//! instance's commits through the store (`LISTEN`/`NOTIFY`, see
//! [`store::postgres`]); nothing else is shared between instances.
//!
//! `docs/PROTOCOL.md` describes the protocol for client implementers.

pub mod apply;
pub mod auth;
pub mod collection_rules;
pub mod config;
pub mod connection_limit;
pub mod coordination;
pub mod fanout;
pub mod feed;
pub mod guard;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod push_hints;
pub mod rate_limit;
pub mod roles;
pub mod screen;
pub mod session;
pub mod state;
pub mod store;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

pub use collection_rules::Schema;
pub use config::{
    CoordinationConfig, CredentialLifetimes, FeedConfig, Limits, PushConfig, ServerConfig,
};
pub use tls::TlsIdentity;

use crate::fanout::FanOut;
use crate::metrics::Metrics;
use crate::rate_limit::DeviceRateLimit;
use crate::state::{ServerState, now_ms};
use crate::store::sqlite::SqliteOptions;
use crate::store::{CompactionRule, PostgresStore, PushRules, SqliteStore, Store, StoreError};

/// How long shutdown waits for sessions to finish their last batch.
const SESSION_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be opened.
    #[error("cannot open the database: {0}")]
    Store(#[from] StoreError),
    /// The TLS certificate or key cannot be used.
    #[error("cannot serve TLS: {0}")]
    Tls(#[from] tls::TlsSetupError),
    /// A `--cors-origin` is not an origin (`scheme://host[:port]`).
    #[error(
        "not a web origin: {0:?} (expected scheme://host[:port], such as https://app.example.com)"
    )]
    CorsOrigin(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// The server.
pub struct Server;

/// A started server.
pub struct RunningServer {
    local_addr: SocketAddr,
    state: Arc<ServerState>,
    http: JoinHandle<()>,
    compaction: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
}

impl Server {
    /// Opens the store, binds the listen address and starts serving.
    pub async fn start(config: ServerConfig) -> Result<RunningServer, StartError> {
        // Checked before anything is opened or bound.
        let cors = http::cors_layer(&config.cors_origins)?;
        if config.user_tokens.accepts_dev_tokens() {
            warn!(
                "DEVELOPMENT AUTH IS ON: any client can act as any user with the token dev:<user>. Never expose this server."
            );
        }
        // Checked before anything is opened: a bad certificate stops the
        // start, not the first connection.
        let tls = config.tls.as_ref().map(TlsIdentity::acceptor).transpose()?;
        let metrics = Arc::new(Metrics::default());
        let fanout = FanOut::new(metrics.clone());
        let rules = PushRules {
            schema: Arc::new(config.schema.clone()),
            max_document_bytes: config.limits.max_document_bytes,
            max_frame_bytes: config.limits.max_frame_bytes,
            max_clock_skew_ms: config.limits.max_clock_skew.as_millis() as u64,
        };
        let (store, database): (Arc<dyn Store>, String) = match &config.postgres {
            Some(options) => (
                Arc::new(PostgresStore::open(options.clone(), rules, fanout.clone()).await?),
                format!("postgresql (schema {})", options.schema),
            ),
            None => (
                Arc::new(SqliteStore::open(
                    &config.database,
                    rules,
                    fanout.clone(),
                    SqliteOptions {
                        durable: config.durable_commits,
                        ..SqliteOptions::default()
                    },
                )?),
                config.database.display().to_string(),
            ),
        };
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
        let state = Arc::new(ServerState {
            rate_limit: DeviceRateLimit::new(
                config.limits.device_mutations_per_sec,
                config.limits.device_mutation_burst,
            ),
            connections: connection_limit::DeviceConnections::new(
                config.limits.max_connections_per_device,
            ),
            config,
            store,
            fanout,
            metrics,
            shutdown: CancellationToken::new(),
            sessions: TaskTracker::new(),
            presence: coordination::Presence::default(),
        });
        let mut background = vec![tokio::spawn(coordination::run(state.clone()))];
        if let Some(url) = state.config.push.webhook.clone() {
            let (sink, spaces) = tokio::sync::mpsc::unbounded_channel();
            state.fanout.watch_changed_spaces(sink);
            background.push(tokio::spawn(push_hints::run(state.clone(), url, spaces)));
        }
        let app = match cors {
            Some(layer) => http::router(state.clone()).layer(layer),
            None => http::router(state.clone()),
        };
        let http = tokio::spawn(listener::serve(
            listener,
            app,
            tls,
            state.config.limits.request_header_timeout,
            state.shutdown.clone(),
        ));
        let compaction = tokio::spawn(compact_periodically(state.clone()));
        info!(addr = %local_addr, %database, tls = state.config.tls.is_some(), "tandem server listening");
        Ok(RunningServer {
            local_addr,
            state,
            http,
            compaction,
            background,
        })
    }
}

/// Runs compaction every `compaction_interval` until shutdown.
async fn compact_periodically(state: Arc<ServerState>) {
    let feed = state.config.feed;
    let mut tick = tokio::time::interval(feed.compaction_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = now_ms();
        let rule = CompactionRule {
            tombstones_before_ms: feed
                .tombstone_retention
                .map(|age| now.saturating_sub(age.as_millis() as u64)),
            tombstones_up_to_rev: None,
            mutations_before_ms: Some(
                now.saturating_sub(feed.mutation_retention.as_millis() as u64),
            ),
            credentials_before_ms: Some(now),
        };
        match state.store.compact(rule).await {
            Ok(report) => info!(
                tombstones = report.tombstones,
                mutations = report.mutations,
                credentials = report.credentials,
                "compaction done"
            ),
            Err(e) => warn!(error = %e, "compaction failed"),
        }
        state.rate_limit.forget_idle();
    }
}

impl RunningServer {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The store, for tools and tests (compaction, inspection).
    pub fn store(&self) -> Arc<dyn Store> {
        self.state.store.clone()
    }

    /// The server's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.state.metrics.clone()
    }

    /// A token that starts a graceful shutdown when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.state.shutdown.clone()
    }

    /// Waits until a shutdown starts, then shuts down gracefully.
    pub async fn wait(self) {
        self.state.shutdown.cancelled().await;
        self.shutdown().await;
    }

    /// Shuts down gracefully: stops accepting connections, lets every session
    /// finish the batch it is applying (committed batches are acked, others
    /// are not), tells devices `shutting_down`, then closes the store.
    pub async fn shutdown(self) {
        info!("shutting down");
        self.state.shutdown.cancel();
        let _ = self.http.await;
        self.state.sessions.close();
        if tokio::time::timeout(SESSION_DRAIN_TIMEOUT, self.state.sessions.wait())
            .await
            .is_err()
        {
            warn!("some sessions did not finish in time");
        }
        let _ = self.compaction.await;
        for task in self.background {
            let _ = task.await;
        }
        if let Err(e) = self.state.store.close().await {
            error!(error = %e, "closing the store failed");
        }
        info!("stopped");
    }
}
