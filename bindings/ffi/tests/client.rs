//! The exported client driven from Rust, as the generated bindings drive
//! it: records in and out, typed errors, subscriptions that stop on cancel
//! and on release, observers that fail without harming others.
#![allow(clippy::unwrap_used)]

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem_ffi::{
    Client, ClientConfig, DocKey, Document, DocumentObserver, Filter, FilterOp, FilterValue,
    MutationFailure, Query, QueryObserver, StatusObserver, SyncConfig, SyncStatus, TandemError,
    TokenProvider,
};

/// Long enough for the observer thread to deliver, on a loaded machine.
const DELIVERY: Duration = Duration::from_secs(5);
/// How long to wait for a call that must not come.
const SILENCE: Duration = Duration::from_millis(300);

fn open(dir: &tempfile::TempDir) -> Arc<Client> {
    let config = ClientConfig {
        data_dir: dir.path().to_str().unwrap().to_owned(),
        user_id: "alice".into(),
        device_name: "test".into(),
        durable_writes: false,
        max_document_bytes: None,
        cache_limit_bytes: None,
        evictable_collections: Vec::new(),
        encryption_key: None,
    };
    block_on(Client::open(config, None)).unwrap()
}

/// Polls an async export the way a host executor does: from a thread
/// outside the bindings' runtime.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(future)
}

fn key(id: &str) -> DocKey {
    DocKey {
        collection: "tasks".into(),
        id: id.into(),
        space: None,
    }
}

fn tasks() -> Query {
    Query {
        collection: "tasks".into(),
        space: None,
        filters: Vec::new(),
        order_by: None,
        descending: false,
        limit: None,
        after: None,
    }
}

/// Sends each result's ids down a channel.
struct Ids(Mutex<Sender<Vec<String>>>);

impl QueryObserver for Ids {
    fn on_result(&self, documents: Vec<Document>) -> Result<(), TandemError> {
        let ids = documents.into_iter().map(|d| d.id).collect();
        let _ = self.0.lock().unwrap().send(ids);
        Ok(())
    }
}

fn ids_observer() -> (Box<Ids>, Receiver<Vec<String>>) {
    let (tx, rx) = channel();
    (Box::new(Ids(Mutex::new(tx))), rx)
}

#[test]
fn documents_round_trip_as_json_with_typed_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let client = open(&dir);
    client
        .declare_index("tasks".into(), vec!["done".into()])
        .unwrap();

    let written = client
        .put(key("t1"), r#"{"title":"milk","done":false}"#.into())
        .unwrap();
    client
        .put(key("t2"), r#"{"title":"eggs","done":true}"#.into())
        .unwrap();
    assert_eq!(written.fields_json, r#"{"done":false,"title":"milk"}"#);
    assert_eq!(written.space, client.personal_space());
    assert_eq!(written.version, None);
    assert!(written.pending);
    assert!(!written.deleted);

    assert_eq!(client.get(key("t1")).unwrap(), Some(written.clone()));
    assert_eq!(
        block_on(client.fetch(key("t1"))).unwrap(),
        Some(written),
        "a document on the device is fetched locally"
    );
    assert_eq!(client.get(key("none")).unwrap(), None);

    let open_tasks = client
        .query(Query {
            filters: vec![Filter {
                field: "done".into(),
                op: FilterOp::Eq,
                value: FilterValue::Bool { value: false },
            }],
            ..tasks()
        })
        .unwrap();
    assert_eq!(open_tasks.len(), 1);
    assert_eq!(open_tasks[0].id, "t1");
    assert_eq!(client.pending_mutations().unwrap().len(), 2);
    assert_eq!(client.status().unwrap().pending, 2);
}

#[test]
fn bad_input_is_invalid_input_with_the_core_code() {
    let dir = tempfile::tempdir().unwrap();
    let client = open(&dir);
    let error = client.put(key("t1"), "{not json".into()).unwrap_err();
    assert!(
        matches!(&error, TandemError::InvalidInput { code, reason } if code == "invalid_json" && !reason.is_empty()),
        "{error:?}"
    );
    let error = client
        .query(Query {
            order_by: Some("title".into()),
            ..tasks()
        })
        .unwrap_err();
    assert!(matches!(&error, TandemError::InvalidInput { code, .. } if code == "not_indexed"));
    assert_eq!(client.get(key("t1")).unwrap(), None, "nothing was written");
}

#[test]
fn an_observer_stops_after_cancel_and_after_release() {
    let dir = tempfile::tempdir().unwrap();
    let client = open(&dir);
    let (cancelled_observer, cancelled) = ids_observer();
    let (released_observer, released) = ids_observer();
    let cancel_me = client.observe_query(tasks(), cancelled_observer).unwrap();
    let release_me = client.observe_query(tasks(), released_observer).unwrap();
    assert_eq!(client.active_subscriptions(), 2);
    assert_eq!(
        cancelled.recv_timeout(DELIVERY).unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        released.recv_timeout(DELIVERY).unwrap(),
        Vec::<String>::new()
    );

    client.put(key("t1"), "{}".into()).unwrap();
    assert_eq!(cancelled.recv_timeout(DELIVERY).unwrap(), vec!["t1"]);
    assert_eq!(released.recv_timeout(DELIVERY).unwrap(), vec!["t1"]);

    cancel_me.cancel();
    cancel_me.cancel();
    assert!(cancel_me.is_cancelled());
    assert_eq!(
        client.active_subscriptions(),
        1,
        "a second cancel counts nothing"
    );
    drop(release_me);
    assert_eq!(client.active_subscriptions(), 0);
    client.put(key("t2"), "{}".into()).unwrap();
    // Both observers are released by the core once their subscription
    // stops, which closes their channels; nothing more arrives.
    assert!(matches!(
        cancelled.recv_timeout(SILENCE),
        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected)
    ));
    assert_eq!(
        released.recv_timeout(SILENCE),
        Err(RecvTimeoutError::Disconnected),
        "the released subscription dropped its observer"
    );
    drop(cancel_me);
    assert_eq!(
        client.active_subscriptions(),
        0,
        "releasing a cancelled one counts nothing"
    );
}

/// Fails the way a Kotlin observer that throws does.
struct Throwing;

impl QueryObserver for Throwing {
    fn on_result(&self, _: Vec<Document>) -> Result<(), TandemError> {
        Err(TandemError::Internal {
            reason: "a callback failed: java.lang.IllegalStateException".into(),
        })
    }
}

/// Panics: a bug on the Rust side of a callback.
struct Panicking;

impl QueryObserver for Panicking {
    fn on_result(&self, _: Vec<Document>) -> Result<(), TandemError> {
        panic!("a bug in a callback");
    }
}

#[test]
fn a_failing_observer_does_not_stop_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let client = open(&dir);
    let _throwing = client.observe_query(tasks(), Box::new(Throwing)).unwrap();
    let _panicking = client.observe_query(tasks(), Box::new(Panicking)).unwrap();
    let (observer, results) = ids_observer();
    let _working = client.observe_query(tasks(), observer).unwrap();
    assert_eq!(
        results.recv_timeout(DELIVERY).unwrap(),
        Vec::<String>::new()
    );
    client.put(key("t1"), "{}".into()).unwrap();
    assert_eq!(results.recv_timeout(DELIVERY).unwrap(), vec!["t1"]);
}

struct Latest(Mutex<Sender<Option<Document>>>);

impl DocumentObserver for Latest {
    fn on_document(&self, document: Option<Document>) -> Result<(), TandemError> {
        let _ = self.0.lock().unwrap().send(document);
        Ok(())
    }
}

#[test]
fn a_document_observer_sees_its_document_and_its_delete() {
    let dir = tempfile::tempdir().unwrap();
    let client = open(&dir);
    let (tx, rx) = channel();
    let _subscription = client
        .observe_document(key("t1"), Box::new(Latest(Mutex::new(tx))))
        .unwrap();
    assert_eq!(rx.recv_timeout(DELIVERY).unwrap(), None);
    client.put(key("t1"), r#"{"title":"milk"}"#.into()).unwrap();
    let doc = rx.recv_timeout(DELIVERY).unwrap().unwrap();
    assert_eq!(doc.fields_json, r#"{"title":"milk"}"#);
    client.delete(key("t1")).unwrap();
    assert!(rx.recv_timeout(DELIVERY).unwrap().unwrap().deleted);
}

struct Statuses(Mutex<Sender<SyncStatus>>);

impl StatusObserver for Statuses {
    fn on_status(&self, status: SyncStatus) -> Result<(), TandemError> {
        let _ = self.0.lock().unwrap().send(status);
        Ok(())
    }

    fn on_mutation_failed(&self, _: MutationFailure) -> Result<(), TandemError> {
        Ok(())
    }
}

#[test]
fn the_status_observer_gets_the_current_status() {
    let dir = tempfile::tempdir().unwrap();
    let client = open(&dir);
    client.put(key("t1"), "{}".into()).unwrap();
    let (tx, rx) = channel();
    let subscription = client
        .observe_status(Box::new(Statuses(Mutex::new(tx))))
        .unwrap();
    let status = rx.recv_timeout(DELIVERY).unwrap();
    assert_eq!(status.pending, 1);
    assert_eq!(client.active_subscriptions(), 1);
    subscription.cancel();
    assert_eq!(client.active_subscriptions(), 0);
}

#[test]
fn a_closed_client_says_closed_and_its_subscriptions_release_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let client = open(&dir);
    let (observer, _results) = ids_observer();
    let subscription = client.observe_query(tasks(), observer).unwrap();
    client.close();
    client.close();
    assert_eq!(
        client.put(key("t1"), "{}".into()).unwrap_err(),
        TandemError::Closed
    );
    assert_eq!(client.get(key("t1")).unwrap_err(), TandemError::Closed);
    let (observer, _results) = ids_observer();
    assert_eq!(
        client.observe_query(tasks(), observer).unwrap_err(),
        TandemError::Closed
    );
    subscription.cancel();
    drop(subscription);
    assert_eq!(client.active_subscriptions(), 0);
}

struct DevToken;

#[async_trait::async_trait]
impl TokenProvider for DevToken {
    async fn user_token(&self) -> Result<String, TandemError> {
        Ok("dev:alice".into())
    }
}

#[test]
fn syncing_runs_on_the_bindings_runtime_and_reports_an_unreachable_server() {
    let dir = tempfile::tempdir().unwrap();
    let client = open(&dir);
    assert!(
        matches!(
            block_on(client.sync_once(100)),
            Err(TandemError::Network { .. })
        ),
        "not syncing yet"
    );

    // Port 1 on loopback refuses connections at once.
    let config = SyncConfig {
        server_url: "http://127.0.0.1:1".into(),
        platform: None,
        app_version: None,
        trusted_roots_pem: Vec::new(),
        pinned_spki_sha256: Vec::new(),
        tuning: None,
    };
    block_on(client.start_sync(config, Arc::new(DevToken))).unwrap();
    assert!(client.is_syncing());
    client.put(key("t1"), "{}".into()).unwrap();
    let error = block_on(client.sync_once(2_000)).unwrap_err();
    assert!(matches!(error, TandemError::Network { .. }), "{error:?}");
    assert_eq!(client.status().unwrap().pending, 1);
    block_on(client.stop_sync()).unwrap();
    assert!(!client.is_syncing());
}
