//! `tandem client` against `tandem serve --dev-auth`, as processes: what a
//! person does with three terminals, scripted.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tandem_core::{Client, ClientConfig, DocKey};

use crate::support::{Background, PATIENCE, Serve, client_of};

fn run(server: &Serve, dir: &Path, user: &str, args: &[&str]) -> Output {
    client_of(user, &server.url(), dir, "dev")
        .args(args)
        .output()
        .unwrap()
}

/// Runs a command that must succeed; returns its stdout lines as JSON.
fn ok(server: &Serve, dir: &Path, user: &str, args: &[&str]) -> Vec<Value> {
    let out = run(server, dir, user, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn watch_shows_live_what_another_device_puts() {
    let server = Serve::start();
    let watcher_dir = tempfile::tempdir().unwrap();
    let writer_dir = tempfile::tempdir().unwrap();
    let mut watch = client_of("alice", &server.url(), watcher_dir.path(), "laptop");
    watch.args(["watch", "tasks"]);
    let watch = Background::spawn(watch);
    // Wait until the watcher is connected (its device is registered), so
    // the put below is live for it, not part of its catch-up.
    let deadline = Instant::now() + PATIENCE;
    while server.metric("tandem_connections ") == 0 {
        assert!(Instant::now() < deadline, "the watcher never connected");
        std::thread::sleep(Duration::from_millis(20));
    }
    let put = ok(
        &server,
        writer_dir.path(),
        "alice",
        &["put", "tasks", "t1", r#"{"title": "milk"}"#],
    );
    assert_eq!(put[0]["fields"], json!({"title": "milk"}));
    assert_eq!(put[0]["pending"], json!(false), "synced before printing");
    let seen = watch.until("t1", |line| line["id"] == "t1");
    assert_eq!(seen["fields"], json!({"title": "milk"}));
    assert_eq!(seen["version"], json!(1));
    // A delete shows as a tombstone line.
    ok(
        &server,
        writer_dir.path(),
        "alice",
        &["delete", "tasks", "t1"],
    );
    let seen = watch.until("the delete", |line| line["deleted"] == json!(true));
    assert_eq!(seen["id"], "t1");
}

#[test]
fn sync_exits_zero_only_when_nothing_is_pending_and_status_shows_it() {
    let server = Serve::start();
    let dir = tempfile::tempdir().unwrap();
    for i in 0..3 {
        let out = client_of("bob", &server.url(), dir.path(), "phone")
            .args(["--offline", "put", "notes", &format!("n{i}"), r#"{"x": 1}"#])
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    let status = ok(&server, dir.path(), "bob", &["--offline", "status"]);
    assert_eq!(status[0]["pending"], json!(3));
    assert_eq!(status[0]["connection"], json!("offline"));
    let synced = ok(&server, dir.path(), "bob", &["sync", "--timeout", "30"]);
    assert_eq!(synced[0]["outcome"]["result"], "caught_up");
    let status = ok(&server, dir.path(), "bob", &["status"]);
    assert_eq!(status[0]["pending"], json!(0));
    assert_eq!(status[0]["connection"], json!("online"));
    assert_eq!(status[0]["cursors"]["personal:bob"], json!(3));
    assert!(status[0]["last_synced"].is_u64());

    // A server that cannot be reached: exit non-zero, pending kept.
    let out = client_of("bob", "http://127.0.0.1:9", dir.path(), "phone")
        .args(["--sync-timeout", "1", "put", "notes", "late", "{}"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "written locally, not synced");
    let written: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(written["pending"], json!(true));
    let out = client_of("bob", "http://127.0.0.1:9", dir.path(), "phone")
        .args(["sync", "--timeout", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
}

#[test]
fn shared_spaces_from_the_command_line() {
    let server = Serve::start();
    let alice = tempfile::tempdir().unwrap();
    let bob = tempfile::tempdir().unwrap();
    let created = ok(&server, alice.path(), "alice", &["space", "create", "team"]);
    assert_eq!(created[0]["owner"], "alice");
    // Bob must be known to the server before... no: any user id may be
    // added.
    let added = ok(
        &server,
        alice.path(),
        "alice",
        &["space", "add", "team", "bob"],
    );
    assert_eq!(added[0]["members"], json!(["alice", "bob"]));
    ok(
        &server,
        alice.path(),
        "alice",
        &[
            "--space",
            "team",
            "put",
            "tasks",
            "shared",
            r#"{"by": "alice"}"#,
        ],
    );
    let spaces = ok(&server, bob.path(), "bob", &["spaces"]);
    let names: Vec<&str> = spaces
        .iter()
        .map(|s| s["space"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["personal:bob", "team"]);
    let got = ok(
        &server,
        bob.path(),
        "bob",
        &["--space", "team", "get", "tasks", "shared"],
    );
    assert_eq!(got[0]["fields"], json!({"by": "alice"}));
    let removed = ok(
        &server,
        alice.path(),
        "alice",
        &["space", "remove", "team", "bob"],
    );
    assert_eq!(removed[0]["members"], json!(["alice"]));
    // Bob's next sync drops the space's documents.
    ok(&server, bob.path(), "bob", &["sync"]);
    let out = run(
        &server,
        bob.path(),
        "bob",
        &["--offline", "--space", "team", "get", "tasks", "shared"],
    );
    assert_eq!(out.status.code(), Some(3), "gone from bob's device");
}

#[test]
fn a_client_killed_mid_push_applies_each_mutation_exactly_once_after_restart() {
    // The device's budget lets its first push of 500 through and holds the
    // second back for seconds (refused, it is retried after 1 s, then 2 s
    // more): the kill below, once the first is applied, comes in the
    // middle of the push however slowly the machine runs this test.
    let server = Serve::with_args(&["--rate-burst", "500", "--rate-limit", "200"]);
    let dir = tempfile::tempdir().unwrap();
    // 1,000 writes queued offline.
    {
        let client = Client::open(ClientConfig::new(
            dir.path().to_str().unwrap(),
            "carol",
            "phone",
        ))
        .unwrap();
        for i in 0..1000 {
            client
                .put(
                    DocKey::personal("items", &format!("i{i:04}")),
                    &format!(r#"{{"n": {i}}}"#),
                )
                .unwrap();
        }
        client.close();
    }
    // Sync, and kill -9 once the server has applied some but not all.
    let mut child = client_of("carol", &server.url(), dir.path(), "phone")
        .args(["sync", "--timeout", "60"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let applied = server.metric("tandem_mutations_applied_total");
        if applied > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "nothing was pushed");
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let applied_at_kill = server.metric("tandem_mutations_applied_total");
    // Killed in the middle: the second batch at least is still pending.
    // (Whether the first one's ack and changes reached the device before
    // the kill is a race it cannot win or lose: either way it must not
    // apply anything twice.)
    let st = ok(&server, dir.path(), "carol", &["--offline", "status"]);
    let pending = st[0]["pending"].as_u64().unwrap();
    assert!((500..=1000).contains(&pending), "pending {pending}");
    // Restart: the same device finishes. A bounded sync ends when what is
    // left waits for its retry (the budget refused it), so it is run until
    // it is caught up, as a person or a background task would.
    let deadline = Instant::now() + PATIENCE;
    let synced = loop {
        let out = run(&server, dir.path(), "carol", &["sync", "--timeout", "60"]);
        let lines: Vec<Value> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        if out.status.success() {
            break lines;
        }
        assert_eq!(
            out.status.code(),
            Some(4),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(Instant::now() < deadline, "still pending: {lines:?}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(synced[0]["outcome"]["result"], "caught_up");
    assert_eq!(synced[0]["status"]["pending"], json!(0));
    // Each mutation applied once: 1,000 revisions, and every resend
    // answered as a duplicate rather than applied again (the server counts
    // an application when it answers it, so a batch committed just before
    // the kill is counted as a duplicate on the resend).
    assert_eq!(
        synced[0]["status"]["cursors"]["personal:carol"],
        json!(1000)
    );
    let applied = server.metric("tandem_mutations_total{outcome=\"applied\"}");
    let duplicates = server.metric("tandem_mutations_total{outcome=\"duplicate\"}");
    assert!(applied >= applied_at_kill && applied <= 1000, "{applied}");
    assert!(applied + duplicates >= 1000);
    // A fresh device sees all 1,000.
    let fresh = tempfile::tempdir().unwrap();
    let docs = ok(
        &server,
        fresh.path(),
        "carol",
        &["query", "items", "--limit", "5000"],
    );
    assert_eq!(docs.len(), 1000);
}
