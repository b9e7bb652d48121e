//! `tandem bench initial-sync`: an empty device syncs `--docs N` documents
//! (default 100,000) of about 200 bytes from the server.
//!
//! Setup (not measured): an in-process server on a temporary SQLite
//! database, seeded by a raw WebSocket device that pushes the documents in
//! batches of 500 into the user's personal space. Measured: from
//! `start_sync` on a new device (registration, connection, catch-up pages
//! applied one transaction each) to `sync_once` returning caught up.
//! `p50_ms` is that time (one run); `per_sec` is documents per second.
//!
//! The floor, in the same run: the same number of rows of the same size
//! inserted into a bare SQLite table with the store's settings, with one
//! prepared statement in transactions of 1,000 rows: the cost of writing
//! the data at all.
//!
//! This module also holds what the other sync scenarios share: the
//! server, a raw seeding device, and devices.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use serde_json::json;
use tandem_core::{Client, ClientConfig, StaticToken, SyncConfig, SyncOutcome};
use tandem_protocol::wire::{Hello, Outcome, Push};
use tandem_protocol::{
    ClientMessage, Collection, DeviceId, DocId, HybridClock, Mutation, MutationId, Op,
    PROTOCOL_VERSION, ServerMessage, SpaceId, UserId,
};
use tandem_server::auth::{UserTokenVerifier, new_access_token, new_refresh_token};
use tandem_server::store::{DeviceIdentity, DeviceRegistration, NewCredentials};
use tandem_server::{RunningServer, Server, ServerConfig};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{BenchArgs, Latencies, Measurement, Report};
use crate::failure::Failure;

/// A raw device socket.
pub(super) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The user every sync scenario syncs.
pub(super) const USER: &str = "bench";

/// Mutations per push (the server's default limit).
pub(super) const BATCH: usize = 500;

pub(super) fn failure(e: impl std::fmt::Display) -> Failure {
    Failure::new("bench_failed", e)
}

pub(super) fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// An in-process server with development auth and no rate limit.
pub(super) struct BenchServer {
    pub server: RunningServer,
    _dir: tempfile::TempDir,
}

impl BenchServer {
    pub async fn start() -> Result<BenchServer, Failure> {
        let dir = tempfile::TempDir::new().map_err(failure)?;
        let mut config = ServerConfig::new(
            "127.0.0.1:0".parse().map_err(failure)?,
            dir.path().join("bench.db"),
            UserTokenVerifier::dev(),
        );
        config.limits.device_mutations_per_sec = 10_000_000;
        config.limits.device_mutation_burst = 10_000_000;
        let server = Server::start(config).await.map_err(failure)?;
        Ok(BenchServer { server, _dir: dir })
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.server.local_addr())
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/sync", self.server.local_addr())
    }

    /// Registers a raw device straight in the store.
    pub async fn register(
        &self,
        user: &str,
        device: &str,
    ) -> Result<(DeviceIdentity, String), Failure> {
        let identity = DeviceIdentity {
            user: UserId::new(user).map_err(failure)?,
            device: DeviceId::new(device).map_err(failure)?,
        };
        register_device(&self.server, identity, device.to_owned()).await
    }

    /// A raw device of `user`, connected and caught up.
    pub async fn raw_device(&self, user: &str, device: &str) -> Result<RawDevice, Failure> {
        let (identity, token) = self.register(user, device).await?;
        self.connect_raw(identity, &token, 0).await
    }

    /// Connects a registered raw device from `cursor` (of its personal
    /// space) and reads until caught up.
    pub async fn connect_raw(
        &self,
        identity: DeviceIdentity,
        token: &str,
        cursor: u64,
    ) -> Result<RawDevice, Failure> {
        let mut request = self.ws_url().into_client_request().map_err(failure)?;
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().map_err(failure)?,
        );
        let config = WebSocketConfig::default().read_buffer_size(64 * 1024);
        let (mut socket, _) =
            tokio_tungstenite::connect_async_with_config(request, Some(config), true)
                .await
                .map_err(failure)?;
        let hello = ClientMessage::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            device_id: identity.device.clone(),
            cursors: [(SpaceId::personal(&identity.user), cursor)]
                .into_iter()
                .collect(),
        });
        socket
            .send(Message::text(hello.encode()))
            .await
            .map_err(failure)?;
        loop {
            let Some(frame) = socket.next().await else {
                return Err(failure("the server closed during the handshake"));
            };
            if let Message::Text(text) = frame.map_err(failure)? {
                match ServerMessage::decode(text.as_str()).map_err(failure)? {
                    ServerMessage::Changes(c) if !c.more => break,
                    ServerMessage::Error(e) => return Err(failure(e.message)),
                    _ => {}
                }
            }
        }
        let clock = HybridClock::new(identity.device.clone());
        Ok(RawDevice {
            socket,
            space: SpaceId::personal(&identity.user),
            identity,
            clock,
            next_batch: 1,
        })
    }
}

/// A device that speaks the protocol directly: for seeding and load.
pub(super) struct RawDevice {
    pub socket: Socket,
    pub identity: DeviceIdentity,
    pub space: SpaceId,
    clock: HybridClock,
    next_batch: u64,
}

/// About 200 bytes of JSON fields.
pub(super) fn doc_fields(n: u64) -> serde_json::Map<String, serde_json::Value> {
    json!({
        "title": format!("document number {n}"),
        "body": "lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua ut enim",
        "n": n,
        "done": n.is_multiple_of(3),
    })
    .as_object()
    .cloned()
    .unwrap_or_default()
}

impl RawDevice {
    /// A `put` of document `id` with `fields`.
    pub fn put(
        &mut self,
        collection: &str,
        id: &str,
        fields: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Mutation, Failure> {
        Ok(Mutation {
            mutation_id: MutationId::generate(),
            space: self.space.clone(),
            collection: Collection::new(collection).map_err(failure)?,
            doc_id: DocId::new(id).map_err(failure)?,
            op: Op::Put { fields },
            base_version: None,
            hlc: self.clock.tick(wall_ms()),
            device_id: self.identity.device.clone(),
            fence: None,
        })
    }

    /// Sends one batch; returns its id.
    pub async fn send(&mut self, mutations: Vec<Mutation>) -> Result<u64, Failure> {
        let batch_id = self.next_batch;
        self.next_batch += 1;
        let push = ClientMessage::Push(Push {
            batch_id,
            mutations,
        });
        self.socket
            .send(Message::text(push.encode()))
            .await
            .map_err(failure)?;
        Ok(batch_id)
    }

    /// Reads until the ack of `batch_id`, checking every outcome applied.
    pub async fn ack(&mut self, batch_id: u64) -> Result<(), Failure> {
        loop {
            let Some(frame) = self.socket.next().await else {
                return Err(failure("the server closed the connection"));
            };
            let Message::Text(text) = frame.map_err(failure)? else {
                continue;
            };
            if !text.as_str().starts_with(r#"{"type":"ack""#) {
                continue;
            }
            if let ServerMessage::Ack(ack) =
                ServerMessage::decode(text.as_str()).map_err(failure)?
            {
                if ack.batch_id != batch_id {
                    continue;
                }
                for r in &ack.results {
                    if !matches!(r.outcome, Outcome::Applied { .. }) {
                        return Err(failure(format!("unexpected outcome {:?}", r.outcome)));
                    }
                }
                return Ok(());
            }
        }
    }

    /// Writes `count` documents `{prefix}{n}` in batches, 8 batches in
    /// flight.
    pub async fn seed(
        &mut self,
        collection: &str,
        prefix: &str,
        count: u64,
    ) -> Result<(), Failure> {
        let mut in_flight = std::collections::VecDeque::new();
        let mut n = 0;
        while n < count {
            let end = (n + BATCH as u64).min(count);
            let mut mutations = Vec::with_capacity(BATCH);
            for i in n..end {
                mutations.push(self.put(collection, &format!("{prefix}{i:08}"), doc_fields(i))?);
            }
            n = end;
            in_flight.push_back(self.send(mutations).await?);
            if in_flight.len() >= 8
                && let Some(id) = in_flight.pop_front()
            {
                self.ack(id).await?;
            }
        }
        while let Some(id) = in_flight.pop_front() {
            self.ack(id).await?;
        }
        Ok(())
    }
}

/// A `tandem_core` device in a temporary directory.
pub(super) struct BenchDevice {
    pub client: Arc<Client>,
    _dir: tempfile::TempDir,
}

impl BenchDevice {
    pub fn open(name: &str) -> Result<BenchDevice, Failure> {
        let dir = tempfile::TempDir::new().map_err(failure)?;
        let path = dir
            .path()
            .to_str()
            .ok_or_else(|| failure("temp dir is not UTF-8"))?;
        let client = Client::open(ClientConfig::new(path, USER, name)).map_err(failure)?;
        Ok(BenchDevice {
            client: Arc::new(client),
            _dir: dir,
        })
    }

    pub async fn start(&self, server: &BenchServer) -> Result<(), Failure> {
        self.client
            .start_sync(
                SyncConfig::new(&server.http_url()),
                Arc::new(StaticToken::new(format!("dev:{USER}"))),
            )
            .await
            .map_err(failure)
    }

    /// Syncs until caught up, or fails.
    pub async fn caught_up(&self, timeout: Duration) -> Result<(), Failure> {
        match self.client.sync_once(timeout).await.map_err(failure)? {
            SyncOutcome::CaughtUp => Ok(()),
            other => Err(failure(format!("not caught up: {other:?}"))),
        }
    }
}

/// Registers `identity` as `name` straight in the server's store, with
/// credentials valid for an hour (longer than any run); returns the
/// identity and its access token.
pub(super) async fn register_device(
    server: &RunningServer,
    identity: DeviceIdentity,
    name: String,
) -> Result<(DeviceIdentity, String), Failure> {
    let access = new_access_token();
    let refresh = new_refresh_token();
    let later = wall_ms() + 3_600_000;
    server
        .store()
        .register_device(
            DeviceRegistration {
                identity: identity.clone(),
                name,
                platform: "bench".into(),
                app_version: env!("CARGO_PKG_VERSION").into(),
            },
            NewCredentials {
                access: access.hash,
                access_expires_at: later,
                refresh: refresh.hash,
                refresh_expires_at: later,
            },
            // A benchmark's devices are its own business: no per-user cap.
            usize::MAX,
            wall_ms(),
        )
        .await
        .map_err(failure)?;
    Ok((identity, access.token))
}

/// A measurement of one timed run: `p50_ms` is its duration, `per_sec`
/// items per second.
pub(super) fn one_run(scenario: &str, items: u64, took: Duration) -> Result<Measurement, Failure> {
    let mut latencies = Latencies::new()?;
    latencies.record(took);
    let mut m = latencies.measurement(scenario, took, false);
    m.count = items;
    #[allow(clippy::cast_precision_loss)]
    {
        m.per_sec = items as f64 / took.as_secs_f64().max(1e-9);
    }
    Ok(m)
}

/// Runs the scenario.
pub fn run(args: &BenchArgs) -> Result<Report, Failure> {
    let docs = args.count.unwrap_or(100_000).max(1);
    let runtime = super::runtime()?;
    runtime.block_on(async move {
        let server = BenchServer::start().await?;
        let mut seeder = server.raw_device(USER, "seeder").await?;
        seeder.seed("items", "doc-", docs).await?;
        drop(seeder);
        let device = BenchDevice::open("fresh")?;
        let began = Instant::now();
        device.start(&server).await?;
        device.caught_up(Duration::from_secs(3600)).await?;
        let took = began.elapsed();
        let status = device.client.status().map_err(failure)?;
        if status.cursors.get(&format!("personal:{USER}")).copied() != Some(docs) {
            return Err(failure(format!(
                "synced to {:?}, expected {docs}",
                status.cursors
            )));
        }
        device.client.stop_sync().await;
        let measured = one_run("initial-sync", docs, took)?;
        let floor = bulk_insert_floor(docs)?;
        server.server.shutdown().await;
        Ok(Report {
            measured,
            floor,
            encrypted: None,
        })
    })
}

/// The floor: the same rows inserted into a bare table with the store's
/// settings.
fn bulk_insert_floor(docs: u64) -> Result<Measurement, Failure> {
    let dir = tempfile::TempDir::new().map_err(failure)?;
    let conn = rusqlite::Connection::open(dir.path().join("floor.db")).map_err(failure)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(failure)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(failure)?;
    conn.execute_batch(
        "CREATE TABLE documents (space TEXT NOT NULL, collection TEXT NOT NULL, id TEXT NOT NULL,
             fields TEXT NOT NULL, state TEXT NOT NULL, version INTEGER,
             PRIMARY KEY (space, collection, id)) STRICT, WITHOUT ROWID;",
    )
    .map_err(failure)?;
    let rows: Vec<(String, String, String)> = (0..docs)
        .map(|i| {
            let fields = serde_json::Value::Object(doc_fields(i)).to_string();
            // The merge state is about twice the fields (values and stamps).
            let state = format!("{{\"fields\":{fields},\"clocks\":{{\"title\":\"1764089696123-0-seeder\",\"body\":\"1764089696123-0-seeder\",\"n\":\"1764089696123-0-seeder\",\"done\":\"1764089696123-0-seeder\"}}}}");
            (format!("doc-{i:08}"), fields, state)
        })
        .collect();
    let began = Instant::now();
    let mut conn = conn;
    for chunk in rows.chunks(1000) {
        let tx = conn.transaction().map_err(failure)?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO documents (space, collection, id, fields, state, version)
                     VALUES ('personal:bench', 'items', ?1, ?2, ?3, ?4)",
                )
                .map_err(failure)?;
            for (n, (id, fields, state)) in chunk.iter().enumerate() {
                stmt.execute(rusqlite::params![id, fields, state, n as i64])
                    .map_err(failure)?;
            }
        }
        tx.commit().map_err(failure)?;
    }
    one_run("bare SQLite bulk insert", docs, began.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_run_reports_every_key() {
        let value = crate::bench::small_run::report(
            "initial-sync",
            Some(1200),
            None,
            &["scenario", "p50_ms", "p99_ms", "per_sec"],
        );
        assert_eq!(value["count"], json!(1200));
    }
}
