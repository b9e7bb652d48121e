//! `tandem client`, run as a process on temporary data directories.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};

/// Runs `tandem client --data DIR --user alice --device phone --offline ARGS`.
fn client(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("client")
        .arg("--data")
        .arg(dir)
        .args(["--user", "alice", "--device", "phone", "--offline"])
        .args(args)
        .output()
        .unwrap()
}

/// Runs a command that must succeed; returns its stdout lines as JSON.
fn ok(dir: &Path, args: &[&str]) -> Vec<Value> {
    let out = client(dir, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stderr.is_empty(), "nothing on stderr");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Runs a command that must fail; returns (exit status, stderr).
fn fails(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = client(dir, args);
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(out.stdout.is_empty(), "nothing on stdout");
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn put_then_get_returns_the_document() {
    let dir = tempfile::tempdir().unwrap();
    let put = ok(dir.path(), &["put", "tasks", "t1", r#"{"title": "milk"}"#]);
    let expected = json!({
        "space": "personal:alice", "collection": "tasks", "id": "t1",
        "fields": {"title": "milk"}, "version": null, "pending": true, "deleted": false
    });
    assert_eq!(put, std::slice::from_ref(&expected));
    // A separate process, the same directory.
    assert_eq!(ok(dir.path(), &["get", "tasks", "t1"]), [expected]);
}

#[test]
fn patch_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    ok(dir.path(), &["put", "tasks", "t1", r#"{"title": "milk"}"#]);
    let patched = ok(dir.path(), &["patch", "tasks", "t1", r#"{"done": true}"#]);
    assert_eq!(patched[0]["fields"], json!({"title": "milk", "done": true}));
    let deleted = ok(dir.path(), &["delete", "tasks", "t1"]);
    assert_eq!(deleted[0]["deleted"], json!(true));
    let (status, stderr) = fails(dir.path(), &["get", "tasks", "t1"]);
    assert_eq!(status, 3);
    assert!(stderr.starts_with("error: not_found: "), "{stderr}");
}

#[test]
fn get_of_a_missing_document_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let (status, stderr) = fails(dir.path(), &["get", "tasks", "nope"]);
    assert_eq!(status, 3);
    assert!(stderr.starts_with("error: not_found: "), "{stderr}");
    assert_eq!(stderr.lines().count(), 1);
}

#[test]
fn the_device_id_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let first = ok(dir.path(), &["status"]);
    let second = ok(dir.path(), &["status"]);
    let device = first[0]["device"].as_str().unwrap();
    assert!(!device.is_empty());
    assert_eq!(second[0]["device"], first[0]["device"]);
    // Another directory is another device.
    let other = tempfile::tempdir().unwrap();
    assert_ne!(
        ok(other.path(), &["status"])[0]["device"],
        first[0]["device"]
    );
}

#[test]
fn status_reports_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    ok(dir.path(), &["put", "tasks", "t1", "{}"]);
    ok(dir.path(), &["put", "tasks", "t2", "{}"]);
    let mut status = ok(dir.path(), &["status"]).remove(0);
    status.as_object_mut().unwrap().remove("device");
    assert_eq!(
        status,
        json!({"connection": "offline", "pending": 2, "failed": 0, "last_synced": null, "cursors": {},
               "catching_up": {}, "checksum_mismatches": 0, "last_error": null})
    );
}

#[test]
fn bad_json_is_an_invalid_json_error() {
    let dir = tempfile::tempdir().unwrap();
    let (status, stderr) = fails(dir.path(), &["put", "tasks", "t1", r#"{"title": "#]);
    assert_eq!(status, 1);
    assert!(stderr.starts_with("error: invalid_json: "), "{stderr}");
    assert_eq!(stderr.lines().count(), 1);
    let (_, stderr) = fails(dir.path(), &["put", "tasks", "t1", "[1]"]);
    assert!(stderr.starts_with("error: not_an_object: "), "{stderr}");
    // Nothing was written.
    assert_eq!(ok(dir.path(), &["status"])[0]["pending"], json!(0));
}

#[test]
fn query_with_where_order_and_limit() {
    let dir = tempfile::tempdir().unwrap();
    ok(
        dir.path(),
        &["index", "messages", "conversation", "sent_at"],
    );
    for (id, conversation, sent_at) in [
        ("m1", "c1", 30),
        ("m2", "c2", 10),
        ("m3", "c1", 10),
        ("m4", "c1", 20),
        ("m5", "42", 5),
    ] {
        let fields = json!({"conversation": conversation, "sent_at": sent_at}).to_string();
        ok(dir.path(), &["put", "messages", id, &fields]);
    }
    let ids = |args: &[&str]| -> Vec<String> {
        ok(dir.path(), args)
            .into_iter()
            .map(|doc| doc["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        ids(&[
            "query",
            "messages",
            "--where",
            "conversation=c1",
            "--order",
            "sent_at"
        ]),
        ["m3", "m4", "m1"]
    );
    assert_eq!(
        ids(&[
            "query",
            "messages",
            "--where",
            "conversation=c1",
            "--order",
            "sent_at",
            "--desc",
            "--limit",
            "2"
        ]),
        ["m1", "m4"]
    );
    // A value that parses as JSON is JSON: 10 is a number...
    assert_eq!(
        ids(&["query", "messages", "--where", "sent_at=10"]),
        ["m2", "m3"]
    );
    // ...and a quoted one is a string.
    assert_eq!(
        ids(&["query", "messages", "--where", r#"conversation="42""#]),
        ["m5"]
    );
    assert_eq!(
        ids(&["query", "messages", "--where", "conversation=42"]),
        Vec::<String>::new()
    );
    let (_, stderr) = fails(dir.path(), &["query", "messages", "--where", "body=x"]);
    assert!(stderr.starts_with("error: not_indexed: "), "{stderr}");
}

#[test]
fn the_space_option_names_a_shared_space() {
    let dir = tempfile::tempdir().unwrap();
    let put = ok(
        dir.path(),
        &["--space", "team", "put", "tasks", "t1", r#"{"a": 1}"#],
    );
    assert_eq!(put[0]["space"], json!("team"));
    let (status, _) = fails(dir.path(), &["get", "tasks", "t1"]);
    assert_eq!(status, 3, "not in the personal space");
    assert_eq!(
        ok(dir.path(), &["--space", "team", "get", "tasks", "t1"])[0]["id"],
        json!("t1")
    );
}
