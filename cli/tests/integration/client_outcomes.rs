//! What `tandem client` answers when things do not simply work, as
//! processes against real servers: writes the server refuses, conflicts
//! lost, failed mutations listed, retried and discarded, JSON from files
//! and stdin, a server that is down or is not Tandem, and signals once the
//! server is gone. The exit statuses are those of `tandem client --help`.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{
    Background, PATIENCE, Run, Serve, client, closed_port, exit_within, not_tandem_server,
    output_within, signal,
};

/// A liveness deadline for a process that must stop (not a performance
/// figure: stopping "at once" is well under a second on an idle machine,
/// and a loaded one may take a few). It is well under the 15 s a role
/// request to a server that is gone would wait for its answer, and under
/// the reconnect attempts that would go on forever: the waits a stop must
/// not get stuck in.
const PROMPTLY: Duration = Duration::from_secs(10);

fn schema() -> Value {
    json!({"collections": {
        "tasks": {"fields": {"title": {"type": "string", "required": true}}},
        "messages": {"policy": "append_only"},
        "settings": {"policy": "server_wins"}
    }})
}

/// The failed entries, as `failed` prints them.
fn failed(url: &str, dir: &std::path::Path) -> Vec<Value> {
    Run::of(client(url, dir, "phone").arg("failed"))
        .ok("failed")
        .lines
}

#[test]
fn a_refused_write_exits_5_naming_it_and_stays_failed_until_retried_or_discarded() {
    let server = Serve::with_schema(&schema());
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let phone = || client(&url, dir.path(), "phone");
    Run::of(phone().args(["put", "tasks", "t1", r#"{"title": "milk"}"#])).ok("valid put");

    // A field rule refuses the write: the document printed is the one the
    // device has (the write rolled back), the error names the mutation.
    let refused = Run::of(phone().args(["put", "tasks", "t1", r#"{"title": 5}"#]));
    let line = refused.error(5, "validation_failed");
    assert_eq!(refused.lines.len(), 1);
    assert_eq!(refused.lines[0]["fields"], json!({"title": "milk"}));
    let listed = failed(&url, dir.path());
    assert_eq!(listed.len(), 1);
    let entry = &listed[0];
    let id = entry["mutation_id"].as_str().unwrap().to_owned();
    assert!(line.contains(&id), "{line}");
    assert!(line.contains("put tasks/t1"), "{line}");
    assert!(line.contains("title: must be a string"), "{line}");
    assert_eq!(entry["space"], "personal:alice");
    assert_eq!(entry["collection"], "tasks");
    assert_eq!(entry["doc_id"], "t1");
    assert_eq!(entry["op"], "put");
    assert_eq!(entry["code"], "validation_failed");
    assert_eq!(entry["reason"], "title: must be a string");
    assert_eq!(entry["attempts"], 1);

    // Nothing else is pending: unrelated commands say nothing about it...
    Run::of(phone().args(["get", "tasks", "t1"])).ok("get");
    Run::of(phone().args(["put", "tasks", "t2", r#"{"title": "eggs"}"#])).ok("other put");
    let status = Run::of(phone().arg("status")).ok("status");
    assert_eq!(status.lines[0]["pending"], 0);
    assert_eq!(status.lines[0]["failed"], 1);
    // ...and `sync` reports it as failed, not pending.
    let sync = Run::of(phone().args(["sync", "--timeout", "60"]));
    sync.error(5, "failed");
    assert!(
        sync.stderr.contains("1 failed mutations remain"),
        "{}",
        sync.stderr
    );
    assert_eq!(
        sync.lines[0]["outcome"],
        json!({"result": "failed_left", "failed": 1})
    );

    // Retried, it is refused again; an unknown id is not found.
    Run::of(phone().args(["retry", &id])).error(5, "validation_failed");
    let unknown = "01a25130-0000-7000-8000-000000000000";
    Run::of(phone().args(["retry", unknown])).error(3, "not_found");
    Run::of(phone().args(["discard", unknown])).error(3, "not_found");

    // Discarded, it is gone for good and sync is clean.
    let discarded = Run::of(phone().args(["discard", &id])).ok("discard");
    assert_eq!(discarded.lines, std::slice::from_ref(entry));
    assert!(failed(&url, dir.path()).is_empty());
    Run::of(phone().args(["discard", &id])).error(3, "not_found");
    let sync = Run::of(phone().args(["sync", "--timeout", "60"])).ok("clean sync");
    assert_eq!(sync.lines[0]["outcome"], json!({"result": "caught_up"}));
}

#[test]
fn a_mutation_refused_during_another_command_is_reported_once() {
    let server = Serve::with_schema(&schema());
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let phone = || client(&url, dir.path(), "phone");
    // Offline, a new device does not know `messages` is append_only: the
    // patch is queued, and the server refuses it when it arrives.
    Run::of(phone().args(["--offline", "put", "messages", "m1", r#"{"a": 1}"#])).ok("put");
    Run::of(phone().args(["--offline", "patch", "messages", "m1", r#"{"a": 2}"#])).ok("patch");
    let get = Run::of(phone().args(["get", "messages", "m1"]));
    assert_eq!(get.status, 0, "{}", get.stderr);
    assert_eq!(get.lines[0]["fields"], json!({"a": 1}));
    let warnings: Vec<&str> = get.stderr.lines().collect();
    assert_eq!(warnings.len(), 1, "{}", get.stderr);
    assert!(
        warnings[0].starts_with("warning: update_not_allowed: ")
            && warnings[0].contains("patch messages/m1"),
        "{}",
        warnings[0]
    );
    // Once.
    Run::of(phone().args(["get", "messages", "m1"])).ok("second get");
    assert_eq!(failed(&url, dir.path())[0]["code"], "update_not_allowed");
}

#[test]
fn a_write_that_loses_a_server_wins_conflict_exits_6() {
    let server = Serve::with_schema(&schema());
    let url = server.url();
    let (laptop_dir, phone_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let laptop = || client(&url, laptop_dir.path(), "laptop");
    let phone = || client(&url, phone_dir.path(), "phone");
    Run::of(laptop().args(["put", "settings", "s1", r#"{"v": "laptop 1"}"#])).ok("first");
    Run::of(phone().args(["get", "settings", "s1"])).ok("phone knows version 1");
    // The phone writes on top of version 1 offline; the laptop makes
    // version 2; the phone's next write, on top of its first (a write is
    // made before its command syncs), goes out behind it and is dropped
    // with it.
    Run::of(phone().args(["--offline", "put", "settings", "s1", r#"{"v": "phone 1"}"#]))
        .ok("offline");
    Run::of(laptop().args(["put", "settings", "s1", r#"{"v": "laptop 2"}"#])).ok("second");
    let lost = Run::of(phone().args(["put", "settings", "s1", r#"{"v": "phone 2"}"#]));
    let line = lost.error(6, "conflict");
    assert!(
        line.contains("put settings/s1") && line.contains("server_wins"),
        "{line}"
    );
    assert_eq!(lost.lines[0]["fields"], json!({"v": "laptop 2"}));
    assert!(
        failed(&url, phone_dir.path()).is_empty(),
        "a conflict is not a failure"
    );
}

#[test]
fn put_and_patch_read_json_from_a_file_or_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("device");
    let offline = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tandem"));
        cmd.arg("client").arg("--data").arg(&data).args([
            "--user",
            "alice",
            "--device",
            "phone",
            "--offline",
        ]);
        cmd
    };
    // A missing file: a clear error, and not even the device directory is
    // created.
    let missing = dir.path().join("missing.json");
    let run = Run::of(offline().args(["put", "notes", "n1", &format!("@{}", missing.display())]));
    let line = run.error(1, "invalid_argument");
    assert!(line.contains("missing.json"), "{line}");
    assert!(!data.exists(), "nothing written");
    Run::of(offline().args(["put", "notes", "n1", "@"])).error(1, "invalid_argument");

    // 600 KB, far above what one argument may carry (128 KB on Linux).
    let body = "x".repeat(600 * 1024);
    let file = dir.path().join("big.json");
    std::fs::write(&file, json!({"body": body}).to_string()).unwrap();
    let put = Run::of(offline().args(["put", "notes", "n1", &format!("@{}", file.display())]))
        .ok("put @FILE");
    assert_eq!(
        put.lines[0]["fields"]["body"].as_str().unwrap().len(),
        body.len()
    );

    // `-`: standard input.
    let mut child = offline()
        .args(["patch", "notes", "n1", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"done": true}"#)
        .unwrap();
    let patched = Run::from_output(output_within(child, PATIENCE)).ok("patch -");
    assert_eq!(patched.lines[0]["fields"]["done"], json!(true));
    assert_eq!(
        patched.lines[0]["fields"]["body"].as_str().unwrap().len(),
        body.len()
    );

    // Over the local size limit: refused as too large, not by the shell.
    std::fs::write(&file, json!({"body": "x".repeat(2 << 20)}).to_string()).unwrap();
    let run = Run::of(offline().args(["put", "notes", "n2", &format!("@{}", file.display())]));
    run.error(1, "document_too_large");

    // And through a server (a device of its own: one push may carry at
    // most 1 MB).
    let server = Serve::start();
    let online = tempfile::tempdir().unwrap();
    std::fs::write(&file, json!({"body": body}).to_string()).unwrap();
    let synced = Run::of(client(&server.url(), online.path(), "phone").args([
        "put",
        "notes",
        "n3",
        &format!("@{}", file.display()),
    ]))
    .ok("put @FILE online");
    assert_eq!(synced.lines[0]["pending"], json!(false));
}

#[test]
fn claim_and_watch_stop_promptly_on_signals_once_the_server_is_gone() {
    let mut server = Serve::start();
    let url = server.url();
    let (watch_dir, claim_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    Run::of(client(&url, watch_dir.path(), "laptop").args(["put", "tasks", "t1", "{}"]))
        .ok("a document to watch");
    let mut watch = client(&url, watch_dir.path(), "laptop");
    watch.args(["watch", "tasks"]);
    let mut watch = Background::spawn(watch);
    watch.until("the watched document", |line| line["id"] == "t1");
    let mut claim = client(&url, claim_dir.path(), "phone");
    claim.args(["claim", "responder"]);
    let mut claim = Background::spawn(claim);
    claim.until("the claim", |line| line["is_self"] == json!(true));

    server.kill();
    signal(&watch.child, "TERM");
    assert_eq!(exit_within(&mut watch.child, PROMPTLY).code(), Some(0));
    signal(&claim.child, "INT");
    assert_eq!(exit_within(&mut claim.child, PROMPTLY).code(), Some(0));
}

#[test]
fn a_server_that_cannot_be_reached_gets_a_prompt_answer_and_the_write_is_kept() {
    let url = format!("http://127.0.0.1:{}", closed_port());
    let dir = tempfile::tempdir().unwrap();
    // A sync timeout far beyond the test's patience: the answer must not
    // wait for it.
    let phone = || {
        let mut cmd = client(&url, dir.path(), "phone");
        cmd.args(["--sync-timeout", "600"]);
        cmd
    };
    let put = Run::of(phone().args(["put", "notes", "n1", r#"{"x": 1}"#]));
    let line = put.error(4, "unreachable");
    assert!(line.contains(&url) && line.contains("outbox"), "{line}");
    assert_eq!(
        put.lines[0]["pending"],
        json!(true),
        "the local write is done"
    );
    let status = Run::of(phone().args(["--offline", "status"])).ok("status");
    assert_eq!(status.lines[0]["pending"], 1);
    Run::of(phone().args(["sync", "--timeout", "600"])).error(4, "unreachable");
    // A read shows the local copy, with one warning.
    let get = Run::of(phone().args(["get", "notes", "n1"]));
    assert_eq!(get.status, 0);
    assert_eq!(get.lines[0]["fields"], json!({"x": 1}));
    assert_eq!(get.stderr.lines().count(), 1, "{}", get.stderr);
    assert!(
        get.stderr.starts_with("warning: unreachable: "),
        "{}",
        get.stderr
    );
    // Commands that need the server say so the same way.
    Run::of(phone().args(["claim", "responder"])).error(4, "unreachable");
    Run::of(phone().arg("spaces")).error(4, "unreachable");

    // Once the server is there, the kept write goes out.
    let server = Serve::start();
    let synced =
        Run::of(client(&server.url(), dir.path(), "phone").args(["sync", "--timeout", "60"]))
            .ok("sync");
    assert_eq!(synced.lines[0]["status"]["pending"], 0);
}

#[test]
fn a_server_that_is_not_tandem_gets_a_clear_error() {
    let url = not_tandem_server();
    let dir = tempfile::tempdir().unwrap();
    let put = Run::of(client(&url, dir.path(), "phone").args([
        "--sync-timeout",
        "600",
        "put",
        "notes",
        "n1",
        "{}",
    ]));
    let line = put.error(4, "not_a_tandem_server");
    assert!(
        line.contains("404 Not Found") && line.contains("--server"),
        "{line}"
    );
}

#[test]
fn help_documents_the_exit_statuses() {
    let help = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["client", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for expected in [
        "Exit status:",
        "3  not found",
        "4  not synced",
        "5  refused",
        "6  conflict",
        "@FILE",
    ] {
        assert!(help.contains(expected), "{expected:?} in\n{help}");
    }
    let help = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["client", "failed", "--help"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8(help.stdout)
            .unwrap()
            .contains("mutation_id")
    );
}

#[test]
fn a_refused_user_token_gets_a_prompt_unauthorized_answer() {
    let server = Serve::start();
    let dir = tempfile::tempdir().unwrap();
    let put = Run::of(client(&server.url(), dir.path(), "phone").args([
        "--token",
        "not-a-dev-token",
        "--sync-timeout",
        "600",
        "put",
        "notes",
        "n1",
        "{}",
    ]));
    let line = put.error(4, "unauthorized");
    assert!(
        line.contains("--token") && line.contains("outbox"),
        "{line}"
    );
}
