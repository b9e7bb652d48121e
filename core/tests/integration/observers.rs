//! Query and document observers: notified after commit, coalesced,
//! silent when the result does not change, stopped by `cancel` and by
//! dropping the subscription.
//!
//! Observers run on their own thread, so the tests wait for notifications
//! with a generous deadline; they never assert on how long anything took.
#![allow(clippy::unwrap_used)]

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tandem_core::{
    Client, ClientConfig, DocKey, DocumentObserver, LocalDocument, Query, QueryObserver,
};

const DEADLINE: Duration = Duration::from_secs(20);

fn open(dir: &tempfile::TempDir) -> Client {
    let client = Client::open(ClientConfig::new(
        dir.path().to_str().unwrap(),
        "alice",
        "phone",
    ))
    .unwrap();
    client
        .declare_index("messages", vec!["conversation".into(), "sent_at".into()])
        .unwrap();
    client
}

fn send(client: &Client, id: &str, conversation: &str, sent_at: i64) {
    client
        .put(
            DocKey::personal("messages", id),
            &json!({"conversation": conversation, "sent_at": sent_at}).to_string(),
        )
        .unwrap();
}

fn conversation(c: &str) -> Query {
    Query::new("messages")
        .eq("conversation", c)
        .order("sent_at")
}

/// Forwards every result to a channel, as the ids of the documents.
struct Results(Mutex<Sender<Vec<String>>>);

impl QueryObserver for Results {
    fn on_result(&self, documents: Vec<LocalDocument>) {
        let ids = documents.into_iter().map(|d| d.id).collect();
        let _ = self.0.lock().unwrap().send(ids);
    }
}

fn results() -> (Arc<Results>, Receiver<Vec<String>>) {
    let (tx, rx) = mpsc::channel();
    (Arc::new(Results(Mutex::new(tx))), rx)
}

fn next(rx: &Receiver<Vec<String>>) -> Vec<String> {
    rx.recv_timeout(DEADLINE).expect("a notification")
}

#[test]
fn a_query_observer_gets_the_current_result_then_each_committed_change() {
    let dir = tempfile::tempdir().unwrap();
    let client = open(&dir);
    send(&client, "m1", "c1", 1);
    let (observer, rx) = results();
    let _subscription = client.observe_query(conversation("c1"), observer).unwrap();
    assert_eq!(next(&rx), ["m1"]);

    send(&client, "m2", "c1", 2);
    // The notification carries committed data: a fresh read agrees with it.
    let notified = next(&rx);
    assert_eq!(notified, ["m1", "m2"]);
    let read: Vec<String> = client
        .query(conversation("c1"))
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(read, notified);
}

#[test]
fn no_notification_when_the_result_does_not_change() {
    let dir = tempfile::tempdir().unwrap();
    let client = open(&dir);
    let (observer, rx) = results();
    let _subscription = client.observe_query(conversation("c1"), observer).unwrap();
    assert_eq!(next(&rx), Vec::<String>::new());
    // Same collection, other conversation: the query is re-run but its
    // result is the same, so the observer hears nothing...
    send(&client, "m1", "c2", 1);
    // ...and the next thing it hears is the change that matters.
    send(&client, "m2", "c1", 2);
    assert_eq!(next(&rx), ["m2"]);
    assert!(rx.try_recv().is_err());
}

/// Blocks in its first call until released, and forwards every result.
struct Blocking {
    results: Mutex<Sender<Vec<String>>>,
    entered: Mutex<Option<Sender<()>>>,
    release: Mutex<Receiver<()>>,
}

impl QueryObserver for Blocking {
    fn on_result(&self, documents: Vec<LocalDocument>) {
        if let Some(entered) = self.entered.lock().unwrap().take() {
            entered.send(()).unwrap();
            self.release.lock().unwrap().recv().unwrap();
        }
        let ids = documents.into_iter().map(|d| d.id).collect();
        let _ = self.results.lock().unwrap().send(ids);
    }
}

#[test]
fn a_burst_of_commits_is_coalesced_into_the_latest_result() {
    let dir = tempfile::tempdir().unwrap();
    let client = open(&dir);
    let (results_tx, rx) = mpsc::channel();
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let observer = Arc::new(Blocking {
        results: Mutex::new(results_tx),
        entered: Mutex::new(Some(entered_tx)),
        release: Mutex::new(release_rx),
    });
    let _subscription = client.observe_query(conversation("c1"), observer).unwrap();
    // The observer is now inside its first call (the initial, empty
    // result) and the observer thread is held there.
    entered_rx.recv_timeout(DEADLINE).unwrap();
    for i in 0..50 {
        send(&client, &format!("m{i:02}"), "c1", i);
    }
    release_tx.send(()).unwrap();
    assert_eq!(next(&rx), Vec::<String>::new(), "the initial result");
    // All 50 commits were queued while the observer was busy: it hears the
    // final result once, not 50 intermediate ones.
    let latest = next(&rx);
    assert_eq!(latest.len(), 50);
    assert_eq!(latest.last().unwrap(), "m49");
    send(&client, "m50", "c1", 50);
    assert_eq!(
        next(&rx).len(),
        51,
        "the next notification is the next commit"
    );
}

#[test]
fn cancel_and_drop_stop_notifications() {
    let dir = tempfile::tempdir().unwrap();
    let client = open(&dir);
    let (cancelled, cancelled_rx) = results();
    let (dropped, dropped_rx) = results();
    let (witness, witness_rx) = results();
    let cancelled_sub = client.observe_query(conversation("c1"), cancelled).unwrap();
    let dropped_sub = client.observe_query(conversation("c1"), dropped).unwrap();
    let _witness_sub = client.observe_query(conversation("c1"), witness).unwrap();
    assert_eq!(next(&cancelled_rx), Vec::<String>::new());
    assert_eq!(next(&dropped_rx), Vec::<String>::new());
    assert_eq!(next(&witness_rx), Vec::<String>::new());

    cancelled_sub.cancel();
    assert!(cancelled_sub.is_cancelled());
    drop(dropped_sub);
    // Two commits, each seen by the witness: by the second notification the
    // observer thread has finished the round of the first commit too.
    send(&client, "m1", "c1", 1);
    assert_eq!(next(&witness_rx), ["m1"]);
    send(&client, "m2", "c1", 2);
    assert_eq!(next(&witness_rx), ["m1", "m2"]);
    assert!(cancelled_rx.try_recv().is_err(), "cancelled");
    assert!(dropped_rx.try_recv().is_err(), "dropped");
}

/// Forwards every document view to a channel.
struct Views(Mutex<Sender<Option<LocalDocument>>>);

impl DocumentObserver for Views {
    fn on_document(&self, document: Option<LocalDocument>) {
        let _ = self.0.lock().unwrap().send(document);
    }
}

#[test]
fn a_document_observer_follows_one_document() {
    let dir = tempfile::tempdir().unwrap();
    let client = open(&dir);
    let (tx, rx) = mpsc::channel();
    let subscription = client
        .observe_document(
            DocKey::personal("tasks", "t1"),
            Arc::new(Views(Mutex::new(tx))),
        )
        .unwrap();
    assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), None);
    client
        .put(DocKey::personal("tasks", "t1"), r#"{"title": "milk"}"#)
        .unwrap();
    let doc = rx.recv_timeout(DEADLINE).unwrap().unwrap();
    assert_eq!(doc.fields_json, r#"{"title":"milk"}"#);
    // Another document of the collection does not concern it.
    client
        .put(DocKey::personal("tasks", "t2"), r#"{"title": "eggs"}"#)
        .unwrap();
    client.delete(DocKey::personal("tasks", "t1")).unwrap();
    let doc = rx.recv_timeout(DEADLINE).unwrap().unwrap();
    assert!(doc.deleted, "the next view is the delete, not t2");
    subscription.cancel();
    client
        .put(DocKey::personal("tasks", "t1"), r#"{"title": "again"}"#)
        .unwrap();
    // Let a notification that should not exist have every chance to show.
    let (wtx, wrx) = results();
    let _witness = client.observe_query(Query::new("tasks"), wtx).unwrap();
    next(&wrx);
    assert!(rx.try_recv().is_err());
}

#[test]
fn an_observer_may_cancel_its_own_subscription() {
    struct CancelsItself {
        subscription: Mutex<Option<tandem_core::Subscription>>,
        calls: Mutex<Sender<()>>,
    }
    impl QueryObserver for CancelsItself {
        fn on_result(&self, _: Vec<LocalDocument>) {
            let _ = self.calls.lock().unwrap().send(());
            if let Some(s) = self.subscription.lock().unwrap().take() {
                s.cancel();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let client = open(&dir);
    let (tx, rx) = mpsc::channel();
    let observer = Arc::new(CancelsItself {
        subscription: Mutex::new(None),
        calls: Mutex::new(tx),
    });
    // Hold the lock so the first call waits until the subscription is
    // stored.
    let mut slot = observer.subscription.lock().unwrap();
    let subscription = client
        .observe_query(
            conversation("c1"),
            Arc::clone(&observer) as Arc<dyn QueryObserver>,
        )
        .unwrap();
    *slot = Some(subscription);
    drop(slot);
    rx.recv_timeout(DEADLINE).unwrap();
    send(&client, "m1", "c1", 1);
    let (wtx, wrx) = results();
    let _witness = client.observe_query(conversation("c1"), wtx).unwrap();
    assert_eq!(next(&wrx), ["m1"]);
    send(&client, "m2", "c1", 2);
    assert_eq!(next(&wrx), ["m1", "m2"]);
    assert!(rx.try_recv().is_err(), "no call after it cancelled itself");
}

#[test]
fn a_closed_client_refuses_new_subscriptions() {
    let dir = tempfile::tempdir().unwrap();
    let client = open(&dir);
    client.close();
    let (observer, _rx) = results();
    assert!(matches!(
        client.observe_query(conversation("c1"), observer),
        Err(tandem_core::Error::Closed)
    ));
}
