//! Golden traces: whole engine sessions, events in and actions out, kept
//! as JSON snapshots (`snapshots/`). A change to what the engine does in
//! one of these scenarios shows up as a diff a reviewer reads, not only as
//! a failed assertion somewhere else. Ids and this device's clock
//! readings, which differ between runs, are replaced by stable names
//! (`<id-1>`, `<device>`, `<local-hlc>`) before comparing.
//!
//! To accept a deliberate change: `INSTA_UPDATE=always cargo test -p
//! tandem-core traces`, then review the diff of the `.snap` files.

use serde_json::{Value, json};
use tandem_protocol::ServerMessage;
use tandem_protocol::wire::{Devices, Outcome, RoleState};

use super::*;

/// A session being recorded.
struct Trace {
    steps: Vec<Value>,
}

impl Trace {
    fn new() -> Trace {
        Trace { steps: Vec::new() }
    }

    /// Feeds `event` straight to the engine (conflicts are answered by
    /// the scenario, as its own steps) and records both sides.
    fn step(&mut self, r: &mut Rig, event: Event) -> Vec<Action> {
        let recorded = serde_json::to_value(&event).unwrap();
        let actions = r.engine.handle(event).unwrap();
        self.steps.push(json!({
            "event": recorded,
            "actions": serde_json::to_value(&actions).unwrap(),
        }));
        actions
    }

    /// A local write by the app, recorded as a note (it is not an event:
    /// the event is the `local_write` that follows).
    fn write(&mut self, r: &mut Rig, d: &DocRef, w: Write) -> Vec<Action> {
        r.write(d, w);
        self.step(r, Event::LocalWrite)
    }

    fn welcome(&mut self, r: &mut Rig, policies: &[(&str, Policy)], reset: Vec<SpaceId>) {
        let message = welcome(r, policies, reset);
        self.frame(r, message);
    }

    fn frame(&mut self, r: &mut Rig, message: ServerMessage) -> Vec<Action> {
        self.step(r, Event::FrameReceived(message))
    }

    /// The trace, with run-dependent values replaced.
    fn finish(self, r: &Rig) -> Value {
        let device = r.store.identity().device_id.to_string();
        let mut names = Vec::new();
        let mut steps = Value::Array(self.steps);
        normalize(&mut steps, &device, &mut names);
        steps
    }
}

/// Replaces this device's id, its clock readings and every UUID (ids of
/// mutations) with stable names, numbered by first appearance.
fn normalize(value: &mut Value, device: &str, names: &mut Vec<String>) {
    match value {
        Value::String(s) => *s = normalize_text(s, device, names),
        Value::Array(items) => {
            for item in items {
                normalize(item, device, names);
            }
        }
        Value::Object(map) => {
            let entries: Vec<(String, Value)> = std::mem::take(map).into_iter().collect();
            for (key, mut v) in entries {
                normalize(&mut v, device, names);
                map.insert(normalize_text(&key, device, names), v);
            }
        }
        _ => {}
    }
}

fn normalize_text(text: &str, device: &str, names: &mut Vec<String>) -> String {
    let text = text.replace(device, "<device>");
    // A reading of this device's clock: the wall clock's milliseconds.
    if let Some(rest) = text.strip_suffix("-<device>")
        && rest
            .split('-')
            .all(|part| part.bytes().all(|b| b.is_ascii_digit()))
    {
        return "<local-hlc>".into();
    }
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(at) = find_uuid(rest) {
        out.push_str(&rest[..at]);
        let id = &rest[at..at + 36];
        let n = match names.iter().position(|known| known == id) {
            Some(n) => n,
            None => {
                names.push(id.to_owned());
                names.len() - 1
            }
        };
        out.push_str(&format!("<id-{}>", n + 1));
        rest = &rest[at + 36..];
    }
    out.push_str(rest);
    out
}

/// Where the first UUID (8-4-4-4-12 hexadecimal digits) in `text` starts.
fn find_uuid(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(35)).find(|&i| {
        bytes[i..i + 36].iter().enumerate().all(|(j, b)| match j {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
    })
}

fn role(name: &str, holder: Option<tandem_protocol::DeviceId>, epoch: u64) -> ServerMessage {
    ServerMessage::Role(RoleState {
        request_id: None,
        role: name.into(),
        holder,
        holder_name: None,
        epoch,
        lease_expires_at: None,
    })
}

fn welcome(r: &Rig, policies: &[(&str, Policy)], reset_required: Vec<SpaceId>) -> ServerMessage {
    ServerMessage::Welcome(Welcome {
        protocol: 1,
        user: UserId::new("alice").unwrap(),
        device_id: r.store.identity().device_id.clone(),
        spaces: vec![space()],
        policies: policies
            .iter()
            .map(|(c, p)| (Collection::new(*c).unwrap(), CollectionPolicy::of(*p)))
            .collect(),
        reset_required,
        limits: Limits {
            max_frame_bytes: 1 << 20,
            max_batch_mutations: 500,
            max_document_bytes: 1 << 20,
        },
    })
}

fn page(
    changes: Vec<Change>,
    more: bool,
    head: u64,
    checksum: Option<SpaceChecksum>,
) -> ServerMessage {
    ServerMessage::Changes(Changes {
        space: space(),
        changes,
        more,
        checksum,
        head: Some(head),
        reset: false,
    })
}

#[test]
fn first_sync() {
    let mut r = rig();
    let mut t = Trace::new();
    let d1 = doc("tasks", "d1");
    let d2 = doc("tasks", "d2");
    let c1 = remote_put(&d1, 1, 10, json!({"title": "one"}));
    let c2 = remote_put(&d2, 2, 11, json!({"title": "two"}));
    t.step(&mut r, Event::Start);
    t.step(&mut r, Event::Connected);
    t.welcome(&mut r, &[], Vec::new());
    t.frame(&mut r, page(vec![c1], true, 2, None));
    t.frame(
        &mut r,
        page(
            vec![c2],
            false,
            2,
            Some(checksum_of(&[("tasks", "d1", 1), ("tasks", "d2", 2)])),
        ),
    );
    t.frame(&mut r, role("responder", None, 0));
    t.frame(
        &mut r,
        ServerMessage::Devices(Devices {
            devices: Vec::new(),
        }),
    );
    assert!(r.engine.is_settled().unwrap());
    insta::assert_json_snapshot!(t.finish(&r));
}

#[test]
fn reconnect_and_resume() {
    let mut r = rig();
    let mut t = Trace::new();
    let d1 = doc("tasks", "d1");
    t.step(&mut r, Event::Start);
    t.step(&mut r, Event::Connected);
    t.welcome(&mut r, &[], Vec::new());
    t.frame(&mut r, empty_final_page(4, checksum_of(&[])));
    // A write goes out, and the connection drops before its answer.
    t.write(&mut r, &d1, Write::Put(obj(json!({"title": "offline"}))));
    t.step(
        &mut r,
        Event::Disconnected {
            reason: DisconnectReason::Transport("connection reset".into()),
        },
    );
    r.advance(600);
    t.step(&mut r, Event::TimerFired(Timer::Reconnect));
    // The hello names the cursor; the write goes out again.
    t.step(&mut r, Event::Connected);
    t.welcome(&mut r, &[], Vec::new());
    t.frame(&mut r, empty_final_page(4, checksum_of(&[])));
    let pending = r.store.pending_mutations().unwrap();
    assert_eq!(pending.len(), 1);
    insta::assert_json_snapshot!(t.finish(&r));
}

#[test]
fn acknowledgements() {
    let mut r = rig();
    let mut t = Trace::new();
    t.step(&mut r, Event::Start);
    t.step(&mut r, Event::Connected);
    t.welcome(&mut r, &[], Vec::new());
    t.frame(&mut r, empty_final_page(0, checksum_of(&[])));
    r.write(&doc("tasks", "a"), Write::Put(obj(json!({"n": 1}))));
    r.write(&doc("tasks", "b"), Write::Put(obj(json!({"n": 2}))));
    let actions = t.write(&mut r, &doc("tasks", "c"), Write::Put(obj(json!({"n": 3}))));
    let (batch, mutations) = pushes(&actions).remove(0);
    assert_eq!(mutations.len(), 3);
    t.frame(
        &mut r,
        ack(
            batch,
            vec![
                (mutations[0].mutation_id, Outcome::Applied { rev: 1 }),
                (mutations[1].mutation_id, Outcome::Duplicate { rev: 2 }),
                (
                    mutations[2].mutation_id,
                    Outcome::Rejected {
                        code: RejectCode::ValidationFailed,
                        reason: "n must be even".into(),
                        field: Some("n".into()),
                    },
                ),
            ],
        ),
    );
    // The changes that carry the two acknowledged writes confirm them.
    t.frame(
        &mut r,
        live(
            vec![
                own_change(&mutations[0], 1, None),
                own_change(&mutations[1], 2, None),
            ],
            checksum_of(&[("tasks", "a", 1), ("tasks", "b", 2)]),
        ),
    );
    assert_eq!(r.store.outbox_counts().unwrap(), (0, 1));
    insta::assert_json_snapshot!(t.finish(&r));
}

#[test]
fn conflict() {
    let mut r = rig();
    let mut t = Trace::new();
    let d = doc("notes", "n1");
    let base = remote_put(&d, 3, 5, json!({"text": "base"}));
    r.store.apply_remote_changes(&[base]).unwrap();
    t.step(&mut r, Event::Start);
    t.step(&mut r, Event::Connected);
    t.welcome(&mut r, &[("notes", Policy::Manual)], Vec::new());
    t.frame(
        &mut r,
        empty_final_page(3, checksum_of(&[("notes", "n1", 3)])),
    );
    let actions = t.write(&mut r, &d, Write::Patch(obj(json!({"text": "mine"}))));
    let (batch, mutations) = pushes(&actions).remove(0);
    let theirs = remote_put(&d, 4, 20, json!({"text": "theirs"}));
    let actions = t.frame(
        &mut r,
        ack(
            batch,
            vec![(
                mutations[0].mutation_id,
                Outcome::Conflict {
                    document: Some(Box::new(theirs.to_document())),
                },
            )],
        ),
    );
    let id = actions
        .iter()
        .find_map(|a| match a {
            Action::ResolveConflict { id, .. } => Some(*id),
            _ => None,
        })
        .unwrap();
    // The app merges; the merge goes out on top of the server's version.
    t.step(
        &mut r,
        Event::ConflictResolved {
            id,
            resolution: Resolution::Merged {
                fields_json: r#"{"text":"mine and theirs"}"#.into(),
            },
        },
    );
    assert_eq!(r.store.conflicts(10).unwrap()[0].winner, "merged");
    insta::assert_json_snapshot!(t.finish(&r));
}

#[test]
fn reset() {
    let mut r = rig();
    let mut t = Trace::new();
    let d1 = doc("tasks", "d1");
    let kept = remote_put(&d1, 1, 10, json!({"title": "kept"}));
    let lost = remote_change(
        &doc("tasks", "d2"),
        2,
        11,
        Op::Put {
            fields: obj(json!({"title": "lost"})),
        },
        None,
    );
    t.step(&mut r, Event::Start);
    t.step(&mut r, Event::Connected);
    t.welcome(&mut r, &[], Vec::new());
    t.frame(
        &mut r,
        page(
            vec![kept.clone(), lost],
            false,
            2,
            Some(checksum_of(&[("tasks", "d1", 1), ("tasks", "d2", 2)])),
        ),
    );
    t.step(
        &mut r,
        Event::Disconnected {
            reason: DisconnectReason::Transport("server restarted".into()),
        },
    );
    r.advance(600);
    t.step(&mut r, Event::TimerFired(Timer::Reconnect));
    t.step(&mut r, Event::Connected);
    t.welcome(&mut r, &[], Vec::new());
    // The server lost revision 2 (restored from a backup): the device's
    // cursor is ahead of its head, and the feed starts over from 0.
    t.frame(
        &mut r,
        ServerMessage::Changes(Changes {
            space: space(),
            changes: vec![kept],
            more: false,
            checksum: Some(checksum_of(&[("tasks", "d1", 1)])),
            head: Some(1),
            reset: true,
        }),
    );
    assert!(r.view(&doc("tasks", "d2")).is_none(), "swept");
    insta::assert_json_snapshot!(t.finish(&r));
}

#[test]
fn role_change() {
    let mut r = rig();
    let mut t = Trace::new();
    let me = r.store.identity().device_id.clone();
    let other = tandem_protocol::DeviceId::new("other-device").unwrap();
    t.step(&mut r, Event::Start);
    t.step(&mut r, Event::Connected);
    t.welcome(&mut r, &[], Vec::new());
    t.frame(&mut r, empty_final_page(0, checksum_of(&[])));
    t.frame(&mut r, role("responder", Some(other.clone()), 1));
    t.frame(
        &mut r,
        ServerMessage::Devices(Devices {
            devices: Vec::new(),
        }),
    );
    // The holder goes; this device takes the role and renews its lease.
    t.frame(&mut r, role("responder", Some(me), 2));
    r.advance(500);
    t.step(&mut r, Event::TimerFired(Timer::RenewRoles));
    // An older epoch arriving late changes nothing.
    t.frame(&mut r, role("responder", Some(other), 1));
    insta::assert_json_snapshot!(t.finish(&r));
}
