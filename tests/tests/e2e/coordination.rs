//! Device coordination end to end: roles, fencing, the duplicate guard,
//! revocation and push hints, with real devices (`tandem_core::Client` over
//! real sockets, some through a proxy that partitions them) and a real
//! server.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tandem_core::{DocKey, Error, GuardOutcome, RoleInfo, RoleObserver, SyncOutcome};
use tandem_e2e::{
    Device, Http, PATIENCE, Proxy, TestServer, TestServerOptions, WsClient, eventually, server_docs,
};
use tandem_protocol::{ErrorCode, ServerMessage};

const ROLE: &str = "auto-responder";

/// A role lease far longer than [`PATIENCE`], for tests where a holder
/// keeps its role while it is connected. With the default 1.5 s lease a
/// holder whose renewals (every 0.5 s) a loaded machine delays by a second
/// loses the role to the next candidate, and the epochs the test expects
/// move on. With this one, a change of holder the test sees within
/// `PATIENCE` was the claim, handoff, release or disconnection it made,
/// never a lease running out.
const STEADY_LEASE: Duration = Duration::from_secs(120);

/// The lease for the test in which a partitioned holder must lose its role
/// by the lease running out: short enough that it runs out well within
/// [`PATIENCE`], long enough that the device that takes over, renewing
/// every 0.5 s, keeps the role through a loaded machine's stalls.
const PARTITION_LEASE: Duration = Duration::from_secs(4);

/// A development server whose role leases last `lease`.
async fn server_with_lease(lease: Duration) -> TestServer {
    TestServer::start(TestServerOptions::dev().with(|c| c.coordination.role_lease = lease)).await
}

/// Records every role state an observer hears.
#[derive(Default)]
struct Heard(Mutex<Vec<RoleInfo>>);

impl RoleObserver for Heard {
    fn on_role(&self, role: RoleInfo) {
        self.0.lock().unwrap().push(role);
    }
}

impl Heard {
    fn last(&self) -> Option<RoleInfo> {
        self.0.lock().unwrap().last().cloned()
    }

    fn epochs(&self) -> Vec<u64> {
        self.0.lock().unwrap().iter().map(|r| r.epoch).collect()
    }
}

fn holder_name(info: &Option<RoleInfo>) -> Option<String> {
    info.as_ref().and_then(|r| r.holder_name.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_devices_racing_on_one_guard_get_exactly_one_first() {
    let server = TestServer::dev().await;
    let url = server.http_url();
    let mut devices = Vec::new();
    for i in 0..10 {
        let d = Device::online(&url, "alice", &format!("device-{i}")).await;
        d.settle().await;
        devices.push(d);
    }
    // The same answer, written differently: trimmed, whitespace collapsed,
    // composed to NFC, it is one content.
    let variants = ["On my way!", " On my  way! ", "On my\tway!\n"];
    let answers = futures::future::join_all(devices.iter().enumerate().map(|(i, d)| {
        let client = Arc::clone(&d.client);
        let content = variants[i % variants.len()];
        async move { client.guard("conversation:42", content, None).await }
    }))
    .await;
    let firsts = answers
        .iter()
        .filter(|a| matches!(a, Ok(GuardOutcome::First)))
        .count();
    let duplicates = answers
        .iter()
        .filter(|a| matches!(a, Ok(GuardOutcome::Duplicate)))
        .count();
    println!("guard race: {firsts} first, {duplicates} duplicate");
    assert_eq!((firsts, duplicates), (1, 9), "{answers:?}");
    // Another scope, or other content, is its own first.
    assert_eq!(
        devices[0]
            .client
            .guard("conversation:43", "On my way!", None)
            .await
            .unwrap(),
        GuardOutcome::First
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_holds_across_a_server_restart_inside_its_window() {
    let mut server = TestServer::dev().await;
    let proxy = Proxy::start(server.addr()).await;
    let phone = Device::online(&proxy.http_url(), "alice", "phone").await;
    phone.settle().await;
    let first = phone
        .client
        .guard("s", "hello", Some(60_000))
        .await
        .unwrap();
    assert_eq!(first, GuardOutcome::First);
    server.restart().await;
    proxy.set_upstream(server.addr());
    proxy.cut();
    // The device reconnects to the restarted server through the proxy.
    let deadline = Instant::now() + PATIENCE;
    let again = loop {
        match phone.client.guard("s", "hello", Some(60_000)).await {
            Ok(answer) => break answer,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "no answer after the restart: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(
        again,
        GuardOutcome::Duplicate,
        "the record survived the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_move_by_claim_handoff_and_release_and_every_observer_hears_it() {
    let server = server_with_lease(STEADY_LEASE).await;
    let url = server.http_url();
    let phone = Device::online(&url, "alice", "phone").await;
    let tablet = Device::online(&url, "alice", "tablet").await;
    let laptop = Device::online(&url, "alice", "laptop").await;
    for d in [&phone, &tablet, &laptop] {
        d.settle().await;
    }
    let watching = Arc::new(Heard::default());
    let _watch = laptop.client.observe_role(ROLE, watching.clone()).unwrap();

    let claimed = phone.client.claim_role(ROLE, 0).await.unwrap();
    assert!(claimed.is_self);
    assert_eq!(claimed.epoch, 1);
    let second = tablet.client.claim_role(ROLE, 0).await.unwrap();
    assert!(!second.is_self);
    assert_eq!(holder_name(&Some(second)), Some("phone".into()));
    let fence = phone.client.current_fence(ROLE).unwrap();
    assert_eq!(fence.epoch, 1);
    assert!(tablet.client.current_fence(ROLE).is_none());

    // A planned handoff.
    let started = Instant::now();
    let handed = phone
        .client
        .handoff_role(ROLE, &tablet.client.device_id())
        .await
        .unwrap();
    assert_eq!((handed.epoch, handed.is_self), (2, false));
    eventually("the tablet to hear it holds the role", || {
        tablet
            .client
            .role(ROLE)
            .is_some_and(|r| r.is_self && r.epoch == 2)
    })
    .await;
    println!("handoff: {:?} until the new holder knew", started.elapsed());

    // The phone's old epoch is refused: its fenced write fails.
    let key = DocKey::personal("answers", "late");
    phone
        .client
        .put_fenced(key.clone(), r#"{"text":"too late"}"#, fence.clone())
        .unwrap();
    phone.client.sync_now();
    eventually("the stale write to fail", || {
        phone.client.failed_mutations().unwrap().len() == 1
    })
    .await;
    let failed = &phone.client.failed_mutations().unwrap()[0];
    assert!(
        matches!(&failed.state, tandem_core::OutboxState::Failed { reason } if reason.contains("stale_epoch")),
        "{failed:?}"
    );
    // And so is a guard under it, recording nothing.
    let stale = phone
        .client
        .guard_fenced("s", "x", None, fence.clone())
        .await;
    assert!(matches!(stale, Err(Error::StaleEpoch { .. })), "{stale:?}");
    assert_eq!(
        tablet.client.guard("s", "x", None).await.unwrap(),
        GuardOutcome::First
    );

    // Release: back to the phone, still a candidate.
    let released = tablet.client.release_role(ROLE).await.unwrap();
    assert_eq!(holder_name(&Some(released.clone())), Some("phone".into()));
    assert_eq!(released.epoch, 3);
    eventually("the laptop to hear every change", || {
        watching.last().is_some_and(|r| r.epoch == 3)
    })
    .await;
    let epochs = watching.epochs();
    assert!(epochs.windows(2).all(|w| w[0] < w[1]), "{epochs:?}");
    assert_eq!(epochs.last(), Some(&3));
    assert!(watching.0.lock().unwrap().iter().all(|r| !r.is_self));
    let docs = server_docs(&url, "alice", "personal:alice", "answers").await;
    assert!(docs.is_empty(), "nothing under a stale epoch: {docs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_holder_loses_the_role_and_its_old_epoch_is_refused_when_it_returns() {
    let server = server_with_lease(PARTITION_LEASE).await;
    let url = server.http_url();
    let proxy = Proxy::start(server.addr()).await;
    let phone = Device::online(&proxy.http_url(), "alice", "phone").await;
    let tablet = Device::online(&url, "alice", "tablet").await;
    phone.settle().await;
    tablet.settle().await;
    assert!(phone.client.claim_role(ROLE, 0).await.unwrap().is_self);
    tablet.client.claim_role(ROLE, 0).await.unwrap();
    let heard = Arc::new(Heard::default());
    let _watch = tablet.client.observe_role(ROLE, heard.clone()).unwrap();

    // The phone is cut off without either side seeing a close: its lease
    // runs out and the tablet takes over.
    proxy.partition(true);
    let cut_at = Instant::now();
    eventually("the tablet to take the role", || {
        heard.last().is_some_and(|r| r.is_self && r.epoch == 2)
    })
    .await;
    println!("partitioned holder replaced after {:?}", cut_at.elapsed());
    // The phone does not know: it still believes it holds epoch 1, and acts.
    let old = phone.client.current_fence(ROLE).unwrap();
    assert_eq!(old.epoch, 1);
    phone
        .client
        .put_fenced(
            DocKey::personal("answers", "from-the-past"),
            r#"{"text":"sent while cut off"}"#,
            old.clone(),
        )
        .unwrap();

    // Back on the network: the write under the old epoch is refused, and
    // the phone learns the new holder.
    proxy.partition(false);
    eventually("the phone to learn it lost the role", || {
        phone
            .client
            .role(ROLE)
            .is_some_and(|r| !r.is_self && r.epoch >= 2)
    })
    .await;
    eventually("the old-epoch write to be refused", || {
        phone.client.failed_mutations().unwrap().len() == 1
    })
    .await;
    let stale = phone.client.guard_fenced("s", "x", None, old).await;
    assert!(matches!(stale, Err(Error::StaleEpoch { .. })), "{stale:?}");
    let docs = server_docs(&url, "alice", "personal:alice", "answers").await;
    assert!(docs.is_empty(), "{docs:?}");
}

/// The revocation itself closes the device's socket (docs/PROTOCOL.md
/// promises within a second, as printed here; on a loaded machine it can
/// take longer, so the test does not time it): the socket must close with
/// `revoked` within [`PATIENCE`], which nothing but the revocation does
/// (the server's idle timeout is 90 s, the access token lasts 15 minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_device_is_disconnected_at_once_and_its_tokens_stop_working() {
    let server = TestServer::dev().await;
    let url = server.http_url();
    let http = Http::new(&url);
    let phone = Device::online(&url, "alice", "phone").await;
    phone.settle().await;
    let stolen = http.register("dev:alice", "stolen-laptop").await;
    let mut socket = WsClient::connect_ok(&server.sync_url(), &stolen.access_token).await;
    socket.hello("stolen-laptop", Default::default()).await;
    // The server records the laptop's presence after its welcome, off the
    // session's path: the phone's list shows it online a moment later.
    phone
        .until_devices("the phone to list the stolen laptop online", |d| {
            d.device_id == "stolen-laptop" && d.online
        })
        .await;

    let revoked_at = Instant::now();
    let remaining = phone.client.revoke_device("stolen-laptop").await.unwrap();
    assert!(remaining.iter().all(|d| d.device_id != "stolen-laptop"));
    let last = tokio::time::timeout(PATIENCE, socket.until_closed())
        .await
        .unwrap_or_else(|_| {
            panic!("the revoked device's socket was still open after {PATIENCE:?}")
        });
    println!("revoked socket closed after {:?}", revoked_at.elapsed());
    assert!(
        last.iter()
            .any(|m| matches!(m, ServerMessage::Error(e) if e.code == ErrorCode::Revoked)),
        "{last:?}"
    );
    // Its credentials stop working, and it cannot register again.
    let list = http
        .call("GET", "/v1/devices", Some(&stolen.access_token), None)
        .await;
    assert_eq!(list.status, 401);
    assert_eq!(http.refresh(&stolen.refresh_token).await.status, 401);
    let again = http.try_register("dev:alice", "stolen-laptop").await;
    assert_eq!((again.status, again.code()), (401, "revoked"));
    assert!(
        WsClient::connect(&server.sync_url(), Some(&stolen.access_token))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_see_each_other_come_and_go() {
    let server = TestServer::dev().await;
    let url = server.http_url();
    let phone = Device::online(&url, "alice", "phone").await;
    phone.settle().await;
    let seen: Arc<Mutex<Vec<Vec<tandem_core::DeviceInfo>>>> = Arc::default();
    struct Record(Arc<Mutex<Vec<Vec<tandem_core::DeviceInfo>>>>);
    impl tandem_core::DevicesObserver for Record {
        fn on_devices(&self, devices: Vec<tandem_core::DeviceInfo>) {
            self.0.lock().unwrap().push(devices);
        }
    }
    let _watch = phone
        .client
        .observe_devices(Arc::new(Record(seen.clone())))
        .unwrap();
    let online = |name: &str| {
        let name = name.to_owned();
        let seen = seen.clone();
        move || {
            seen.lock()
                .unwrap()
                .last()
                .is_some_and(|l| l.iter().any(|d| d.name == name && d.online))
        }
    };
    let tablet = Device::online(&url, "alice", "tablet").await;
    tablet.settle().await;
    eventually("the tablet to show online", online("tablet")).await;
    tablet.client.stop_sync().await;
    eventually("the tablet to show offline", || {
        seen.lock().unwrap().last().is_some_and(|l| {
            l.iter()
                .any(|d| d.name == "tablet" && !d.online && d.last_seen.is_some())
        })
    })
    .await;
    let renamed = phone
        .client
        .rename_device(&tablet.client.device_id(), "Alice's iPad")
        .await
        .unwrap();
    assert!(renamed.iter().any(|d| d.name == "Alice's iPad"));
    assert!(renamed.iter().any(|d| d.name == "phone" && d.is_self));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_hints_reach_the_webhook_for_offline_devices_and_a_hint_syncs_the_device() {
    // The app's push sender: records what it receives.
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let record = received.clone();
    let app = axum::Router::new().route(
        "/hints",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let record = record.clone();
            async move {
                record.lock().unwrap().push(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let webhook = format!("http://{}/hints", listener.local_addr().unwrap());
    let receiver = tokio::spawn(async move { axum::serve(listener, app).await });

    let server = TestServer::start(TestServerOptions::dev().with(|c| {
        c.push.webhook = Some(webhook);
        // Longer than the test: after its first hint, the tablet gets no
        // other, however the writes are spread over time.
        c.push.min_interval = Duration::from_secs(120);
        c.push.batch_delay = Duration::from_millis(20);
    }))
    .await;
    let url = server.http_url();
    let phone = Device::online(&url, "alice", "phone").await;
    let tablet = Device::online(&url, "alice", "tablet").await;
    phone.settle().await;
    tablet.settle().await;
    phone
        .client
        .register_push_token("phone-token", "fcm")
        .await
        .unwrap();
    tablet
        .client
        .register_push_token("tablet-token", "apns")
        .await
        .unwrap();
    tablet.client.stop_sync().await;
    // The tablet's presence is gone once its socket closed.
    phone
        .until_devices("the tablet to be offline", |d| {
            d.name == "tablet" && !d.online
        })
        .await;

    let note = |i: usize| {
        phone
            .client
            .put(
                DocKey::personal("notes", &format!("n{i}")),
                r#"{"text":"hi"}"#,
            )
            .unwrap();
    };
    // A burst of writes makes one hint...
    for i in 0..3 {
        note(i);
    }
    phone.settle().await;
    eventually("a hint for the tablet", || {
        !received.lock().unwrap().is_empty()
    })
    .await;
    // ...and writes after it make none within the interval. Without the
    // limit, each of these commits would be hinted within the 20 ms batch
    // delay; the pause is long enough to see one on any machine (on a slow
    // one a late hint could only slip past this check, not fail it).
    for i in 3..5 {
        note(i);
        phone.settle().await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hints = received.lock().unwrap().clone();
    assert!(
        hints.iter().all(|h| h["token"] == "tablet-token"),
        "only the offline device gets hints: {hints:?}"
    );
    assert_eq!(hints.len(), 1, "batched and rate limited: {hints:?}");
    assert_eq!(hints[0]["user"], "alice");
    assert_eq!(hints[0]["provider"], "apns");
    assert_eq!(hints[0]["spaces"], serde_json::json!(["personal:alice"]));

    // The hint, relayed to the tablet, makes it sync.
    tablet.start_sync(&url).await;
    let outcome = tablet
        .client
        .handle_push_hint(&hints[0].to_string(), PATIENCE)
        .await
        .unwrap();
    assert_eq!(outcome, SyncOutcome::CaughtUp);
    assert_eq!(tablet.docs(None, "notes").len(), 5);
    // A hint for another device is refused.
    let mut other = hints[0].clone();
    other["device_id"] = Value::String("someone-else".into());
    assert!(matches!(
        tablet
            .client
            .handle_push_hint(&other.to_string(), PATIENCE)
            .await,
        Err(Error::NotForThisDevice(_))
    ));
    receiver.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_sync_knows_every_role_and_device_when_it_returns() {
    let server = server_with_lease(STEADY_LEASE).await;
    let url = server.http_url();
    let holder = Device::online(&url, "alice", "holder").await;
    holder.settle().await;
    let claimed = holder.client.claim_role(ROLE, 0).await.unwrap();
    assert!(claimed.is_self);
    // A fresh device, like `tandem client role ROLE` run again and again:
    // right after its bounded sync it must name the holder. (Before, it
    // could return between the catch-up and the role messages that follow
    // it, and print no holder.)
    for i in 0..15 {
        let device = Device::online(&url, "alice", &format!("reader-{i}")).await;
        device.settle().await;
        let role = device.client.role(ROLE);
        assert_eq!(
            role.as_ref().and_then(|r| r.holder.clone()),
            Some(holder.client.device_id()),
            "run {i}: {role:?}"
        );
        assert!(role.is_some_and(|r| r.epoch >= 1), "run {i}");
        device.client.stop_sync().await;
    }
}
