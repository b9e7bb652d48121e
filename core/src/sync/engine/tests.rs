//! Deterministic tests of the engine: a fake clock, seeded jitter, a real
//! store in a temporary directory, and no network. The "transport" is the
//! test itself: it reads the actions and feeds the events a server would
//! cause.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tandem_protocol::wire::{Ack, Changes, ErrorMessage, Limits, MutationResult, Outcome, Welcome};
use tandem_protocol::{
    Change, ClientMessage, Collection, CollectionPolicy, DeviceId, DocId, DocState, ErrorCode, Hlc,
    Mutation, MutationId, Op, Policy, RejectCode, ServerMessage, SpaceChecksum, SpaceId, UserId,
    merge,
};

use crate::clock::Clock;
use crate::document::DocRef;
use crate::store::test_support::open_store;
use crate::store::{OutboxState, Store, Write};
use crate::sync::backoff::SeededJitter;
use crate::sync::config::SyncTuning;
use crate::sync::conflict::{Conflict, ConflictHandler, Resolution};
use crate::sync::engine::Engine;
use crate::sync::interface::{Action, DisconnectReason, Event, Notice, Timer};

mod traces;

struct FakeClock(AtomicU64);

impl Clock for FakeClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    clock: Arc<FakeClock>,
    engine: Engine,
    /// The app's conflict handler: the rig answers the engine's questions
    /// the way the native driver does (the server's side without one).
    handler: Option<Arc<dyn ConflictHandler>>,
}

const START_MS: u64 = 1_000_000;

fn rig_with(tuning: SyncTuning) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open_store(dir.path()));
    let clock = Arc::new(FakeClock(AtomicU64::new(START_MS)));
    let engine = Engine::new(
        Arc::clone(&store),
        tuning,
        clock.clone(),
        Box::new(SeededJitter::new(42)),
    )
    .unwrap();
    Rig {
        _dir: dir,
        store,
        clock,
        engine,
        handler: None,
    }
}

fn rig() -> Rig {
    rig_with(SyncTuning::default())
}

fn space() -> SpaceId {
    SpaceId::personal(&UserId::new("alice").unwrap())
}

fn doc(collection: &str, id: &str) -> DocRef {
    DocRef {
        space: space(),
        collection: Collection::new(collection).unwrap(),
        id: DocId::new(id).unwrap(),
    }
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

impl Rig {
    /// Handles `event`, then answers every conflict question at once
    /// (appending what the answers cause).
    fn handle(&mut self, event: Event) -> Vec<Action> {
        let mut actions = self.engine.handle(event).unwrap();
        let mut i = 0;
        while i < actions.len() {
            if let Action::ResolveConflict { id, conflict } = &actions[i] {
                let resolution = match &self.handler {
                    Some(handler) => handler.resolve(conflict.clone()),
                    None => Resolution::KeepRemote,
                };
                let id = *id;
                let more = self
                    .engine
                    .handle(Event::ConflictResolved { id, resolution })
                    .unwrap();
                actions.extend(more);
            }
            i += 1;
        }
        actions
    }

    fn advance(&self, ms: u64) {
        self.clock.0.fetch_add(ms, Ordering::SeqCst);
    }

    /// Start, connect, welcome; returns the actions of the welcome.
    fn online(&mut self, policies: &[(&str, Policy)]) -> Vec<Action> {
        let actions = self.handle(Event::Start);
        assert!(actions.contains(&Action::Connect));
        let actions = self.handle(Event::Connected);
        assert!(matches!(sends(&actions)[0], ClientMessage::Hello(_)));
        self.handle(Event::FrameReceived(ServerMessage::Welcome(Welcome {
            protocol: 1,
            user: UserId::new("alice").unwrap(),
            device_id: self.store.identity().device_id.clone(),
            spaces: vec![space()],
            policies: policies
                .iter()
                .map(|(c, p)| (Collection::new(*c).unwrap(), CollectionPolicy::of(*p)))
                .collect(),
            reset_required: Vec::new(),
            limits: Limits {
                max_frame_bytes: 1 << 20,
                max_batch_mutations: 500,
                max_document_bytes: 1 << 20,
            },
        })))
    }

    fn write(&self, d: &DocRef, w: Write) {
        self.store.write(d, w).unwrap();
    }

    fn view(&self, d: &DocRef) -> Option<crate::LocalDocument> {
        self.store.get(d).unwrap()
    }

    fn frame(&mut self, message: ServerMessage) -> Vec<Action> {
        self.handle(Event::FrameReceived(message))
    }
}

fn sends(actions: &[Action]) -> Vec<&ClientMessage> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(m) => Some(m),
            _ => None,
        })
        .collect()
}

fn pushes(actions: &[Action]) -> Vec<(u64, Vec<Mutation>)> {
    sends(actions)
        .into_iter()
        .filter_map(|m| match m {
            ClientMessage::Push(p) => Some((p.batch_id, p.mutations.clone())),
            _ => None,
        })
        .collect()
}

fn scheduled(actions: &[Action], timer: Timer) -> Option<Duration> {
    actions.iter().rev().find_map(|a| match a {
        Action::Schedule { timer: t, after } if *t == timer => Some(*after),
        _ => None,
    })
}

/// A change another device made, with the state the server would send.
fn remote_change(d: &DocRef, rev: u64, millis: u64, op: Op, base: Option<&DocState>) -> Change {
    let other = DeviceId::new("other-device").unwrap();
    let m = Mutation {
        mutation_id: MutationId::generate(),
        space: d.space.clone(),
        collection: d.collection.clone(),
        doc_id: d.id.clone(),
        op,
        base_version: None,
        hlc: Hlc::new(millis, 0, other.clone()),
        device_id: other.clone(),
        fence: None,
    };
    let state = merge::apply_local(base, &m, &CollectionPolicy::lww())
        .unwrap()
        .unwrap();
    Change {
        space: m.space,
        rev,
        collection: m.collection,
        doc_id: m.doc_id,
        deleted: state.is_deleted(),
        state,
        origin: Some(other),
        mutation_id: Some(m.mutation_id),
    }
}

/// Another device's `put` of `fields` (a JSON object) into no earlier
/// state.
fn remote_put(d: &DocRef, rev: u64, millis: u64, fields: Value) -> Change {
    remote_change(
        d,
        rev,
        millis,
        Op::Put {
            fields: obj(fields),
        },
        None,
    )
}

/// The change the server makes of this device's own mutation.
fn own_change(m: &Mutation, rev: u64, base: Option<&DocState>) -> Change {
    let state = merge::apply_local(base, m, &CollectionPolicy::lww())
        .unwrap()
        .unwrap();
    Change {
        space: m.space.clone(),
        rev,
        collection: m.collection.clone(),
        doc_id: m.doc_id.clone(),
        deleted: state.is_deleted(),
        state,
        origin: Some(m.device_id.clone()),
        mutation_id: Some(m.mutation_id),
    }
}

fn checksum_of(docs: &[(&str, &str, u64)]) -> SpaceChecksum {
    let mut c = SpaceChecksum::default();
    for (collection, id, v) in docs {
        c.add(collection, id, *v);
    }
    c
}

fn live(changes: Vec<Change>, checksum: SpaceChecksum) -> ServerMessage {
    let head = changes.last().map(|c| c.rev);
    ServerMessage::Changes(Changes {
        space: space(),
        changes,
        more: false,
        checksum: Some(checksum),
        head,
        reset: false,
    })
}

fn empty_final_page(head: u64, checksum: SpaceChecksum) -> ServerMessage {
    ServerMessage::Changes(Changes {
        space: space(),
        changes: Vec::new(),
        more: false,
        checksum: Some(checksum),
        head: Some(head),
        reset: false,
    })
}

fn ack(batch_id: u64, results: Vec<(MutationId, Outcome)>) -> ServerMessage {
    ServerMessage::Ack(Ack {
        batch_id,
        results: results
            .into_iter()
            .map(|(mutation_id, outcome)| MutationResult {
                mutation_id,
                outcome,
            })
            .collect(),
    })
}

#[test]
fn reconnects_back_off_from_half_a_second_to_thirty_with_jitter() {
    let mut r = rig();
    assert_eq!(
        r.handle(Event::Start),
        vec![Action::Connect, Action::Notify(Notice::StatusChanged)]
    );
    let mut waits = Vec::new();
    for _ in 0..9 {
        let actions = r.handle(Event::Disconnected {
            reason: DisconnectReason::Transport("refused".into()),
        });
        let wait = scheduled(&actions, Timer::Reconnect).expect("a reconnect is scheduled");
        waits.push(wait);
        // Nothing connects before the timer fires.
        assert!(!actions.contains(&Action::Connect));
        assert!(
            r.handle(Event::TimerFired(Timer::Reconnect))
                .contains(&Action::Connect)
        );
    }
    let nominal = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0];
    for (wait, nominal) in waits.iter().zip(nominal) {
        let secs = wait.as_secs_f64();
        assert!(
            secs >= nominal && secs <= nominal * 1.2,
            "wait {secs} for nominal {nominal}"
        );
    }
    assert!(
        waits.iter().zip(nominal).any(|(w, n)| w.as_secs_f64() > n),
        "jitter spreads the waits"
    );
    // A welcome resets the count.
    r.handle(Event::Connected);
    r.online_welcome_only();
    let actions = r.handle(Event::Disconnected {
        reason: DisconnectReason::Transport("gone".into()),
    });
    assert!(scheduled(&actions, Timer::Reconnect).unwrap() <= Duration::from_millis(600));
}

impl Rig {
    fn online_welcome_only(&mut self) {
        self.frame(ServerMessage::Welcome(Welcome {
            protocol: 1,
            user: UserId::new("alice").unwrap(),
            device_id: self.store.identity().device_id.clone(),
            spaces: vec![space()],
            policies: Default::default(),
            reset_required: Vec::new(),
            limits: Limits {
                max_frame_bytes: 1 << 20,
                max_batch_mutations: 500,
                max_document_bytes: 1 << 20,
            },
        }));
    }
}

#[test]
fn the_network_coming_back_connects_at_once_with_the_backoff_reset() {
    let mut r = rig();
    r.online(&[]);
    // Lost: the engine disconnects and schedules nothing while offline.
    let actions = r.handle(Event::NetworkChanged(false));
    assert!(actions.contains(&Action::Disconnect));
    assert!(scheduled(&actions, Timer::Reconnect).is_none());
    assert!(
        !r.handle(Event::TimerFired(Timer::Reconnect))
            .contains(&Action::Connect)
    );
    // Several failures pile up backoff...
    r.handle(Event::NetworkChanged(true));
    for _ in 0..5 {
        r.handle(Event::Disconnected {
            reason: DisconnectReason::Transport("refused".into()),
        });
        r.handle(Event::TimerFired(Timer::Reconnect));
    }
    r.handle(Event::Disconnected {
        reason: DisconnectReason::Transport("refused".into()),
    });
    // ...and the network coming back connects now, with the count reset.
    let actions = r.handle(Event::NetworkChanged(true));
    assert!(actions.contains(&Action::Connect));
    let actions = r.handle(Event::Disconnected {
        reason: DisconnectReason::Transport("refused".into()),
    });
    assert!(scheduled(&actions, Timer::Reconnect).unwrap() <= Duration::from_millis(600));
}

#[test]
fn a_silent_connection_is_pinged_then_dropped_and_reconnected() {
    let mut r = rig();
    r.online(&[]);
    r.advance(20_000);
    let actions = r.handle(Event::TimerFired(Timer::Heartbeat));
    assert!(matches!(sends(&actions)[..], [ClientMessage::Ping(_)]));
    assert!(!actions.contains(&Action::Disconnect));
    // Any frame counts as life.
    r.frame(ServerMessage::Pong(tandem_protocol::wire::Heartbeat {
        nonce: 1,
    }));
    r.advance(10_000);
    assert!(
        !r.handle(Event::TimerFired(Timer::Heartbeat))
            .contains(&Action::Disconnect)
    );
    r.advance(60_000);
    let actions = r.handle(Event::TimerFired(Timer::Heartbeat));
    assert!(actions.contains(&Action::Disconnect));
    assert!(scheduled(&actions, Timer::Reconnect).is_some());
    // The server's ping is answered.
    r.handle(Event::TimerFired(Timer::Reconnect));
    r.handle(Event::Connected);
    let actions = r.frame(ServerMessage::Ping(tandem_protocol::wire::Heartbeat {
        nonce: 9,
    }));
    assert!(matches!(sends(&actions)[..], [ClientMessage::Pong(h)] if h.nonce == 9));
}

#[test]
fn transient_batch_errors_retry_with_backoff_until_the_attempt_limit() {
    let mut r = rig_with(SyncTuning {
        max_attempts: 3,
        ..SyncTuning::default()
    });
    let t1 = doc("tasks", "t1");
    r.write(&t1, Write::Put(obj(json!({"title": "milk"}))));
    let actions = r.online(&[]);
    let (batch, mutations) = pushes(&actions).remove(0);
    let id = mutations[0].mutation_id;
    let mut waits = Vec::new();
    let mut batch = batch;
    for attempt in 1..=2u64 {
        let actions = r.frame(ServerMessage::Error(ErrorMessage {
            code: ErrorCode::RateLimited,
            message: "slow down".into(),
            fatal: false,
            batch_id: Some(batch),
            space: None,
            request_id: None,
        }));
        let wait = scheduled(&actions, Timer::Retry).expect("a retry is scheduled");
        waits.push(wait);
        let entry = &r.store.pending_mutations().unwrap()[0];
        assert!(matches!(
            entry.state,
            OutboxState::Retrying { attempt: a, .. } if u64::from(a) == attempt
        ));
        // Not before it is due...
        assert!(pushes(&r.handle(Event::TimerFired(Timer::Retry))).is_empty() || wait.is_zero());
        r.advance(u64::try_from(wait.as_millis()).unwrap() + 1);
        // ...then the same mutation again.
        let again = pushes(&r.handle(Event::TimerFired(Timer::Retry)));
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].1[0].mutation_id, id);
        batch = again[0].0;
    }
    let secs: Vec<f64> = waits.iter().map(Duration::as_secs_f64).collect();
    assert!(secs[0] >= 1.0 && secs[0] <= 1.2, "{secs:?}");
    assert!(secs[1] >= 2.0 && secs[1] <= 2.4, "{secs:?}");
    // The third failure is the last attempt: failed, with the reason,
    // reported, and rolled back from the view.
    let actions = r.frame(ServerMessage::Error(ErrorMessage {
        code: ErrorCode::Internal,
        message: "boom".into(),
        fatal: false,
        batch_id: Some(batch),
        space: None,
        request_id: None,
    }));
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::Notify(Notice::MutationFailed(f)) if f.reason.contains("gave up after 3 attempts")
    )));
    let entry = &r.store.pending_mutations().unwrap()[0];
    assert!(matches!(&entry.state, OutboxState::Failed { reason } if reason.contains("internal")));
    assert!(r.view(&t1).is_none(), "a failed create is rolled back");
    assert_eq!(r.store.outbox_counts().unwrap(), (0, 1));
}

#[test]
fn a_dropped_connection_requeues_in_flight_entries_without_counting_an_attempt() {
    let mut r = rig();
    let t1 = doc("tasks", "t1");
    r.write(&t1, Write::Put(obj(json!({"n": 1}))));
    let actions = r.online(&[]);
    assert_eq!(pushes(&actions).len(), 1);
    r.handle(Event::Disconnected {
        reason: DisconnectReason::Transport("reset".into()),
    });
    assert_eq!(
        r.store.pending_mutations().unwrap()[0].state,
        OutboxState::Queued
    );
    r.handle(Event::TimerFired(Timer::Reconnect));
    let actions = r.online_again();
    let (_, again) = pushes(&actions).remove(0);
    assert_eq!(again.len(), 1, "sent again on the new connection");
}

impl Rig {
    fn online_again(&mut self) -> Vec<Action> {
        self.handle(Event::Connected);
        let device = self.store.identity().device_id.clone();
        self.frame(ServerMessage::Welcome(Welcome {
            protocol: 1,
            user: UserId::new("alice").unwrap(),
            device_id: device,
            spaces: vec![space()],
            policies: Default::default(),
            reset_required: Vec::new(),
            limits: Limits {
                max_frame_bytes: 1 << 20,
                max_batch_mutations: 500,
                max_document_bytes: 1 << 20,
            },
        }))
    }
}

#[test]
fn a_pending_edit_stays_on_top_of_a_remote_edit_until_and_after_its_ack() {
    let mut r = rig();
    let t1 = doc("tasks", "t1");
    // Confirmed: {a: 0, b: 0} at rev 1.
    let base = remote_put(&t1, 1, 1, json!({"a": 0, "b": 0}));
    let base_state = base.state.clone();
    r.store.apply_remote_changes(&[base]).unwrap();
    // The local edit of a, pending.
    r.write(&t1, Write::Patch(obj(json!({"a": "local"}))));
    let actions = r.online(&[]);
    let (batch, mutations) = pushes(&actions).remove(0);
    // Another device's edit of b arrives first.
    let remote = remote_change(
        &t1,
        2,
        2,
        Op::Patch {
            fields: obj(json!({"b": "remote"})),
        },
        Some(&base_state),
    );
    let after_remote = remote.state.clone();
    r.frame(live(vec![remote], checksum_of(&[("tasks", "t1", 2)])));
    let view = r.view(&t1).unwrap();
    assert_eq!(
        view.fields().unwrap(),
        obj(json!({"a": "local", "b": "remote"}))
    );
    assert!(view.pending);
    // The ack: the entry waits for its change, the view does not move.
    r.frame(ack(
        batch,
        vec![(mutations[0].mutation_id, Outcome::Applied { rev: 3 })],
    ));
    let view = r.view(&t1).unwrap();
    assert_eq!(
        view.fields().unwrap(),
        obj(json!({"a": "local", "b": "remote"}))
    );
    assert!(view.pending, "acknowledged, not yet confirmed");
    // The change carrying it confirms it.
    let own = own_change(&mutations[0], 3, Some(&after_remote));
    r.frame(live(vec![own], checksum_of(&[("tasks", "t1", 3)])));
    let view = r.view(&t1).unwrap();
    assert_eq!(
        view.fields().unwrap(),
        obj(json!({"a": "local", "b": "remote"}))
    );
    assert!(!view.pending);
    assert_eq!(view.version, Some(3));
    assert_eq!(r.store.outbox_counts().unwrap(), (0, 0));
}

#[test]
fn an_ack_at_a_revision_the_cursor_already_passed_removes_the_entry_at_once() {
    let mut r = rig();
    let t1 = doc("tasks", "t1");
    r.write(&t1, Write::Put(obj(json!({"n": 1}))));
    let actions = r.online(&[]);
    let (batch, mutations) = pushes(&actions).remove(0);
    // The cursor is at 5 (a catch-up page arrived meanwhile).
    let other = remote_change(
        &doc("tasks", "x"),
        5,
        1,
        Op::Put {
            fields: obj(json!({})),
        },
        None,
    );
    r.frame(live(vec![other], checksum_of(&[("tasks", "x", 5)])));
    r.frame(ack(
        batch,
        vec![(mutations[0].mutation_id, Outcome::Duplicate { rev: 4 })],
    ));
    assert_eq!(r.store.outbox_counts().unwrap(), (0, 0));
}

#[test]
fn a_rejected_mutation_fails_is_rolled_back_and_reported() {
    let mut r = rig();
    let t1 = doc("tasks", "t1");
    let base = remote_put(&t1, 1, 1, json!({"title": "ok"}));
    r.store.apply_remote_changes(&[base]).unwrap();
    r.write(&t1, Write::Patch(obj(json!({"title": ""}))));
    r.write(
        &doc("tasks", "t2"),
        Write::Put(obj(json!({"title": "other"}))),
    );
    let actions = r.online(&[]);
    let (batch, mutations) = pushes(&actions).remove(0);
    assert_eq!(mutations.len(), 2);
    let actions = r.frame(ack(
        batch,
        vec![
            (
                mutations[0].mutation_id,
                Outcome::Rejected {
                    code: RejectCode::ValidationFailed,
                    reason: "title: at least 1 characters".into(),
                    field: Some("title".into()),
                },
            ),
            (mutations[1].mutation_id, Outcome::Applied { rev: 2 }),
        ],
    ));
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::Notify(Notice::MutationFailed(f))
            if f.reason == "validation_failed: title: at least 1 characters" && f.doc_id == "t1"
    )));
    let view = r.view(&t1).unwrap();
    assert_eq!(
        view.fields().unwrap(),
        obj(json!({"title": "ok"})),
        "rolled back"
    );
    assert!(!view.pending);
    // The other document went on.
    assert_eq!(r.store.outbox_counts().unwrap(), (1, 1));
    // Retried by the app, it is back in the view and sent again.
    let id = mutations[0].mutation_id;
    assert!(r.store.retry_failed(&id).unwrap());
    assert_eq!(
        r.view(&t1).unwrap().fields().unwrap(),
        obj(json!({"title": ""}))
    );
    let again = pushes(&r.handle(Event::LocalWrite));
    assert_eq!(again[0].1[0].mutation_id, id);
}

#[test]
fn a_write_refused_for_the_device_clock_fails_and_says_so_in_the_status() {
    let mut r = rig();
    let t1 = doc("tasks", "t1");
    r.write(&t1, Write::Put(obj(json!({"title": "from the future"}))));
    let actions = r.online(&[]);
    let (batch, mutations) = pushes(&actions).remove(0);
    let reason = "the clock reading 32503680000000-0-phone is 355782 days ahead of the server's clock, more than the 5 min allowed: set this device's clock right";
    let actions = r.frame(ack(
        batch,
        vec![(
            mutations[0].mutation_id,
            Outcome::Rejected {
                code: RejectCode::ClockSkew,
                reason: reason.into(),
                field: None,
            },
        )],
    ));
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::Notify(Notice::MutationFailed(f)) if f.reason == format!("clock_skew: {reason}")
    )));
    assert!(r.view(&t1).is_none(), "rolled back: never written");
    let status = r.engine.status().unwrap();
    assert_eq!(
        status.last_error,
        Some(crate::sync::SyncError::new(
            crate::sync::SyncErrorKind::Clock,
            reason
        ))
    );
}

#[test]
fn a_server_wins_conflict_drops_the_local_change_and_is_logged() {
    let mut r = rig();
    let c1 = doc("contacts", "c1");
    r.write(&c1, Write::Put(obj(json!({"name": "mine"}))));
    let actions = r.online(&[("contacts", Policy::ServerWins)]);
    let (batch, mutations) = pushes(&actions).remove(0);
    let theirs = remote_put(&c1, 7, 1, json!({"name": "theirs"}));
    r.frame(ack(
        batch,
        vec![(
            mutations[0].mutation_id,
            Outcome::Conflict {
                document: Some(Box::new(theirs.to_document())),
            },
        )],
    ));
    let view = r.view(&c1).unwrap();
    assert_eq!(view.fields().unwrap(), obj(json!({"name": "theirs"})));
    assert!(!view.pending);
    assert_eq!(view.version, Some(7));
    assert_eq!(r.store.outbox_counts().unwrap(), (0, 0));
    let log = r.store.conflicts(10).unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].rule, "server_wins");
    assert_eq!(log[0].winner, "remote");
    assert_eq!(log[0].local_json.as_deref(), Some(r#"{"name":"mine"}"#));
    assert_eq!(log[0].remote_json.as_deref(), Some(r#"{"name":"theirs"}"#));
    // The change arrives through the feed later: a no-op, and the
    // checksum agrees (no re-sync).
    let before = r.engine.status().unwrap().checksum_mismatches;
    let mut change = theirs;
    change.rev = 7;
    r.frame(live(vec![change], checksum_of(&[("contacts", "c1", 7)])));
    assert_eq!(r.engine.status().unwrap().checksum_mismatches, before);
}

struct Recorder {
    seen: Mutex<Vec<Conflict>>,
    answer: Resolution,
}

impl ConflictHandler for Recorder {
    fn resolve(&self, conflict: Conflict) -> Resolution {
        self.seen.lock().unwrap().push(conflict);
        self.answer.clone()
    }
}

#[test]
fn a_manual_conflict_goes_to_the_handler_and_its_choice_is_written_on_the_remote_version() {
    let mut r = rig();
    let handler = Arc::new(Recorder {
        seen: Mutex::new(Vec::new()),
        answer: Resolution::Merged {
            fields_json: r#"{"name":"merged"}"#.into(),
        },
    });
    r.handler = Some(handler.clone());
    let c1 = doc("notes", "c1");
    let base = remote_put(&c1, 3, 1, json!({"name": "base"}));
    r.store.apply_remote_changes(&[base]).unwrap();
    r.write(&c1, Write::Patch(obj(json!({"name": "mine"}))));
    let actions = r.online(&[("notes", Policy::Manual)]);
    let (batch, mutations) = pushes(&actions).remove(0);
    assert_eq!(mutations[0].base_version, Some(3));
    let theirs = remote_put(&c1, 9, 2, json!({"name": "theirs"}));
    let actions = r.frame(ack(
        batch,
        vec![(
            mutations[0].mutation_id,
            Outcome::Conflict {
                document: Some(Box::new(theirs.to_document())),
            },
        )],
    ));
    let seen = handler.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].policy, "manual");
    assert_eq!(seen[0].local_json.as_deref(), Some(r#"{"name":"mine"}"#));
    assert_eq!(seen[0].remote_json.as_deref(), Some(r#"{"name":"theirs"}"#));
    assert_eq!(seen[0].base_json.as_deref(), Some(r#"{"name":"base"}"#));
    // The resolution is a new mutation on top of the server's version.
    let sent = pushes(&actions);
    assert_eq!(sent.len(), 1);
    let resolution = &sent[0].1[0];
    assert_ne!(resolution.mutation_id, mutations[0].mutation_id);
    assert_eq!(resolution.base_version, Some(9));
    assert_eq!(
        r.view(&c1).unwrap().fields().unwrap(),
        obj(json!({"name": "merged"}))
    );
    let log = r.store.conflicts(10).unwrap();
    assert_eq!(log[0].winner, "merged");
    assert_eq!(
        log[0].resolved_json.as_deref(),
        Some(r#"{"name":"merged"}"#)
    );
}

#[test]
fn a_later_version_checked_edit_waits_for_the_earlier_ack_and_takes_its_revision() {
    let mut r = rig();
    let c1 = doc("contacts", "c1");
    let actions = r.online(&[("contacts", Policy::ServerWins)]);
    assert!(pushes(&actions).is_empty());
    r.write(&c1, Write::Put(obj(json!({"name": "a"}))));
    r.write(&c1, Write::Patch(obj(json!({"phone": "1"}))));
    r.write(
        &doc("contacts", "c2"),
        Write::Put(obj(json!({"name": "other"}))),
    );
    let sent = pushes(&r.handle(Event::LocalWrite));
    let ids: Vec<&str> = sent
        .iter()
        .flat_map(|(_, ms)| ms.iter().map(|m| m.doc_id.as_str()))
        .collect();
    assert_eq!(ids, vec!["c1", "c2"], "the second edit of c1 waits");
    let (batch, mutations) = sent[0].clone();
    let actions = r.frame(ack(
        batch,
        vec![
            (mutations[0].mutation_id, Outcome::Applied { rev: 5 }),
            (mutations[1].mutation_id, Outcome::Applied { rev: 6 }),
        ],
    ));
    let later = pushes(&actions);
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].1[0].doc_id.as_str(), "c1");
    assert_eq!(
        later[0].1[0].base_version,
        Some(5),
        "based on the earlier one's revision"
    );
}

#[test]
fn an_access_token_refresh_mid_stream_keeps_the_connection_and_the_outbox() {
    let mut r = rig();
    let t1 = doc("tasks", "t1");
    r.write(&t1, Write::Put(obj(json!({"n": 1}))));
    let actions = r.online(&[]);
    let (batch, mutations) = pushes(&actions).remove(0);
    let actions = r.handle(Event::CredentialsUpdated {
        access_expires_at: START_MS + 100_000,
    });
    assert_eq!(
        scheduled(&actions, Timer::RefreshCredentials),
        Some(Duration::from_millis(80_000))
    );
    r.advance(80_000);
    let actions = r.handle(Event::TimerFired(Timer::RefreshCredentials));
    assert_eq!(actions, vec![Action::RefreshCredentials]);
    // The refresh lands while the batch is in flight: nothing is resent or
    // dropped, and the ack still applies.
    let actions = r.handle(Event::CredentialsUpdated {
        access_expires_at: START_MS + 200_000,
    });
    assert!(sends(&actions).is_empty() && !actions.contains(&Action::Disconnect));
    assert_eq!(
        r.store.pending_mutations().unwrap()[0].state,
        OutboxState::InFlight
    );
    r.frame(ack(
        batch,
        vec![(mutations[0].mutation_id, Outcome::Applied { rev: 1 })],
    ));
    r.frame(live(
        vec![own_change(&mutations[0], 1, None)],
        checksum_of(&[("tasks", "t1", 1)]),
    ));
    assert_eq!(r.store.outbox_counts().unwrap(), (0, 0));
    // A socket refused for auth asks for new credentials before connecting.
    r.handle(Event::Disconnected {
        reason: DisconnectReason::Unauthorized("expired".into()),
    });
    let actions = r.handle(Event::TimerFired(Timer::Reconnect));
    assert_eq!(actions[..2], [Action::RefreshCredentials, Action::Connect]);
}

#[test]
fn a_checksum_mismatch_resyncs_the_space_with_mark_and_sweep() {
    let mut r = rig();
    let keep = doc("tasks", "keep");
    let gone = doc("tasks", "gone");
    let c_keep = remote_put(&keep, 1, 1, json!({"v": 1}));
    let c_gone = remote_put(&gone, 2, 1, json!({"v": 2}));
    r.store
        .apply_remote_changes(&[c_keep.clone(), c_gone])
        .unwrap();
    r.online(&[]);
    // The server says its copy at 2 holds only `keep`.
    let actions = r.frame(empty_final_page(2, checksum_of(&[("tasks", "keep", 1)])));
    assert!(
        actions.contains(&Action::Disconnect),
        "re-synced on a new connection"
    );
    assert_eq!(r.engine.status().unwrap().checksum_mismatches, 1);
    r.handle(Event::TimerFired(Timer::Reconnect));
    let actions = r.handle(Event::Connected);
    let hello = sends(&actions)
        .into_iter()
        .find_map(|m| match m {
            ClientMessage::Hello(h) => Some(h.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        hello.cursors[&space()],
        0,
        "the space is fetched again from 0"
    );
    r.online_welcome_only();
    // Nothing vanished in the meantime.
    assert!(r.view(&gone).is_some());
    // The re-sync's only page holds `keep`; at its end `gone` is swept.
    r.frame(ServerMessage::Changes(Changes {
        space: space(),
        changes: vec![c_keep],
        more: false,
        checksum: Some(checksum_of(&[("tasks", "keep", 1)])),
        head: Some(2),
        reset: false,
    }));
    assert!(r.view(&gone).is_none());
    assert_eq!(
        r.view(&keep).unwrap().fields().unwrap(),
        obj(json!({"v": 1}))
    );
    assert_eq!(
        r.engine.status().unwrap().checksum_mismatches,
        1,
        "no second mismatch"
    );
    assert_eq!(r.store.cursors().unwrap()["personal:alice"].rev, 2);
}

#[test]
fn a_reset_page_keeps_pending_writes_and_drops_what_the_server_lost() {
    let mut r = rig();
    let old = doc("tasks", "old");
    r.store
        .apply_remote_changes(&[remote_put(&old, 4, 1, json!({}))])
        .unwrap();
    let mine = doc("tasks", "mine");
    r.write(&mine, Write::Put(obj(json!({"x": 1}))));
    r.online(&[]);
    let fresh = remote_change(
        &doc("tasks", "fresh"),
        1,
        1,
        Op::Put {
            fields: obj(json!({})),
        },
        None,
    );
    r.frame(ServerMessage::Changes(Changes {
        space: space(),
        changes: vec![fresh],
        more: true,
        checksum: None,
        head: Some(2),
        reset: true,
    }));
    assert!(r.view(&old).is_some(), "kept until the final page");
    r.frame(empty_final_page(2, checksum_of(&[("tasks", "fresh", 1)])));
    assert!(r.view(&old).is_none());
    assert!(r.view(&doc("tasks", "fresh")).is_some());
    assert!(r.view(&mine).unwrap().pending);
    assert_eq!(r.engine.status().unwrap().checksum_mismatches, 0);
}

#[test]
fn settled_means_caught_up_with_roles_and_devices_known_and_nothing_to_send() {
    let mut r = rig();
    let actions = r.online(&[]);
    assert!(pushes(&actions).is_empty());
    assert!(!r.engine.is_settled().unwrap(), "catching up");
    r.frame(empty_final_page(0, SpaceChecksum::default()));
    assert!(
        !r.engine.is_settled().unwrap(),
        "caught up, but the roles and devices the server sends next are not known yet"
    );
    r.frame(ServerMessage::Role(tandem_protocol::wire::RoleState {
        request_id: None,
        role: "auto-responder".into(),
        holder: None,
        holder_name: None,
        epoch: 0,
        lease_expires_at: None,
    }));
    assert!(
        !r.engine.is_settled().unwrap(),
        "roles come before the devices"
    );
    r.frame(ServerMessage::Devices(tandem_protocol::wire::Devices {
        devices: Vec::new(),
    }));
    assert!(r.engine.is_settled().unwrap());
    r.write(&doc("tasks", "t"), Write::Put(obj(json!({}))));
    assert!(!r.engine.is_settled().unwrap());
}

#[test]
fn a_document_changed_during_a_fresh_catch_up_is_merged_not_counted_twice() {
    let mut r = rig();
    r.online(&[]);
    let a = doc("tasks", "a");
    let b = doc("tasks", "b");
    let a1 = remote_put(&a, 1, 1, json!({"v": 1}));
    let b2 = remote_put(&b, 2, 1, json!({"v": 2}));
    let a1_state = a1.state.clone();
    r.frame(ServerMessage::Changes(Changes {
        space: space(),
        changes: vec![a1, b2],
        more: true,
        checksum: None,
        head: Some(2),
        reset: false,
    }));
    // `a` changed while the catch-up ran: it shows up again, above the
    // first page's head.
    let a3 = remote_change(
        &a,
        3,
        2,
        Op::Patch {
            fields: obj(json!({"v": 3})),
        },
        Some(&a1_state),
    );
    r.frame(ServerMessage::Changes(Changes {
        space: space(),
        changes: vec![a3],
        more: false,
        checksum: Some(checksum_of(&[("tasks", "a", 3), ("tasks", "b", 2)])),
        head: Some(3),
        reset: false,
    }));
    assert_eq!(r.engine.status().unwrap().checksum_mismatches, 0);
    assert_eq!(r.view(&a).unwrap().fields().unwrap(), obj(json!({"v": 3})));
    assert_eq!(r.view(&a).unwrap().version, Some(3));
    assert_eq!(r.view(&b).unwrap().version, Some(2));
}

#[test]
fn pushes_fit_the_servers_frame_and_a_write_no_frame_can_carry_fails() {
    let mut r = rig();
    // Three writes of about 850 bytes as mutations, and one of about 3,250.
    let text = |n: usize| "x".repeat(n);
    for id in ["a", "b", "c"] {
        r.write(
            &doc("notes", id),
            Write::Put(obj(json!({ "body": text(600) }))),
        );
    }
    r.write(
        &doc("notes", "huge"),
        Write::Put(obj(json!({ "body": text(3_000) }))),
    );
    r.handle(Event::Start);
    r.handle(Event::Connected);
    let actions = r.frame(ServerMessage::Welcome(Welcome {
        protocol: 1,
        user: UserId::new("alice").unwrap(),
        device_id: r.store.identity().device_id.clone(),
        spaces: vec![space()],
        policies: Default::default(),
        reset_required: Vec::new(),
        limits: Limits {
            max_frame_bytes: 2_000,
            max_batch_mutations: 500,
            max_document_bytes: 1 << 20,
        },
    }));
    let sent = pushes(&actions);
    let ids: Vec<Vec<String>> = sent
        .iter()
        .map(|(_, ms)| ms.iter().map(|m| m.doc_id.to_string()).collect())
        .collect();
    assert_eq!(ids, vec![vec!["a", "b"], vec!["c"]], "split by bytes");
    for push in sends(&actions) {
        assert!(push.encode().len() <= 2_000, "a push over the frame limit");
    }
    // The one no frame can carry failed at once, rolled back, reported.
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::Notify(Notice::MutationFailed(f))
            if f.doc_id == "huge" && f.reason.starts_with("frame_too_large")
    )));
    assert!(r.view(&doc("notes", "huge")).is_none());
}

#[test]
fn an_ack_of_a_whole_batch_is_recorded_in_one_transaction() {
    let mut r = rig();
    for i in 0..500 {
        r.write(
            &doc("tasks", &format!("t{i}")),
            Write::Put(obj(json!({ "n": i }))),
        );
    }
    let actions = r.online(&[]);
    let (batch, mutations) = pushes(&actions).remove(0);
    assert_eq!(mutations.len(), 500);
    let commits = crate::store::test_support::count_commits(&r.store);
    let results = mutations
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let rev = u64::try_from(i).unwrap() + 1;
            let outcome = if i == 7 {
                Outcome::Rejected {
                    code: RejectCode::ValidationFailed,
                    reason: "n is odd".into(),
                    field: None,
                }
            } else {
                Outcome::Applied { rev }
            };
            (m.mutation_id, outcome)
        })
        .collect();
    let actions = r.frame(ack(batch, results));
    assert_eq!(
        commits.load(Ordering::SeqCst),
        1,
        "499 acknowledgements and a refusal, one transaction"
    );
    assert_eq!(r.store.outbox_counts().unwrap(), (499, 1));
    assert!(actions.iter().any(
        |a| matches!(a, Action::Notify(Notice::MutationFailed(f)) if f.reason.contains("n is odd"))
    ));
}

#[test]
fn a_conflict_waits_for_the_app_and_an_answer_after_a_reconnect_is_ignored() {
    let mut r = rig();
    let c1 = doc("notes", "c1");
    r.write(&c1, Write::Put(obj(json!({"name": "mine"}))));
    let actions = r.online(&[("notes", Policy::Manual)]);
    let (batch, mutations) = pushes(&actions).remove(0);
    let theirs = remote_put(&c1, 9, 2, json!({"name": "theirs"}));
    let conflict_answer = ack(
        batch,
        vec![(
            mutations[0].mutation_id,
            Outcome::Conflict {
                document: Some(Box::new(theirs.to_document())),
            },
        )],
    );
    // Straight to the engine: nobody answers yet.
    let actions = r
        .engine
        .handle(Event::FrameReceived(conflict_answer))
        .unwrap();
    let asked: Vec<u64> = actions
        .iter()
        .filter_map(|a| match a {
            Action::ResolveConflict { id, conflict } => {
                assert_eq!(conflict.local_json.as_deref(), Some(r#"{"name":"mine"}"#));
                assert_eq!(
                    conflict.remote_json.as_deref(),
                    Some(r#"{"name":"theirs"}"#)
                );
                Some(*id)
            }
            _ => None,
        })
        .collect();
    assert_eq!(asked.len(), 1, "the app is asked once: {actions:?}");
    // Undecided: the write waits in flight, nothing is settled or logged.
    assert!(!r.engine.is_settled().unwrap());
    assert_eq!(r.store.outbox_counts().unwrap(), (1, 0));
    assert!(r.store.conflicts(10).unwrap().is_empty());

    // The connection goes before the app answers: the answer is stale.
    r.handle(Event::Disconnected {
        reason: DisconnectReason::Transport("reset".into()),
    });
    let actions = r.online(&[("notes", Policy::Manual)]);
    assert_eq!(pushes(&actions).len(), 1, "the write goes out again");
    r.handle(Event::ConflictResolved {
        id: asked[0],
        resolution: Resolution::KeepRemote,
    });
    assert_eq!(r.store.outbox_counts().unwrap(), (1, 0));
    assert!(r.store.conflicts(10).unwrap().is_empty());
    assert_eq!(
        r.view(&c1).unwrap().fields().unwrap(),
        obj(json!({"name": "mine"}))
    );
}

#[test]
fn what_a_welcome_changes_is_one_transaction() {
    let mut r = rig();
    // Before: a policy the server no longer declares, and a space the
    // user has since left.
    r.store
        .set_policy(
            &Collection::new("old").unwrap(),
            &CollectionPolicy::of(Policy::Manual),
        )
        .unwrap();
    let team = DocRef {
        space: SpaceId::new("team").unwrap(),
        collection: Collection::new("tasks").unwrap(),
        id: DocId::new("t1").unwrap(),
    };
    r.store
        .apply_remote_changes(&[remote_put(&team, 1, 5, json!({"title": "shared"}))])
        .unwrap();
    r.handle(Event::Start);
    r.handle(Event::Connected);
    let commits = crate::store::test_support::count_commits(&r.store);
    r.frame(ServerMessage::Welcome(Welcome {
        protocol: 1,
        user: UserId::new("alice").unwrap(),
        device_id: r.store.identity().device_id.clone(),
        spaces: vec![space()],
        policies: [(
            Collection::new("notes").unwrap(),
            CollectionPolicy::of(Policy::ServerWins),
        )]
        .into_iter()
        .collect(),
        reset_required: vec![space()],
        limits: Limits {
            max_frame_bytes: 1 << 20,
            max_batch_mutations: 500,
            max_document_bytes: 1 << 20,
        },
    }));
    assert_eq!(commits.load(Ordering::SeqCst), 1);
    let policies = r.store.policies();
    assert_eq!(
        policies[&Collection::new("notes").unwrap()].policy,
        Policy::ServerWins
    );
    assert_eq!(
        policies[&Collection::new("old").unwrap()],
        CollectionPolicy::lww()
    );
    assert!(r.view(&team).is_none(), "the left space is gone");
    assert!(!r.store.cursors().unwrap().contains_key("team"));
}

#[test]
fn a_final_page_its_checksum_and_the_sync_time_are_one_transaction() {
    let mut r = rig();
    let t1 = doc("tasks", "t1");
    let change = remote_put(&t1, 1, 5, json!({"title": "one"}));
    r.online(&[]);
    let commits = crate::store::test_support::count_commits(&r.store);
    r.frame(ServerMessage::Changes(Changes {
        space: space(),
        changes: vec![change],
        more: false,
        checksum: Some(checksum_of(&[("tasks", "t1", 1)])),
        head: Some(1),
        reset: false,
    }));
    assert_eq!(commits.load(Ordering::SeqCst), 1);
    let status = r.engine.status().unwrap();
    assert_eq!(status.last_synced, Some(START_MS), "recorded with the page");
    assert_eq!(status.checksum_mismatches, 0);

    // A live change whose checksum disagrees: counted in its page's
    // transaction, and not recorded as a sync.
    let before = r.engine.status().unwrap().last_synced;
    r.advance(1_000);
    let commits = crate::store::test_support::count_commits(&r.store);
    let change = remote_put(&t1, 2, 6, json!({"title": "two"}));
    r.frame(live(vec![change], checksum_of(&[("tasks", "t1", 7)])));
    let status = r.engine.status().unwrap();
    assert_eq!(status.checksum_mismatches, 1);
    assert_eq!(status.last_synced, before);
    assert!(commits.load(Ordering::SeqCst) >= 1);
}
