//! A real device: a `tandem_core::Client` with its own SQLite database in a
//! temporary directory, syncing with a test server.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tandem_core::sync::Backoff;
use tandem_core::{
    Client, ClientConfig, DATABASE_FILE, DeviceInfo, Query, StaticToken, SyncConfig, SyncOutcome,
    SyncTuning,
};
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

    /// Every byte of the device's database files (the database and its
    /// WAL), to look for text that must or must not be there. Panics if
    /// there is none: a look that found no file must not pass for a look
    /// that found no text.
    pub fn database_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        for name in [DATABASE_FILE.to_owned(), format!("{DATABASE_FILE}-wal")] {
            if let Ok(mut content) = std::fs::read(self.dir().join(name)) {
                bytes.append(&mut content);
            }
        }
        assert!(
            !bytes.is_empty(),
            "no database file in {}",
            self.dir().display()
        );
        bytes
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

    /// Waits until the server's list of the user's devices, as this device
    /// asks for it, has one that `matches` (presence is recorded off the
    /// session's path, so a list read at once can be a moment old).
    pub async fn until_devices(&self, what: &str, matches: impl Fn(&DeviceInfo) -> bool) {
        eventually_async(what, || {
            let client = Arc::clone(&self.client);
            let matches = &matches;
            async move {
                client
                    .devices()
                    .await
                    .is_ok_and(|list| list.iter().any(matches))
            }
        })
        .await;
    }

    /// Per space, the last server revision this device has applied.
    pub fn cursors(&self) -> BTreeMap<String, u64> {
        self.client
            .status()
            .unwrap_or_else(|e| panic!("status: {e}"))
            .cursors
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

/// Waits until every device has applied every revision that any of them
/// has applied, in each space they both know; panics after [`PATIENCE`].
///
/// [`Device::settle`] returns once a device is caught up with what it has
/// heard of and has nothing to send: a change another device committed a
/// moment earlier may still be on its way to it (the server's fan-out and
/// the socket are asynchronous). After every device has settled, the
/// highest cursor among them is the server's head (each settled writer
/// has seen its own writes come back), so waiting for every device to
/// reach it waits for exactly the changes still in flight.
pub async fn caught_up(devices: &[&Device]) {
    let mut target: BTreeMap<String, u64> = BTreeMap::new();
    for device in devices {
        for (space, cursor) in device.cursors() {
            let highest = target.entry(space).or_default();
            *highest = (*highest).max(cursor);
        }
    }
    let behind = || -> Vec<String> {
        devices
            .iter()
            .flat_map(|device| {
                let cursors = device.cursors();
                target
                    .iter()
                    .filter(move |(space, rev)| cursors.get(*space).is_some_and(|c| c < rev))
                    .map(move |(space, rev)| format!("{} at {space} < {rev}", device.name))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let late = behind();
        if late.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "devices never caught up: {late:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until every device holds exactly what the server holds in
/// `collection` of `space` (read as `user`), and returns that; panics with
/// the difference after [`PATIENCE`]. For after every writer has settled,
/// when the server's state no longer changes: the devices' copies may
/// still be receiving it (see [`caught_up`]).
pub async fn converged(
    server_url: &str,
    user: &str,
    space: &str,
    collection: &str,
    devices: &[&Device],
) -> BTreeMap<String, (Value, Option<u64>)> {
    let on_server = server_docs(server_url, user, space, collection).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    for device in devices {
        loop {
            let local = device.docs(Some(space), collection);
            if local == on_server {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                assert_eq!(
                    local, on_server,
                    "device {} never came to hold what the server holds",
                    device.name
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    on_server
}

/// Waits until the asynchronous `check` holds, polling; panics after
/// [`PATIENCE`]. For conditions only the server can answer (a device list,
/// a space's members).
pub async fn eventually_async<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
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
