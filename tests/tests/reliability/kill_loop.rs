//! The kill -9 loop: a writing device process and the server process, and
//! in each iteration one or both of them killed with SIGKILL at a random
//! moment and started again on the same databases. After every iteration,
//! with both processes down, SQLite's integrity check passes on both
//! databases and every write the device promised (logged after its local
//! commit) is still in the device's database. At the end, after a final
//! sync, every promised write is on the server exactly once.
//!
//! `TANDEM_KILL_LOOP_ITERATIONS` (default 200) sets the iterations and
//! `TANDEM_SOAK_SEED` the seed; the seed is printed so a failure can be
//! replayed. With `TANDEM_SOAK_KEEP` set, the databases and logs stay in
//! the directory the test prints.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use tandem_core::{Client, ClientConfig, Query};
use tandem_e2e::{DeviceSpec, Proxy, Rng, ServerProcess, integrity_check, kill, server_docs};

use crate::{env_u64, run_directory};

/// Entries in `space` as a local client sees them: id → value.
fn local_entries(data_dir: &std::path::Path, space: &str) -> BTreeMap<String, u64> {
    let client = Client::open(ClientConfig::new(
        data_dir.to_str().unwrap(),
        "alice",
        "laptop",
    ))
    .unwrap();
    let mut query = Query::new("entries");
    query.space = Some(space.to_owned());
    let entries = client
        .query(query)
        .unwrap()
        .into_iter()
        .map(|d| {
            let fields: Value = serde_json::from_str(&d.fields_json).unwrap();
            (d.id, fields["value"].as_u64().unwrap())
        })
        .collect();
    client.close();
    entries
}

/// The promised writes in the log: id → value.
fn promised(spec: &DeviceSpec) -> BTreeMap<String, u64> {
    spec.read_log()
        .iter()
        .filter(|line| line["kind"] == "write")
        .map(|line| {
            (
                line["id"].as_str().unwrap().to_owned(),
                line["value"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_sigkill_of_the_device_and_the_server_exactly_once() {
    let _alone = crate::one_at_a_time().await;
    let iterations = env_u64("TANDEM_KILL_LOOP_ITERATIONS").unwrap_or(200);
    let seed = env_u64("TANDEM_SOAK_SEED").unwrap_or_else(Rng::fresh_seed);
    println!("kill loop: seed {seed} (replay with TANDEM_SOAK_SEED={seed})");
    let mut rng = Rng::new(seed);
    let dir = run_directory("kill loop");
    let mut server = ServerProcess::start(
        &PathBuf::from(env!("CARGO_BIN_EXE_tandem-e2e-server")),
        &dir.path().join("server.db"),
        &dir.path().join("server.log"),
    );
    // The device reaches the server through a proxy, so it keeps one
    // address while the server comes back on new ports.
    let proxy = Proxy::start(server.addr()).await;
    let spec = DeviceSpec {
        program: PathBuf::from(env!("CARGO_BIN_EXE_tandem-soak-device")),
        server_url: proxy.http_url(),
        data_dir: dir.path().join("device"),
        log: dir.path().join("device.log"),
        stderr: dir.path().join("device.stderr"),
        user: "alice".into(),
        device: "laptop".into(),
        spaces: Vec::new(),
        board: None,
    };
    let started = Instant::now();
    let (mut device_kills, mut server_kills) = (0u64, 0u64);
    let space = "personal:alice".to_owned();
    for iteration in 0..iterations {
        server.restart();
        proxy.set_upstream(server.addr());
        let mut device = spec.spawn("write", rng.next_u64());
        tokio::time::sleep(Duration::from_millis(rng.between(20, 400))).await;
        // 0: the device, 1: the server, 2: both (in a random order).
        let victims = rng.below(3);
        let server_first = rng.chance(50);
        assert_eq!(
            device.try_wait().unwrap(),
            None,
            "iteration {iteration}: the device ended by itself; see {}",
            spec.stderr.display()
        );
        assert_eq!(
            server.exited(),
            None,
            "iteration {iteration}: the server ended by itself"
        );
        if victims == 1 || (victims == 2 && server_first) {
            server.kill();
            server_kills += 1;
        }
        if victims != 1 {
            if victims == 2 && server_first {
                tokio::time::sleep(Duration::from_millis(rng.below(50))).await;
            }
            kill(&mut device);
            device_kills += 1;
        }
        if victims == 2 && !server_first {
            tokio::time::sleep(Duration::from_millis(rng.below(50))).await;
            server.kill();
            server_kills += 1;
        }
        // The survivor stops gracefully, so both databases can be checked
        // at rest: the device when its stdin closes, the server on SIGTERM.
        drop(device.stdin.take());
        let stopped = tokio::task::spawn_blocking(move || device.wait())
            .await
            .unwrap();
        let stopped = stopped.unwrap();
        assert!(
            victims == 1 || stopped.signal() == Some(9),
            "iteration {iteration}: the device ended by itself ({stopped}) before its kill"
        );
        assert!(
            victims != 1 || stopped.success(),
            "iteration {iteration}: the device did not stop cleanly ({stopped}); see {}",
            spec.stderr.display()
        );
        server.terminate();

        for database in [server.database().to_owned(), spec.database()] {
            if database.exists() {
                assert_eq!(
                    integrity_check(&database),
                    "ok",
                    "iteration {iteration} (seed {seed}): {}",
                    database.display()
                );
            }
        }
        let local = local_entries(&spec.data_dir, &space);
        for (id, value) in promised(&spec) {
            assert_eq!(
                local.get(&id),
                Some(&value),
                "iteration {iteration} (seed {seed}): promised write {id} is not on the device"
            );
        }
    }
    let looped = started.elapsed();

    // The final sync: everything the device holds reaches the server.
    server.restart();
    proxy.set_upstream(server.addr());
    let dump = spec.settle();
    let promised = promised(&spec);
    assert!(!promised.is_empty(), "the device wrote nothing");
    let on_server = server_docs(&server.http_url(), "alice", &space, "entries").await;
    let mut lost = 0;
    for (id, value) in &promised {
        match on_server.get(id) {
            Some((fields, _)) if fields["value"].as_u64() == Some(*value) => {}
            other => {
                lost += 1;
                eprintln!("lost: {id} = {value}, server has {other:?}");
            }
        }
    }
    // Each entry is a new document written once, so the space's revision
    // count equals its documents unless a write was applied twice.
    let head: u64 = rusqlite::Connection::open(server.database())
        .unwrap()
        .query_row("SELECT head FROM spaces WHERE space = ?1", [&space], |r| {
            r.get::<_, i64>(0)
        })
        .map(|h| u64::try_from(h).unwrap())
        .unwrap();
    let duplicated = head.saturating_sub(on_server.len() as u64);
    let local = &dump["spaces"][&space]["entries"];
    let device_differs = on_server
        .iter()
        .filter(|(id, (fields, version))| {
            local[id.as_str()]["fields"] != *fields
                || local[id.as_str()]["version"].as_u64() != *version
        })
        .count()
        + local
            .as_object()
            .unwrap()
            .keys()
            .filter(|id| !on_server.contains_key(*id))
            .count();
    tandem_e2e::record_summary(
        env!("CARGO_TARGET_TMPDIR"),
        "kill_loop",
        &format!(
            "kill loop: {iterations} iterations, {} writes, {device_kills} client kills, \
             {server_kills} server kills, {lost} lost, {duplicated} duplicated, \
             {device_differs} differing (seed {seed})",
            promised.len()
        ),
    );
    println!(
        "kill loop: iterations={iterations} kills_client={device_kills} kills_server={server_kills} \
         writes={} (committed {}) lost={lost} duplicated={duplicated} device_diff={device_differs} \
         loop={:.1}s seed={seed}",
        promised.len(),
        on_server.len(),
        looped.as_secs_f64()
    );
    assert_eq!(lost, 0, "seed {seed}");
    assert_eq!(
        duplicated,
        0,
        "head {head}, documents {} (seed {seed})",
        on_server.len()
    );
    assert_eq!(device_differs, 0, "seed {seed}");
    assert!(head >= promised.len() as u64);
}
