//! An in-process server on 127.0.0.1 for tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tandem_server::auth::UserTokenVerifier;
use tandem_server::metrics::Metrics;
use tandem_server::store::Store;
use tandem_server::{RunningServer, Schema, Server, ServerConfig};
use tempfile::TempDir;

use crate::{Http, WsClient};

/// How to start a test server.
#[derive(Debug, Clone)]
pub struct TestServerOptions {
    /// The configuration; `listen` and `database` are filled in by
    /// [`TestServer::start`] unless a database path is set here.
    pub config: ServerConfig,
}

impl Default for TestServerOptions {
    fn default() -> Self {
        TestServerOptions {
            config: ServerConfig::new(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                PathBuf::new(),
                UserTokenVerifier::dev(),
            ),
        }
    }
}

impl TestServerOptions {
    /// Development auth (`dev:<user>`), default limits.
    pub fn dev() -> Self {
        Self::default()
    }

    /// Changes the configuration.
    pub fn with(mut self, change: impl FnOnce(&mut ServerConfig)) -> Self {
        change(&mut self.config);
        self
    }

    /// Uses `schema`.
    pub fn schema(self, json: &str) -> Self {
        let schema = Schema::parse(json).unwrap_or_else(|e| panic!("bad test schema: {e}"));
        self.with(|c| c.schema = schema)
    }
}

/// A running server and the directory of its database.
pub struct TestServer {
    running: Option<RunningServer>,
    config: ServerConfig,
    _dir: Option<Arc<TempDir>>,
}

impl TestServer {
    /// Starts a server on a free port of 127.0.0.1 with a fresh database.
    pub async fn start(options: TestServerOptions) -> TestServer {
        let mut config = options.config;
        let dir = if config.database.as_os_str().is_empty() {
            let dir = TempDir::new().unwrap_or_else(|e| panic!("temp dir: {e}"));
            config.database = dir.path().join("tandem-server.db");
            Some(Arc::new(dir))
        } else {
            None
        };
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        let running = Server::start(config.clone())
            .await
            .unwrap_or_else(|e| panic!("server did not start: {e}"));
        TestServer {
            running: Some(running),
            config,
            _dir: dir,
        }
    }

    /// Starts with development auth and defaults.
    pub async fn dev() -> TestServer {
        Self::start(TestServerOptions::dev()).await
    }

    fn running(&self) -> &RunningServer {
        self.running
            .as_ref()
            .unwrap_or_else(|| panic!("the server is stopped"))
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.running().local_addr()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// `https://127.0.0.1:<port>`, for a server started with TLS.
    pub fn https_url(&self) -> String {
        format!("https://{}", self.addr())
    }

    /// `ws://127.0.0.1:<port>/v1/sync`.
    pub fn sync_url(&self) -> String {
        format!("ws://{}/v1/sync", self.addr())
    }

    /// Registers `device` of `user` with a development token and opens its
    /// socket, not yet greeted.
    pub async fn connect(&self, user: &str, device: &str) -> WsClient {
        let credentials = Http::new(self.http_url())
            .register(&format!("dev:{user}"), device)
            .await;
        WsClient::connect_ok(&self.sync_url(), &credentials.access_token).await
    }

    /// The database file.
    pub fn database(&self) -> &Path {
        &self.config.database
    }

    /// The store, to compact or inspect.
    pub fn store(&self) -> Arc<dyn Store> {
        self.running().store()
    }

    /// The server's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.running().metrics()
    }

    /// Starts a graceful shutdown without waiting for it.
    pub fn begin_shutdown(&self) {
        self.running().shutdown_token().cancel();
    }

    /// Shuts down gracefully and waits.
    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }

    /// Stops, then starts again on the same database (on a new port).
    pub async fn restart(&mut self) {
        self.stop().await;
        let running = Server::start(self.config.clone())
            .await
            .unwrap_or_else(|e| panic!("server did not restart: {e}"));
        self.running = Some(running);
    }
}
