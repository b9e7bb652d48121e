//! Bad input gets a typed error and writes nothing: for each case, the
//! number of documents and of outbox entries in the database is the same
//! before and after.
#![allow(clippy::unwrap_used)]

use rusqlite::Connection;
use tandem_core::{Client, ClientConfig, DATABASE_FILE, DocKey, Error, Query};
use tandem_protocol::RejectCode;

struct Device {
    dir: tempfile::TempDir,
    client: Client,
}

impl Device {
    fn open(max_document_bytes: Option<usize>) -> Device {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ClientConfig::new(dir.path().to_str().unwrap(), "alice", "phone");
        if let Some(max) = max_document_bytes {
            config.max_document_bytes = max;
        }
        let client = Client::open(config).unwrap();
        // Something already there, so "unchanged" is not just "empty".
        client
            .put(DocKey::personal("tasks", "t1"), r#"{"title": "milk"}"#)
            .unwrap();
        Device { dir, client }
    }

    /// (documents, outbox entries), read on a connection of its own.
    fn counts(&self) -> (i64, i64) {
        let conn = Connection::open(self.dir.path().join(DATABASE_FILE)).unwrap();
        conn.query_row(
            "SELECT (SELECT count(*) FROM documents), (SELECT count(*) FROM outbox)",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap()
    }

    /// Runs `call`, which must fail, and checks that nothing was written.
    fn refuses<T: std::fmt::Debug>(&self, call: impl FnOnce(&Client) -> Result<T, Error>) -> Error {
        let before = self.counts();
        let err = call(&self.client).unwrap_err();
        assert_eq!(self.counts(), before, "nothing written after: {err}");
        let doc = self
            .client
            .get(DocKey::personal("tasks", "t1"))
            .unwrap()
            .unwrap();
        assert_eq!(doc.fields_json, r#"{"title":"milk"}"#);
        err
    }
}

fn key(id: &str) -> DocKey {
    DocKey::personal("tasks", id)
}

#[test]
fn invalid_json() {
    let device = Device::open(None);
    let err = device.refuses(|c| c.put(key("t2"), r#"{"title": "#));
    assert!(matches!(err, Error::InvalidJson(_)), "{err}");
    assert_eq!(err.code(), "invalid_json");
    let err = device.refuses(|c| c.patch(key("t1"), "not json"));
    assert!(matches!(err, Error::InvalidJson(_)), "{err}");
}

#[test]
fn a_json_value_that_is_not_an_object() {
    let device = Device::open(None);
    for text in ["[1, 2]", "\"text\"", "42", "null", "true"] {
        let err = device.refuses(|c| c.put(key("t2"), text));
        assert!(matches!(err, Error::NotAnObject { .. }), "{text}: {err}");
    }
    let err = device.refuses(|c| c.patch(key("t1"), "[]"));
    assert!(
        matches!(err, Error::NotAnObject { found: "array" }),
        "{err}"
    );
}

#[test]
fn a_document_over_the_size_limit() {
    // The default limit is 1 MiB.
    let device = Device::open(None);
    let big = format!(r#"{{"body": "{}"}}"#, "x".repeat(1024 * 1024));
    let err = device.refuses(|c| c.put(key("t2"), &big));
    assert!(
        matches!(err, Error::DocumentTooLarge { limit, size } if limit == 1024 * 1024 && size > limit),
        "{err}"
    );
    // The limit is configurable, and a patch that grows a document past it
    // is refused too.
    let device = Device::open(Some(1000));
    let err =
        device.refuses(|c| c.patch(key("t1"), &format!(r#"{{"note": "{}"}}"#, "y".repeat(1000))));
    assert!(
        matches!(err, Error::DocumentTooLarge { limit: 1000, .. }),
        "{err}"
    );
    device
        .client
        .patch(key("t1"), r#"{"note": "short"}"#)
        .unwrap();
}

#[test]
fn an_empty_or_overlong_id() {
    let device = Device::open(None);
    let err = device.refuses(|c| c.put(key(""), "{}"));
    assert!(matches!(err, Error::InvalidId(_)), "{err}");
    let err = device.refuses(|c| c.put(key(&"x".repeat(129)), "{}"));
    assert!(matches!(err, Error::InvalidId(_)), "{err}");
    assert_eq!(err.code(), "invalid_id");
    // 128 bytes is the limit, not over it.
    device.client.put(key(&"x".repeat(128)), "{}").unwrap();
    let err = device.refuses(|c| c.put(DocKey::personal("bad collection", "t2"), "{}"));
    assert!(matches!(err, Error::InvalidId(_)), "{err}");
    let err = device.refuses(|c| c.delete(key("")));
    assert!(matches!(err, Error::InvalidId(_)), "{err}");
}

#[test]
fn a_query_on_a_field_that_is_not_indexed() {
    let device = Device::open(None);
    device
        .client
        .declare_index("tasks", vec!["done".into()])
        .unwrap();
    let err = device.refuses(|c| c.query(Query::new("tasks").eq("title", "milk")));
    assert!(
        matches!(&err, Error::NotIndexed { field, collection } if field == "title" && collection == "tasks"),
        "{err}"
    );
    let err = device.refuses(|c| c.query(Query::new("tasks").order("title")));
    assert!(matches!(err, Error::NotIndexed { .. }), "{err}");
    // An index on another collection does not count.
    let err = device.refuses(|c| c.query(Query::new("lists").eq("done", true)));
    assert!(matches!(err, Error::NotIndexed { .. }), "{err}");
    device
        .client
        .query(Query::new("tasks").eq("done", true))
        .unwrap();
}

#[test]
fn an_unknown_operation() {
    let device = Device::open(None);
    let err = device.refuses(|c| c.mutate(key("t1"), "upsert", r#"{"a": 1}"#));
    assert!(
        matches!(&err, Error::UnknownOperation(name) if name == "upsert"),
        "{err}"
    );
    assert_eq!(err.code(), "unknown_operation");
}

#[test]
fn policy_rejections() {
    let device = Device::open(None);
    // `tags` is not declared as a set field (the default policy has none).
    let err = device.refuses(|c| c.set_add(key("t1"), "tags", r#"["a"]"#));
    assert!(
        matches!(
            err,
            Error::Rejected {
                code: RejectCode::NotASetField,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.code(), "not_a_set_field");
    let err = device.refuses(|c| c.put(key("t1"), r#"{"": 1}"#));
    assert!(
        matches!(
            err,
            Error::Rejected {
                code: RejectCode::InvalidMutation,
                ..
            }
        ),
        "{err}"
    );
    let err = device.refuses(|c| c.set_add(key("t1"), "tags", r#"{"a": 1}"#));
    assert!(matches!(err, Error::NotAnArray { .. }), "{err}");
    let err = device.refuses(|c| c.mutate(key("t1"), "set_add", r#"{"values": ["a"]}"#));
    assert!(matches!(err, Error::InvalidPayload(_)), "{err}");
}

#[test]
fn a_bad_index_declaration() {
    let device = Device::open(None);
    let err = device.refuses(|c| c.declare_index("tasks", vec![]));
    assert!(matches!(err, Error::InvalidIndex(_)), "{err}");
    let err = device.refuses(|c| c.declare_index("tasks", vec!["a b".into()]));
    assert!(matches!(err, Error::InvalidIndex(_)), "{err}");
}
