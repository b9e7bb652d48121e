//! `tandem bench server-ingest`: how many mutations per second the server
//! acks, and how long an ack takes, with many devices connected.
//!
//! An in-process server on a temporary SQLite database; `--count` devices
//! (default 1,000) of users with two devices each are connected over
//! WebSocket and caught up; one device each of `count / 10` users (default
//! 100) pushes small mutations
//! (one `put` per push, the next push once the ack is in) into its user's
//! personal space, `--repeat` times (default 1,000). Every change also fans
//! out to the author's own connection and to the user's other device, which
//! reads it. Reported: acked mutations per second over the whole run and the
//! ack latency (push sent to ack read).
//!
//! With `--postgres URL` the store is PostgreSQL (a fresh schema, dropped
//! at the end) and `--instances N` servers share it; a user's two devices
//! connect to different instances (device `d` to instance `d mod N`), so
//! with two instances every change reaches the user's other device through
//! the other instance (`LISTEN`/`NOTIFY` and a read of the store).
//!
//! The floor, measured in the same run: a plain tokio-tungstenite echo
//! server, with as many clients as pushers doing the same number of round
//! trips with a frame of the same size.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use serde_json::json;
use tandem_protocol::wire::{Hello, Outcome, Push};
use tandem_protocol::{
    ClientMessage, Collection, DeviceId, DocId, HybridClock, Mutation, MutationId, Op,
    PROTOCOL_VERSION, ServerMessage, SpaceId, UserId,
};
use tandem_server::auth::UserTokenVerifier;
use tandem_server::store::{DeviceIdentity, PostgresOptions, PostgresStore};
use tandem_server::{RunningServer, Server, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{BenchArgs, Latencies, Report};
use crate::failure::Failure;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Where the server-ingest scenario keeps its data.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ServerOptions {
    /// server-ingest: use this PostgreSQL database (a fresh schema in it)
    /// instead of a temporary SQLite file.
    #[arg(long, value_name = "URL")]
    pub postgres: Option<String>,
    /// server-ingest: how many server instances share the PostgreSQL
    /// database.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub instances: usize,
}

const DEVICES_PER_USER: u64 = 2;

/// Client sockets (and the echo floor) read into 8 KiB buffers, as the
/// server does: tungstenite zeroes its whole read buffer before each read,
/// and the 128 KiB default makes that dominate with small frames.
fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(8 * 1024)
}

fn failure(e: impl std::fmt::Display) -> Failure {
    Failure::new("bench_failed", e)
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs the scenario.
pub fn run(args: &BenchArgs) -> Result<Report, Failure> {
    let devices = args.count.unwrap_or(1_000).max(DEVICES_PER_USER);
    let pushers = (devices / 10).max(1);
    let per_pusher = args.repeat.unwrap_or(1_000).max(1);
    let options = args.server.clone();
    if options.instances > 1 && options.postgres.is_none() {
        return Err(Failure::new(
            "invalid_input",
            "--instances needs --postgres: SQLite serves one instance",
        ));
    }
    let runtime = super::runtime()?;
    runtime.block_on(async move {
        let floor = echo_floor(pushers, per_pusher).await?;
        let measured = ingest(&options, devices, pushers, per_pusher).await?;
        Ok(Report {
            measured,
            floor,
            encrypted: None,
        })
    })
}

async fn ingest(
    options: &ServerOptions,
    devices: u64,
    pushers: u64,
    per_pusher: u64,
) -> Result<super::Measurement, Failure> {
    let dir = tempfile::TempDir::new().map_err(failure)?;
    let mut config = ServerConfig::new(
        "127.0.0.1:0".parse().map_err(failure)?,
        dir.path().join("bench.db"),
        UserTokenVerifier::dev(),
    );
    config.limits.device_mutations_per_sec = 1_000_000;
    config.limits.device_mutation_burst = 1_000_000;
    let postgres = options.postgres.as_ref().map(|url| {
        let mut postgres = PostgresOptions::new(url.clone());
        postgres.schema = format!("bench_{}_{}", std::process::id(), wall_ms());
        postgres
    });
    config.postgres = postgres.clone();
    let mut servers = Vec::new();
    for _ in 0..options.instances.max(1) {
        servers.push(Server::start(config.clone()).await.map_err(failure)?);
    }
    let urls: Vec<String> = servers
        .iter()
        .map(|s| format!("ws://{}/v1/sync", s.local_addr()))
        .collect();

    // Register every device straight in the store: registration is not what
    // is measured.
    let mut tokens = Vec::new();
    for d in 0..devices {
        tokens.push(register(&servers[0], d).await?);
    }
    // Connect and catch up, a hundred at a time; device d to instance
    // d mod N, so a user's two devices are on different instances.
    let mut sockets: Vec<Socket> = Vec::new();
    for (c, chunk) in tokens.chunks(100).enumerate() {
        let connects = chunk.iter().enumerate().map(|(i, (identity, token))| {
            let d = c * 100 + i;
            connect(&urls[d % urls.len()], identity, token)
        });
        for socket in futures::future::join_all(connects).await {
            sockets.push(socket?);
        }
    }
    // The pusher of user u is its first device; every other device reads.
    let mut push_tasks = Vec::new();
    let mut readers = Vec::new();
    let start = Arc::new(tokio::sync::Barrier::new(pushers as usize + 1));
    for (d, socket) in sockets.into_iter().enumerate() {
        let d = d as u64;
        let (identity, _) = &tokens[d as usize];
        if d.is_multiple_of(DEVICES_PER_USER) && d / DEVICES_PER_USER < pushers {
            let identity = identity.clone();
            let start = start.clone();
            push_tasks.push(tokio::spawn(async move {
                start.wait().await;
                pusher(socket, identity, per_pusher).await
            }));
        } else {
            readers.push(tokio::spawn(drain(socket)));
        }
    }
    start.wait().await;
    let began = Instant::now();
    let mut latencies = Latencies::new()?;
    for task in push_tasks {
        for took in task.await.map_err(failure)?? {
            latencies.record(took);
        }
    }
    let elapsed = began.elapsed();
    let applied: u64 = servers
        .iter()
        .map(|s| s.metrics().mutations_applied())
        .sum();
    if applied != pushers * per_pusher {
        return Err(failure(format!(
            "{applied} mutations applied, expected {}",
            pushers * per_pusher
        )));
    }
    for server in servers {
        server.shutdown().await;
    }
    for reader in readers {
        let _ = reader.await;
    }
    if let Some(postgres) = &postgres {
        PostgresStore::drop_schema(postgres)
            .await
            .map_err(failure)?;
    }
    Ok(latencies.measurement("server-ingest", elapsed, true))
}

async fn register(server: &RunningServer, d: u64) -> Result<(DeviceIdentity, String), Failure> {
    let identity = DeviceIdentity {
        user: UserId::new(format!("user{}", d / DEVICES_PER_USER)).map_err(failure)?,
        device: DeviceId::new(format!("device{d}")).map_err(failure)?,
    };
    super::initial_sync::register_device(server, identity, format!("bench device {d}")).await
}

async fn connect(url: &str, identity: &DeviceIdentity, token: &str) -> Result<Socket, Failure> {
    let mut request = url.into_client_request().map_err(failure)?;
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().map_err(failure)?,
    );
    let (mut socket, _) =
        tokio_tungstenite::connect_async_with_config(request, Some(socket_config()), true)
            .await
            .map_err(failure)?;
    let hello = ClientMessage::Hello(Hello {
        protocol: PROTOCOL_VERSION,
        device_id: identity.device.clone(),
        cursors: Default::default(),
    });
    socket
        .send(Message::text(hello.encode()))
        .await
        .map_err(failure)?;
    // Welcome, then one final page per space (the personal space only).
    let mut caught_up = false;
    while !caught_up {
        let Some(frame) = socket.next().await else {
            return Err(failure("the server closed during the handshake"));
        };
        if let Message::Text(text) = frame.map_err(failure)? {
            match ServerMessage::decode(text.as_str()).map_err(failure)? {
                ServerMessage::Changes(c) if !c.more => caught_up = true,
                ServerMessage::Error(e) => return Err(failure(e.message)),
                _ => {}
            }
        }
    }
    Ok(socket)
}

/// Pushes one mutation at a time and returns each ack's latency.
async fn pusher(
    mut socket: Socket,
    identity: DeviceIdentity,
    count: u64,
) -> Result<Vec<Duration>, Failure> {
    let space = SpaceId::personal(&identity.user);
    let collection = Collection::new("messages").map_err(failure)?;
    let mut clock = HybridClock::new(identity.device.clone());
    let mut latencies = Vec::with_capacity(count as usize);
    for n in 0..count {
        let mutation = Mutation {
            mutation_id: MutationId::generate(),
            space: space.clone(),
            collection: collection.clone(),
            doc_id: DocId::generate(),
            op: Op::Put {
                fields: json!({"text": format!("message {n} from {}", identity.device), "n": n})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            },
            base_version: None,
            hlc: clock.tick(wall_ms()),
            device_id: identity.device.clone(),
            fence: None,
        };
        let push = ClientMessage::Push(Push {
            batch_id: n,
            mutations: vec![mutation],
        });
        let sent = Instant::now();
        socket
            .send(Message::text(push.encode()))
            .await
            .map_err(failure)?;
        loop {
            let Some(frame) = socket.next().await else {
                return Err(failure("the server closed the connection"));
            };
            let Message::Text(text) = frame.map_err(failure)? else {
                continue;
            };
            // Live changes (the author's own among them) are skipped here;
            // only the ack is decoded.
            if !text.as_str().starts_with(r#"{"type":"ack""#) {
                continue;
            }
            let ServerMessage::Ack(ack) = ServerMessage::decode(text.as_str()).map_err(failure)?
            else {
                continue;
            };
            latencies.push(sent.elapsed());
            match ack.results.first().map(|r| &r.outcome) {
                Some(Outcome::Applied { .. }) => break,
                other => return Err(failure(format!("unexpected outcome {other:?}"))),
            }
        }
    }
    let _ = socket.close(None).await;
    Ok(latencies)
}

/// Reads (and drops) everything a device receives until the server closes.
async fn drain(mut socket: Socket) {
    while let Some(Ok(_)) = socket.next().await {}
}

/// The floor: a bare tokio-tungstenite echo round trip, with the same
/// concurrency and frame size as the pushers.
async fn echo_floor(clients: u64, per_client: u64) -> Result<super::Measurement, Failure> {
    let listener = TcpListener::bind("127.0.0.1:0").await.map_err(failure)?;
    let addr = listener.local_addr().map_err(failure)?;
    let server = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let Ok(mut ws) =
                    tokio_tungstenite::accept_async_with_config(stream, Some(socket_config()))
                        .await
                else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_text() && ws.send(message).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let payload = "x".repeat(400);
    let mut tasks = Vec::new();
    let start = Arc::new(tokio::sync::Barrier::new(clients as usize + 1));
    for _ in 0..clients {
        let (mut ws, _) = tokio_tungstenite::connect_async_with_config(
            format!("ws://{addr}/"),
            Some(socket_config()),
            true,
        )
        .await
        .map_err(failure)?;
        let payload = payload.clone();
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let mut latencies = Vec::with_capacity(per_client as usize);
            for _ in 0..per_client {
                let sent = Instant::now();
                ws.send(Message::text(payload.clone()))
                    .await
                    .map_err(failure)?;
                match ws.next().await {
                    Some(Ok(_)) => latencies.push(sent.elapsed()),
                    _ => return Err(failure("the echo server closed")),
                }
            }
            let _ = ws.close(None).await;
            Ok::<_, Failure>(latencies)
        }));
    }
    start.wait().await;
    let began = Instant::now();
    let mut latencies = Latencies::new()?;
    for task in tasks {
        for took in task.await.map_err(failure)?? {
            latencies.record(took);
        }
    }
    let elapsed = began.elapsed();
    server.abort();
    Ok(latencies.measurement("tokio-tungstenite echo", elapsed, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_run_reports_every_key() {
        let value = crate::bench::small_run::report(
            "server-ingest",
            Some(20),
            Some(5),
            &["scenario", "p50_ms", "p99_ms", "per_sec"],
        );
        assert_eq!(value["count"], json!(10));
    }
}
