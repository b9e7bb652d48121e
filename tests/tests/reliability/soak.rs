//! The fault soak: one server process and ten device processes of three
//! users (4 + 3 + 3), each device behind its own fault proxy, writing at
//! random to its personal space and to shared spaces, asking the duplicate
//! guard about shared random content and moving a role around. Meanwhile a
//! fault loop adds latency with jitter and bandwidth limits, resets
//! connections, leaves them half-open, partitions, cuts and heals, kills
//! devices with SIGKILL (and starts them again on their databases) and
//! kills the server with SIGKILL (and starts it again on its database,
//! the proxies switching to its new port).
//!
//! Then everything heals, every device syncs until nothing is pending, and
//! the run must show:
//!
//! - every device holds exactly what the server holds, in every space it
//!   can read (documents and versions);
//! - every write a device promised (logged after its local commit) is on
//!   the server with its value: none lost;
//! - none applied twice: entries are new documents written once, so each
//!   entries-only space has as many revisions as documents;
//! - the guard answered `first` at most once per user and content;
//! - at most one holder per user, role and epoch;
//! - every database passes SQLite's integrity check.
//!
//! `TANDEM_SOAK_SECS` (default 60) sets the duration and `TANDEM_SOAK_SEED`
//! the seed of the fault schedule and of the devices; the seed is printed
//! so a failure can be replayed (as far as thread timing allows). With
//! `TANDEM_SOAK_KEEP` set, the databases and logs stay in the directory the
//! test prints.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::Value;
use tandem_e2e::{
    Device, DeviceSpec, Proxy, Rng, ServerProcess, integrity_check, kill, server_docs,
};

use crate::{env_u64, run_directory};

/// Users and their device counts.
const USERS: [(&str, usize); 3] = [("alice", 4), ("bob", 3), ("carol", 3)];
/// Shared spaces that hold only entries: (space, owner, other members).
const ENTRY_SPACES: [(&str, &str, &[&str]); 2] = [
    ("team", "alice", &["bob", "carol"]),
    ("pair", "bob", &["alice"]),
];
/// The shared space of contended documents.
const BOARD: (&str, &str, &[&str]) = ("board", "carol", &["alice", "bob"]);
/// The least time between two kills of the server, unless
/// `TANDEM_SOAK_SERVER_GAP_MS` says otherwise.
const SERVER_KILL_GAP: Duration = Duration::from_secs(8);

/// One device process, its proxy and when it may start again if killed.
struct Running {
    spec: DeviceSpec,
    proxy: Proxy,
    child: Option<Child>,
    restart_at: Instant,
    starts: u64,
}

impl Running {
    fn start(&mut self, seed: u64) {
        self.starts += 1;
        self.child = Some(
            self.spec
                .spawn("soak", seed ^ self.starts.wrapping_mul(0x5DEE_CE66D)),
        );
    }
}

/// Tallies per fault kind.
#[derive(Default)]
struct Faults(BTreeMap<&'static str, u64>);

impl Faults {
    fn add(&mut self, kind: &'static str) {
        *self.0.entry(kind).or_default() += 1;
    }

    fn get(&self, kind: &str) -> u64 {
        self.0.get(kind).copied().unwrap_or_default()
    }
}

async fn setup_spaces(url: &str) {
    let mut owners: BTreeMap<&str, Device> = BTreeMap::new();
    for (space, owner, members) in ENTRY_SPACES.iter().chain([&BOARD]) {
        if !owners.contains_key(owner) {
            let device = Device::online(url, owner, "setup").await;
            device.settle().await;
            owners.insert(owner, device);
        }
        let device = &owners[owner];
        device.client.create_space(space).await.unwrap();
        for member in *members {
            device.client.add_member(space, member).await.unwrap();
        }
    }
    for device in owners.values() {
        device.client.close();
    }
}

fn spaces_of(user: &str) -> Vec<String> {
    ENTRY_SPACES
        .iter()
        .filter(|(_, owner, members)| *owner == user || members.contains(&user))
        .map(|(space, ..)| (*space).to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_devices_under_faults_and_kills_converge_with_nothing_lost_or_doubled() {
    let _alone = crate::one_at_a_time().await;
    let secs = env_u64("TANDEM_SOAK_SECS").unwrap_or(60);
    let seed = env_u64("TANDEM_SOAK_SEED").unwrap_or_else(Rng::fresh_seed);
    println!("soak: {secs} s, seed {seed} (replay with TANDEM_SOAK_SEED={seed})");
    let mut rng = Rng::new(seed);
    let server_gap =
        env_u64("TANDEM_SOAK_SERVER_GAP_MS").map_or(SERVER_KILL_GAP, Duration::from_millis);
    let dir = run_directory("soak");
    let mut server = ServerProcess::start(
        &PathBuf::from(env!("CARGO_BIN_EXE_tandem-e2e-server")),
        &dir.path().join("server.db"),
        &dir.path().join("server.log"),
    );
    setup_spaces(&server.http_url()).await;

    let mut devices = Vec::new();
    for (user, count) in USERS {
        for n in 0..count {
            let name = format!("{user}-{n}");
            let proxy = Proxy::start(server.addr()).await;
            proxy.set_seed(rng.next_u64());
            let spec = DeviceSpec {
                program: PathBuf::from(env!("CARGO_BIN_EXE_tandem-soak-device")),
                server_url: proxy.http_url(),
                data_dir: dir.path().join(&name),
                log: dir.path().join(format!("{name}.log")),
                stderr: dir.path().join(format!("{name}.stderr")),
                user: user.to_owned(),
                device: name,
                spaces: spaces_of(user),
                board: Some(BOARD.0.to_owned()),
            };
            let mut running = Running {
                spec,
                proxy,
                child: None,
                restart_at: Instant::now(),
                starts: 0,
            };
            running.start(seed);
            devices.push(running);
        }
    }

    // The fault loop.
    let mut faults = Faults::default();
    let (mut device_kills, mut server_kills) = (0u64, 0u64);
    let mut last_server_kill = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(rng.between(100, 500))).await;
        let now = Instant::now();
        assert_eq!(server.exited(), None, "the server ended by itself");
        for device in &mut devices {
            let exited = device.child.as_mut().and_then(|c| c.try_wait().unwrap());
            assert_eq!(
                exited,
                None,
                "{} ended by itself; see {}",
                device.spec.device,
                device.spec.stderr.display()
            );
        }
        for (i, device) in devices.iter_mut().enumerate() {
            if device.child.is_none() && now >= device.restart_at {
                device.start(seed ^ i as u64);
            }
        }
        let target = rng.index(devices.len());
        let proxy = &devices[target].proxy;
        match rng.below(100) {
            0..15 => {
                let base = rng.below(150);
                let jitter = rng.below(250);
                proxy.set_latency(Duration::from_millis(base), Duration::from_millis(jitter));
                faults.add("latency");
            }
            15..25 => {
                proxy.set_bandwidth(rng.between(2_000, 64_000));
                faults.add("bandwidth");
            }
            25..35 => {
                proxy.reset();
                faults.add("reset");
            }
            35..43 => {
                proxy.half_open();
                faults.add("half_open");
            }
            43..51 => {
                proxy.partition(true);
                faults.add("partition");
            }
            51..54 => {
                proxy.cut();
                faults.add("cut");
            }
            54..74 => {
                proxy.heal();
                faults.add("heal");
            }
            74..88 => {
                let device = &mut devices[target];
                if let Some(mut child) = device.child.take() {
                    kill(&mut child);
                    device.restart_at = now + Duration::from_millis(rng.below(1_500));
                    device_kills += 1;
                }
            }
            _ => {
                if now.duration_since(last_server_kill) >= server_gap {
                    server.kill();
                    server_kills += 1;
                    last_server_kill = now;
                    tokio::time::sleep(Duration::from_millis(rng.below(800))).await;
                    server.restart();
                    for device in &devices {
                        device.proxy.set_upstream(server.addr());
                    }
                }
            }
        }
    }

    // Heal everything and stop the writers; then each device syncs until
    // nothing is pending (a first pass pushes everything, a second pulls
    // what the others pushed after it).
    for device in &mut devices {
        device.proxy.heal();
        if let Some(mut child) = device.child.take() {
            kill(&mut child);
        }
    }
    let settle_started = Instant::now();
    for device in &devices {
        device.spec.settle();
    }
    let dumps: Vec<Value> = devices.iter().map(|d| d.spec.settle()).collect();
    let settled = settle_started.elapsed();

    // What the server holds, per space and collection, read by a member.
    let url = server.http_url();
    let mut readable: BTreeMap<String, &str> = BTreeMap::new();
    for (user, _) in USERS {
        readable.insert(format!("personal:{user}"), user);
    }
    for (space, owner, _) in ENTRY_SPACES.iter().chain([&BOARD]) {
        readable.insert((*space).to_owned(), owner);
    }
    let mut on_server = BTreeMap::new();
    for (space, reader) in &readable {
        for collection in ["entries", "board"] {
            let docs = server_docs(&url, reader, space, collection).await;
            on_server.insert((space.clone(), collection), docs);
        }
    }

    // Every device holds what the server holds.
    let mut diff = 0usize;
    for (device, dump) in devices.iter().zip(&dumps) {
        for (space, collections) in dump["spaces"].as_object().unwrap() {
            for (collection, docs) in collections.as_object().unwrap() {
                let key = (
                    space.clone(),
                    if collection == "entries" {
                        "entries"
                    } else {
                        "board"
                    },
                );
                let server_docs = on_server.get(&key).unwrap_or_else(|| {
                    panic!("{} reads {space}, unknown here", device.spec.device)
                });
                let local = docs.as_object().unwrap();
                for (id, (fields, version)) in server_docs {
                    let mine = &local.get(id);
                    if mine.map(|d| (&d["fields"], d["version"].as_u64()))
                        != Some((fields, *version))
                    {
                        diff += 1;
                        eprintln!(
                            "diff: {} {space}/{collection}/{id}: device {mine:?}, server {fields} v{version:?}",
                            device.spec.device
                        );
                    }
                }
                for id in local.keys().filter(|id| !server_docs.contains_key(*id)) {
                    diff += 1;
                    eprintln!(
                        "diff: {} {space}/{collection}/{id} not on the server",
                        device.spec.device
                    );
                }
            }
        }
    }

    // Promised writes, guard answers and role states from the logs.
    let mut promised = 0u64;
    let mut lost = 0u64;
    let mut board_writes = 0u64;
    let mut firsts: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut guard_calls = 0u64;
    let mut holders: BTreeMap<(String, u64), BTreeSet<String>> = BTreeMap::new();
    for device in &devices {
        let user = device.spec.user.clone();
        for line in device.spec.read_log() {
            match line["kind"].as_str() {
                Some("write") => {
                    promised += 1;
                    let space = line["space"].as_str().unwrap().to_owned();
                    let id = line["id"].as_str().unwrap();
                    let found = on_server
                        .get(&(space.clone(), "entries"))
                        .and_then(|docs| docs.get(id))
                        .map(|(fields, _)| fields["value"].clone());
                    if found != Some(line["value"].clone()) {
                        lost += 1;
                        eprintln!(
                            "lost: {} {space}/{id}: server has {found:?}",
                            device.spec.device
                        );
                    }
                }
                Some("board") => board_writes += 1,
                Some("guard") => {
                    guard_calls += 1;
                    if line["first"] == Value::Bool(true) {
                        let content = line["content"].as_str().unwrap().to_owned();
                        *firsts.entry((user.clone(), content)).or_default() += 1;
                    }
                }
                Some("role") => {
                    if let Some(holder) = line["holder"].as_str() {
                        holders
                            .entry((user.clone(), line["epoch"].as_u64().unwrap()))
                            .or_default()
                            .insert(holder.to_owned());
                    }
                }
                _ => {}
            }
        }
    }
    let guard_firsts = firsts.len();
    let guard_twice: Vec<_> = firsts.iter().filter(|(_, n)| **n > 1).collect();
    let split_epochs: Vec<_> = holders.iter().filter(|(_, h)| h.len() > 1).collect();
    let role_epochs = holders.len();

    // Entries are written once each, so each entries-only space has exactly
    // as many revisions as documents unless something was applied twice.
    let conn = rusqlite::Connection::open_with_flags(
        server.database(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut duplicated = 0u64;
    let mut committed = 0u64;
    for space in readable.keys().filter(|s| *s != BOARD.0) {
        let head: i64 = conn
            .query_row("SELECT head FROM spaces WHERE space = ?1", [space], |r| {
                r.get(0)
            })
            .unwrap();
        let documents = on_server[&(space.clone(), "entries")].len() as u64;
        assert!(
            on_server[&(space.clone(), "board")].is_empty(),
            "board documents in {space}"
        );
        committed += documents;
        duplicated += u64::try_from(head).unwrap().saturating_sub(documents);
    }
    // No device heard of an epoch the server never reached.
    for (user, _) in USERS {
        let server_epoch: i64 = conn
            .query_row(
                "SELECT epoch FROM roles WHERE user = ?1 AND role = 'soak-lead'",
                [user],
                |r| r.get(0),
            )
            .unwrap();
        let heard = holders
            .keys()
            .filter(|(u, _)| u == user)
            .map(|(_, epoch)| *epoch)
            .max()
            .unwrap_or_default();
        assert!(
            heard <= u64::try_from(server_epoch).unwrap(),
            "{user}: heard of epoch {heard}, the server is at {server_epoch}"
        );
    }
    drop(conn);

    server.terminate();
    let mut databases = vec![server.database().to_owned()];
    databases.extend(devices.iter().map(|d| d.spec.database()));
    for database in &databases {
        assert_eq!(
            integrity_check(database),
            "ok",
            "{} (seed {seed})",
            database.display()
        );
    }

    let fault_list: Vec<String> = faults.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
    tandem_e2e::record_summary(
        env!("CARGO_TARGET_TMPDIR"),
        "soak",
        &format!(
            "soak: {committed} mutations, {device_kills} device kills, {server_kills} server kills, \
             {lost} lost, {duplicated} duplicated, {diff} differing ({secs} s, seed {seed})"
        ),
    );
    println!(
        "soak: secs={secs} devices={} mutations={} (promised {promised}, board {board_writes}) \
         faults[{}] kills_devices={device_kills} kills_server={server_kills} lost={lost} \
         duplicated={duplicated} diff={diff} guard_calls={guard_calls} guard_firsts={guard_firsts} \
         role_epochs={role_epochs} settle={:.1}s seed={seed}",
        devices.len(),
        committed,
        fault_list.join(" "),
        settled.as_secs_f64(),
    );
    assert!(promised > 0, "nothing was written");
    assert!(
        faults.get("reset") + faults.get("partition") > 0 || secs < 5,
        "no faults"
    );
    assert_eq!(lost, 0, "lost writes (seed {seed})");
    assert_eq!(duplicated, 0, "writes applied twice (seed {seed})");
    assert_eq!(diff, 0, "devices differ from the server (seed {seed})");
    assert!(
        guard_twice.is_empty(),
        "guard answered first twice: {guard_twice:?} (seed {seed})"
    );
    assert!(
        split_epochs.is_empty(),
        "two holders in one epoch: {split_epochs:?} (seed {seed})"
    );
}
