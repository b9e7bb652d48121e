//! The conformance suite every [`Store`] implementation must pass.
//!
//! An implementation provides a [`StoreHarness`] (how to open its store on a
//! fresh database, and again on the same database) and expands
//! [`store_conformance_tests!`](crate::store_conformance_tests) in a test
//! file; each case becomes one `#[tokio::test]`:
//!
//! ```ignore
//! struct SqliteHarness { dir: tempfile::TempDir }
//! impl StoreHarness for SqliteHarness { /* open SqliteStore at dir/db */ }
//! tandem_server::store_conformance_tests!(SqliteHarness::new());
//! ```
//!
//! The cases check the contract in the [`store`](crate::store) module
//! documentation: authorization, the change feed, checksums, idempotency,
//! commit announcements, compaction and durability across a reopen.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use serde_json::{Value, json};
use tandem_protocol::wire::{MutationResult, Outcome};
use tandem_protocol::{
    Collection, DeviceId, DocId, Hlc, Mutation, MutationId, Op, RejectCode, SpaceChecksum, SpaceId,
    UserId,
};

use super::{
    AuthStore, ChangePage, CommitListener, CompactionRule, CoordinationStore, DeviceIdentity,
    DeviceRegistration, FeedStore, HintedSpace, Leases, NewCredentials, PageLimit, PresenceStamp,
    PushRules, RefreshOutcome, RoleRequest, Store, StoreError, StoreEvent,
};
use crate::auth::{TokenHash, hash_token};
use crate::collection_rules::Schema;
use tandem_protocol::RoleFence;
use tandem_protocol::api::PushToken;
use tandem_protocol::wire::GuardVerdict;

/// Opens the store under test.
pub trait StoreHarness: Send + Sync {
    /// Opens the store on this harness's database (created empty by the
    /// first call; later calls reopen the same data), applying `rules` and
    /// announcing commits to `listener`.
    fn open(
        &self,
        rules: PushRules,
        listener: Arc<dyn CommitListener>,
    ) -> BoxFuture<'_, Arc<dyn Store>>;

    /// Whether the store can run here; a harness whose database the caller
    /// opted out of says so loudly and returns `false`, and the case passes
    /// without running.
    fn available(&self) -> bool {
        true
    }
}

/// Expands to one `#[tokio::test]` per conformance case, each with a fresh
/// harness from `$harness` (an expression evaluated once per test).
#[macro_export]
macro_rules! store_conformance_tests {
    ($harness:expr) => {
        $crate::store_conformance_tests!(@cases $harness;
            registration_issues_credentials_and_a_personal_space,
            refresh_rotates_and_reuse_revokes,
            spaces_and_membership_follow_the_rules,
            pushes_get_consecutive_revisions_and_the_feed_follows,
            retries_get_the_recorded_outcome,
            writes_are_authorized_by_the_author,
            policies_rules_and_limits_decide,
            the_feed_pages_and_keeps_tombstones,
            compaction_purges_tombstones_and_raises_the_horizon,
            commits_are_announced_in_order,
            concurrent_pushes_get_distinct_revisions,
            data_survives_a_reopen,
            a_closed_store_refuses_work,
            roles_move_with_claims_releases_and_lost_holders,
            a_role_exists_from_its_first_claim,
            fences_admit_only_the_holder_at_its_epoch,
            guards_answer_first_once_per_window,
            the_registry_follows_presence_renames_and_revocation,
            pages_end_before_their_byte_limit,
            clock_readings_ahead_or_of_another_device_are_refused,
            a_user_has_at_most_the_allowed_devices
        );
    };
    (@cases $harness:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let harness = $harness;
                if !$crate::store::conformance::StoreHarness::available(&harness) {
                    return;
                }
                $crate::store::conformance::$case(&harness).await;
            }
        )*
    };
}

/// A listener that keeps every event: the feed's, membership and
/// revocation events in one list, device coordination's (roles, the
/// registry) in another, so a test of either reads only its own.
#[derive(Default)]
pub struct RecordingListener {
    events: Mutex<Vec<StoreEvent>>,
    coordination: Mutex<Vec<StoreEvent>>,
}

impl RecordingListener {
    /// Takes the events recorded so far.
    pub fn take(&self) -> Vec<StoreEvent> {
        self.events
            .lock()
            .map(|mut e| std::mem::take(&mut *e))
            .unwrap_or_default()
    }

    /// Waits until the recorded events satisfy `done`, then takes them.
    /// Announcements follow the answers to the callers (so that a device's
    /// ack comes before its live changes), so a test waits for them.
    pub async fn take_when(&self, done: impl Fn(&[StoreEvent]) -> bool) -> Vec<StoreEvent> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let ready = self.events.lock().map(|e| done(&e)).unwrap_or(false);
            if ready {
                return self.take();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the expected announcements never came"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Waits for `n` events, then takes them.
    pub async fn take_n(&self, n: usize) -> Vec<StoreEvent> {
        self.take_when(|e| e.len() >= n).await
    }

    /// Waits until the recorded coordination events (roles, devices)
    /// satisfy `done`, then takes them.
    pub async fn take_coordination_when(
        &self,
        done: impl Fn(&[StoreEvent]) -> bool,
    ) -> Vec<StoreEvent> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if let Ok(mut events) = self.coordination.lock()
                && done(&events)
            {
                return std::mem::take(&mut *events);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the expected coordination announcements never came"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

fn announced_revs(events: &[StoreEvent]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            StoreEvent::Changes(b) => Some(b.changes.iter().map(|c| c.rev)),
            _ => None,
        })
        .flatten()
        .collect()
}

impl CommitListener for RecordingListener {
    fn committed(&self, events: Vec<StoreEvent>) {
        let (coordination, feed): (Vec<_>, Vec<_>) = events.into_iter().partition(|e| {
            matches!(
                e,
                StoreEvent::RoleChanged { .. } | StoreEvent::DevicesChanged { .. }
            )
        });
        if let Ok(mut all) = self.events.lock() {
            all.extend(feed);
        }
        if let Ok(mut all) = self.coordination.lock() {
            all.extend(coordination);
        }
    }
}

const NOW: u64 = 1_764_000_000_000;

/// The most devices a user may have in the suite's registrations.
const MAX_DEVICES: usize = 100;

fn schema() -> Schema {
    Schema::parse(
        r#"{"collections": {
            "messages": {"policy": "append_only", "set_fields": ["read_by"]},
            "contacts": {"policy": "server_wins",
                         "fields": {"name": {"type": "string", "required": true, "max_length": 20}}}
        }}"#,
    )
    .expect("the suite's schema is valid")
}

fn rules() -> PushRules {
    PushRules {
        max_document_bytes: 4_096,
        ..PushRules::new(Arc::new(schema()))
    }
}

async fn open(harness: &dyn StoreHarness) -> (Arc<dyn Store>, Arc<RecordingListener>) {
    let listener = Arc::new(RecordingListener::default());
    let store = harness.open(rules(), listener.clone()).await;
    (store, listener)
}

fn user(name: &str) -> UserId {
    UserId::new(name).expect("valid user")
}

fn device(user_name: &str, device: &str) -> DeviceIdentity {
    DeviceIdentity {
        user: user(user_name),
        device: DeviceId::new(device).expect("valid device"),
    }
}

fn personal(name: &str) -> SpaceId {
    SpaceId::personal(&user(name))
}

fn shared(name: &str) -> SpaceId {
    SpaceId::shared(name).expect("valid space name")
}

struct Tokens {
    access: TokenHash,
    refresh: TokenHash,
}

fn credentials(seed: &str, expires_at: u64) -> (NewCredentials, Tokens) {
    let access = hash_token(&format!("access-{seed}"));
    let refresh = hash_token(&format!("refresh-{seed}"));
    (
        NewCredentials {
            access,
            access_expires_at: expires_at,
            refresh,
            refresh_expires_at: expires_at,
        },
        Tokens { access, refresh },
    )
}

async fn register(store: &dyn AuthStore, id: &DeviceIdentity, seed: &str) -> Tokens {
    let (creds, tokens) = credentials(seed, NOW + 60_000);
    store
        .register_device(
            DeviceRegistration {
                identity: id.clone(),
                name: "test".into(),
                platform: "test".into(),
                app_version: "1".into(),
            },
            creds,
            MAX_DEVICES,
            NOW,
        )
        .await
        .expect("registration");
    tokens
}

/// Builds mutations for one device with increasing clocks.
struct Author {
    id: DeviceIdentity,
    tick: u64,
}

impl Author {
    fn new(id: DeviceIdentity) -> Author {
        Author { id, tick: 0 }
    }

    fn mutation(&mut self, space: &SpaceId, collection: &str, doc: &str, op: Op) -> Mutation {
        self.tick += 1;
        Mutation {
            mutation_id: MutationId::generate(),
            space: space.clone(),
            collection: Collection::new(collection).expect("valid collection"),
            doc_id: DocId::new(doc).expect("valid doc id"),
            op,
            base_version: None,
            hlc: Hlc::new(NOW + self.tick, 0, self.id.device.clone()),
            device_id: self.id.device.clone(),
            fence: None,
        }
    }

    fn put(&mut self, space: &SpaceId, collection: &str, doc: &str, fields: Value) -> Mutation {
        let Value::Object(fields) = fields else {
            panic!("fields must be an object")
        };
        self.mutation(space, collection, doc, Op::Put { fields })
    }

    fn delete(&mut self, space: &SpaceId, collection: &str, doc: &str) -> Mutation {
        self.mutation(space, collection, doc, Op::Delete {})
    }
}

async fn push(store: &dyn FeedStore, author: &Author, mutations: Vec<Mutation>) -> Vec<Outcome> {
    store
        .push(author.id.clone(), mutations, NOW)
        .await
        .expect("push")
        .into_iter()
        .map(|r: MutationResult| r.outcome)
        .collect()
}

fn recompute(pages: &[ChangePage]) -> SpaceChecksum {
    let mut latest = BTreeMap::new();
    for page in pages {
        for change in &page.changes {
            latest.insert(
                (change.collection.to_string(), change.doc_id.to_string()),
                change.clone(),
            );
        }
    }
    let mut sum = SpaceChecksum::default();
    for change in latest.values().filter(|c| !c.deleted) {
        sum.add(
            change.collection.as_str(),
            change.doc_id.as_str(),
            change.rev,
        );
    }
    sum
}

async fn read_all(
    store: &dyn FeedStore,
    reader: &UserId,
    space: &SpaceId,
    after: u64,
    limit: usize,
) -> Vec<ChangePage> {
    let mut pages = Vec::new();
    let mut after = after;
    loop {
        let page = store
            .read_changes(
                reader.clone(),
                space.clone(),
                after,
                PageLimit::changes(limit),
            )
            .await
            .expect("read_changes");
        let more = page.more;
        if let Some(last) = page.changes.last() {
            after = last.rev;
        }
        pages.push(page);
        if !more {
            return pages;
        }
    }
}

/// Registration stores credentials, creates the personal space, and
/// registering again replaces the credentials.
pub async fn registration_issues_credentials_and_a_personal_space(harness: &dyn StoreHarness) {
    let (store, _) = open(harness).await;
    let phone = device("alice", "phone");
    let tokens = register(store.as_ref(), &phone, "1").await;
    assert_eq!(
        store
            .device_for_access_token(tokens.access, NOW)
            .await
            .expect("lookup"),
        Some(phone.clone())
    );
    assert_eq!(
        store
            .device_for_access_token(tokens.access, NOW + 60_000)
            .await
            .expect("lookup"),
        None,
        "expired"
    );
    assert_eq!(
        store
            .device_for_access_token(hash_token("nope"), NOW)
            .await
            .expect("lookup"),
        None
    );
    let spaces = store.spaces_of(user("alice")).await.expect("spaces");
    assert_eq!(spaces.len(), 1);
    assert_eq!(spaces[0].space, personal("alice"));
    assert_eq!(spaces[0].owner, user("alice"));
    let again = register(store.as_ref(), &phone, "2").await;
    assert_eq!(
        store
            .device_for_access_token(tokens.access, NOW)
            .await
            .expect("lookup"),
        None
    );
    assert_eq!(
        store
            .device_for_access_token(again.access, NOW)
            .await
            .expect("lookup"),
        Some(phone)
    );
    assert_eq!(
        store.spaces_of(user("alice")).await.expect("spaces").len(),
        1
    );
}

/// A refresh token is spent once; presenting it again revokes the device.
pub async fn refresh_rotates_and_reuse_revokes(harness: &dyn StoreHarness) {
    let (store, listener) = open(harness).await;
    let phone = device("alice", "phone");
    let laptop = device("alice", "laptop");
    let first = register(store.as_ref(), &phone, "1").await;
    let other = register(store.as_ref(), &laptop, "l").await;
    let (next, second) = credentials("2", NOW + 60_000);
    assert_eq!(
        store
            .refresh_credentials(first.refresh, next, NOW)
            .await
            .expect("refresh"),
        RefreshOutcome::Rotated(phone.clone())
    );
    assert!(
        store
            .device_for_access_token(second.access, NOW)
            .await
            .expect("lookup")
            .is_some()
    );
    listener.take();
    let (unused, _) = credentials("3", NOW + 60_000);
    assert_eq!(
        store
            .refresh_credentials(first.refresh, unused, NOW)
            .await
            .expect("refresh"),
        RefreshOutcome::Reused(phone.clone())
    );
    assert_eq!(
        listener.take_n(1).await,
        vec![StoreEvent::DeviceRevoked(phone.clone())]
    );
    assert_eq!(
        store
            .device_for_access_token(second.access, NOW)
            .await
            .expect("lookup"),
        None
    );
    let (unused, _) = credentials("4", NOW + 60_000);
    assert_eq!(
        store
            .refresh_credentials(second.refresh, unused, NOW)
            .await
            .expect("refresh"),
        RefreshOutcome::Unknown
    );
    assert!(
        store
            .device_for_access_token(other.access, NOW)
            .await
            .expect("lookup")
            .is_some(),
        "other devices are untouched"
    );
    let (unused, _) = credentials("5", NOW + 60_000);
    assert_eq!(
        store
            .refresh_credentials(other.refresh, unused, NOW + 120_000)
            .await
            .expect("refresh"),
        RefreshOutcome::Expired
    );
}

/// Owners add and remove, members leave, outsiders learn nothing.
pub async fn spaces_and_membership_follow_the_rules(harness: &dyn StoreHarness) {
    let (store, listener) = open(harness).await;
    for (u, d) in [("alice", "a"), ("bob", "b"), ("carol", "c"), ("dave", "d")] {
        register(store.as_ref(), &device(u, d), u).await;
    }
    let team = shared("team");
    let created = store
        .create_space(user("alice"), team.clone())
        .await
        .expect("create");
    assert_eq!(created.members, vec![user("alice")]);
    assert!(matches!(
        store.create_space(user("bob"), team.clone()).await,
        Err(StoreError::AlreadyExists(_))
    ));
    assert!(matches!(
        store.create_space(user("bob"), personal("carol")).await,
        Err(StoreError::InvalidRequest(_))
    ));
    listener.take_n(1).await;
    let added = store
        .add_member(user("alice"), team.clone(), user("bob"))
        .await
        .expect("add");
    assert_eq!(added.members, vec![user("alice"), user("bob")]);
    match listener.take_n(1).await.as_slice() {
        [
            StoreEvent::MembershipChanged {
                user: u,
                space,
                member: true,
                spaces,
            },
        ] => {
            assert_eq!(u, &user("bob"));
            assert_eq!(space, &team);
            assert_eq!(spaces, &vec![personal("bob"), team.clone()]);
        }
        other => panic!("expected one membership event, got {other:?}"),
    }
    // Adding again changes nothing and announces nothing: the next
    // announcement is that of the next real change.
    store
        .add_member(user("alice"), team.clone(), user("bob"))
        .await
        .expect("add");
    store
        .add_member(user("alice"), team.clone(), user("dave"))
        .await
        .expect("add");
    match listener.take_n(1).await.as_slice() {
        [StoreEvent::MembershipChanged { user: u, .. }] => assert_eq!(u, &user("dave")),
        other => panic!("expected only dave's membership, got {other:?}"),
    }
    for (actor, space, member) in [
        ("bob", team.clone(), "carol"),
        ("carol", team.clone(), "carol"),
        ("carol", shared("missing"), "carol"),
        ("alice", personal("alice"), "bob"),
        ("carol", personal("alice"), "carol"),
    ] {
        assert!(
            matches!(
                store
                    .add_member(user(actor), space.clone(), user(member))
                    .await,
                Err(StoreError::Forbidden(_))
            ),
            "{actor} adds {member} to {space}"
        );
    }
    for (actor, member) in [("carol", "bob"), ("bob", "alice")] {
        assert!(matches!(
            store
                .remove_member(user(actor), team.clone(), user(member))
                .await,
            Err(StoreError::Forbidden(_))
        ));
    }
    assert!(matches!(
        store
            .remove_member(user("alice"), team.clone(), user("alice"))
            .await,
        Err(StoreError::InvalidRequest(_))
    ));
    assert!(matches!(
        store
            .remove_member(user("alice"), team.clone(), user("carol"))
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.space_members(user("carol"), team.clone()).await,
        Err(StoreError::Forbidden(_))
    ));
    assert_eq!(
        store
            .space_members(user("bob"), team.clone())
            .await
            .expect("members")
            .owner,
        user("alice")
    );
    let left = store
        .remove_member(user("bob"), team.clone(), user("bob"))
        .await
        .expect("leave");
    assert_eq!(left.members, vec![user("alice"), user("dave")]);
    assert!(matches!(
        listener.take_n(1).await.as_slice(),
        [StoreEvent::MembershipChanged { member: false, .. }]
    ));
    assert_eq!(store.spaces_of(user("bob")).await.expect("spaces").len(), 1);
}

/// Applied changes get the next revisions; the feed, head and checksum
/// follow.
pub async fn pushes_get_consecutive_revisions_and_the_feed_follows(harness: &dyn StoreHarness) {
    let (store, _) = open(harness).await;
    let id = device("alice", "phone");
    register(store.as_ref(), &id, "1").await;
    let space = personal("alice");
    let mut a = Author::new(id);
    let batch = vec![
        a.put(&space, "tasks", "t1", json!({"title": "one"})),
        a.put(&space, "tasks", "t2", json!({"title": "two"})),
        a.put(&space, "tasks", "t1", json!({"title": "one again"})),
        a.delete(&space, "tasks", "t2"),
    ];
    let outcomes = push(store.as_ref(), &a, batch).await;
    assert_eq!(
        outcomes,
        (1..=4)
            .map(|rev| Outcome::Applied { rev })
            .collect::<Vec<_>>()
    );
    let pages = read_all(store.as_ref(), &user("alice"), &space, 0, 100).await;
    let page = &pages[0];
    assert!(!page.more);
    assert_eq!(page.position.head, 4);
    let revs: Vec<_> = page.changes.iter().map(|c| c.rev).collect();
    assert_eq!(
        revs,
        vec![3, 4],
        "each document once, at its latest version"
    );
    assert!(page.changes[1].deleted);
    assert_eq!(page.changes[0].state.fields["title"], json!("one again"));
    assert_eq!(
        page.changes[0].origin.as_ref().map(|d| d.as_str()),
        Some("phone")
    );
    assert_eq!(page.position.checksum, recompute(&pages));
    let since = store
        .read_changes(user("alice"), space.clone(), 3, PageLimit::changes(100))
        .await
        .expect("read");
    assert_eq!(
        since.changes.iter().map(|c| c.rev).collect::<Vec<_>>(),
        vec![4]
    );
}

/// A retry by the same device gets the recorded outcome; another device's
/// use of the same mutation id is refused.
pub async fn retries_get_the_recorded_outcome(harness: &dyn StoreHarness) {
    let (store, _) = open(harness).await;
    let phone = device("alice", "phone");
    register(store.as_ref(), &phone, "1").await;
    let space = personal("alice");
    let mut a = Author::new(phone);
    let m = a.put(&space, "notes", "n", json!({"v": 1}));
    let mut stale = a.put(&space, "contacts", "c", json!({"name": "Ann"}));
    stale.base_version = Some(7);
    let bad = a.put(&space, "contacts", "d", json!({}));
    let first = push(
        store.as_ref(),
        &a,
        vec![m.clone(), stale.clone(), bad.clone()],
    )
    .await;
    assert_eq!(first[0], Outcome::Applied { rev: 1 });
    assert!(matches!(first[1], Outcome::Conflict { document: None }));
    assert!(matches!(
        first[2],
        Outcome::Rejected {
            code: RejectCode::ValidationFailed,
            ..
        }
    ));
    let again = push(store.as_ref(), &a, vec![m.clone(), stale, bad, m.clone()]).await;
    assert_eq!(again[0], Outcome::Duplicate { rev: 1 });
    assert_eq!(again[1], first[1]);
    assert_eq!(again[2], first[2]);
    assert_eq!(again[3], Outcome::Duplicate { rev: 1 });
    let head = store
        .read_changes(user("alice"), space.clone(), 0, PageLimit::changes(10))
        .await
        .expect("read")
        .position
        .head;
    assert_eq!(head, 1, "applied once");

    let laptop = device("alice", "laptop");
    register(store.as_ref(), &laptop, "2").await;
    let mut other = m;
    other.device_id = laptop.device.clone();
    let outcome = push(store.as_ref(), &Author::new(laptop), vec![other]).await;
    assert!(matches!(
        outcome[0],
        Outcome::Rejected {
            code: RejectCode::InvalidMutation,
            ..
        }
    ));
}

/// Membership and the author's device are checked for every mutation.
pub async fn writes_are_authorized_by_the_author(harness: &dyn StoreHarness) {
    let (store, listener) = open(harness).await;
    let alice = device("alice", "phone");
    let bob = device("bob", "phone");
    register(store.as_ref(), &alice, "a").await;
    register(store.as_ref(), &bob, "b").await;
    store
        .create_space(user("bob"), shared("bobs"))
        .await
        .expect("create");
    listener.take_n(1).await;
    let mut a = Author::new(alice.clone());
    let mut pretending = Author::new(device("alice", "other-device"));
    let batch = vec![
        a.put(&personal("bob"), "notes", "x", json!({})),
        a.put(&shared("bobs"), "notes", "x", json!({})),
        a.put(&shared("nowhere"), "notes", "x", json!({})),
        pretending.put(&personal("alice"), "notes", "x", json!({})),
    ];
    let outcomes = push(store.as_ref(), &a, batch).await;
    for outcome in &outcomes {
        assert!(
            matches!(
                outcome,
                Outcome::Rejected {
                    code: RejectCode::Forbidden,
                    ..
                }
            ),
            "{outcome:?}"
        );
    }
    // Nothing was committed: the next announcement is the next real write.
    let valid = a.put(&personal("alice"), "notes", "ok", json!({}));
    assert_eq!(
        push(store.as_ref(), &a, vec![valid]).await,
        vec![Outcome::Applied { rev: 1 }]
    );
    assert_eq!(announced_revs(&listener.take_n(1).await), vec![1]);
    assert!(matches!(
        store
            .read_changes(user("alice"), personal("bob"), 0, PageLimit::changes(10))
            .await,
        Err(StoreError::Forbidden(_))
    ));
    assert!(matches!(
        store
            .read_changes(user("alice"), shared("nowhere"), 0, PageLimit::changes(10))
            .await,
        Err(StoreError::Forbidden(_))
    ));
    let positions = store
        .feed_positions(
            user("alice"),
            vec![personal("alice"), personal("bob"), shared("bobs")],
        )
        .await
        .expect("positions");
    assert_eq!(positions.len(), 1);
    assert_eq!(positions[0].0, personal("alice"));
    let bobs = store
        .read_changes(user("bob"), personal("bob"), 0, PageLimit::changes(10))
        .await
        .expect("read");
    assert!(bobs.changes.is_empty());
}

/// Policies, field rules and the size limit decide; unchanged outcomes do
/// not use a revision.
pub async fn policies_rules_and_limits_decide(harness: &dyn StoreHarness) {
    let (store, _) = open(harness).await;
    let id = device("alice", "phone");
    register(store.as_ref(), &id, "1").await;
    let space = personal("alice");
    let mut a = Author::new(id);
    let create = a.put(&space, "messages", "m", json!({"text": "hi"}));
    let recreate = a.put(&space, "messages", "m", json!({"text": "other"}));
    let newer = a.put(&space, "notes", "n", json!({"v": 2}));
    let mut older = a.put(&space, "notes", "n", json!({"v": 1}));
    older.hlc = Hlc::new(1, 0, older.device_id.clone());
    let contact = a.put(&space, "contacts", "c", json!({"name": "Ann"}));
    let mut update = a.put(&space, "contacts", "c", json!({"name": "Bea"}));
    update.base_version = Some(3);
    let too_long = a.put(&space, "contacts", "d", json!({"name": "x".repeat(21)}));
    let huge = a.put(&space, "notes", "big", json!({"blob": "x".repeat(5_000)}));
    let patch_message = a.mutation(
        &space,
        "messages",
        "m",
        Op::Patch {
            fields: serde_json::Map::new(),
        },
    );
    let outcomes = push(
        store.as_ref(),
        &a,
        vec![
            create,
            recreate,
            newer,
            older,
            contact,
            update,
            too_long,
            huge,
            patch_message,
        ],
    )
    .await;
    assert_eq!(outcomes[0], Outcome::Applied { rev: 1 });
    assert_eq!(outcomes[1], Outcome::Duplicate { rev: 1 });
    assert_eq!(outcomes[2], Outcome::Applied { rev: 2 });
    assert_eq!(
        outcomes[3],
        Outcome::Applied { rev: 2 },
        "an older lww write changes nothing"
    );
    assert_eq!(outcomes[4], Outcome::Applied { rev: 3 });
    assert_eq!(outcomes[5], Outcome::Applied { rev: 4 });
    assert!(
        matches!(&outcomes[6], Outcome::Rejected { code: RejectCode::ValidationFailed, field: Some(f), .. } if f == "name")
    );
    assert!(matches!(
        outcomes[7],
        Outcome::Rejected {
            code: RejectCode::DocumentTooLarge,
            ..
        }
    ));
    assert!(matches!(
        outcomes[8],
        Outcome::Rejected {
            code: RejectCode::UpdateNotAllowed,
            ..
        }
    ));
    let page = store
        .read_changes(user("alice"), space, 0, PageLimit::changes(100))
        .await
        .expect("read");
    assert_eq!(page.position.head, 4);
}

/// Pages of the feed are in revision order, flagged `more`, and include
/// tombstones.
pub async fn the_feed_pages_and_keeps_tombstones(harness: &dyn StoreHarness) {
    let (store, _) = open(harness).await;
    let id = device("alice", "phone");
    register(store.as_ref(), &id, "1").await;
    let space = personal("alice");
    let mut a = Author::new(id);
    let mut batch: Vec<_> = (0..7)
        .map(|i| a.put(&space, "t", &format!("d{i}"), json!({"i": i})))
        .collect();
    batch.push(a.delete(&space, "t", "d3"));
    push(store.as_ref(), &a, batch).await;
    let pages = read_all(store.as_ref(), &user("alice"), &space, 0, 3).await;
    assert_eq!(pages.len(), 3);
    assert!(pages[0].more && pages[1].more && !pages[2].more);
    let revs: Vec<u64> = pages
        .iter()
        .flat_map(|p| p.changes.iter().map(|c| c.rev))
        .collect();
    assert_eq!(revs, vec![1, 2, 3, 5, 6, 7, 8]);
    assert!(
        pages[2]
            .changes
            .last()
            .is_some_and(|c| c.deleted && c.doc_id.as_str() == "d3")
    );
    assert_eq!(pages[2].position.checksum, recompute(&pages));
    let empty = store
        .read_changes(user("alice"), space, 8, PageLimit::changes(3))
        .await
        .expect("read");
    assert!(empty.changes.is_empty() && !empty.more);
}

/// A page ends before its changes pass its byte limit (and at its change
/// limit), but always holds one change; reading page after page gives every
/// change once, and `more` says whether one follows.
pub async fn pages_end_before_their_byte_limit(harness: &dyn StoreHarness) {
    let (store, _) = open(harness).await;
    let id = device("alice", "phone");
    register(store.as_ref(), &id, "1").await;
    let space = personal("alice");
    let mut a = Author::new(id);
    // Long enough for PostgreSQL to store the states compressed.
    let blob = "x".repeat(3_000);
    let batch: Vec<_> = (0..9)
        .map(|i| a.put(&space, "blobs", &format!("b{i}"), json!({"blob": blob})))
        .collect();
    push(store.as_ref(), &a, batch).await;
    let all = store
        .read_changes(user("alice"), space.clone(), 0, PageLimit::changes(100))
        .await
        .expect("read");
    let one = PageLimit::bytes_of(&all.changes[0]);
    assert!(one > 3_000 && one < 3_400, "{one}");

    // Room for two and a half changes: pages of two.
    let limit = PageLimit {
        changes: 100,
        bytes: one * 5 / 2,
    };
    let mut after = 0;
    let mut pages = Vec::new();
    loop {
        let page = store
            .read_changes(user("alice"), space.clone(), after, limit)
            .await
            .expect("read");
        let bytes: usize = page.changes.iter().map(PageLimit::bytes_of).sum();
        assert!(bytes <= limit.bytes, "{bytes} > {}", limit.bytes);
        assert!(!page.changes.is_empty());
        after = page.changes.last().map_or(after, |c| c.rev);
        let more = page.more;
        pages.push(page);
        if !more {
            break;
        }
    }
    assert_eq!(
        pages.iter().map(|p| p.changes.len()).collect::<Vec<_>>(),
        vec![2, 2, 2, 2, 1]
    );
    let revs: Vec<u64> = pages
        .iter()
        .flat_map(|p| p.changes.iter().map(|c| c.rev))
        .collect();
    assert_eq!(revs, (1..=9).collect::<Vec<_>>());
    assert_eq!(pages[4].position.checksum, recompute(&pages));

    // The change limit still counts, whichever comes first.
    let page = store
        .read_changes(
            user("alice"),
            space.clone(),
            0,
            PageLimit {
                changes: 1,
                bytes: usize::MAX,
            },
        )
        .await
        .expect("read");
    assert_eq!((page.changes.len(), page.more), (1, true));

    // A limit smaller than any change: one change a page, never none.
    let tiny = PageLimit {
        changes: 100,
        bytes: 10,
    };
    let page = store
        .read_changes(user("alice"), space.clone(), 7, tiny)
        .await
        .expect("read");
    assert_eq!(
        (
            page.changes.iter().map(|c| c.rev).collect::<Vec<_>>(),
            page.more
        ),
        (vec![8], true)
    );
    let last = store
        .read_changes(user("alice"), space.clone(), 8, tiny)
        .await
        .expect("read");
    assert_eq!(
        (
            last.changes.iter().map(|c| c.rev).collect::<Vec<_>>(),
            last.more
        ),
        (vec![9], false)
    );
}

/// A clock reading further ahead of the server's clock than the rules allow
/// is `rejected clock_skew`, one naming another device `invalid_mutation`:
/// nothing is written, nothing announced, and (the refusal depends on the
/// moment) nothing recorded, so the same mutation is applied once the
/// server's clock has caught up with it. A reading ahead within the bound
/// is applied.
pub async fn clock_readings_ahead_or_of_another_device_are_refused(harness: &dyn StoreHarness) {
    let (store, listener) = open(harness).await;
    let phone = device("alice", "phone");
    register(store.as_ref(), &phone, "1").await;
    let space = personal("alice");
    let mut a = Author::new(phone.clone());
    let skew = rules().max_clock_skew_ms;

    let mut future = a.put(&space, "notes", "n", json!({"v": "future"}));
    future.hlc.millis = NOW + skew + 1;
    let mut forged = a.put(&space, "notes", "n", json!({"v": "forged"}));
    forged.hlc.node = DeviceId::new("laptop").expect("valid device");
    let mut ahead = a.put(&space, "notes", "m", json!({"v": "ahead"}));
    ahead.hlc.millis = NOW + skew;
    let outcomes = push(
        store.as_ref(),
        &a,
        vec![future.clone(), forged.clone(), ahead],
    )
    .await;
    let Outcome::Rejected {
        code,
        reason,
        field,
        ..
    } = &outcomes[0]
    else {
        panic!("{:?}", outcomes[0])
    };
    assert_eq!((*code, field), (RejectCode::ClockSkew, &None));
    assert!(reason.contains("ahead of the server's clock"), "{reason}");
    assert!(matches!(
        &outcomes[1],
        Outcome::Rejected { code: RejectCode::InvalidMutation, reason, .. } if reason.contains("laptop")
    ));
    assert_eq!(outcomes[2], Outcome::Applied { rev: 1 }, "within the bound");
    let events = listener.take_n(1).await;
    assert_eq!(announced_revs(&events), vec![1]);
    let page = store
        .read_changes(user("alice"), space.clone(), 0, PageLimit::changes(10))
        .await
        .expect("read");
    assert_eq!(page.position.head, 1, "nothing of the refused ones");
    assert_eq!(page.changes.len(), 1);
    assert_eq!(page.changes[0].doc_id.as_str(), "m");

    // The same mutations, later: the clock reading is no longer ahead.
    let later = store
        .push(phone.clone(), vec![future, forged], NOW + skew + 1)
        .await
        .expect("push")
        .into_iter()
        .map(|r| r.outcome)
        .collect::<Vec<_>>();
    assert_eq!(later[0], Outcome::Applied { rev: 2 }, "not recorded");
    assert!(matches!(
        later[1],
        Outcome::Rejected {
            code: RejectCode::InvalidMutation,
            ..
        }
    ));
}

/// Registering a new device of a user who has the most devices allowed is
/// refused with `TooManyDevices` (nothing stored); registering a device
/// again never counts twice, other users are not affected, and revoking a
/// device frees a place.
pub async fn a_user_has_at_most_the_allowed_devices(harness: &dyn StoreHarness) {
    let (store, _) = open(harness).await;
    let register_with = |id: DeviceIdentity, seed: &'static str, max: usize| {
        let store = store.clone();
        async move {
            let (creds, tokens) = credentials(seed, NOW + 60_000);
            store
                .register_device(
                    DeviceRegistration {
                        identity: id,
                        name: seed.into(),
                        platform: "test".into(),
                        app_version: "1".into(),
                    },
                    creds,
                    max,
                    NOW,
                )
                .await
                .map(|()| tokens)
        }
    };
    for (name, seed) in [("phone", "p"), ("tablet", "t"), ("laptop", "l")] {
        register_with(device("alice", name), seed, 3)
            .await
            .expect("within the cap");
    }
    let refused = register_with(device("alice", "watch"), "w", 3).await;
    let Err(StoreError::TooManyDevices(message)) = &refused else {
        panic!("{:?}", refused.err())
    };
    assert!(
        message.contains("at most 3") && message.contains("revoke"),
        "{message}"
    );
    assert_eq!(
        StoreError::TooManyDevices(String::new()).code(),
        tandem_protocol::ErrorCode::TooManyDevices
    );
    let tokens = credentials("w", NOW + 60_000).1;
    assert_eq!(
        store
            .device_for_access_token(tokens.access, NOW)
            .await
            .expect("lookup"),
        None,
        "nothing of the refused device was stored"
    );
    assert_eq!(
        store.devices_of(user("alice")).await.expect("list").len(),
        3
    );
    // Registering a device again is not a new place.
    let again = register_with(device("alice", "phone"), "p2", 3)
        .await
        .expect("registering again");
    assert_eq!(
        store
            .device_for_access_token(again.access, NOW)
            .await
            .expect("lookup"),
        Some(device("alice", "phone"))
    );
    // Another user has places of their own.
    register_with(device("bob", "phone"), "b", 3)
        .await
        .expect("another user");
    // Revoking frees a place; the revoked device stays refused.
    store
        .revoke_device(device("alice", "tablet"))
        .await
        .expect("revoke");
    register_with(device("alice", "watch"), "w2", 3)
        .await
        .expect("a place was freed");
    assert!(matches!(
        register_with(device("alice", "tablet"), "t2", 10).await,
        Err(StoreError::Revoked(_))
    ));
    assert!(matches!(
        register_with(device("alice", "ring"), "r", 3).await,
        Err(StoreError::TooManyDevices(_))
    ));
    store.close().await.expect("close");
}

/// Compaction purges tombstones and raises the horizon to the newest purged
/// version; live documents and the checksum are untouched.
pub async fn compaction_purges_tombstones_and_raises_the_horizon(harness: &dyn StoreHarness) {
    let (store, _) = open(harness).await;
    let id = device("alice", "phone");
    register(store.as_ref(), &id, "1").await;
    let space = personal("alice");
    let mut a = Author::new(id);
    let batch = vec![
        a.put(&space, "t", "a", json!({})),
        a.put(&space, "t", "b", json!({})),
        a.delete(&space, "t", "a"),
        a.put(&space, "t", "c", json!({})),
        a.delete(&space, "t", "c"),
        a.put(&space, "t", "d", json!({})),
    ];
    push(store.as_ref(), &a, batch).await;
    let before = store
        .read_changes(user("alice"), space.clone(), 0, PageLimit::changes(100))
        .await
        .expect("read");
    let report = store
        .compact(CompactionRule {
            tombstones_before_ms: None,
            tombstones_up_to_rev: Some(3),
            mutations_before_ms: Some(NOW + 1),
            credentials_before_ms: None,
        })
        .await
        .expect("compact");
    assert_eq!(report.tombstones, 1);
    assert_eq!(report.mutations, 6);
    let after = store
        .read_changes(user("alice"), space.clone(), 0, PageLimit::changes(100))
        .await
        .expect("read");
    assert_eq!(after.position.horizon, 3);
    assert_eq!(after.position.head, 6);
    assert_eq!(after.position.checksum, before.position.checksum);
    assert_eq!(
        after.changes.iter().map(|c| c.rev).collect::<Vec<_>>(),
        vec![2, 5, 6]
    );
    let report = store
        .compact(CompactionRule {
            tombstones_before_ms: Some(NOW + 1),
            tombstones_up_to_rev: None,
            mutations_before_ms: None,
            credentials_before_ms: Some(NOW + 120_000),
        })
        .await
        .expect("compact");
    assert_eq!(report.tombstones, 1);
    assert_eq!(report.credentials, 2);
    let after = store
        .read_changes(user("alice"), space, 0, PageLimit::changes(100))
        .await
        .expect("read");
    assert_eq!(after.position.horizon, 5);
}

/// Each commit is announced once, in order, with the checksum after its
/// last change.
pub async fn commits_are_announced_in_order(harness: &dyn StoreHarness) {
    let (store, listener) = open(harness).await;
    let id = device("alice", "phone");
    register(store.as_ref(), &id, "1").await;
    listener.take();
    let space = personal("alice");
    let mut a = Author::new(id);
    for i in 0..5 {
        let batch = vec![
            a.put(&space, "t", &format!("x{i}"), json!({})),
            a.put(&space, "t", &format!("y{i}"), json!({})),
        ];
        push(store.as_ref(), &a, batch).await;
    }
    let mut revs = Vec::new();
    let mut last_checksum = None;
    for event in listener.take_when(|e| announced_revs(e).len() >= 10).await {
        let StoreEvent::Changes(batch) = event else {
            panic!("unexpected {event:?}")
        };
        assert_eq!(batch.space, space);
        revs.extend(batch.changes.iter().map(|c| c.rev));
        last_checksum = Some(batch.checksum);
    }
    assert_eq!(revs, (1..=10).collect::<Vec<_>>());
    let page = store
        .read_changes(user("alice"), space, 0, PageLimit::changes(100))
        .await
        .expect("read");
    assert_eq!(last_checksum, Some(page.position.checksum));
}

/// Concurrent pushes from many devices (grouped into shared transactions)
/// get distinct, consecutive revisions.
pub async fn concurrent_pushes_get_distinct_revisions(harness: &dyn StoreHarness) {
    let (store, listener) = open(harness).await;
    let owner = device("alice", "d0");
    register(store.as_ref(), &owner, "0").await;
    store
        .create_space(user("alice"), shared("busy"))
        .await
        .expect("create");
    let space = shared("busy");
    let mut tasks = Vec::new();
    for d in 0..8 {
        let store = store.clone();
        let space = space.clone();
        tasks.push(tokio::spawn(async move {
            let mut a = Author::new(device("alice", &format!("d{d}")));
            let mut revs = Vec::new();
            for i in 0..10 {
                let m = a.put(&space, "t", &format!("{d}-{i}"), json!({}));
                for outcome in push(store.as_ref(), &a, vec![m]).await {
                    match outcome {
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
        all.extend(task.await.expect("task"));
    }
    all.sort_unstable();
    assert_eq!(all, (1..=80).collect::<Vec<_>>());
    let announced = announced_revs(&listener.take_when(|e| announced_revs(e).len() >= 80).await);
    assert_eq!(announced, (1..=80).collect::<Vec<_>>());
}

/// What was committed is there after the store is closed and reopened.
pub async fn data_survives_a_reopen(harness: &dyn StoreHarness) {
    let (store, _) = open(harness).await;
    let id = device("alice", "phone");
    let tokens = register(store.as_ref(), &id, "1").await;
    let space = personal("alice");
    let mut a = Author::new(id.clone());
    let m = a.put(&space, "t", "kept", json!({"v": 1}));
    push(store.as_ref(), &a, vec![m.clone()]).await;
    let before = store
        .read_changes(user("alice"), space.clone(), 0, PageLimit::changes(10))
        .await
        .expect("read");
    store.close().await.expect("close");
    drop(store);
    let (store, _) = open(harness).await;
    let after = store
        .read_changes(user("alice"), space, 0, PageLimit::changes(10))
        .await
        .expect("read");
    assert_eq!(after, before);
    assert_eq!(
        store
            .device_for_access_token(tokens.access, NOW)
            .await
            .expect("lookup"),
        Some(id)
    );
    assert_eq!(
        push(store.as_ref(), &a, vec![m]).await,
        vec![Outcome::Duplicate { rev: 1 }]
    );
}

/// After `close`, calls fail with `Closed`.
pub async fn a_closed_store_refuses_work(harness: &dyn StoreHarness) {
    let (store, _) = open(harness).await;
    let id = device("alice", "phone");
    register(store.as_ref(), &id, "1").await;
    store.close().await.expect("close");
    let mut a = Author::new(id);
    let m = a.put(&personal("alice"), "t", "x", json!({}));
    assert_eq!(
        store.push(a.id.clone(), vec![m], NOW).await,
        Err(StoreError::Closed)
    );
    assert_eq!(
        store
            .read_changes(user("alice"), personal("alice"), 0, PageLimit::changes(10))
            .await,
        Err(StoreError::Closed)
    );
}

// ---- Device coordination ------------------------------------------------
//
// These cases use the wall clock: a PostgreSQL store decides leases and
// windows by the database's clock, whatever time the caller passes.

/// Leases that do not run out during a case, however slowly a loaded
/// machine runs it: a fence is admitted only under a running lease, and a
/// claim takes over a lease that ran out.
const LEASES: Leases = Leases {
    role_ms: 60_000,
    presence_ms: 60_000,
};

/// A role lease a case lets run out.
const SHORT_LEASES: Leases = Leases {
    role_ms: 300,
    presence_ms: 60_000,
};

fn wall() -> u64 {
    crate::state::now_ms()
}

async fn connect(store: &dyn CoordinationStore, id: &DeviceIdentity) {
    store
        .presence_connected(
            "instance-1".into(),
            PresenceStamp {
                device: id.clone(),
                last_active: wall(),
            },
            LEASES,
        )
        .await
        .expect("presence");
}

async fn role(
    store: &dyn CoordinationStore,
    actor: &DeviceIdentity,
    request: RoleRequest,
) -> Result<super::RoleChange, StoreError> {
    role_with(store, actor, request, LEASES).await
}

async fn role_with(
    store: &dyn CoordinationStore,
    actor: &DeviceIdentity,
    request: RoleRequest,
    leases: Leases,
) -> Result<super::RoleChange, StoreError> {
    store
        .change_role(actor.clone(), "responder".into(), request, leases)
        .await
}

/// Alice's phone and tablet, registered and connected.
async fn phone_and_tablet_online(store: &dyn Store) -> (DeviceIdentity, DeviceIdentity) {
    let phone = device("alice", "phone");
    let tablet = device("alice", "tablet");
    register(store, &phone, "p").await;
    register(store, &tablet, "t").await;
    connect(store, &phone).await;
    connect(store, &tablet).await;
    (phone, tablet)
}

fn holder(change: &super::RoleChange) -> Option<&str> {
    change.state.holder.as_ref().map(DeviceId::as_str)
}

/// Claims, releases, handoffs, renewals and lost holders move the role as
/// `roles::decide` says, the epoch only grows (also across a reopen), and
/// every change of holder is announced.
pub async fn roles_move_with_claims_releases_and_lost_holders(harness: &dyn StoreHarness) {
    let (store, listener) = open(harness).await;
    let (phone, tablet) = phone_and_tablet_online(store.as_ref()).await;

    let claimed = role(store.as_ref(), &phone, RoleRequest::Claim { priority: 0 })
        .await
        .expect("claim");
    assert_eq!(
        (holder(&claimed), claimed.state.epoch, claimed.changed),
        (Some("phone"), 1, true)
    );
    let second = role(store.as_ref(), &tablet, RoleRequest::Claim { priority: 0 })
        .await
        .expect("claim");
    assert_eq!(
        (holder(&second), second.state.epoch, second.changed),
        (Some("phone"), 1, false)
    );
    // Only the holder renews, and only at its epoch; only it hands off.
    role(store.as_ref(), &phone, RoleRequest::Renew { epoch: 1 })
        .await
        .expect("renew");
    assert!(matches!(
        role(store.as_ref(), &tablet, RoleRequest::Renew { epoch: 1 }).await,
        Err(StoreError::StaleEpoch(_))
    ));
    assert!(matches!(
        role(
            store.as_ref(),
            &tablet,
            RoleRequest::Handoff {
                to: phone.device.clone()
            }
        )
        .await,
        Err(StoreError::StaleEpoch(_))
    ));
    // Release: the next candidate takes it.
    let released = role(store.as_ref(), &phone, RoleRequest::Release)
        .await
        .expect("release");
    assert_eq!(
        (holder(&released), released.state.epoch),
        (Some("tablet"), 2)
    );
    // Handoff to a connected device, with a short lease.
    let handed = role_with(
        store.as_ref(),
        &tablet,
        RoleRequest::Handoff {
            to: phone.device.clone(),
        },
        SHORT_LEASES,
    )
    .await
    .expect("handoff");
    assert_eq!((holder(&handed), handed.state.epoch), (Some("phone"), 3));
    // The phone stops renewing: when its lease runs out the role is due for
    // a check, and the tablet takes it although the phone is connected.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let due = loop {
        let due = store.roles_to_check().await.expect("due");
        if !due.is_empty() || tokio::time::Instant::now() > deadline {
            break due;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(due, vec![(user("alice"), "responder".to_owned())]);
    let checked = role(store.as_ref(), &tablet, RoleRequest::Check)
        .await
        .expect("check");
    assert_eq!((holder(&checked), checked.state.epoch), (Some("tablet"), 4));
    // The holder disconnects: the phone (a candidate since the handoff)
    // takes over.
    store
        .presence_disconnected("instance-1".into(), tablet.clone())
        .await
        .expect("leave");
    let checked = role(store.as_ref(), &tablet, RoleRequest::Check)
        .await
        .expect("check");
    assert_eq!((holder(&checked), checked.state.epoch), (Some("phone"), 5));
    let announced = listener
        .take_coordination_when(|events| {
            events
                .iter()
                .filter(|e| matches!(e, StoreEvent::RoleChanged { .. }))
                .count()
                >= 5
        })
        .await;
    let epochs: Vec<u64> = announced
        .iter()
        .filter_map(|e| match e {
            StoreEvent::RoleChanged { state, .. } => Some(state.epoch),
            _ => None,
        })
        .collect();
    assert_eq!(epochs, vec![1, 2, 3, 4, 5]);
    store.close().await.expect("close");

    let (store, _) = open(harness).await;
    let roles = store.roles_of(user("alice")).await.expect("roles");
    assert_eq!(roles.len(), 1);
    assert_eq!(roles[0].epoch, 5, "the epoch survives a reopen");
    store.close().await.expect("close");
}

/// A role exists from its first claim: before it, a release or a check
/// changes nothing and leaves no row, and there is no holder to renew or
/// hand off.
pub async fn a_role_exists_from_its_first_claim(harness: &dyn StoreHarness) {
    let (store, _) = open(harness).await;
    let (phone, tablet) = phone_and_tablet_online(store.as_ref()).await;
    for request in [RoleRequest::Release, RoleRequest::Check] {
        let change = role(store.as_ref(), &phone, request).await.expect("answer");
        assert_eq!(
            (holder(&change), change.state.epoch, change.changed),
            (None, 0, false)
        );
    }
    for request in [
        RoleRequest::Renew { epoch: 0 },
        RoleRequest::Handoff {
            to: tablet.device.clone(),
        },
    ] {
        let refused = role(store.as_ref(), &phone, request).await;
        assert!(
            matches!(refused, Err(StoreError::StaleEpoch(_))),
            "{refused:?}"
        );
    }
    assert_eq!(store.roles_of(user("alice")).await.expect("roles"), vec![]);
    assert!(store.roles_to_check().await.expect("due").is_empty());
    let claimed = role(store.as_ref(), &tablet, RoleRequest::Claim { priority: 0 })
        .await
        .expect("claim");
    assert_eq!((holder(&claimed), claimed.state.epoch), (Some("tablet"), 1));
    let roles = store.roles_of(user("alice")).await.expect("roles");
    assert_eq!(roles, vec![claimed.state]);
    store.close().await.expect("close");
}

/// A fenced mutation is applied only for the holder at its epoch with a
/// running lease; otherwise it is `rejected stale_epoch` and nothing is
/// written.
pub async fn fences_admit_only_the_holder_at_its_epoch(harness: &dyn StoreHarness) {
    let (store, _) = open(harness).await;
    let (phone, tablet) = phone_and_tablet_online(store.as_ref()).await;
    role(store.as_ref(), &phone, RoleRequest::Claim { priority: 0 })
        .await
        .expect("claim");
    role(store.as_ref(), &tablet, RoleRequest::Claim { priority: 0 })
        .await
        .expect("claim");
    let fence = |epoch| RoleFence {
        role: "responder".into(),
        epoch,
    };
    let space = personal("alice");
    let mut by_phone = Author::new(phone.clone());
    let mut by_tablet = Author::new(tablet.clone());
    let fenced = |author: &mut Author, doc: &str, epoch: u64| {
        let mut m = author.put(&space, "replies", doc, json!({"text": doc}));
        m.fence = Some(fence(epoch));
        m
    };
    let good = fenced(&mut by_phone, "a", 1);
    let wrong_device = fenced(&mut by_tablet, "b", 1);
    let wrong_epoch = fenced(&mut by_phone, "c", 2);
    let outcomes = push(store.as_ref(), &by_phone, vec![good, wrong_epoch]).await;
    assert!(matches!(outcomes[0], Outcome::Applied { .. }));
    assert!(matches!(
        outcomes[1],
        Outcome::Rejected {
            code: RejectCode::StaleEpoch,
            ..
        }
    ));
    let outcomes = push(store.as_ref(), &by_tablet, vec![wrong_device]).await;
    assert!(matches!(
        outcomes[0],
        Outcome::Rejected {
            code: RejectCode::StaleEpoch,
            ..
        }
    ));
    // The phone loses the role: its old epoch is refused from then on.
    role(store.as_ref(), &phone, RoleRequest::Release)
        .await
        .expect("release");
    let late = fenced(&mut by_phone, "d", 1);
    let outcomes = push(store.as_ref(), &by_phone, vec![late]).await;
    assert!(matches!(
        outcomes[0],
        Outcome::Rejected {
            code: RejectCode::StaleEpoch,
            ..
        }
    ));
    let now_held = fenced(&mut by_tablet, "e", 2);
    let outcomes = push(store.as_ref(), &by_tablet, vec![now_held]).await;
    assert!(matches!(outcomes[0], Outcome::Applied { .. }));
    let pages = read_all(store.as_ref(), &user("alice"), &space, 0, 100).await;
    let written: Vec<String> = pages
        .iter()
        .flat_map(|p| p.changes.iter().map(|c| c.doc_id.to_string()))
        .collect();
    assert_eq!(written, vec!["a", "e"]);
    store.close().await.expect("close");
}

/// The guard answers `first` once per (user, hash) within the window, even
/// to concurrent callers, `first` again after the window, and refuses a
/// stale fence without recording anything.
pub async fn guards_answer_first_once_per_window(harness: &dyn StoreHarness) {
    let (store, _) = open(harness).await;
    let phone = device("alice", "phone");
    let tablet = device("alice", "tablet");
    let other = device("bob", "phone");
    for (id, seed) in [(&phone, "p"), (&tablet, "t"), (&other, "o")] {
        register(store.as_ref(), id, seed).await;
    }
    let guard = |store: Arc<dyn Store>, who: DeviceIdentity, hash: [u8; 32], window: u64| async move {
        store.guard(who, hash, window, None).await
    };
    let h = [7u8; 32];
    assert_eq!(
        guard(store.clone(), phone.clone(), h, 60_000)
            .await
            .expect("guard"),
        GuardVerdict::First
    );
    assert_eq!(
        guard(store.clone(), tablet.clone(), h, 60_000)
            .await
            .expect("guard"),
        GuardVerdict::Duplicate
    );
    assert_eq!(
        guard(store.clone(), phone.clone(), h, 60_000)
            .await
            .expect("guard"),
        GuardVerdict::Duplicate
    );
    // Another user's guard is separate.
    assert_eq!(
        guard(store.clone(), other.clone(), h, 60_000)
            .await
            .expect("guard"),
        GuardVerdict::First
    );
    // Ten at once: one first.
    let race = [9u8; 32];
    let answers = futures::future::join_all((0..10).map(|i| {
        let who = if i % 2 == 0 {
            phone.clone()
        } else {
            tablet.clone()
        };
        guard(store.clone(), who, race, 60_000)
    }))
    .await;
    let firsts = answers
        .iter()
        .filter(|a| matches!(a, Ok(GuardVerdict::First)))
        .count();
    assert_eq!(firsts, 1, "{answers:?}");
    // A short window runs out.
    let short = [3u8; 32];
    assert_eq!(
        guard(store.clone(), phone.clone(), short, 200)
            .await
            .expect("guard"),
        GuardVerdict::First
    );
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(
        guard(store.clone(), tablet.clone(), short, 200)
            .await
            .expect("guard"),
        GuardVerdict::First
    );
    // A stale fence records nothing.
    let fenced = [5u8; 32];
    let stale = store
        .guard(
            phone.clone(),
            fenced,
            60_000,
            Some(RoleFence {
                role: "responder".into(),
                epoch: 1,
            }),
        )
        .await;
    assert!(matches!(stale, Err(StoreError::StaleEpoch(_))), "{stale:?}");
    assert_eq!(
        guard(store.clone(), tablet.clone(), fenced, 60_000)
            .await
            .expect("guard"),
        GuardVerdict::First
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(store.sweep_guards().await.expect("sweep") >= 1);
    store.close().await.expect("close");
}

/// The registry lists a user's devices with their presence, follows
/// renames, forgets revoked devices (which cannot register again), and
/// push hints go to offline devices with a token, once per interval.
pub async fn the_registry_follows_presence_renames_and_revocation(harness: &dyn StoreHarness) {
    let (store, listener) = open(harness).await;
    let phone = device("alice", "phone");
    let tablet = device("alice", "tablet");
    register(store.as_ref(), &phone, "p").await;
    register(store.as_ref(), &tablet, "t").await;
    let listed = store.devices_of(user("alice")).await.expect("devices");
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|d| !d.online));
    connect(store.as_ref(), &phone).await;
    let listed = store.devices_of(user("alice")).await.expect("devices");
    let online: Vec<(&str, bool)> = listed
        .iter()
        .map(|d| (d.device_id.as_str(), d.online))
        .collect();
    assert_eq!(online, vec![("phone", true), ("tablet", false)]);
    store
        .rename_device(tablet.clone(), "Alice's iPad".into())
        .await
        .expect("rename");
    assert!(matches!(
        store
            .rename_device(device("alice", "nope"), "x".into())
            .await,
        Err(StoreError::NotFound(_))
    ));
    let listed = store.devices_of(user("alice")).await.expect("devices");
    assert_eq!(listed[0].name, "Alice's iPad", "sorted by name");
    listener
        .take_coordination_when(|events| {
            events.iter().any(|e| {
                matches!(e, StoreEvent::DevicesChanged { devices, .. }
                    if devices.iter().any(|d| d.name == "Alice's iPad"))
            })
        })
        .await;

    // Push hints: the offline tablet with a token gets one, then waits for
    // the interval.
    store
        .set_push_token(
            tablet.clone(),
            Some(PushToken {
                token: "tok".into(),
                provider: "apns".into(),
            }),
        )
        .await
        .expect("token");
    store
        .set_push_token(
            phone.clone(),
            Some(PushToken {
                token: "online".into(),
                provider: "fcm".into(),
            }),
        )
        .await
        .expect("token");
    let changed = |told_after_ms: u64| {
        vec![HintedSpace {
            space: personal("alice"),
            told_after_ms,
        }]
    };
    let claim = store
        .claim_push_hints(changed(wall()), 60_000)
        .await
        .expect("hints");
    assert_eq!(claim.ready.len(), 1, "only the offline device: {claim:?}");
    assert_eq!(claim.ready[0].device, tablet);
    assert_eq!(claim.ready[0].token.token, "tok");
    assert_eq!(claim.ready[0].spaces, vec![personal("alice")]);
    // A later change: held back by the interval until it passes.
    let again = store
        .claim_push_hints(changed(wall() + 60_000), 60_000)
        .await
        .expect("hints");
    assert!(again.ready.is_empty());
    assert!(again.retry_at.is_some());
    // With the interval passed, a device hinted after the changes is not
    // hinted again for them, and is for changes after its hint.
    let told = store.claim_push_hints(changed(1), 0).await.expect("hints");
    assert!(told.ready.is_empty(), "{told:?}");
    assert_eq!(told.retry_at, None);
    let newer = store
        .claim_push_hints(changed(wall() + 60_000), 0)
        .await
        .expect("hints");
    assert_eq!(newer.ready.len(), 1, "{newer:?}");

    // Revocation: gone from the list, no credentials, no registering again.
    store.revoke_device(tablet.clone()).await.expect("revoke");
    let listed = store.devices_of(user("alice")).await.expect("devices");
    assert_eq!(listed.len(), 1);
    let (creds, _) = credentials("again", NOW + 60_000);
    let again = store
        .register_device(
            DeviceRegistration {
                identity: tablet.clone(),
                name: "again".into(),
                platform: "test".into(),
                app_version: "1".into(),
            },
            creds,
            MAX_DEVICES,
            NOW,
        )
        .await;
    assert!(matches!(again, Err(StoreError::Revoked(_))), "{again:?}");
    store.close().await.expect("close");
}
