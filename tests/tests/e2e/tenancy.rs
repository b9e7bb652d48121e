//! The cross-tenant matrix: a device of user A tries to push to, pull from,
//! subscribe to, resume in and change the membership of user B's spaces.
//! Every attempt is denied with a clear code and nothing of B's comes back.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use serde_json::json;
use tandem_e2e::{Http, Replica, TestServer, Writer, WsClient};
use tandem_protocol::wire::{Outcome, Subscribe};
use tandem_protocol::{ClientMessage, ErrorCode, RejectCode, ServerMessage, SpaceId, UserId};

#[tokio::test]
async fn user_a_can_reach_nothing_of_user_b() {
    let server = TestServer::dev().await;
    let http = Http::new(server.http_url());
    let bob = http.register("dev:bob", "bob-phone").await;
    let mallory = http.register("dev:mallory", "mallory-phone").await;
    let bob_personal = SpaceId::personal(&UserId::new("bob").unwrap());
    let bob_team = SpaceId::shared("bobteam").unwrap();
    let answer = http
        .call(
            "POST",
            "/v1/spaces",
            Some(&bob.access_token),
            Some(&json!({"name": "bobteam"})),
        )
        .await;
    assert_eq!(answer.status, 201);

    // Bob writes a secret in each of his spaces.
    let mut b = WsClient::connect_ok(&server.sync_url(), &bob.access_token).await;
    b.hello("bob-phone", BTreeMap::new()).await;
    let mut wb = Writer::new("bob-phone");
    let bob_secret = wb.put(
        &bob_personal,
        "notes",
        "secret",
        json!({"text": "bob's secret"}),
    );
    let ack = b
        .push(
            1,
            vec![
                bob_secret.clone(),
                wb.put(&bob_team, "notes", "secret", json!({"text": "team secret"})),
            ],
        )
        .await;
    assert!(
        ack.results
            .iter()
            .all(|r| matches!(r.outcome, Outcome::Applied { .. }))
    );

    let mut m = WsClient::connect_ok(&server.sync_url(), &mallory.access_token).await;
    // Resume from a cursor in Bob's spaces.
    let mut cursors = BTreeMap::new();
    cursors.insert(bob_personal.clone(), 1);
    cursors.insert(bob_team.clone(), 0);
    let welcome = m.hello("mallory-phone", cursors).await;
    assert_eq!(
        welcome.spaces,
        vec![SpaceId::personal(&UserId::new("mallory").unwrap())]
    );
    for space in [&bob_personal, &bob_team] {
        let error = m
            .recv_matching(
                "forbidden",
                |msg| matches!(msg, ServerMessage::Error(e) if e.space.as_ref() == Some(space)),
            )
            .await;
        let ServerMessage::Error(error) = error else {
            unreachable!()
        };
        assert_eq!(error.code, ErrorCode::Forbidden);
        assert!(!error.fatal);
    }

    // Subscribe to Bob's spaces, and to one that does not exist: the same
    // answer, so existence is not revealed.
    for space in [
        bob_personal.clone(),
        bob_team.clone(),
        SpaceId::shared("nope").unwrap(),
    ] {
        m.send(&ClientMessage::Subscribe(Subscribe {
            space: space.clone(),
            cursor: 0,
        }))
        .await;
        let error = m
            .recv_matching(
                "forbidden",
                |msg| matches!(msg, ServerMessage::Error(e) if e.space.as_ref() == Some(&space)),
            )
            .await;
        let ServerMessage::Error(error) = error else {
            unreachable!()
        };
        assert_eq!(error.code, ErrorCode::Forbidden, "{space}");
    }

    // Push into Bob's spaces, pretend to be Bob's device, reuse Bob's
    // mutation id.
    let mut wm = Writer::new("mallory-phone");
    let mut as_bob = Writer::new("bob-phone");
    let mut stolen_id = wm.put(
        &SpaceId::personal(&UserId::new("mallory").unwrap()),
        "notes",
        "x",
        json!({}),
    );
    stolen_id.mutation_id = bob_secret.mutation_id;
    let ack = m
        .push(
            1,
            vec![
                wm.put(
                    &bob_personal,
                    "notes",
                    "secret",
                    json!({"text": "overwritten"}),
                ),
                wm.delete(&bob_team, "notes", "secret"),
                as_bob.put(&bob_personal, "notes", "evil", json!({})),
                stolen_id,
            ],
        )
        .await;
    let codes: Vec<_> = ack
        .results
        .iter()
        .map(|r| match &r.outcome {
            Outcome::Rejected { code, .. } => *code,
            other => panic!("expected a rejection, got {other:?}"),
        })
        .collect();
    assert_eq!(
        codes,
        vec![
            RejectCode::Forbidden,
            RejectCode::Forbidden,
            RejectCode::Forbidden,
            RejectCode::InvalidMutation
        ]
    );

    // The same over HTTP: push, pull, members, membership changes.
    let push = ClientMessage::Push(tandem_protocol::wire::Push {
        batch_id: 2,
        mutations: vec![wm.put(&bob_team, "notes", "n", json!({}))],
    });
    let answer = http
        .call_raw(
            "POST",
            "/v1/push",
            Some(&mallory.access_token),
            push.encode(),
        )
        .await;
    assert_eq!(
        answer.body["results"][0]["outcome"]["code"],
        json!("forbidden")
    );
    let token = Some(mallory.access_token.as_str());
    for path in [
        "/v1/spaces/personal:bob/changes?cursor=0",
        "/v1/spaces/bobteam/changes?cursor=0",
        "/v1/spaces/nope/changes?cursor=0",
        "/v1/spaces/bobteam",
        "/v1/spaces/personal:bob",
    ] {
        let answer = http.call("GET", path, token, None).await;
        assert_eq!(
            (answer.status, answer.code()),
            (403, "forbidden"),
            "{path}: {:?}",
            answer.body
        );
        assert!(!answer.body.to_string().contains("secret"));
    }
    let tries = [
        (
            "POST",
            "/v1/spaces/bobteam/members",
            Some(json!({"user": "mallory"})),
        ),
        (
            "POST",
            "/v1/spaces/personal:bob/members",
            Some(json!({"user": "mallory"})),
        ),
        ("DELETE", "/v1/spaces/bobteam/members/bob", None),
        ("DELETE", "/v1/spaces/bobteam/members/mallory", None),
        ("DELETE", "/v1/spaces/personal:bob/members/bob", None),
    ];
    for (method, path, body) in tries {
        let answer = http.call(method, path, token, body.as_ref()).await;
        assert_eq!(
            (answer.status, answer.code()),
            (403, "forbidden"),
            "{method} {path}: {:?}",
            answer.body
        );
    }
    let spaces = http.call("GET", "/v1/spaces", token, None).await;
    assert_eq!(
        spaces.body["spaces"],
        json!([{"space": "personal:mallory", "owner": "mallory"}])
    );

    // Nothing of Bob's reached Mallory, and Bob's data is intact.
    m.send(&ClientMessage::Ping(tandem_protocol::wire::Heartbeat {
        nonce: 9,
    }))
    .await;
    m.recv_matching("pong", |msg| matches!(msg, ServerMessage::Pong(_)))
        .await;
    m.close().await;
    let everything_mallory_saw = format!("{:?}", {
        let mut again = WsClient::connect_ok(&server.sync_url(), &mallory.access_token).await;
        again.hello("mallory-phone", BTreeMap::new()).await;
        again
            .changes(&SpaceId::personal(&UserId::new("mallory").unwrap()))
            .await
    });
    assert!(
        !everything_mallory_saw.contains("secret"),
        "{everything_mallory_saw}"
    );

    let mut bob_again = WsClient::connect_ok(&server.sync_url(), &bob.access_token).await;
    let welcome = bob_again.hello("bob-phone", BTreeMap::new()).await;
    let mut replica = Replica::new();
    bob_again
        .sync_into(&mut replica, &welcome.spaces, &BTreeMap::new())
        .await;
    let secret = replica.document(&bob_personal, "notes", "secret").unwrap();
    assert_eq!(secret.state.fields["text"], json!("bob's secret"));
    assert_eq!(replica.live(&bob_team).len(), 1);
    assert!(replica.document(&bob_personal, "notes", "evil").is_none());
    let members = http
        .call("GET", "/v1/spaces/bobteam", Some(&bob.access_token), None)
        .await;
    assert_eq!(members.body["members"], json!(["bob"]));
}

#[tokio::test]
async fn membership_rules() {
    let server = TestServer::dev().await;
    let http = Http::new(server.http_url());
    let alice = http.register("dev:alice", "a").await;
    let bob = http.register("dev:bob", "b").await;
    let a = Some(alice.access_token.as_str());
    let b = Some(bob.access_token.as_str());
    let created = http
        .call("POST", "/v1/spaces", a, Some(&json!({"name": "club"})))
        .await;
    assert_eq!(
        created.body,
        json!({"space": "club", "owner": "alice", "members": ["alice"]})
    );
    let again = http
        .call("POST", "/v1/spaces", b, Some(&json!({"name": "club"})))
        .await;
    assert_eq!((again.status, again.code()), (409, "already_exists"));
    let bad = http
        .call(
            "POST",
            "/v1/spaces",
            a,
            Some(&json!({"name": "personal:bob"})),
        )
        .await;
    assert_eq!((bad.status, bad.code()), (400, "invalid_request"));
    let unknown_field = http
        .call(
            "POST",
            "/v1/spaces",
            a,
            Some(&json!({"name": "x", "colour": 1})),
        )
        .await;
    assert_eq!(
        (unknown_field.status, unknown_field.code()),
        (400, "bad_frame")
    );
    http.call(
        "POST",
        "/v1/spaces/club/members",
        a,
        Some(&json!({"user": "bob"})),
    )
    .await;
    // A member cannot add or remove others, only leave.
    let add = http
        .call(
            "POST",
            "/v1/spaces/club/members",
            b,
            Some(&json!({"user": "carol"})),
        )
        .await;
    assert_eq!((add.status, add.code()), (403, "forbidden"));
    let remove_owner = http
        .call("DELETE", "/v1/spaces/club/members/alice", b, None)
        .await;
    assert_eq!(
        (remove_owner.status, remove_owner.code()),
        (403, "forbidden")
    );
    let owner_leaves = http
        .call("DELETE", "/v1/spaces/club/members/alice", a, None)
        .await;
    assert_eq!(
        (owner_leaves.status, owner_leaves.code()),
        (400, "invalid_request")
    );
    let not_member = http
        .call("DELETE", "/v1/spaces/club/members/carol", a, None)
        .await;
    assert_eq!((not_member.status, not_member.code()), (404, "not_found"));
    let leaves = http
        .call("DELETE", "/v1/spaces/club/members/bob", b, None)
        .await;
    assert_eq!(leaves.status, 200);
    assert_eq!(leaves.body["members"], json!(["alice"]));
    let gone = http.call("GET", "/v1/spaces/club", b, None).await;
    assert_eq!(gone.status, 403);
}
