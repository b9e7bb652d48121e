//! Device coordination across two server instances on one PostgreSQL
//! database: one holder per role and user whichever instance its devices
//! use, a takeover across instances, a guard that answers `first` once
//! across instances, and the presence of a crashed instance's devices
//! running out so that their roles move on. Each test runs on a schema of
//! its own in the database named by `TANDEM_TEST_POSTGRES_URL`.

use std::sync::Arc;
use std::time::Duration;

use tandem_e2e::{Device, TestServer, TestServerOptions, eventually};
use tandem_protocol::{DeviceId, UserId};
use tandem_server::Schema;
use tandem_server::store::conformance::RecordingListener;
use tandem_server::store::postgres::testing::TestSchema;
use tandem_server::store::{
    AuthStore, CoordinationStore, DeviceIdentity, DeviceRegistration, Leases, NewCredentials,
    PostgresStore, PresenceStamp, PushRules, RoleRequest, Store,
};

const ROLE: &str = "auto-responder";

/// An instance on the test's schema. Its role lease is far longer than
/// the tests' patience: a holder whose renewals a loaded machine delays
/// keeps its role (with the default 1.5 s it could pass to another device
/// and the epochs the test expects would move), and a takeover seen within
/// the patience came from the holder leaving, not from its lease.
async fn instance(schema: &TestSchema) -> TestServer {
    let mut options = schema.options();
    options.pool_size = 6;
    TestServer::start(TestServerOptions::dev().with(|c| {
        c.postgres = Some(options);
        c.coordination.role_lease = Duration::from_secs(120);
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_holder_per_role_across_instances_and_a_takeover_across_them() {
    let Some(schema) = TestSchema::new("roles") else {
        return;
    };
    let a = instance(&schema).await;
    let b = instance(&schema).await;
    let phone = Device::online(&a.http_url(), "alice", "phone").await;
    let tablet = Device::online(&b.http_url(), "alice", "tablet").await;
    let laptop = Device::online(&a.http_url(), "alice", "laptop").await;
    let devices = [&phone, &tablet, &laptop];
    for d in devices {
        d.settle().await;
    }
    // Everyone claims at once, on two instances.
    let claims = futures::future::join_all(devices.iter().map(|d| {
        let client = Arc::clone(&d.client);
        async move { client.claim_role(ROLE, 0).await.unwrap() }
    }))
    .await;
    assert_eq!(
        claims.iter().filter(|c| c.is_self).count(),
        1,
        "one claim won: {claims:?}"
    );
    eventually("every device to agree on the holder", || {
        let seen: Vec<_> = devices
            .iter()
            .map(|d| d.client.role(ROLE).map(|r| (r.holder, r.epoch)))
            .collect();
        seen.iter().all(|s| s.is_some() && s == &seen[0])
    })
    .await;
    let held = phone.client.role(ROLE).unwrap();
    assert_eq!(held.epoch, 1);
    let holder = devices
        .iter()
        .find(|d| d.client.role(ROLE).unwrap().is_self)
        .unwrap();
    // The holder goes away; a device on either instance takes over, and
    // every remaining device hears it.
    holder.client.stop_sync().await;
    let rest: Vec<&&Device> = devices
        .iter()
        .filter(|d| d.client.device_id() != holder.client.device_id())
        .collect();
    eventually("a takeover every remaining device hears", || {
        rest.iter().all(|d| {
            d.client.role(ROLE).is_some_and(|r| {
                r.epoch == 2 && r.holder.as_deref() != Some(&holder.client.device_id())
            })
        })
    })
    .await;
    assert_eq!(
        rest.iter()
            .filter(|d| d.client.role(ROLE).unwrap().is_self)
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_answers_first_once_across_instances() {
    let Some(schema) = TestSchema::new("guards") else {
        return;
    };
    let a = instance(&schema).await;
    let b = instance(&schema).await;
    let mut devices = Vec::new();
    for i in 0..10 {
        let url = if i % 2 == 0 {
            a.http_url()
        } else {
            b.http_url()
        };
        let d = Device::online(&url, "alice", &format!("d{i}")).await;
        d.settle().await;
        devices.push(d);
    }
    let answers = futures::future::join_all(devices.iter().map(|d| {
        let client = Arc::clone(&d.client);
        async move {
            client
                .guard("conversation", "On my way", None)
                .await
                .unwrap()
        }
    }))
    .await;
    assert_eq!(
        answers
            .iter()
            .filter(|a| format!("{a:?}") == "First")
            .count(),
        1,
        "{answers:?}"
    );
}

fn identity(device: &str) -> DeviceIdentity {
    DeviceIdentity {
        user: UserId::new("alice").unwrap(),
        device: DeviceId::new(device).unwrap(),
    }
}

async fn store(schema: &TestSchema) -> Arc<PostgresStore> {
    let rules = PushRules {
        max_document_bytes: 4_096,
        ..PushRules::new(Arc::new(Schema::default()))
    };
    let listener = Arc::new(RecordingListener::default());
    Arc::new(
        PostgresStore::open(schema.options(), rules, listener)
            .await
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_devices_of_a_crashed_instance_go_offline_and_their_roles_move_on() {
    let Some(schema) = TestSchema::new("presence") else {
        return;
    };
    let a = store(&schema).await;
    let b = store(&schema).await;
    // Long role leases: here it is the presence that runs out. Presence
    // long enough that instance B, stamping its device as a live instance
    // does (every 200 ms here), keeps it present through a loaded machine's
    // stalls.
    let leases = Leases {
        role_ms: 600_000,
        presence_ms: 3_000,
    };
    let now = tandem_server::state::now_ms;
    for (i, id) in ["phone", "tablet"].iter().enumerate() {
        let hash = tandem_server::auth::hash_token(&format!("t{i}"));
        a.register_device(
            DeviceRegistration {
                identity: identity(id),
                name: (*id).into(),
                platform: "test".into(),
                app_version: "1".into(),
            },
            NewCredentials {
                access: hash,
                access_expires_at: now() + 60_000,
                refresh: tandem_server::auth::hash_token(&format!("r{i}")),
                refresh_expires_at: now() + 60_000,
            },
            100,
            now(),
        )
        .await
        .unwrap();
    }
    let stamp = |device: &str| PresenceStamp {
        device: identity(device),
        last_active: now(),
    };
    a.presence_connected("a".into(), stamp("phone"), leases)
        .await
        .unwrap();
    b.presence_connected("b".into(), stamp("tablet"), leases)
        .await
        .unwrap();
    let claimed = a
        .change_role(
            identity("phone"),
            ROLE.into(),
            RoleRequest::Claim { priority: 0 },
            leases,
        )
        .await
        .unwrap();
    assert_eq!(claimed.state.epoch, 1);
    b.change_role(
        identity("tablet"),
        ROLE.into(),
        RoleRequest::Claim { priority: 0 },
        leases,
    )
    .await
    .unwrap();
    // Instance A crashes: it stops stamping. Instance B keeps stamping its
    // own device; A's row runs out and B removes it.
    let stamping = tokio::spawn({
        let b = Arc::clone(&b);
        async move {
            loop {
                let tablet = PresenceStamp {
                    device: identity("tablet"),
                    last_active: tandem_server::state::now_ms(),
                };
                b.presence_heartbeat("b".into(), vec![tablet], leases)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    let listed = || async {
        b.devices_of(UserId::new("alice").unwrap())
            .await
            .unwrap()
            .into_iter()
            .map(|d| (d.name, d.online))
            .collect::<Vec<(String, bool)>>()
    };
    tandem_e2e::eventually_async("the crashed instance's device to go offline", || async {
        !listed().await[0].1
    })
    .await;
    assert_eq!(
        listed().await,
        vec![("phone".into(), false), ("tablet".into(), true)]
    );
    let due = b.roles_to_check().await.unwrap();
    assert_eq!(due.len(), 1);
    let moved = b
        .change_role(identity("tablet"), ROLE.into(), RoleRequest::Check, leases)
        .await
        .unwrap();
    assert_eq!(
        (
            moved.state.holder.as_ref().map(DeviceId::as_str),
            moved.state.epoch
        ),
        (Some("tablet"), 2)
    );
    stamping.abort();
    let _ = stamping.await;
    a.close().await.unwrap();
    b.close().await.unwrap();
}
