//! Two server processes on one PostgreSQL database, and one of them killed.
//!
//! Each server is a real process (this test binary run again as
//! `postgres_failover::serve_one_instance`), with its own connections to
//! PostgreSQL, reached over real sockets by raw WebSocket clients. Three
//! users share a space; each has a device on each instance. The test checks
//! that a device on instance A sees a write made through instance B live;
//! then every device writes at once, instance A is killed with SIGKILL in the
//! middle, its devices reconnect to B with their cursors and push again what
//! was not acked; and in the end every acked mutation is in the feed exactly
//! once, the revisions have no gap, and every device's replica matches the
//! feed.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use serde_json::json;
use tandem_e2e::{Http, Replica, Writer, WsClient};
use tandem_protocol::wire::{Outcome, Push};
use tandem_protocol::{ClientMessage, MutationId, ServerMessage, SpaceId};
use tandem_server::auth::UserTokenVerifier;
use tandem_server::store::PostgresOptions;
use tandem_server::store::postgres::testing::TestSchema;
use tandem_server::{Server, ServerConfig};

const CHILD_URL: &str = "TANDEM_FAILOVER_CHILD_URL";
const CHILD_SCHEMA: &str = "TANDEM_FAILOVER_CHILD_SCHEMA";
/// Pushes each device makes in the concurrent phase.
const PUSHES: usize = 40;
/// Acked pushes of instance A's devices after which A is killed.
const KILL_AFTER: usize = 45;

/// Not a test of its own: the body of a server process the failover test
/// starts (run with `--ignored --exact`). It serves until killed.
#[tokio::test]
#[ignore = "a server process started by the failover test"]
async fn serve_one_instance() {
    let (Ok(url), Ok(schema)) = (std::env::var(CHILD_URL), std::env::var(CHILD_SCHEMA)) else {
        return;
    };
    let mut config = ServerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        Default::default(),
        UserTokenVerifier::dev(),
    );
    let mut options = PostgresOptions::new(url);
    options.schema = schema;
    options.pool_size = 8;
    config.postgres = Some(options);
    config.limits.device_mutations_per_sec = 100_000;
    config.limits.device_mutation_burst = 100_000;
    let server = Server::start(config).await.unwrap();
    println!("LISTENING {}", server.local_addr());
    std::future::pending::<()>().await;
}

/// A server process.
struct Instance {
    child: Child,
    addr: String,
}

impl Instance {
    fn start(schema: &TestSchema) -> Instance {
        let options = schema.options();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "postgres_failover::serve_one_instance",
                "--nocapture",
            ])
            .env(CHILD_URL, &options.url)
            .env(CHILD_SCHEMA, &options.schema)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("the server process ended before listening")
                .unwrap();
            if let Some(addr) = line.strip_prefix("LISTENING ") {
                break addr.to_owned();
            }
        };
        // Keep reading its output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Instance { child, addr }
    }

    fn http(&self) -> Http {
        Http::new(format!("http://{}", self.addr))
    }

    fn sync_url(&self) -> String {
        format!("ws://{}/v1/sync", self.addr)
    }

    /// SIGKILL: no graceful shutdown, no goodbye to anyone.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A device: its connection, token, replica and writer.
struct Device {
    name: String,
    token: String,
    client: WsClient,
    replica: Replica,
    writer: Writer,
    reconnects: usize,
}

impl Device {
    async fn connect(name: &str, token: String, url: &str) -> Device {
        let mut client = WsClient::connect_ok(url, &token).await;
        let welcome = client.hello(name, BTreeMap::new()).await;
        let mut replica = Replica::new();
        client
            .sync_into(&mut replica, &welcome.spaces, &BTreeMap::new())
            .await;
        Device {
            name: name.to_owned(),
            token,
            client,
            replica,
            writer: Writer::new(name),
            reconnects: 0,
        }
    }

    /// Applies `changes` until the replica's cursor of `space` reaches `rev`.
    async fn catch_up(&mut self, space: &SpaceId, rev: u64) {
        while self.replica.cursor(space) < rev {
            match self.client.recv().await {
                Some(ServerMessage::Changes(changes)) => self.replica.apply(&changes).unwrap(),
                Some(_) => {}
                None => panic!("{} lost its connection", self.name),
            }
        }
    }

    /// Connects to `url` again, resuming from the replica's cursors.
    async fn reconnect(&mut self, url: &str) {
        self.client = WsClient::connect_ok(url, &self.token).await;
        self.client.hello(&self.name, self.replica.cursors()).await;
        self.reconnects += 1;
    }

    /// Sends `push` until it is acked, reconnecting to `fallback` whenever
    /// the connection breaks; applies every `changes` message on the way.
    async fn push_until_acked(&mut self, push: &Push, fallback: &str) -> Vec<Outcome> {
        loop {
            self.client.send(&ClientMessage::Push(push.clone())).await;
            loop {
                match self.client.recv().await {
                    Some(ServerMessage::Ack(ack)) if ack.batch_id == push.batch_id => {
                        return ack.results.into_iter().map(|r| r.outcome).collect();
                    }
                    Some(ServerMessage::Changes(changes)) => {
                        self.replica.apply(&changes).unwrap();
                    }
                    Some(ServerMessage::Error(e)) if e.fatal => break,
                    Some(ServerMessage::Error(e)) => panic!("{}: {e:?}", self.name),
                    Some(_) => {}
                    None => break,
                }
            }
            self.reconnect(fallback).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_survive_an_instance_killed_mid_write() {
    let Some(schema) = TestSchema::new("failover") else {
        return;
    };
    let mut a = Instance::start(&schema);
    let b = Instance::start(&schema);
    let room = SpaceId::shared("room").unwrap();

    // Registered through either instance: credentials live in the database.
    let mut tokens = BTreeMap::new();
    for user in ["alice", "bob", "carol"] {
        for (kind, http) in [("phone", a.http()), ("laptop", b.http())] {
            let name = format!("{user}-{kind}");
            let creds = http.register(&format!("dev:{user}"), &name).await;
            tokens.insert(name, creds.access_token);
        }
    }
    let created = a
        .http()
        .call(
            "POST",
            "/v1/spaces",
            Some(&tokens["alice-phone"]),
            Some(&json!({"name": "room"})),
        )
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    for user in ["bob", "carol"] {
        let added = b
            .http()
            .call(
                "POST",
                "/v1/spaces/room/members",
                Some(&tokens["alice-laptop"]),
                Some(&json!({"user": user})),
            )
            .await;
        assert_eq!(added.status, 200, "{:?}", added.body);
    }

    // Phones on A, laptops on B.
    let mut devices = Vec::new();
    for (name, token) in &tokens {
        let url = if name.ends_with("phone") {
            a.sync_url()
        } else {
            b.sync_url()
        };
        devices.push(Device::connect(name, token.clone(), &url).await);
    }

    // A write through B reaches a device on A live, on its open connection.
    let (phones, laptops): (Vec<_>, Vec<_>) =
        devices.into_iter().partition(|d| d.name.ends_with("phone"));
    let mut phones = phones;
    let mut laptops = laptops;
    let hello = laptops[0]
        .writer
        .put(&room, "messages", "hello", json!({"text": "from B"}));
    let hello_id = hello.mutation_id;
    let outcomes = laptops[0]
        .push_until_acked(
            &Push {
                batch_id: 0,
                mutations: vec![hello],
            },
            &b.sync_url(),
        )
        .await;
    assert_eq!(outcomes, vec![Outcome::Applied { rev: 1 }]);
    let seen = phones[0].client.changes(&room).await;
    assert_eq!(seen.changes.len(), 1);
    assert_eq!(seen.changes[0].mutation_id, Some(hello_id));
    phones[0].replica.apply(&seen).unwrap();

    // Everyone writes at once; A dies in the middle. A phone that gets to
    // its last push before the kill waits for it (however slowly the
    // machine runs the loop that kills), so every device of A has a write
    // left to make through B.
    let acked_on_a = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for mut device in phones.into_iter().chain(laptops) {
        let fallback = b.sync_url();
        let room = room.clone();
        let acked_on_a = acked_on_a.clone();
        let killed = killed.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked: Vec<(MutationId, u64)> = Vec::new();
            for i in 0..PUSHES {
                if i == PUSHES - 1 && device.name.ends_with("phone") {
                    let deadline = tokio::time::Instant::now() + tandem_e2e::PATIENCE;
                    while !killed.load(Ordering::SeqCst) {
                        assert!(tokio::time::Instant::now() < deadline, "no kill");
                        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                    }
                }
                let m = device.writer.put(
                    &room,
                    "messages",
                    &format!("{}-{i}", device.name),
                    json!({"i": i}),
                );
                let id = m.mutation_id;
                let push = Push {
                    batch_id: i as u64 + 1,
                    mutations: vec![m],
                };
                let outcome = device.push_until_acked(&push, &fallback).await;
                match outcome.as_slice() {
                    [Outcome::Applied { rev }] => acked.push((id, *rev)),
                    // Committed by the killed instance before it could ack.
                    [Outcome::Duplicate { rev }] => {
                        eprintln!("{}: push {i} was committed before the kill", device.name);
                        acked.push((id, *rev))
                    }
                    other => panic!("{}: {other:?}", device.name),
                }
                if device.name.ends_with("phone") && device.reconnects == 0 {
                    acked_on_a.fetch_add(1, Ordering::Relaxed);
                }
            }
            (device, acked)
        }));
    }
    while acked_on_a.load(Ordering::Relaxed) < KILL_AFTER {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    a.kill();
    killed.store(true, Ordering::SeqCst);

    let mut acked: BTreeMap<MutationId, u64> = BTreeMap::new();
    acked.insert(hello_id, 1);
    let mut devices = Vec::new();
    for task in tasks {
        let (device, mine) = task.await.unwrap();
        for (id, rev) in mine {
            assert!(acked.insert(id, rev).is_none(), "an id acked twice");
        }
        devices.push(device);
    }
    let reconnected: BTreeSet<String> = devices
        .iter()
        .filter(|d| d.reconnects > 0)
        .map(|d| d.name.clone())
        .collect();
    eprintln!("reconnected after the kill: {reconnected:?}");
    // Every device of the killed instance moved, and only those.
    assert_eq!(
        reconnected,
        BTreeSet::from(["alice-phone", "bob-phone", "carol-phone"].map(String::from)),
        "only the devices of the killed instance moved"
    );

    // The feed, read by a new device through B.
    let total = 1 + 6 * PUSHES as u64;
    assert_eq!(acked.len() as u64, total);
    let http = b.http();
    let reader = http.register("dev:alice", "alice-reader").await;
    let mut feed = Device::connect("alice-reader", reader.access_token, &b.sync_url()).await;
    feed.catch_up(&room, total).await;
    let changes = feed.replica.all(&room);
    let revs: Vec<u64> = {
        let mut revs: Vec<u64> = changes.iter().map(|c| c.rev).collect();
        revs.sort_unstable();
        revs
    };
    assert_eq!(
        revs,
        (1..=total).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    let in_feed: BTreeMap<MutationId, u64> = changes
        .iter()
        .map(|c| (c.mutation_id.unwrap(), c.rev))
        .collect();
    assert_eq!(in_feed.len(), changes.len(), "each mutation once");
    assert_eq!(in_feed, acked, "every acked mutation at its acked revision");

    // Every device, live all along (through a reconnect for A's), has the
    // same space as the feed (checksums were checked on the way).
    for device in &mut devices {
        device.catch_up(&room, total).await;
        assert_eq!(device.replica.cursor(&room), total, "{}", device.name);
        assert_eq!(
            device.replica.checksum(&room),
            feed.replica.checksum(&room),
            "{}",
            device.name
        );
        assert!(device.replica.checksums_checked > 0);
    }
}
