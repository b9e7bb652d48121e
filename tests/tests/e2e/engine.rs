//! The client sync engine against a real server: devices with real SQLite
//! databases, over real sockets (some through a proxy that cuts and delays
//! them).

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tandem_core::{Conflict, ConflictHandler, DocKey, Resolution, SyncOutcome};
use tandem_e2e::{
    Device, Proxy, TestServer, TestServerOptions, caught_up, converged, eventually, server_docs,
};

fn key(collection: &str, id: &str) -> DocKey {
    DocKey::personal(collection, id)
}

/// Settles every device twice (once to push, once more to receive what
/// the others pushed after it), then waits for the others' last changes,
/// which may still be on their way when a device has settled.
async fn settle_all(devices: &[&Device]) {
    for _ in 0..2 {
        for d in devices {
            d.settle().await;
        }
    }
    caught_up(devices).await;
}

/// Every device comes to hold exactly what the server holds (once every
/// writer has settled).
async fn assert_converged(url: &str, user: &str, collection: &str, devices: &[&Device]) {
    converged(url, user, &format!("personal:{user}"), collection, devices).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_device_reaches_another() {
    let server = TestServer::dev().await;
    let url = server.http_url();
    let phone = Device::online(&url, "alice", "phone").await;
    let laptop = Device::online(&url, "alice", "laptop").await;
    phone
        .client
        .put(key("tasks", "t1"), r#"{"title":"milk"}"#)
        .unwrap();
    phone.settle().await;
    laptop.settle().await;
    // The laptop may have settled before the phone's change reached it:
    // it arrives live.
    eventually("the laptop to receive the phone's write", || {
        laptop
            .docs(None, "tasks")
            .get("t1")
            .is_some_and(|(fields, _)| *fields == json!({"title": "milk"}))
    })
    .await;
    assert_converged(&url, "alice", "tasks", &[&phone, &laptop]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_edits_on_three_devices_converge_to_the_server_state() {
    let server = TestServer::dev().await;
    let url = server.http_url();
    let devices = [
        Device::offline("alice", "phone"),
        Device::offline("alice", "tablet"),
        Device::offline("alice", "laptop"),
    ];
    // Each device, offline, creates its own documents, edits a shared one
    // (different fields), and deletes one of its own.
    for (n, d) in devices.iter().enumerate() {
        for i in 0..20 {
            d.client
                .put(
                    key("tasks", &format!("d{n}-{i}")),
                    &format!(r#"{{"n":{i}}}"#),
                )
                .unwrap();
        }
        d.client
            .patch(key("tasks", "shared"), &format!(r#"{{"field{n}": {n}}}"#))
            .unwrap();
        d.client.delete(key("tasks", &format!("d{n}-0"))).unwrap();
    }
    for d in &devices {
        d.start_sync(&url).await;
    }
    let refs: Vec<&Device> = devices.iter().collect();
    settle_all(&refs).await;
    assert_converged(&url, "alice", "tasks", &refs).await;
    let docs = devices[0].docs(None, "tasks");
    assert_eq!(docs.len(), 3 * 19 + 1);
    assert_eq!(
        docs["shared"].0,
        json!({"field0": 0, "field1": 1, "field2": 2}),
        "field-level merge keeps every device's edit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_edits_of_one_field_pick_the_same_winner_everywhere() {
    let server = TestServer::dev().await;
    let url = server.http_url();
    let a = Device::online(&url, "alice", "a").await;
    let b = Device::online(&url, "alice", "b").await;
    a.client
        .put(key("tasks", "t"), r#"{"title":"start"}"#)
        .unwrap();
    settle_all(&[&a, &b]).await;
    a.client.set_network_available(false);
    b.client.set_network_available(false);
    a.client
        .patch(key("tasks", "t"), r#"{"title":"from a"}"#)
        .unwrap();
    b.client
        .patch(key("tasks", "t"), r#"{"title":"from b"}"#)
        .unwrap();
    // b wrote last (its clock is later): b wins, whoever syncs first.
    b.client.set_network_available(true);
    b.settle().await;
    a.client.set_network_available(true);
    settle_all(&[&a, &b]).await;
    assert_converged(&url, "alice", "tasks", &[&a, &b]).await;
    assert_eq!(a.docs(None, "tasks")["t"].0, json!({"title": "from b"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_only_ids_are_deduplicated() {
    let server = TestServer::start(
        TestServerOptions::dev()
            .schema(r#"{"collections": {"messages": {"policy": "append_only"}}}"#),
    )
    .await;
    let url = server.http_url();
    let a = Device::offline("alice", "a");
    let b = Device::offline("alice", "b");
    a.client
        .put(key("messages", "m1"), r#"{"text":"hi from a"}"#)
        .unwrap();
    b.client
        .put(key("messages", "m1"), r#"{"text":"hi from b"}"#)
        .unwrap();
    a.start_sync(&url).await;
    a.settle().await;
    b.start_sync(&url).await;
    settle_all(&[&a, &b]).await;
    assert_converged(&url, "alice", "messages", &[&a, &b]).await;
    let docs = b.docs(None, "messages");
    assert_eq!(docs.len(), 1);
    assert_eq!(
        docs["m1"].0,
        json!({"text": "hi from a"}),
        "the first create stands"
    );
    assert!(
        b.client.failed_mutations().unwrap().is_empty(),
        "a duplicate is not a failure"
    );
}

struct Recorder(Mutex<Vec<Conflict>>);

impl ConflictHandler for Recorder {
    fn resolve(&self, conflict: Conflict) -> Resolution {
        self.0.lock().unwrap().push(conflict);
        Resolution::KeepRemote
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_wins_conflict_reaches_the_handler_and_the_log() {
    let server = TestServer::start(
        TestServerOptions::dev()
            .schema(r#"{"collections": {"contacts": {"policy": "server_wins"}}}"#),
    )
    .await;
    let url = server.http_url();
    let a = Device::online(&url, "alice", "a").await;
    let b = Device::online(&url, "alice", "b").await;
    let handler = Arc::new(Recorder(Mutex::new(Vec::new())));
    b.client.set_conflict_handler(Some(handler.clone()));
    a.client
        .put(key("contacts", "c1"), r#"{"name":"Ann"}"#)
        .unwrap();
    settle_all(&[&a, &b]).await;
    b.client.set_network_available(false);
    a.client
        .patch(key("contacts", "c1"), r#"{"name":"Ann A"}"#)
        .unwrap();
    a.settle().await;
    b.client
        .patch(key("contacts", "c1"), r#"{"name":"Ann B"}"#)
        .unwrap();
    b.client.set_network_available(true);
    settle_all(&[&a, &b]).await;
    let seen = handler.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].policy, "server_wins");
    assert_eq!(seen[0].local_json.as_deref(), Some(r#"{"name":"Ann B"}"#));
    assert_eq!(seen[0].remote_json.as_deref(), Some(r#"{"name":"Ann A"}"#));
    assert_converged(&url, "alice", "contacts", &[&a, &b]).await;
    assert_eq!(b.docs(None, "contacts")["c1"].0, json!({"name": "Ann A"}));
    let log = b.client.conflicts(10).unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].winner, "remote");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_restarting_mid_sync_is_survived() {
    let mut server = TestServer::dev().await;
    let proxy = Proxy::start(server.addr()).await;
    let url = proxy.http_url();
    let a = Device::offline("alice", "a");
    for i in 0..2000 {
        a.client
            .put(
                key("tasks", &format!("t{i:04}")),
                &format!(r#"{{"n":{i}}}"#),
            )
            .unwrap();
    }
    a.start_sync(&url).await;
    // Once the server has applied some, restart it on the same database.
    let metrics = server.metrics();
    eventually("a first batch applied", || metrics.mutations_applied() > 0).await;
    server.restart().await;
    proxy.set_upstream(server.addr());
    proxy.cut();
    let outcome = a.client.sync_once(tandem_e2e::PATIENCE).await.unwrap();
    assert_eq!(outcome, SyncOutcome::CaughtUp);
    let b = Device::online(&url, "alice", "b").await;
    b.settle().await;
    let docs = server_docs(&url, "alice", "personal:alice", "tasks").await;
    assert_eq!(docs.len(), 2000);
    assert_eq!(a.docs(None, "tasks"), docs);
    assert_eq!(b.docs(None, "tasks"), docs);
    assert_eq!(
        a.client.status().unwrap().cursors["personal:alice"],
        2000,
        "one revision per mutation: nothing applied twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_and_delayed_connections_lose_nothing_and_duplicate_nothing() {
    let server = TestServer::dev().await;
    let proxy = Proxy::start(server.addr()).await;
    let url = proxy.http_url();
    let writer = Device::online(&url, "alice", "writer").await;
    let reader = Device::online(&url, "alice", "reader").await;
    proxy.set_delay(Duration::from_millis(2));
    for round in 0..5 {
        for i in 0..100 {
            let id = format!("r{round}-{i:03}");
            writer
                .client
                .put(
                    key("tasks", &id),
                    &format!(r#"{{"round":{round},"i":{i}}}"#),
                )
                .unwrap();
            if i % 25 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        // Cut everything while batches and changes are on the wire.
        tokio::time::sleep(Duration::from_millis(10)).await;
        proxy.cut();
    }
    proxy.set_delay(Duration::ZERO);
    settle_all(&[&writer, &reader]).await;
    let docs = server_docs(&url, "alice", "personal:alice", "tasks").await;
    assert_eq!(docs.len(), 500, "nothing lost");
    assert_eq!(writer.docs(None, "tasks"), docs);
    assert_eq!(reader.docs(None, "tasks"), docs);
    assert_eq!(
        writer.client.status().unwrap().cursors["personal:alice"],
        500,
        "one revision per mutation: nothing applied twice"
    );
    assert!(
        proxy.accepted() > 5,
        "the devices reconnected after the cuts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_access_token_is_refreshed_without_losing_or_reordering_the_outbox() {
    let server = TestServer::start(TestServerOptions::dev().with(|c| {
        c.credentials.access = Duration::from_secs(2);
    }))
    .await;
    let url = server.http_url();
    let a = Device::online(&url, "alice", "a").await;
    let b = Device::online(&url, "alice", "b").await;
    a.settle().await;
    // Writes spread over several access-token lifetimes, the connection cut
    // in between so each reconnect needs a current token.
    let proxy_free_rounds = 3;
    for round in 0..proxy_free_rounds {
        a.client.set_network_available(false);
        for i in 0..10 {
            a.client
                .patch(
                    key("tasks", "counter"),
                    &format!(r#"{{"value":{}}}"#, round * 10 + i),
                )
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(2500)).await;
        a.client.set_network_available(true);
        a.settle().await;
    }
    settle_all(&[&a, &b]).await;
    // The last write is the value everywhere: the outbox went in order.
    assert_eq!(b.docs(None, "tasks")["counter"].0, json!({"value": 29}));
    assert_converged(&url, "alice", "tasks", &[&a, &b]).await;
    assert!(a.client.status().unwrap().last_error.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_budget_evicts_unused_documents_which_are_fetched_again() {
    let server = TestServer::dev().await;
    let url = server.http_url();
    let writer = Device::online(&url, "alice", "writer").await;
    let blob = "x".repeat(2_000);
    for i in 0..300 {
        writer
            .client
            .put(
                key("photos", &format!("p{i:04}")),
                &format!(r#"{{"i":{i},"blob":"{blob}"}}"#),
            )
            .unwrap();
    }
    for i in 0..5 {
        writer
            .client
            .put(key("tasks", &format!("t{i}")), r#"{"title":"keep me"}"#)
            .unwrap();
    }
    writer.settle().await;
    let reader = Device::offline_with("alice", "reader", |c| {
        c.cache_limit_bytes = Some(512 * 1024);
        c.evictable_collections = vec!["photos".into()];
    });
    reader.start_sync(&url).await;
    reader.settle().await;

    let photos = reader.docs(None, "photos");
    assert!(
        photos.len() < 300,
        "some photos were evicted: {}",
        photos.len()
    );
    assert!(photos.len() > 1, "not everything: {}", photos.len());
    assert_eq!(
        reader.docs(None, "tasks").len(),
        5,
        "other collections stay"
    );
    // A pending local edit keeps its document on the device, however
    // long ago it was used.
    let kept = photos.keys().next().unwrap().clone();
    reader.client.set_network_available(false);
    reader
        .client
        .patch(key("photos", &kept), r#"{"starred":true}"#)
        .unwrap();
    let filler = "y".repeat(2_000);
    for i in 0..40 {
        reader
            .client
            .put(
                key("tasks", &format!("filler{i}")),
                &format!(r#"{{"f":"{filler}"}}"#),
            )
            .unwrap();
    }
    assert!(reader.client.enforce_cache_limit().unwrap() > 0);
    assert!(reader.docs(None, "photos").len() < photos.len());
    assert!(
        reader
            .client
            .get(key("photos", &kept))
            .unwrap()
            .unwrap()
            .pending
    );
    reader.client.set_network_available(true);
    reader.settle().await;
    let photos = reader.docs(None, "photos");
    let gone = (0..300)
        .map(|i| format!("p{i:04}"))
        .find(|id| !photos.contains_key(id))
        .unwrap();
    assert!(matches!(
        reader.client.get(key("photos", &gone)),
        Err(tandem_core::Error::NotLocal { .. })
    ));
    // Fetched again from the server, whole.
    let fetched = reader
        .client
        .fetch(key("photos", &gone))
        .await
        .unwrap()
        .unwrap();
    let fields: serde_json::Value = serde_json::from_str(&fetched.fields_json).unwrap();
    assert_eq!(fields["blob"].as_str().unwrap().len(), 2_000);
    assert!(reader.client.get(key("photos", &gone)).unwrap().is_some());

    // A change to an evicted document brings it back, and the checksum
    // still agrees (no re-sync).
    let other = (0..300)
        .rev()
        .map(|i| format!("p{i:04}"))
        .find(|id| reader.client.get(key("photos", id)).is_err())
        .unwrap();
    writer
        .client
        .patch(key("photos", &other), r#"{"edited":true}"#)
        .unwrap();
    writer.settle().await;
    reader.settle().await;
    // The reader may have settled before the writer's change reached it.
    eventually("the edited photo to come back to the reader", || {
        reader
            .client
            .get(key("photos", &other))
            .ok()
            .flatten()
            .is_some_and(|back| back.fields_json.contains("\"edited\":true"))
    })
    .await;
    assert_eq!(reader.client.status().unwrap().checksum_mismatches, 0);

    // Offline, an evicted document is plainly not local.
    reader.client.stop_sync().await;
    let third = (0..300)
        .map(|i| format!("p{i:04}"))
        .find(|id| reader.client.get(key("photos", id)).is_err())
        .unwrap();
    assert!(matches!(
        reader.client.fetch(key("photos", &third)).await,
        Err(tandem_core::Error::NotLocal { .. })
    ));
}

struct StatusLog(
    Mutex<Vec<tandem_core::SyncStatus>>,
    Mutex<Vec<tandem_core::MutationFailure>>,
);

impl tandem_core::StatusObserver for StatusLog {
    fn on_status(&self, status: tandem_core::SyncStatus) {
        self.0.lock().unwrap().push(status);
    }
    fn on_mutation_failed(&self, failure: tandem_core::MutationFailure) {
        self.1.lock().unwrap().push(failure);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_write_fails_is_reported_rolled_back_and_can_be_discarded_or_retried() {
    let server = TestServer::start(TestServerOptions::dev().schema(
        r#"{"collections": {"tasks": {"fields": {"title": {"type": "string", "required": true}}}}}"#,
    ))
    .await;
    let url = server.http_url();
    let device = Device::offline("alice", "phone");
    let log = Arc::new(StatusLog(Mutex::new(Vec::new()), Mutex::new(Vec::new())));
    let _subscription = device.client.observe_status(log.clone()).unwrap();
    device
        .client
        .put(key("tasks", "ok"), r#"{"title":"fine"}"#)
        .unwrap();
    device
        .client
        .put(key("tasks", "bad"), r#"{"note":"no title"}"#)
        .unwrap();
    device.start_sync(&url).await;
    let outcome = device.client.sync_once(tandem_e2e::PATIENCE).await.unwrap();
    assert_eq!(
        outcome,
        SyncOutcome::PendingLeft {
            pending: 0,
            failed: 1
        }
    );
    // Reported, rolled back from the view, listed; the other write went.
    let failures = log.1.lock().unwrap().clone();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].doc_id, "bad");
    assert!(
        failures[0].reason.starts_with("validation_failed"),
        "{}",
        failures[0].reason
    );
    assert!(device.client.get(key("tasks", "bad")).unwrap().is_none());
    assert!(
        !device
            .client
            .get(key("tasks", "ok"))
            .unwrap()
            .unwrap()
            .pending
    );
    let failed = device.client.failed_mutations().unwrap();
    assert_eq!(failed.len(), 1);
    // Status observers saw the device online and the failure counted.
    eventually("a status with the failure", || {
        log.0
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.connection == tandem_core::ConnectionState::Online && s.failed == 1)
    })
    .await;
    // Retried, it fails again (the server still refuses it); discarded, it
    // is gone and the device is caught up.
    assert!(
        device
            .client
            .retry_mutation(&failed[0].mutation_id)
            .unwrap()
    );
    let outcome = device.client.sync_once(tandem_e2e::PATIENCE).await.unwrap();
    assert_eq!(
        outcome,
        SyncOutcome::PendingLeft {
            pending: 0,
            failed: 1
        }
    );
    assert!(
        device
            .client
            .discard_mutation(&failed[0].mutation_id)
            .unwrap()
    );
    let outcome = device.client.sync_once(tandem_e2e::PATIENCE).await.unwrap();
    assert_eq!(outcome, SyncOutcome::CaughtUp);
    assert!(device.client.failed_mutations().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_added_to_a_space_receives_it_live() {
    let server = TestServer::dev().await;
    let url = server.http_url();
    let alice = Device::online(&url, "alice", "phone").await;
    let bob = Device::online(&url, "bob", "phone").await;
    alice.settle().await;
    bob.settle().await;
    alice.client.create_space("team").await.unwrap();
    alice
        .client
        .put(
            DocKey::in_space("team", "tasks", "t1"),
            r#"{"title":"shared"}"#,
        )
        .unwrap();
    alice.settle().await;
    alice.client.add_member("team", "bob").await.unwrap();
    // No reconnect: the `spaces` message makes bob's engine subscribe.
    eventually("bob receives the space", || {
        bob.client
            .get(DocKey::in_space("team", "tasks", "t1"))
            .ok()
            .flatten()
            .is_some()
    })
    .await;
    let spaces: Vec<String> = bob
        .client
        .spaces()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.space)
        .collect();
    assert_eq!(spaces, vec!["personal:bob".to_owned(), "team".to_owned()]);
    // Removed, the space's documents leave bob's device.
    alice.client.remove_member("team", "bob").await.unwrap();
    eventually("the space leaves bob's device", || {
        bob.client
            .get(DocKey::in_space("team", "tasks", "t1"))
            .ok()
            .flatten()
            .is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checksum_mismatch_refetches_the_space_and_repairs_the_copy() {
    let server = TestServer::dev().await;
    let url = server.http_url();
    let writer = Device::online(&url, "alice", "writer").await;
    let reader = Device::online(&url, "alice", "reader").await;
    for i in 0..20 {
        writer
            .client
            .put(
                key("tasks", &format!("t{i:02}")),
                &format!(r#"{{"n":{i}}}"#),
            )
            .unwrap();
    }
    settle_all(&[&writer, &reader]).await;
    // Damage the reader's copy behind its back: a document lost, and the
    // checksum it keeps no longer what it holds.
    {
        let db = rusqlite::Connection::open(reader.dir().join(tandem_core::DATABASE_FILE)).unwrap();
        db.busy_timeout(Duration::from_secs(5)).unwrap();
        db.execute("DELETE FROM documents WHERE id = 't05'", [])
            .unwrap();
        db.execute("UPDATE cursors SET checksum = '0000000000000001'", [])
            .unwrap();
    }
    assert!(!reader.docs(None, "tasks").contains_key("t05"));
    // The next live change carries the server's checksum: it differs.
    writer
        .client
        .put(key("tasks", "t20"), r#"{"n":20}"#)
        .unwrap();
    writer.settle().await;
    eventually("the re-sync", || {
        let status = reader.client.status().unwrap();
        status.checksum_mismatches >= 1 && reader.docs(None, "tasks").len() == 21
    })
    .await;
    reader.settle().await;
    assert_converged(&url, "alice", "tasks", &[&writer, &reader]).await;
    assert_eq!(reader.client.status().unwrap().checksum_mismatches, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_observers_hear_a_local_write_change_the_pending_count_while_offline() {
    let server = TestServer::dev().await;
    let device = Device::online(&server.http_url(), "alice", "phone").await;
    device.settle().await;
    device.client.set_network_available(false);
    let log = Arc::new(StatusLog(Mutex::new(Vec::new()), Mutex::new(Vec::new())));
    let _subscription = device.client.observe_status(log.clone()).unwrap();
    for (i, id) in ["a", "b"].into_iter().enumerate() {
        device.client.put(key("tasks", id), "{}").unwrap();
        let want = i as u64 + 1;
        eventually("a status with the new pending count", || {
            log.0
                .lock()
                .unwrap()
                .last()
                .is_some_and(|s| s.pending == want)
        })
        .await;
    }
}
