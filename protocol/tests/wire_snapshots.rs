//! Snapshot tests of every wire message: a change to the JSON a device or the
//! server sees shows up here (and must be reflected in docs/PROTOCOL.md).

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::BTreeMap;

use insta::assert_json_snapshot;
use serde_json::json;
use tandem_protocol::wire::{
    Ack, Changes, ErrorMessage, Heartbeat, Hello, Limits, MutationResult, Outcome, Push, Spaces,
    Subscribe, Welcome,
};
use tandem_protocol::{
    Change, ClientMessage, Collection, CollectionPolicy, DeviceId, DocId, Document, ErrorCode, Hlc,
    Mutation, MutationId, Op, PROTOCOL_VERSION, Policy, RejectCode, RoleFence, ServerMessage,
    SpaceChecksum, SpaceId, UserId,
};

fn device() -> DeviceId {
    DeviceId::new("0193a1b2-phone").unwrap()
}

fn space() -> SpaceId {
    SpaceId::new("personal:alice").unwrap()
}

fn mid(n: u8) -> MutationId {
    format!("0193a1b2-0000-7000-8000-0000000000{n:02x}")
        .parse()
        .unwrap()
}

fn mutation(op: Op) -> Mutation {
    Mutation {
        mutation_id: mid(1),
        space: space(),
        collection: Collection::new("tasks").unwrap(),
        doc_id: DocId::new("t1").unwrap(),
        op,
        base_version: None,
        hlc: Hlc::new(1764089696123, 0, device()),
        device_id: device(),
        fence: None,
    }
}

fn fields(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    v.as_object().unwrap().clone()
}

fn document() -> Document {
    let state = tandem_protocol::merge::apply_local(
        None,
        &mutation(Op::Put {
            fields: fields(json!({"title": "Buy milk", "done": false})),
        }),
        &CollectionPolicy::lww(),
    )
    .unwrap()
    .unwrap();
    Document {
        space: space(),
        collection: Collection::new("tasks").unwrap(),
        id: DocId::new("t1").unwrap(),
        version: Some(42),
        state,
    }
}

fn round_trip_client(m: &ClientMessage) {
    assert_eq!(&ClientMessage::decode(&m.encode()).unwrap(), m);
}

fn round_trip_server(m: &ServerMessage) {
    assert_eq!(&ServerMessage::decode(&m.encode()).unwrap(), m);
}

#[test]
fn hello() {
    let m = ClientMessage::Hello(Hello {
        protocol: PROTOCOL_VERSION,
        device_id: device(),
        cursors: BTreeMap::from([(space(), 41), (SpaceId::new("team").unwrap(), 7)]),
    });
    round_trip_client(&m);
    assert_json_snapshot!(m);
}

#[test]
fn push_with_every_op() {
    let mut fenced = mutation(Op::Patch {
        fields: fields(json!({"done": true, "note": null})),
    });
    fenced.base_version = Some(42);
    fenced.fence = Some(RoleFence {
        role: "auto-responder".into(),
        epoch: 3,
    });
    let m = ClientMessage::Push(Push {
        batch_id: 9,
        mutations: vec![
            mutation(Op::Put {
                fields: fields(json!({"title": "Buy milk"})),
            }),
            fenced,
            mutation(Op::Delete {}),
            mutation(Op::SetAdd {
                field: "tags".into(),
                values: vec![json!("home")],
            }),
            mutation(Op::SetRemove {
                field: "tags".into(),
                values: vec![json!("home")],
                observed: vec![Hlc::new(1764089696000, 1, device())],
            }),
        ],
    });
    round_trip_client(&m);
    assert_json_snapshot!(m);
}

#[test]
fn subscribe_and_heartbeats() {
    let sub = ClientMessage::Subscribe(Subscribe {
        space: SpaceId::new("team").unwrap(),
        cursor: 0,
    });
    let ping = ClientMessage::Ping(Heartbeat { nonce: 5 });
    let pong = ServerMessage::Pong(Heartbeat { nonce: 5 });
    round_trip_client(&sub);
    round_trip_client(&ping);
    round_trip_server(&pong);
    assert_json_snapshot!("subscribe", sub);
    assert_json_snapshot!("ping", ping);
    assert_json_snapshot!("pong", pong);
}

#[test]
fn welcome() {
    let mut messages = CollectionPolicy::of(Policy::AppendOnly);
    messages.set_fields.insert("read_by".into());
    let m = ServerMessage::Welcome(Welcome {
        protocol: PROTOCOL_VERSION,
        user: UserId::new("alice").unwrap(),
        device_id: device(),
        spaces: vec![space(), SpaceId::new("team").unwrap()],
        policies: BTreeMap::from([
            (Collection::new("messages").unwrap(), messages),
            (
                Collection::new("contacts").unwrap(),
                CollectionPolicy::of(Policy::ServerWins),
            ),
        ]),
        reset_required: vec![SpaceId::new("team").unwrap()],
        limits: Limits {
            max_frame_bytes: 1 << 20,
            max_batch_mutations: 500,
            max_document_bytes: 1 << 20,
        },
    });
    round_trip_server(&m);
    assert_json_snapshot!(m);
}

#[test]
fn changes_page() {
    let doc = document();
    let m = ServerMessage::Changes(Changes {
        space: space(),
        changes: vec![Change::from_document(&doc, Some(device()), Some(mid(1)))],
        more: false,
        checksum: Some(SpaceChecksum(0x58fd_9677_122b_9d01)),
        head: Some(42),
        reset: false,
    });
    round_trip_server(&m);
    assert_json_snapshot!(m);
}

#[test]
fn changes_page_after_a_reset() {
    let m = ServerMessage::Changes(Changes {
        space: SpaceId::new("team").unwrap(),
        changes: vec![],
        more: true,
        checksum: None,
        head: Some(9000),
        reset: true,
    });
    round_trip_server(&m);
    assert_json_snapshot!(m);
}

#[test]
fn ack_with_every_outcome() {
    let m = ServerMessage::Ack(Ack {
        batch_id: 9,
        results: vec![
            MutationResult {
                mutation_id: mid(1),
                outcome: Outcome::Applied { rev: 43 },
            },
            MutationResult {
                mutation_id: mid(2),
                outcome: Outcome::Duplicate { rev: 40 },
            },
            MutationResult {
                mutation_id: mid(3),
                outcome: Outcome::Conflict {
                    document: Some(Box::new(document())),
                },
            },
            MutationResult {
                mutation_id: mid(4),
                outcome: Outcome::Rejected {
                    code: RejectCode::ValidationFailed,
                    reason: "title: at most 200 characters".into(),
                    field: Some("title".into()),
                },
            },
        ],
    });
    round_trip_server(&m);
    assert_json_snapshot!(m);
}

#[test]
fn spaces_and_error() {
    let spaces = ServerMessage::Spaces(Spaces {
        spaces: vec![space()],
    });
    let error = ServerMessage::Error(ErrorMessage {
        code: ErrorCode::BadFrame,
        message: "unknown field `colour`".into(),
        fatal: true,
        batch_id: None,
        space: None,
        request_id: None,
    });
    round_trip_server(&spaces);
    round_trip_server(&error);
    assert_json_snapshot!("spaces", spaces);
    assert_json_snapshot!("error", error);
}

#[test]
fn unknown_types_and_fields_are_refused() {
    for bad in [
        r#"{"type":"hello","protocol":1,"device_id":"d","cursors":{},"extra":1}"#,
        r#"{"type":"shout"}"#,
        r#"{"protocol":1}"#,
        r#"{"type":"push","batch_id":1,"mutations":[{"mutation_id":"nope"}]}"#,
        r#"{"type":"ping","nonce":-1}"#,
        r#"not json"#,
    ] {
        assert!(ClientMessage::decode(bad).is_err(), "accepted {bad}");
    }
    let op_with_extra = json!({
        "type": "push", "batch_id": 1, "mutations": [{
            "mutation_id": mid(1), "space": "personal:alice", "collection": "tasks",
            "doc_id": "t1", "op": {"type": "delete", "fields": {}},
            "hlc": "1-0-a", "device_id": "a"
        }]
    });
    assert!(ClientMessage::decode(&op_with_extra.to_string()).is_err());
}

#[test]
fn http_bodies() {
    use tandem_protocol::api::{
        AddMember, ApiError, CreateSpace, DeviceCredentials, RefreshCredentials, RegisterDevice,
        SpaceList, SpaceMembers, SpaceSummary,
    };
    let alice = UserId::new("alice").unwrap();
    let bob = UserId::new("bob").unwrap();
    let team = SpaceId::new("team").unwrap();
    assert_json_snapshot!(
        "http_register_device",
        RegisterDevice {
            device_id: device(),
            name: "Alice's iPhone".into(),
            platform: "ios".into(),
            app_version: "1.4.0".into(),
        }
    );
    assert_json_snapshot!(
        "http_device_credentials",
        DeviceCredentials {
            user: alice.clone(),
            device_id: device(),
            access_token: "tat_3f9a".into(),
            access_expires_at: 1764090596123,
            refresh_token: "trt_81c2".into(),
            refresh_expires_at: 1766681696123,
        }
    );
    assert_json_snapshot!(
        "http_refresh",
        RefreshCredentials {
            refresh_token: "trt_81c2".into()
        }
    );
    assert_json_snapshot!(
        "http_create_space",
        CreateSpace {
            name: "team".into()
        }
    );
    assert_json_snapshot!("http_add_member", AddMember { user: bob.clone() });
    assert_json_snapshot!(
        "http_space_list",
        SpaceList {
            spaces: vec![
                SpaceSummary {
                    space: space(),
                    owner: alice.clone()
                },
                SpaceSummary {
                    space: team.clone(),
                    owner: alice.clone()
                },
            ]
        }
    );
    assert_json_snapshot!(
        "http_space_members",
        SpaceMembers {
            space: team,
            owner: alice.clone(),
            members: vec![alice, bob],
        }
    );
    assert_json_snapshot!(
        "http_error",
        ApiError {
            code: ErrorCode::Unauthorized,
            message: "the access token has expired".into(),
        }
    );
    assert!(
        serde_json::from_str::<RegisterDevice>(
            r#"{"device_id":"d","name":"n","platform":"p","app_version":"1","x":1}"#
        )
        .is_err()
    );
}

#[test]
fn coordination_requests() {
    use tandem_protocol::wire::{Claim, Guard, Handoff, Release, Renew};
    let fence = RoleFence {
        role: "auto-responder".into(),
        epoch: 3,
    };
    let claim = ClientMessage::Claim(Claim {
        request_id: 1,
        role: "auto-responder".into(),
        priority: 10,
    });
    let release = ClientMessage::Release(Release {
        request_id: 2,
        role: "auto-responder".into(),
    });
    let handoff = ClientMessage::Handoff(Handoff {
        request_id: 3,
        role: "auto-responder".into(),
        to: DeviceId::new("0193a1b2-laptop").unwrap(),
    });
    let renew = ClientMessage::Renew(Renew {
        leases: vec![fence.clone()],
    });
    let guard = ClientMessage::Guard(Guard {
        request_id: 4,
        scope: "conversation:team".into(),
        content: "On my way!".into(),
        window_ms: Some(5_000),
        fence: Some(fence),
    });
    for m in [&claim, &release, &handoff, &renew, &guard] {
        round_trip_client(m);
    }
    assert_json_snapshot!("claim", claim);
    assert_json_snapshot!("release", release);
    assert_json_snapshot!("handoff", handoff);
    assert_json_snapshot!("renew", renew);
    assert_json_snapshot!("guard", guard);
    // The priority may be left out (0).
    let plain = ClientMessage::decode(r#"{"type":"claim","request_id":1,"role":"r"}"#).unwrap();
    assert!(matches!(
        plain,
        ClientMessage::Claim(Claim { priority: 0, .. })
    ));
}

#[test]
fn coordination_answers() {
    use tandem_protocol::wire::{DeviceInfo, Devices, GuardResult, GuardVerdict, RoleState};
    let role = ServerMessage::Role(RoleState {
        request_id: Some(1),
        role: "auto-responder".into(),
        holder: Some(device()),
        holder_name: Some("Alice's iPhone".into()),
        epoch: 3,
        lease_expires_at: Some(1764089697623),
    });
    let vacant = ServerMessage::Role(RoleState {
        request_id: None,
        role: "auto-responder".into(),
        holder: None,
        holder_name: None,
        epoch: 4,
        lease_expires_at: None,
    });
    let first = ServerMessage::GuardResult(GuardResult {
        request_id: 4,
        result: GuardVerdict::First,
    });
    let duplicate = ServerMessage::GuardResult(GuardResult {
        request_id: 5,
        result: GuardVerdict::Duplicate,
    });
    let devices = ServerMessage::Devices(Devices {
        devices: vec![DeviceInfo {
            device_id: device(),
            name: "Alice's iPhone".into(),
            platform: "ios".into(),
            app_version: "1.4.0".into(),
            registered_at: 1764089000000,
            last_seen: Some(1764089696123),
            online: true,
        }],
    });
    let stale = ServerMessage::request_error(4, ErrorCode::StaleEpoch, "epoch 3 is not current");
    for m in [&role, &vacant, &first, &duplicate, &devices, &stale] {
        round_trip_server(m);
    }
    assert_json_snapshot!("role", role);
    assert_json_snapshot!("role_vacant", vacant);
    assert_json_snapshot!("guard_first", first);
    assert_json_snapshot!("guard_duplicate", duplicate);
    assert_json_snapshot!("devices", devices);
    assert_json_snapshot!("request_error_stale_epoch", stale);
}

#[test]
fn coordination_http_bodies() {
    use tandem_protocol::api::{DeviceList, PushHint, PushToken, RenameDevice};
    use tandem_protocol::wire::DeviceInfo;
    assert_json_snapshot!(
        "http_device_list",
        DeviceList {
            devices: vec![DeviceInfo {
                device_id: device(),
                name: "Alice's iPhone".into(),
                platform: "ios".into(),
                app_version: "1.4.0".into(),
                registered_at: 1764089000000,
                last_seen: None,
                online: false,
            }],
        }
    );
    assert_json_snapshot!(
        "http_rename_device",
        RenameDevice {
            name: "Work phone".into()
        }
    );
    assert_json_snapshot!(
        "http_push_token",
        PushToken {
            token: "a1b2c3".into(),
            provider: "apns".into(),
        }
    );
    assert_json_snapshot!(
        "http_push_hint",
        PushHint {
            user: UserId::new("alice").unwrap(),
            device_id: device(),
            token: "a1b2c3".into(),
            provider: "apns".into(),
            spaces: vec![space(), SpaceId::new("team").unwrap()],
            sent_at: 1764089696123,
        }
    );
    assert!(tandem_protocol::wire::valid_role_name("auto-responder"));
    assert!(!tandem_protocol::wire::valid_role_name(""));
    assert!(!tandem_protocol::wire::valid_role_name("a b"));
}

#[test]
fn refusals_of_clock_readings_and_device_places() {
    let ack = ServerMessage::Ack(Ack {
        batch_id: 10,
        results: vec![MutationResult {
            mutation_id: mid(5),
            outcome: Outcome::Rejected {
                code: RejectCode::ClockSkew,
                reason: "the clock reading 32503680000000-0-0193a1b2-phone is 355782 days ahead of the server's clock, more than the 5 min allowed: set this device's clock right (its writes are refused until it is within the bound)".into(),
                field: None,
            },
        }],
    });
    round_trip_server(&ack);
    assert_json_snapshot!("ack_clock_skew", ack);
    assert_json_snapshot!(
        "http_error_too_many_devices",
        tandem_protocol::api::ApiError {
            code: ErrorCode::TooManyDevices,
            message: "alice has 100 registered devices and may have at most 100: revoke one (DELETE /v1/devices/{device}) to register another".into(),
        }
    );
}

#[test]
fn every_code_is_spelled_as_on_the_wire() {
    let errors = [
        ErrorCode::BadFrame,
        ErrorCode::HelloRequired,
        ErrorCode::UnsupportedProtocol,
        ErrorCode::Unauthorized,
        ErrorCode::Revoked,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::AlreadyExists,
        ErrorCode::InvalidRequest,
        ErrorCode::FrameTooLarge,
        ErrorCode::BatchTooLarge,
        ErrorCode::RateLimited,
        ErrorCode::HandshakeTimeout,
        ErrorCode::SlowConsumer,
        ErrorCode::ShuttingDown,
        ErrorCode::Internal,
        ErrorCode::StaleEpoch,
        ErrorCode::TooManyDevices,
    ];
    for code in errors {
        assert_eq!(json!(code), json!(code.as_str()));
    }
    let rejects = [
        RejectCode::InvalidMutation,
        RejectCode::DocumentTooLarge,
        RejectCode::ValidationFailed,
        RejectCode::UpdateNotAllowed,
        RejectCode::SetFieldWrite,
        RejectCode::NotASetField,
        RejectCode::StaleEpoch,
        RejectCode::Forbidden,
        RejectCode::ClockSkew,
    ];
    for code in rejects {
        assert_eq!(json!(code), json!(code.as_str()));
    }
    assert_json_snapshot!(
        "every_code",
        json!({
            "error": errors.map(ErrorCode::as_str),
            "reject": rejects.map(RejectCode::as_str),
        })
    );
}

#[test]
fn a_changes_message_is_at_most_its_envelope_and_its_changes() {
    let doc = document();
    let change = Change::from_document(&doc, Some(device()), Some(mid(1)));
    for n in [0usize, 1, 3] {
        for (more, checksum, head, reset) in [
            (true, None, None, false),
            (false, Some(SpaceChecksum(7)), Some(42), false),
            (false, Some(SpaceChecksum(u64::MAX)), Some(u64::MAX), true),
        ] {
            let changes = vec![change.clone(); n];
            let bound = Changes::envelope_len(&space())
                + changes.iter().map(|c| c.encoded_len() + 1).sum::<usize>();
            let text = ServerMessage::Changes(Changes {
                space: space(),
                changes,
                more,
                checksum,
                head,
                reset,
            })
            .encode();
            assert!(text.len() <= bound, "{} > {bound}", text.len());
            if reset {
                assert!(bound - text.len() <= 1, "the bound is tight");
            }
        }
    }
    assert_eq!(
        change.encoded_len(),
        serde_json::to_string(&change).unwrap().len()
    );
}

#[test]
fn codes_from_a_newer_peer_decode_as_other() {
    // An ack whose refusal carries a code this version has never heard of
    // still decodes: the other results of the batch are not lost with it.
    let ack = format!(
        r#"{{"type":"ack","batch_id":7,"results":[
            {{"mutation_id":"{}","outcome":{{"status":"rejected","code":"brand_new_rule","reason":"why"}}}}]}}"#,
        mid(1)
    );
    match ServerMessage::decode(&ack).unwrap() {
        ServerMessage::Ack(ack) => match &ack.results[0].outcome {
            Outcome::Rejected { code, reason, .. } => {
                assert_eq!(*code, tandem_protocol::RejectCode::Other);
                assert_eq!(reason, "why");
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    let error = r#"{"type":"error","code":"brand_new_error","message":"m","fatal":false}"#;
    match ServerMessage::decode(error).unwrap() {
        ServerMessage::Error(e) => assert_eq!(e.code, tandem_protocol::ErrorCode::Other),
        other => panic!("{other:?}"),
    }
}
