//! A real device: a `tandem_core::Client` with its own SQLite database in a
//! temporary directory, syncing with a test server.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tandem_core::sync::Backoff;
use tandem_core::{Client, ClientConfig, Query, StaticToken, SyncConfig, SyncOutcome, SyncTuning};
use tempfile::TempDir;

use crate::{Http, PATIENCE};

/// Engine timings for tests: quick reconnects and retries, so a test that
/// cuts connections finishes in seconds.
pub fn test_tuning() -> SyncTuning {
    SyncTuning {
        reconnect: Backoff {
            base: Duration::from_millis(20),
            cap: Duration::from_millis(500),
        },
        retry: Backoff {
            base: Duration::from_millis(20),
            cap: Duration::from_millis(500),
        },
        ack_timeout: Duration::from_secs(5),
        ..SyncTuning::default()
    }
}

/// One device of a user.
pub struct Device {
    /// The client.
    pub client: Arc<Client>,
    /// The user.
    pub user: String,
    dir: Arc<TempDir>,
    name: String,
}

impl Device {
    /// A device of `user` named `name` that has not started syncing.
    pub fn offline(user: &str, name: &str) -> Device {
        Self::offline_with(user, name, |_| {})
    }

    /// Like [`Device::offline`], with the configuration changed first.
    pub fn offline_with(user: &str, name: &str, change: impl FnOnce(&mut ClientConfig)) -> Device {
        let dir = TempDir::new().unwrap_or_else(|e| panic!("temp dir: {e}"));
        Self::open_with(Arc::new(dir), user, name, change)
    }

    fn open_with(
        dir: Arc<TempDir>,
        user: &str,
        name: &str,
        change: impl FnOnce(&mut ClientConfig),
    ) -> Device {
        let path = dir
            .path()
            .to_str()
            .unwrap_or_else(|| panic!("temp dir path"));
        let mut config = ClientConfig::new(path, user, name);
        change(&mut config);
        let client = Client::open(config).unwrap_or_else(|e| panic!("open device: {e}"));
        Device {
            client: Arc::new(client),
            user: user.to_owned(),
            dir,
            name: name.to_owned(),
        }
    }

    /// A device that syncs with the server at `server_url` (`http://...`).
    pub async fn online(server_url: &str, user: &str, name: &str) -> Device {
        let device = Self::offline(user, name);
        device.start_sync(server_url).await;
        device
    }

    /// Starts syncing with `server_url`, as `dev:<user>`.
    pub async fn start_sync(&self, server_url: &str) {
        let mut config = SyncConfig::new(server_url);
        config.tuning = test_tuning();
        self.start_sync_with(config).await;
    }

    /// Starts syncing with `config`, as `dev:<user>`.
    pub async fn start_sync_with(&self, config: SyncConfig) {
        self.client
            .start_sync(
                config,
                Arc::new(StaticToken::new(format!("dev:{}", self.user))),
            )
            .await
            .unwrap_or_else(|e| panic!("start sync: {e}"));
    }

    /// Closes the client and opens the same directory again (a restart of
    /// the app), not syncing.
    pub fn reopen(self) -> Device {
        self.reopen_with(|_| {})
    }

    /// Like [`Device::reopen`], with the configuration changed first.
    pub fn reopen_with(self, change: impl FnOnce(&mut ClientConfig)) -> Device {
        self.client.close();
        let Device {
            dir, user, name, ..
        } = self;
        Self::open_with(dir, &user, &name, change)
    }

    /// The data directory.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Syncs until caught up with nothing pending; panics otherwise.
    pub async fn settle(&self) {
        let outcome = self
            .client
            .sync_once(PATIENCE)
            .await
            .unwrap_or_else(|e| panic!("sync_once: {e}"));
        assert_eq!(outcome, SyncOutcome::CaughtUp, "device {}", self.name);
    }

    /// The live documents of `collection` in `space` (default: personal):
    /// id → (fields, version).
    pub fn docs(
        &self,
        space: Option<&str>,
        collection: &str,
    ) -> BTreeMap<String, (Value, Option<u64>)> {
        let mut query = Query::new(collection);
        query.space = space.map(str::to_owned);
        self.client
            .query(query)
            .unwrap_or_else(|e| panic!("query: {e}"))
            .into_iter()
            .map(|d| {
                let fields: Value =
                    serde_json::from_str(&d.fields_json).unwrap_or_else(|e| panic!("fields: {e}"));
                (d.id, (fields, d.version))
            })
            .collect()
    }
}

/// What the server holds: the live documents of `collection` in `space`,
/// read through the pull endpoint by a separate inspector device of `user`.
pub async fn server_docs(
    server_url: &str,
    user: &str,
    space: &str,
    collection: &str,
) -> BTreeMap<String, (Value, Option<u64>)> {
    let http = Http::new(server_url);
    let creds = http.register(&format!("dev:{user}"), "inspector").await;
    let mut cursor = 0u64;
    let mut out = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "pull took too long");
        let path = format!("/v1/spaces/{space}/changes?cursor={cursor}");
        let page = http
            .call("GET", &path, Some(&creds.access_token), None)
            .await;
        assert_eq!(page.status, 200, "pull: {:?}", page.body);
        let changes = page.body["changes"].as_array().cloned().unwrap_or_default();
        for change in &changes {
            if change["collection"] == collection {
                let id = change["doc_id"].as_str().unwrap_or_default().to_owned();
                if change["deleted"] == Value::Bool(true) {
                    out.remove(&id);
                } else {
                    let state: tandem_protocol::DocState =
                        serde_json::from_value(change["state"].clone())
                            .unwrap_or_else(|e| panic!("state: {e}"));
                    out.insert(
                        id,
                        (
                            Value::Object(state.visible_fields()),
                            change["rev"].as_u64(),
                        ),
                    );
                }
            }
            cursor = change["rev"].as_u64().unwrap_or(cursor);
        }
        if page.body["more"] != Value::Bool(true) {
            return out;
        }
    }
}

/// Waits until `check` holds, polling; panics after [`PATIENCE`].
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
