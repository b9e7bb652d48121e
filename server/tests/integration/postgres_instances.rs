//! Several PostgreSQL store instances on one database: revisions,
//! idempotency and announcements across instances, the listener's
//! reconnection, and the schema migrations. Each test runs on a schema of
//! its own in the database named by `TANDEM_TEST_POSTGRES_URL`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};
use tandem_protocol::wire::Outcome;
use tandem_protocol::{
    Collection, DeviceId, DocId, Hlc, Mutation, MutationId, Op, SpaceId, UserId,
};
use tandem_server::Schema;
use tandem_server::auth::hash_token;
use tandem_server::store::conformance::RecordingListener;
use tandem_server::store::postgres::migrations::{self, CURRENT_SCHEMA, MIGRATIONS};
use tandem_server::store::postgres::testing::TestSchema;
use tandem_server::store::{
    AuthStore, DeviceIdentity, DeviceRegistration, FeedStore, NewCredentials, PageLimit,
    PostgresOptions, PostgresStore, PushRules, RefreshOutcome, Store, StoreEvent,
};
use tokio_postgres::NoTls;

const NOW: u64 = 1_764_000_000_000;

fn rules() -> PushRules {
    PushRules {
        max_document_bytes: 4_096,
        ..PushRules::new(Arc::new(Schema::default()))
    }
}

async fn instance(options: &PostgresOptions) -> (Arc<PostgresStore>, Arc<RecordingListener>) {
    let listener = Arc::new(RecordingListener::default());
    let store = PostgresStore::open(options.clone(), rules(), listener.clone())
        .await
        .unwrap();
    (Arc::new(store), listener)
}

fn user(name: &str) -> UserId {
    UserId::new(name).unwrap()
}

fn device(user_name: &str, device: &str) -> DeviceIdentity {
    DeviceIdentity {
        user: user(user_name),
        device: DeviceId::new(device).unwrap(),
    }
}

async fn register(store: &dyn AuthStore, id: &DeviceIdentity, seed: &str) -> (String, String) {
    let access = format!("access-{seed}");
    let refresh = format!("refresh-{seed}");
    store
        .register_device(
            DeviceRegistration {
                identity: id.clone(),
                name: "test".into(),
                platform: "test".into(),
                app_version: "1".into(),
            },
            NewCredentials {
                access: hash_token(&access),
                access_expires_at: NOW + 3_600_000,
                refresh: hash_token(&refresh),
                refresh_expires_at: NOW + 3_600_000,
            },
            100,
            NOW,
        )
        .await
        .unwrap();
    (access, refresh)
}

fn put(id: &DeviceIdentity, tick: u64, space: &SpaceId, doc: &str, fields: Value) -> Mutation {
    let Value::Object(fields) = fields else {
        panic!("fields must be an object")
    };
    Mutation {
        mutation_id: MutationId::generate(),
        space: space.clone(),
        collection: Collection::new("notes").unwrap(),
        doc_id: DocId::new(doc).unwrap(),
        op: Op::Put { fields },
        base_version: None,
        hlc: Hlc::new(NOW + tick, 0, id.device.clone()),
        device_id: id.device.clone(),
        fence: None,
    }
}

fn announced_revs(events: &[StoreEvent], space: &SpaceId) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            StoreEvent::Changes(b) if &b.space == space => Some(b.changes.iter().map(|c| c.rev)),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Two instances, six devices each, pushing into one space at once: every
/// revision is handed out once, none is skipped, and both instances
/// announce every revision, in order, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_have_no_gaps_or_duplicates_across_instances() {
    let Some(schema) = TestSchema::new("instances") else {
        return;
    };
    let (a, heard_a) = instance(&schema.options()).await;
    let (b, heard_b) = instance(&schema.options()).await;
    let owner = device("alice", "d0");
    register(a.as_ref(), &owner, "owner").await;
    let space = SpaceId::shared("busy").unwrap();
    a.create_space(user("alice"), space.clone()).await.unwrap();
    let mut tasks = Vec::new();
    for d in 0..12 {
        let store: Arc<dyn Store> = if d % 2 == 0 { a.clone() } else { b.clone() };
        let space = space.clone();
        tasks.push(tokio::spawn(async move {
            let id = device("alice", &format!("d{d}"));
            let mut revs = Vec::new();
            for i in 0..15u64 {
                // Every third push carries two mutations.
                let mut batch = vec![put(&id, i, &space, &format!("{d}-{i}"), json!({"i": i}))];
                if i % 3 == 0 {
                    batch.push(put(&id, i, &space, &format!("{d}-{i}b"), json!({})));
                }
                for result in store.push(id.clone(), batch, NOW).await.unwrap() {
                    match result.outcome {
                        Outcome::Applied { rev } => revs.push(rev),
                        other => panic!("{other:?}"),
                    }
                }
            }
            revs
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort_unstable();
    let total = 12 * 20;
    assert_eq!(all, (1..=total).collect::<Vec<_>>());
    for heard in [&heard_a, &heard_b] {
        let events = heard
            .take_when(|e| announced_revs(e, &space).last() == Some(&total))
            .await;
        assert_eq!(
            announced_revs(&events, &space),
            (1..=total).collect::<Vec<_>>()
        );
    }
    let page = b
        .read_changes(user("alice"), space.clone(), 0, PageLimit::changes(1_000))
        .await
        .unwrap();
    assert_eq!(page.position.head, total);
    assert_eq!(page.changes.len() as u64, total);
    a.close().await.unwrap();
    b.close().await.unwrap();
}

/// A mutation retried on another instance gets the original result; the
/// same mutation pushed through two instances at once is applied once,
/// also when it names different spaces (then the record's primary key
/// decides).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_holds_across_instances() {
    let Some(schema) = TestSchema::new("instances") else {
        return;
    };
    let (a, _) = instance(&schema.options()).await;
    let (b, _) = instance(&schema.options()).await;
    let phone = device("alice", "phone");
    register(a.as_ref(), &phone, "phone").await;
    let personal = SpaceId::personal(&user("alice"));
    let shared = SpaceId::shared("other").unwrap();
    a.create_space(user("alice"), shared.clone()).await.unwrap();

    let m = put(&phone, 1, &personal, "n", json!({"v": 1}));
    let first = a.push(phone.clone(), vec![m.clone()], NOW).await.unwrap();
    assert_eq!(first[0].outcome, Outcome::Applied { rev: 1 });
    let retried = b.push(phone.clone(), vec![m.clone()], NOW).await.unwrap();
    assert_eq!(retried[0].outcome, Outcome::Duplicate { rev: 1 });
    let laptop = device("alice", "laptop");
    register(b.as_ref(), &laptop, "laptop").await;
    let mut stolen = m;
    stolen.device_id = laptop.device.clone();
    let refused = b.push(laptop.clone(), vec![stolen], NOW).await.unwrap();
    assert!(matches!(refused[0].outcome, Outcome::Rejected { .. }));

    let mut applied = 0;
    for i in 0..30u64 {
        let same = put(&phone, 10 + i, &personal, &format!("same-{i}"), json!({}));
        // Every other round, the copy on the second instance names another
        // space: only the record's primary key can tell them apart.
        let mut copy = same.clone();
        if i % 2 == 1 {
            copy.space = shared.clone();
        }
        let (x, y) = tokio::join!(
            a.push(phone.clone(), vec![same], NOW),
            b.push(phone.clone(), vec![copy], NOW)
        );
        let outcomes = [x.unwrap()[0].outcome.clone(), y.unwrap()[0].outcome.clone()];
        match outcomes {
            [Outcome::Applied { rev }, Outcome::Duplicate { rev: again }]
            | [Outcome::Duplicate { rev: again }, Outcome::Applied { rev }] => {
                assert_eq!(rev, again);
                applied += 1;
            }
            other => panic!("round {i}: {other:?}"),
        }
    }
    assert_eq!(applied, 30);
    let personal_head = a
        .read_changes(user("alice"), personal, 0, PageLimit::changes(1_000))
        .await
        .unwrap()
        .position
        .head;
    let shared_head = a
        .read_changes(user("alice"), shared, 0, PageLimit::changes(1_000))
        .await
        .unwrap()
        .position
        .head;
    assert_eq!(
        personal_head + shared_head,
        31,
        "every mutation written once"
    );
    a.close().await.unwrap();
    b.close().await.unwrap();
}

/// Membership changes and revocations made through one instance are
/// announced by the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_and_revocations_cross_instances() {
    let Some(schema) = TestSchema::new("instances") else {
        return;
    };
    let (a, _) = instance(&schema.options()).await;
    let (b, heard_b) = instance(&schema.options()).await;
    let alice = device("alice", "phone");
    let bob = device("bob", "phone");
    register(a.as_ref(), &alice, "alice").await;
    let (_, bob_refresh) = register(a.as_ref(), &bob, "bob").await;
    let team = SpaceId::shared("team").unwrap();
    a.create_space(user("alice"), team.clone()).await.unwrap();
    a.add_member(user("alice"), team.clone(), user("bob"))
        .await
        .unwrap();
    a.remove_member(user("alice"), team.clone(), user("bob"))
        .await
        .unwrap();
    a.revoke_device(alice.clone()).await.unwrap();
    let (next, _) = (
        NewCredentials {
            access: hash_token("next-access"),
            access_expires_at: NOW + 60_000,
            refresh: hash_token("next-refresh"),
            refresh_expires_at: NOW + 60_000,
        },
        (),
    );
    assert!(matches!(
        a.refresh_credentials(hash_token(&bob_refresh), next, NOW)
            .await
            .unwrap(),
        RefreshOutcome::Rotated(_)
    ));
    assert!(matches!(
        a.refresh_credentials(hash_token(&bob_refresh), next, NOW)
            .await
            .unwrap(),
        RefreshOutcome::Reused(_)
    ));
    let events = heard_b.take_n(5).await;
    let summary: Vec<String> = events
        .iter()
        .map(|e| match e {
            StoreEvent::MembershipChanged {
                user,
                space,
                member,
                ..
            } => format!("{user} {space} {member}"),
            StoreEvent::DeviceRevoked(id) => format!("revoked {} {}", id.user, id.device),
            StoreEvent::Changes(_) => "changes".into(),
            StoreEvent::RoleChanged { .. } | StoreEvent::DevicesChanged { .. } => {
                "coordination".into()
            }
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            "alice team true",
            "bob team true",
            "bob team false",
            "revoked alice phone",
            "revoked bob phone",
        ]
    );
    let StoreEvent::MembershipChanged { spaces, .. } = &events[1] else {
        unreachable!()
    };
    // The user's spaces as the other instance read them, which may already
    // show the later removal.
    assert!(spaces.contains(&SpaceId::personal(&user("bob"))));
    a.close().await.unwrap();
    b.close().await.unwrap();
}

async fn admin(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

async fn listener_pid(admin: &tokio_postgres::Client, store: &PostgresStore) -> Option<i32> {
    admin
        .query_opt(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
            &[&format!("tandem-listener {}", store.instance_id())],
        )
        .await
        .unwrap()
        .map(|row| row.get(0))
}

/// When an instance's listening connection is killed, it reconnects and
/// announces what was committed meanwhile (from the notifications, or from
/// the store when they were lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_lost_its_connection_catches_up() {
    let Some(schema) = TestSchema::new("instances") else {
        return;
    };
    let options = schema.options();
    let (a, _) = instance(&options).await;
    let (b, heard_b) = instance(&options).await;
    let alice = device("alice", "phone");
    register(a.as_ref(), &alice, "alice").await;
    register(a.as_ref(), &device("bob", "phone"), "bob").await;
    let team = SpaceId::shared("team").unwrap();
    a.create_space(user("alice"), team.clone()).await.unwrap();
    a.add_member(user("alice"), team.clone(), user("bob"))
        .await
        .unwrap();
    a.push(
        alice.clone(),
        vec![put(&alice, 1, &team, "x", json!({}))],
        NOW,
    )
    .await
    .unwrap();
    heard_b
        .take_when(|e| announced_revs(e, &team) == vec![1])
        .await;

    let admin = admin(&options.url).await;
    let before = listener_pid(&admin, &b).await.unwrap();
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&before])
        .await
        .unwrap();
    // Committed while the listener is gone or coming back.
    for i in 2..=4 {
        a.push(
            alice.clone(),
            vec![put(&alice, i, &team, &format!("x{i}"), json!({}))],
            NOW,
        )
        .await
        .unwrap();
    }
    a.remove_member(user("alice"), team.clone(), user("bob"))
        .await
        .unwrap();
    let events = heard_b
        .take_when(|e| {
            announced_revs(e, &team).contains(&4)
                && e.iter().any(|e| {
                    matches!(e, StoreEvent::MembershipChanged { user, member: false, .. } if user.as_str() == "bob")
                })
        })
        .await;
    assert!(!events.is_empty());
    let after = listener_pid(&admin, &b)
        .await
        .expect("the listener is back");
    assert_ne!(before, after, "a new listening connection");
    // Live again: the next commit arrives through notifications.
    a.push(
        alice.clone(),
        vec![put(&alice, 9, &team, "y", json!({}))],
        NOW,
    )
    .await
    .unwrap();
    heard_b
        .take_when(|e| announced_revs(e, &team).contains(&5))
        .await;
    a.close().await.unwrap();
    b.close().await.unwrap();
}

/// The catalog of a schema: columns and indexes, with the schema's name
/// taken out.
async fn catalog(client: &tokio_postgres::Client, schema: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for row in client
        .query(
            "SELECT table_name, column_name, data_type, is_nullable, coalesce(column_default, '')
             FROM information_schema.columns WHERE table_schema = $1",
            &[&schema],
        )
        .await
        .unwrap()
    {
        let table: String = row.get(0);
        let column: String = row.get(1);
        let default: String = row.get(4);
        out.insert(
            format!("column {table}.{column}"),
            format!(
                "{} {} {}",
                row.get::<_, String>(2),
                row.get::<_, String>(3),
                default.replace(schema, "S")
            ),
        );
    }
    for row in client
        .query(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1",
            &[&schema],
        )
        .await
        .unwrap()
    {
        let def: String = row.get(1);
        out.insert(
            format!("index {}", row.get::<_, String>(0)),
            def.replace(schema, "S"),
        );
    }
    out
}

async fn connect_to_schema(url: &str, schema: &str) -> tokio_postgres::Client {
    let mut config: tokio_postgres::Config = url.parse().unwrap();
    config.options(format!("-c search_path=\"{schema}\""));
    let (client, connection) = config.connect(NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// Migrating an empty schema gives the current schema, and migrating again
/// changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_give_the_current_schema_and_run_once() {
    let (Some(migrated), Some(fresh)) = (TestSchema::new("migrated"), TestSchema::new("fresh"))
    else {
        return;
    };
    let url = migrated.options().url;
    let admin = admin(&url).await;
    for schema in [&migrated, &fresh] {
        admin
            .batch_execute(&format!("CREATE SCHEMA \"{}\"", schema.options().schema))
            .await
            .unwrap();
    }
    let mut client = connect_to_schema(&url, &migrated.options().schema).await;
    assert_eq!(migrations::applied_version(&client).await.unwrap(), 0);
    migrations::migrate(&mut client, 42).await.unwrap();
    assert_eq!(
        migrations::applied_version(&client).await.unwrap() as usize,
        MIGRATIONS.len()
    );
    let once = catalog(&admin, &migrated.options().schema).await;
    migrations::migrate(&mut client, 42).await.unwrap();
    assert_eq!(
        migrations::applied_version(&client).await.unwrap() as usize,
        MIGRATIONS.len()
    );
    let twice = catalog(&admin, &migrated.options().schema).await;
    assert_eq!(once, twice, "migrating again changed the schema");

    let fresh_client = connect_to_schema(&url, &fresh.options().schema).await;
    fresh_client.batch_execute(CURRENT_SCHEMA).await.unwrap();
    let mut expected = catalog(&admin, &fresh.options().schema).await;
    let mut migrated_tables = once;
    migrated_tables.retain(|k, _| !k.contains("schema_version"));
    expected.retain(|k, _| !k.contains("schema_version"));
    assert!(migrated_tables.contains_key("column documents.version"));
    assert_eq!(migrated_tables, expected);

    // A store opened on the migrated schema migrates nothing more.
    let mut options = migrated.options();
    options.pool_size = 4;
    let store = PostgresStore::open(options, rules(), Arc::new(RecordingListener::default()))
        .await
        .unwrap();
    assert_eq!(
        migrations::applied_version(&client).await.unwrap() as usize,
        MIGRATIONS.len()
    );
    store.close().await.unwrap();
}
