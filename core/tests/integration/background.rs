//! A host with one thread drives the client's background work itself.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tandem_core::background::HostDriven;
use tandem_core::{Client, ClientConfig, DocKey, Error, LocalDocument, Query, QueryObserver};

#[derive(Default)]
struct Results(Mutex<Vec<usize>>);

impl QueryObserver for Results {
    fn on_result(&self, documents: Vec<LocalDocument>) {
        self.0.lock().unwrap().push(documents.len());
    }
    fn on_error(&self, error: Error) {
        panic!("{error}");
    }
}

#[test]
fn observers_are_called_on_the_hosts_turn_and_only_then() {
    let dir = tempfile::tempdir().unwrap();
    let turns_asked = Arc::new(AtomicUsize::new(0));
    let runner = {
        let turns_asked = Arc::clone(&turns_asked);
        Arc::new(HostDriven::new(move || {
            turns_asked.fetch_add(1, Ordering::SeqCst);
        }))
    };
    let mut config = ClientConfig::new(dir.path().to_str().unwrap(), "alice", "phone");
    config.background = runner.clone();
    let client = Client::open(config).unwrap();

    let results = Arc::new(Results::default());
    let _subscription = client
        .observe_query(Query::new("tasks"), results.clone())
        .unwrap();
    assert!(
        turns_asked.load(Ordering::SeqCst) >= 1,
        "the host was asked for a turn"
    );
    assert!(
        results.0.lock().unwrap().is_empty(),
        "nothing runs before the host's turn"
    );
    runner.run_pending();
    assert_eq!(
        *results.0.lock().unwrap(),
        vec![0],
        "the first result, on the turn"
    );

    client
        .put(DocKey::personal("tasks", "t1"), r#"{"title": "milk"}"#)
        .unwrap();
    assert_eq!(
        *results.0.lock().unwrap(),
        vec![0],
        "not before the next turn"
    );
    runner.run_pending();
    assert_eq!(*results.0.lock().unwrap(), vec![0, 1]);
    client.close();
    assert_eq!(runner.run_pending(), 0, "a closed client leaves no work");
}
