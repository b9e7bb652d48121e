//! The `Client` through its public API, on real SQLite databases in
//! temporary directories.
#![allow(clippy::unwrap_used)]

use serde_json::json;
use tandem_core::{Client, ClientConfig, DocKey, Error, FilterOp, OutboxState, Query};
use tandem_protocol::{CollectionPolicy, Hlc, Mutation};

fn open(dir: &tempfile::TempDir) -> Client {
    Client::open(ClientConfig::new(
        dir.path().to_str().unwrap(),
        "alice",
        "phone",
    ))
    .unwrap()
}

fn key(id: &str) -> DocKey {
    DocKey::personal("tasks", id)
}

#[test]
fn put_then_get_returns_the_document() {
    let dir = tempfile::tempdir().unwrap();
    let client = open(&dir);
    let written = client
        .put(key("t1"), r#"{"title": "milk", "done": false}"#)
        .unwrap();
    let read = client.get(key("t1")).unwrap().unwrap();
    assert_eq!(read, written);
    assert_eq!(read.space, "personal:alice");
    assert_eq!(read.collection, "tasks");
    assert_eq!(read.id, "t1");
    assert_eq!(
        serde_json::to_value(&read).unwrap(),
        json!({
            "space": "personal:alice", "collection": "tasks", "id": "t1",
            "fields": {"title": "milk", "done": false},
            "version": null, "pending": true, "deleted": false
        })
    );
    assert!(client.get(key("nope")).unwrap().is_none());
}

#[test]
fn patch_and_delete_change_the_local_view() {
    let dir = tempfile::tempdir().unwrap();
    let client = open(&dir);
    client
        .put(key("t1"), r#"{"title": "milk", "note": "x"}"#)
        .unwrap();
    let patched = client
        .patch(key("t1"), r#"{"done": true, "note": null}"#)
        .unwrap();
    assert_eq!(
        patched.fields().unwrap(),
        *json!({"title": "milk", "done": true}).as_object().unwrap()
    );
    let deleted = client.delete(key("t1")).unwrap();
    assert!(deleted.deleted);
    let tomb = client.get(key("t1")).unwrap().unwrap();
    assert!(tomb.deleted && tomb.pending);
    assert_eq!(tomb.fields_json, "{}");
    // A deleted document is not in query results.
    assert!(client.query(Query::new("tasks")).unwrap().is_empty());
    let ops: Vec<String> = client
        .pending_mutations()
        .unwrap()
        .into_iter()
        .map(|m| m.operation)
        .collect();
    assert_eq!(ops, ["put", "patch", "delete"]);
}

#[test]
fn documents_go_to_the_named_space() {
    let dir = tempfile::tempdir().unwrap();
    let client = open(&dir);
    client
        .put(DocKey::in_space("team", "tasks", "t1"), r#"{"a": 1}"#)
        .unwrap();
    assert!(client.get(key("t1")).unwrap().is_none());
    let doc = client
        .get(DocKey::in_space("team", "tasks", "t1"))
        .unwrap()
        .unwrap();
    assert_eq!(doc.space, "team");
    assert_eq!(client.query(Query::new("tasks")).unwrap().len(), 0);
    assert_eq!(
        client
            .query(Query::new("tasks").in_space("team"))
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn queries_filter_order_limit_and_page() {
    let dir = tempfile::tempdir().unwrap();
    let client = open(&dir);
    client
        .declare_index("messages", vec!["conversation".into(), "sent_at".into()])
        .unwrap();
    let messages = [
        ("m1", "c1", 40),
        ("m2", "c2", 10),
        ("m3", "c1", 10),
        ("m4", "c1", 30),
        ("m5", "c1", 20),
    ];
    for (id, conversation, sent_at) in messages {
        client
            .put(
                DocKey::personal("messages", id),
                &json!({"conversation": conversation, "sent_at": sent_at, "body": id}).to_string(),
            )
            .unwrap();
    }
    let ids =
        |q: Query| -> Vec<String> { client.query(q).unwrap().into_iter().map(|d| d.id).collect() };
    let c1 = || Query::new("messages").eq("conversation", "c1");
    assert_eq!(ids(c1().order("sent_at")), ["m3", "m5", "m4", "m1"]);
    assert_eq!(ids(c1().order("sent_at").desc().first(2)), ["m1", "m4"]);
    assert_eq!(
        ids(c1()
            .order("sent_at")
            .filter("sent_at", FilterOp::Gt, 10i64)
            .filter("sent_at", FilterOp::Le, 30i64)),
        ["m5", "m4"]
    );
    assert_eq!(ids(c1().order("sent_at").after_id("m5")), ["m4", "m1"]);
    // By id when no order is given.
    assert_eq!(ids(c1()), ["m1", "m3", "m4", "m5"]);
    assert_eq!(ids(Query::new("messages").desc().first(1)), ["m5"]);
}

#[test]
fn declared_indexes_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let client = open(&dir);
        client.declare_index("tasks", vec!["done".into()]).unwrap();
        client.put(key("t1"), r#"{"done": true}"#).unwrap();
        client.put(key("t2"), r#"{"done": false}"#).unwrap();
    }
    let client = open(&dir);
    let done = client.query(Query::new("tasks").eq("done", true)).unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].id, "t1");
}

#[test]
fn the_device_id_and_the_outbox_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (device, first_hlc) = {
        let client = open(&dir);
        client.put(key("t1"), r#"{"n": 1}"#).unwrap();
        let m = &client.pending_mutations().unwrap()[0];
        let mutation: Mutation = serde_json::from_str(&m.mutation_json).unwrap();
        assert_eq!(mutation.device_id.as_str(), client.device_id());
        (client.device_id(), mutation.hlc)
    };
    let client = open(&dir);
    assert_eq!(client.device_id(), device);
    client.put(key("t2"), r#"{"n": 2}"#).unwrap();
    let pending = client.pending_mutations().unwrap();
    assert_eq!(pending.len(), 2);
    assert!(pending.iter().all(|m| m.state == OutboxState::Queued));
    let second: Mutation = serde_json::from_str(&pending[1].mutation_json).unwrap();
    let second_hlc: Hlc = second.hlc;
    assert!(
        second_hlc > first_hlc,
        "the clock resumes after its last reading"
    );
    assert_eq!(client.status().unwrap().pending, 2);
}

#[test]
fn another_user_cannot_open_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(&dir));
    let err = Client::open(ClientConfig::new(
        dir.path().to_str().unwrap(),
        "bob",
        "phone",
    ))
    .unwrap_err();
    assert!(matches!(err, Error::UserMismatch { .. }), "{err}");
}

#[test]
fn status_counts_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let client = open(&dir);
    client.put(key("t1"), "{}").unwrap();
    client.patch(key("t1"), r#"{"a": 1}"#).unwrap();
    let status = client.status().unwrap();
    assert_eq!(
        serde_json::to_value(&status).unwrap(),
        json!({
            "connection": "offline",
            "pending": 2,
            "failed": 0,
            "last_synced": null,
            "cursors": {},
            "catching_up": {},
            "checksum_mismatches": 0,
            "last_error": null
        })
    );
}

#[test]
fn set_fields_work_once_the_policy_declares_them() {
    let dir = tempfile::tempdir().unwrap();
    let client = open(&dir);
    let mut policy = CollectionPolicy::lww();
    policy.set_fields.insert("tags".into());
    client.set_collection_policy("tasks", policy).unwrap();
    client.put(key("t1"), r#"{"title": "x"}"#).unwrap();
    client.set_add(key("t1"), "tags", r#"["a", "b"]"#).unwrap();
    let doc = client.set_remove(key("t1"), "tags", r#"["a"]"#).unwrap();
    assert_eq!(doc.fields().unwrap()["tags"], json!(["b"]));
    let doc = client
        .mutate(
            key("t1"),
            "set_add",
            r#"{"field": "tags", "values": ["c"]}"#,
        )
        .unwrap();
    assert_eq!(doc.fields().unwrap()["tags"], json!(["b", "c"]));
}

#[test]
fn a_closed_client_refuses_calls() {
    let dir = tempfile::tempdir().unwrap();
    let client = open(&dir);
    client.close();
    client.close();
    assert!(matches!(client.put(key("t1"), "{}"), Err(Error::Closed)));
    assert!(matches!(client.get(key("t1")), Err(Error::Closed)));
    assert!(matches!(client.status(), Err(Error::Closed)));
}

#[test]
fn the_client_can_be_used_from_several_threads() {
    let dir = tempfile::tempdir().unwrap();
    let client = std::sync::Arc::new(open(&dir));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let client = std::sync::Arc::clone(&client);
            std::thread::spawn(move || {
                for i in 0..25 {
                    client
                        .put(key(&format!("t{t}-{i}")), r#"{"x": 1}"#)
                        .unwrap();
                    client.query(Query::new("tasks")).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(client.query(Query::new("tasks")).unwrap().len(), 100);
    assert_eq!(client.pending_mutations().unwrap().len(), 100);
}

#[test]
fn integers_beyond_64_bits_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let client = open(&dir);
    let mut policy = CollectionPolicy::lww();
    policy.set_fields.insert("tags".into());
    client.set_collection_policy("tasks", policy).unwrap();
    let big = "123456789012345678901234567890";
    let refused = |result: Result<tandem_core::LocalDocument, Error>| match result {
        Err(Error::Rejected {
            code,
            reason,
            field,
        }) => {
            assert_eq!(code.as_str(), "invalid_mutation");
            (field, reason)
        }
        other => panic!("expected a refusal, got {other:?}"),
    };
    let (field, reason) =
        refused(client.put(key("t1"), &format!(r#"{{"title": "x", "count": {big}}}"#)));
    assert_eq!(field.as_deref(), Some("count"));
    assert!(
        reason.starts_with(&format!(
            "count: the integer {big} is outside the 64-bit range"
        )),
        "{reason}"
    );
    let (field, reason) =
        refused(client.patch(key("t1"), &format!(r#"{{"a": {{"b": [1, -{big}]}}}}"#)));
    assert_eq!(field.as_deref(), Some("a"));
    assert!(reason.starts_with("a.b[1]: "), "{reason}");
    let (field, reason) = refused(client.set_add(key("t1"), "tags", &format!("[1, {big}]")));
    assert_eq!(field.as_deref(), Some("tags"));
    assert!(reason.starts_with("tags[1]: "), "{reason}");
    let (field, reason) = refused(client.mutate(
        key("t1"),
        "set_add",
        &format!(r#"{{"field": "tags", "values": [{big}]}}"#),
    ));
    assert_eq!(field.as_deref(), Some("tags"));
    assert!(reason.starts_with("tags[0]: "), "{reason}");
    assert!(client.get(key("t1")).unwrap().is_none(), "nothing written");
    assert!(client.pending_mutations().unwrap().is_empty());

    // What a 64-bit parser keeps is written as given; a double is a double.
    let kept = client
        .put(
            key("t1"),
            r#"{"max": 18446744073709551615, "min": -9223372036854775808, "d": 1.5e30}"#,
        )
        .unwrap();
    assert_eq!(
        kept.fields().unwrap(),
        *json!({"max": u64::MAX, "min": i64::MIN, "d": 1.5e30})
            .as_object()
            .unwrap()
    );
}
