//! Crashes at the three points where a write can be lost or applied twice
//! on its way from the outbox to the server and back, injected with named
//! fail points (built only with the `failpoints` feature):
//!
//! - `core.outbox.before_send`: the write is committed locally, its push
//!   never leaves the device;
//! - `server.push.after_apply_before_ack`: the server committed the push,
//!   the connection drops before the ack;
//! - `core.outbox.after_ack_before_delete`: the ack arrived, the device
//!   goes down before recording it;
//! - `core.outbox.after_ack_recorded`: the device recorded the ack and dies
//!   (a panic in its sync task) before the change that confirms the write
//!   arrives.
//!
//! Each test writes before, during and after the failure, restarts the side
//! that crashed on its own database, and then checks that every write is on
//! the server exactly once (one recorded `applied` outcome per mutation id,
//! one revision each, the space's head equal to the number of writes), that
//! each document holds its last write, and that the device's outbox is
//! empty with its view equal to the server's.
//!
//! One more test holds the device at `core.outbox.after_ack_recorded` to
//! write in a version-checked collection between an ack and its change,
//! and one crashes the device at `core.conflict.before_resolution`, in the
//! middle of settling a `manual` conflict the user decided in favour of
//! their own version.
//!
//! The fail point registry is global to the process: each test holds a
//! [`fail::FailScenario`] for its whole run, which also serializes them.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use serde_json::{Value, json};
use tandem_core::{ConnectionState, DocKey};
use tandem_e2e::{
    Device, Proxy, TestServer, TestServerOptions, caught_up, converged, eventually, server_docs,
};

const USER: &str = "alice";
const SPACE: &str = "personal:alice";
const COLLECTION: &str = "tasks";

/// A server behind a proxy (so it can restart on a new port unseen by the
/// device, and so the device's reconnects can be counted), and one device.
struct Scene {
    server: TestServer,
    proxy: Proxy,
    device: Device,
    /// The device's writes in order, by mutation id.
    written: Vec<String>,
    /// What each document must hold once everything is through.
    expected: BTreeMap<String, Value>,
}

impl Scene {
    /// A server, and a device that wrote a first round and synced it.
    async fn start() -> Scene {
        let server = TestServer::dev().await;
        let proxy = Proxy::start(server.addr()).await;
        let device = Device::offline(USER, "phone");
        let mut scene = Scene {
            server,
            proxy,
            device,
            written: Vec::new(),
            expected: BTreeMap::new(),
        };
        scene.write_round(0).await;
        scene.device.start_sync(&scene.proxy.http_url()).await;
        scene.device.settle().await;
        scene
    }

    /// One round of writes, each of which changes its document: puts of
    /// three documents, a patch of the first, and in odd rounds a delete of
    /// the last (which the next round's put brings back). The device is
    /// offline while it writes, so that each write's entry is still in the
    /// outbox when its id is read back (online, a quick ack and change could
    /// take it out first); the round goes out when the device is back.
    async fn write_round(&mut self, round: u64) {
        let client = Arc::clone(&self.device.client);
        client.set_network_available(false);
        eventually("the device to go offline", || {
            client.status().unwrap().connection == ConnectionState::Offline
        })
        .await;
        for (i, id) in ["t0", "t1", "t2"].into_iter().enumerate() {
            let fields = json!({ "round": round, "doc": i });
            self.write(id, |client, key| {
                client.put(key, &fields.to_string()).unwrap();
            });
            self.expected.insert(id.to_owned(), fields);
        }
        self.write("t0", |client, key| {
            client
                .patch(key, &json!({ "patched": round }).to_string())
                .unwrap();
        });
        self.expected.get_mut("t0").unwrap()["patched"] = json!(round);
        if round % 2 == 1 {
            self.write("t2", |client, key| {
                client.delete(key).unwrap();
            });
            self.expected.remove("t2");
        }
        client.set_network_available(true);
    }

    /// Makes one write and records its mutation id, read from the outbox
    /// right after the write committed it.
    fn write(&mut self, id: &str, make: impl FnOnce(&tandem_core::Client, DocKey)) {
        let before: BTreeSet<String> = self.outbox_ids().into_iter().collect();
        make(&self.device.client, DocKey::personal(COLLECTION, id));
        let new: Vec<String> = self
            .outbox_ids()
            .into_iter()
            .filter(|m| !before.contains(m))
            .collect();
        assert_eq!(new.len(), 1, "one outbox entry per write");
        self.written.extend(new);
    }

    fn outbox_ids(&self) -> Vec<String> {
        self.device
            .client
            .pending_mutations()
            .unwrap()
            .into_iter()
            .map(|m| m.mutation_id)
            .collect()
    }

    /// The app is killed and opened again on the same database (not
    /// syncing yet).
    fn restart_device(self) -> Scene {
        Scene {
            device: self.device.reopen(),
            ..self
        }
    }

    /// The app is killed and opened again on the same database with the
    /// fail point `point` gone; it syncs, writes one more round and
    /// settles.
    async fn restart_app_without(self, point: &str) -> Scene {
        let mut scene = self.restart_device();
        fail::remove(point);
        scene.device.start_sync(&scene.proxy.http_url()).await;
        scene.write_round(2).await;
        scene.device.settle().await;
        scene
    }

    /// Waits until the device has opened `n` more connections through the
    /// proxy than `since`: each one after a connection the fail point ended.
    async fn reconnects(&self, since: u64, n: u64) {
        eventually("the device to reconnect after the fail point", || {
            self.proxy.accepted() >= since + n
        })
        .await;
    }

    /// Everything went through exactly once and the device agrees with the
    /// server.
    async fn assert_exactly_once(&self) {
        let recorded = recorded_outcomes(self.server.database());
        let mut revs = Vec::new();
        for id in &self.written {
            let outcome = recorded
                .get(&uuid_hex(id))
                .unwrap_or_else(|| panic!("mutation {id} is not on the server"));
            assert_eq!(outcome["status"], "applied", "mutation {id}: {outcome}");
            revs.push(outcome["rev"].as_u64().unwrap());
        }
        assert_eq!(
            recorded.len(),
            self.written.len(),
            "the server recorded mutations the device did not write"
        );
        // Every write changed its document, so each took a revision of its
        // own: the revisions are 1..=n, in the order of the writes.
        let n = self.written.len() as u64;
        assert_eq!(revs, (1..=n).collect::<Vec<_>>(), "one revision per write");
        assert_eq!(space_head(self.server.database()), n, "the space's head");
        assert_eq!(answered(&self.server, "conflict"), 0, "no conflicts");
        assert_eq!(answered(&self.server, "rejected"), 0, "no refusals");

        assert!(
            self.device.client.pending_mutations().unwrap().is_empty(),
            "the outbox drained"
        );
        let on_server = server_docs(&self.proxy.http_url(), USER, SPACE, COLLECTION).await;
        let fields: BTreeMap<String, Value> = on_server
            .iter()
            .map(|(id, (fields, _))| (id.clone(), fields.clone()))
            .collect();
        assert_eq!(fields, self.expected, "each document holds its last write");
        assert_eq!(
            self.device.docs(None, COLLECTION),
            on_server,
            "the device's view is the server's"
        );
    }
}

/// The server's recorded outcomes, by mutation id (hex of its 16 bytes).
fn recorded_outcomes(database: &Path) -> BTreeMap<String, Value> {
    let conn =
        rusqlite::Connection::open_with_flags(database, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn
        .prepare("SELECT hex(mutation_id), outcome FROM mutations")
        .unwrap();
    stmt.query_map([], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
    })
    .unwrap()
    .map(|row| {
        let (id, outcome) = row.unwrap();
        (id, serde_json::from_str(&outcome).unwrap())
    })
    .collect()
}

/// How many mutations the running server instance answered with
/// `outcome` (its metrics).
fn answered(server: &TestServer, outcome: &str) -> u64 {
    let line = format!("tandem_mutations_total{{outcome=\"{outcome}\"}} ");
    server
        .metrics()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(line.as_str()))
        .unwrap_or_else(|| panic!("no {outcome} counter"))
        .parse()
        .unwrap()
}

/// The personal space's head revision on the server.
fn space_head(database: &Path) -> u64 {
    let conn =
        rusqlite::Connection::open_with_flags(database, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let head: i64 = conn
        .query_row("SELECT head FROM spaces WHERE space = ?1", [SPACE], |row| {
            row.get(0)
        })
        .unwrap();
    u64::try_from(head).unwrap()
}

/// A mutation id as the server's `hex(mutation_id)` prints it.
fn uuid_hex(id: &str) -> String {
    id.replace('-', "").to_uppercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_local_commit_and_the_send_loses_nothing() {
    let scenario = fail::FailScenario::setup();
    let mut scene = Scene::start().await;
    let round0 = scene.written.len();

    // Every push dies on the device before it reaches the socket.
    fail::cfg("core.outbox.before_send", "return").unwrap();
    scene.write_round(1).await;
    let since = scene.proxy.accepted();
    scene.reconnects(since, 3).await;
    assert_eq!(
        recorded_outcomes(scene.server.database()).len(),
        round0,
        "no push got out"
    );
    assert_eq!(
        scene.outbox_ids(),
        scene.written[round0..].to_vec(),
        "every unsent write is still in the outbox"
    );

    let scene = scene.restart_app_without("core.outbox.before_send").await;

    scene.assert_exactly_once().await;
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_crash_between_the_commit_and_the_ack_duplicates_nothing() {
    let scenario = fail::FailScenario::setup();
    let mut scene = Scene::start().await;

    // The server commits every push and drops the connection before the
    // ack, again and again.
    fail::cfg("server.push.after_apply_before_ack", "return").unwrap();
    scene.write_round(1).await;
    let since = scene.proxy.accepted();
    let database = scene.server.database().to_owned();
    let written = scene.written.clone();
    eventually("the server to commit the writes", || {
        let recorded = recorded_outcomes(&database);
        written
            .iter()
            .all(|id| recorded.contains_key(&uuid_hex(id)))
    })
    .await;
    scene.reconnects(since, 3).await;
    assert!(
        !scene.outbox_ids().is_empty(),
        "the device still waits for an ack"
    );

    // The server restarts on the same database, the fail point gone; the
    // device sends what it holds again and is answered `duplicate`. It is
    // stopped before the fail point goes: a device reconnecting in between
    // would otherwise be answered by the old server, whose count is gone
    // with it.
    scene.server.stop().await;
    fail::remove("server.push.after_apply_before_ack");
    scene.server.restart().await;
    scene.proxy.set_upstream(scene.server.addr());
    scene.write_round(2).await;
    scene.device.settle().await;
    assert!(
        answered(&scene.server, "duplicate") >= 1,
        "a write the server had committed came again and was answered from its record"
    );

    scene.assert_exactly_once().await;
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_ack_and_the_outbox_delete_duplicates_nothing() {
    let scenario = fail::FailScenario::setup();
    let mut scene = Scene::start().await;
    let round0 = scene.written.len();

    // Every ack is lost on the device before it is recorded.
    fail::cfg("core.outbox.after_ack_before_delete", "return").unwrap();
    scene.write_round(1).await;
    let since = scene.proxy.accepted();
    let database = scene.server.database().to_owned();
    let written = scene.written.clone();
    eventually("the server to apply the writes", || {
        let recorded = recorded_outcomes(&database);
        written
            .iter()
            .all(|id| recorded.contains_key(&uuid_hex(id)))
    })
    .await;
    scene.reconnects(since, 3).await;
    // The first write of t0 is superseded by the patch, so no change
    // carries it: only an ack can take it out of the outbox.
    assert!(
        scene.outbox_ids().contains(&scene.written[round0]),
        "an acknowledged write is still in the outbox"
    );

    let scene = scene
        .restart_app_without("core.outbox.after_ack_before_delete")
        .await;
    assert!(
        answered(&scene.server, "duplicate") >= 1,
        "a write whose ack was lost came again and was answered from its record"
    );

    scene.assert_exactly_once().await;
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_recorded_ack_and_the_confirming_change_duplicates_nothing() {
    let scenario = fail::FailScenario::setup();
    let mut scene = Scene::start().await;
    let round0 = scene.written.len();

    // The first ack recorded kills the device's sync task.
    let crashed = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&crashed);
    fail::cfg_callback("core.outbox.after_ack_recorded", move || {
        flag.store(true, Ordering::SeqCst);
        panic!("the app dies after recording an ack");
    })
    .unwrap();
    scene.write_round(1).await;
    eventually("the crash after an ack", || crashed.load(Ordering::SeqCst)).await;
    // The round went out in one batch, which the server applied. Its
    // entries are acknowledged and wait for their changes, unless the
    // catch-up of the same connection brought those first (the server
    // committed the batch while reading the page).
    let on_server = recorded_outcomes(scene.server.database());
    assert!(
        scene.written[round0..]
            .iter()
            .all(|id| on_server.contains_key(&uuid_hex(id))),
        "the round was applied before the crash"
    );

    let scene = scene
        .restart_app_without("core.outbox.after_ack_recorded")
        .await;

    scene.assert_exactly_once().await;
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_between_an_ack_and_its_change_is_not_in_conflict_with_its_own_device() {
    let scenario = fail::FailScenario::setup();
    let server = TestServer::start(
        TestServerOptions::dev().schema(r#"{"collections": {"notes": {"policy": "server_wins"}}}"#),
    )
    .await;
    let url = server.http_url();
    let device = Device::online(&url, USER, "phone").await;
    device.settle().await;
    let note = || DocKey::personal("notes", "n1");

    // The sync task stops right after recording the first write's ack,
    // before the change carrying it arrives, until released.
    let held = Arc::new(AtomicBool::new(false));
    let (release, released) = mpsc::channel::<()>();
    let released = Mutex::new(released);
    let flag = Arc::clone(&held);
    fail::cfg_callback("core.outbox.after_ack_recorded", move || {
        flag.store(true, Ordering::SeqCst);
        // Returns when the sender is dropped (and at once ever after).
        let _ = released.lock().unwrap().recv();
    })
    .unwrap();
    device.client.put(note(), r#"{"v": 1}"#).unwrap();
    eventually("the ack of the first write", || held.load(Ordering::SeqCst)).await;

    // Written on top of the acknowledged write, whose change has not
    // arrived: the view still has no version.
    device.client.put(note(), r#"{"v": 2}"#).unwrap();
    drop(release);
    device.settle().await;
    fail::remove("core.outbox.after_ack_recorded");

    let on_server = server_docs(&url, USER, SPACE, "notes").await;
    assert_eq!(
        on_server["n1"].0,
        json!({"v": 2}),
        "the second write was applied, not refused as a conflict"
    );
    assert_eq!(device.docs(None, "notes"), on_server);
    assert!(
        device.client.conflicts(10).unwrap().is_empty(),
        "no conflict"
    );
    assert_eq!(answered(&server, "conflict"), 0);
    scenario.teardown();
}

/// Keeps the local side of every conflict.
struct KeepLocal;

impl tandem_core::ConflictHandler for KeepLocal {
    fn resolve(&self, _conflict: tandem_core::Conflict) -> tandem_core::Resolution {
        tandem_core::Resolution::KeepLocal
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_settling_a_conflict_keeps_the_users_version() {
    let scenario = fail::FailScenario::setup();
    let server = TestServer::start(
        TestServerOptions::dev().schema(r#"{"collections": {"notes": {"policy": "manual"}}}"#),
    )
    .await;
    let url = server.http_url();
    let note = || DocKey::personal("notes", "n1");
    let phone = Device::online(&url, USER, "phone").await;
    let tablet = Device::online(&url, USER, "tablet").await;
    phone.client.set_conflict_handler(Some(Arc::new(KeepLocal)));
    phone.client.put(note(), r#"{"v": "first"}"#).unwrap();
    phone.settle().await;
    tablet.settle().await;
    // The tablet edits on top of the phone's first version, which may
    // still be on its way to it.
    caught_up(&[&phone, &tablet]).await;

    // The phone edits offline while the tablet edits the same note: the
    // phone's write is in conflict when it goes out, and the user chose to
    // keep it.
    phone.client.set_network_available(false);
    phone.client.put(note(), r#"{"v": "mine"}"#).unwrap();
    tablet.client.put(note(), r#"{"v": "theirs"}"#).unwrap();
    tablet.settle().await;

    // The app dies in the middle of settling the conflict: after the
    // server's document and the discards, before the resolution is written.
    let crashed = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&crashed);
    fail::cfg_callback("core.conflict.before_resolution", move || {
        flag.store(true, Ordering::SeqCst);
        panic!("the app dies while settling a conflict");
    })
    .unwrap();
    phone.client.set_network_available(true);
    eventually("the crash in the conflict", || {
        crashed.load(Ordering::SeqCst)
    })
    .await;

    // Opened again: the user's version is still the view and still in the
    // outbox, and nothing was logged.
    let phone = phone.reopen();
    fail::remove("core.conflict.before_resolution");
    assert_eq!(phone.docs(None, "notes")["n1"].0, json!({"v": "mine"}));
    assert_eq!(
        phone.client.pending_mutations().unwrap().len(),
        1,
        "the write in conflict is still in the outbox"
    );
    assert!(
        phone.client.conflicts(10).unwrap().is_empty(),
        "nothing logged"
    );

    // It meets the conflict again and is settled once, in its favour.
    phone.client.set_conflict_handler(Some(Arc::new(KeepLocal)));
    phone.start_sync(&url).await;
    phone.settle().await;
    tablet.settle().await;
    // The tablet may have settled before the phone's last change reached it.
    let on_server = converged(&url, USER, SPACE, "notes", &[&phone, &tablet]).await;
    assert_eq!(
        on_server["n1"].0,
        json!({"v": "mine"}),
        "the user's version won"
    );
    let log = phone.client.conflicts(10).unwrap();
    assert_eq!(log.len(), 1, "settled once: {log:?}");
    assert_eq!(log[0].winner, "local");
    scenario.teardown();
}
