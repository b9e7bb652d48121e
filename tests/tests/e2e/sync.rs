//! Push, ack, idempotent retries, resume from a cursor, fan-out, checksums,
//! policies and the HTTP push/pull endpoints, against a real server.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use serde_json::json;
use tandem_e2e::{Http, Replica, TestServer, TestServerOptions, Writer, WsClient, personal};
use tandem_protocol::wire::Outcome;
use tandem_protocol::{ClientMessage, Policy, RejectCode, ServerMessage, SpaceId};

/// Registers `device` of `user` and connects it with `cursors`; returns the
/// client and the caught-up replica.
async fn online(
    server: &TestServer,
    user: &str,
    device: &str,
    replica: Replica,
) -> (WsClient, Replica) {
    let http = Http::new(server.http_url());
    let creds = http.register(&format!("dev:{user}"), device).await;
    let mut client = WsClient::connect_ok(&server.sync_url(), &creds.access_token).await;
    let welcome = client.hello(device, replica.cursors()).await;
    let mut replica = replica;
    client
        .sync_into(&mut replica, &welcome.spaces, &BTreeMap::new())
        .await;
    (client, replica)
}

#[tokio::test]
async fn push_is_acked_and_a_retry_is_a_duplicate_with_the_original_rev() {
    let server = TestServer::dev().await;
    let (mut phone, mut replica) = online(&server, "alice", "phone", Replica::new()).await;
    let space = personal("alice");
    let mut w = Writer::new("phone");
    let m = w.put(&space, "tasks", "t1", json!({"title": "Buy milk"}));

    let ack = phone.push(1, vec![m.clone()]).await;
    assert_eq!(ack.results.len(), 1);
    assert_eq!(ack.results[0].mutation_id, m.mutation_id);
    assert_eq!(ack.results[0].outcome, Outcome::Applied { rev: 1 });
    // The author's own connection receives the change, after the ack.
    let live = phone.changes(&space).await;
    assert_eq!(live.changes.len(), 1);
    assert_eq!(live.changes[0].rev, 1);
    assert_eq!(live.changes[0].mutation_id, Some(m.mutation_id));
    replica.apply(&live).unwrap();

    // The same mutation again, in a new batch and twice within one batch.
    let ack = phone.push(2, vec![m.clone(), m.clone()]).await;
    assert_eq!(ack.results[0].outcome, Outcome::Duplicate { rev: 1 });
    assert_eq!(ack.results[1].outcome, Outcome::Duplicate { rev: 1 });

    // Applied once: the next write gets rev 2, and the live stream goes on
    // from 1 to 2 with nothing in between.
    let ack = phone
        .push(
            3,
            vec![w.patch(&space, "tasks", "t1", json!({"done": true}))],
        )
        .await;
    assert_eq!(ack.results[0].outcome, Outcome::Applied { rev: 2 });
    let live = phone.changes(&space).await;
    assert_eq!(
        live.changes.iter().map(|c| c.rev).collect::<Vec<_>>(),
        vec![2]
    );
    replica.apply(&live).unwrap();
    assert_eq!(server.metrics().mutations_applied(), 2);
    let doc = replica.document(&space, "tasks", "t1").unwrap();
    assert_eq!(doc.state.fields["title"], json!("Buy milk"));
    assert_eq!(doc.state.fields["done"], json!(true));
}

#[tokio::test]
async fn a_device_resumes_from_its_cursor() {
    let server = TestServer::dev().await;
    let space = personal("alice");
    let (mut phone, _) = online(&server, "alice", "phone", Replica::new()).await;
    let mut w = Writer::new("phone");
    for i in 0..3 {
        phone
            .push(
                i,
                vec![w.put(&space, "notes", &format!("n{i}"), json!({"i": i}))],
            )
            .await;
    }
    let (laptop, replica) = online(&server, "alice", "laptop", Replica::new()).await;
    assert_eq!(replica.cursor(&space), 3);
    laptop.close().await;

    // While the laptop is away: two new documents and a change to an old one.
    for (i, id) in [(3, "n3"), (4, "n4"), (5, "n0")] {
        phone
            .push(i, vec![w.put(&space, "notes", id, json!({"i": i}))])
            .await;
    }
    let http = Http::new(server.http_url());
    let creds = http.register("dev:alice", "laptop").await;
    let mut laptop = WsClient::connect_ok(&server.sync_url(), &creds.access_token).await;
    let welcome = laptop.hello("laptop", replica.cursors()).await;
    assert!(welcome.reset_required.is_empty());
    let page = laptop.changes(&space).await;
    assert!(!page.more);
    // Only what changed after the cursor, each document once, in order.
    assert_eq!(
        page.changes.iter().map(|c| c.rev).collect::<Vec<_>>(),
        vec![4, 5, 6]
    );
    assert_eq!(page.head, Some(6));
    let mut replica = replica;
    replica.apply(&page).unwrap();
    assert_eq!(replica.cursor(&space), 6);
    assert_eq!(replica.live(&space).len(), 5);
}

#[tokio::test]
async fn changes_fan_out_to_every_device_of_every_member() {
    let server = TestServer::dev().await;
    let http = Http::new(server.http_url());
    let team = SpaceId::shared("team").unwrap();
    let alice_phone = http.register("dev:alice", "alice-phone").await;
    http.register("dev:bob", "bob-phone").await;
    let created = http
        .call(
            "POST",
            "/v1/spaces",
            Some(&alice_phone.access_token),
            Some(&json!({"name": "team"})),
        )
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let added = http
        .call(
            "POST",
            "/v1/spaces/team/members",
            Some(&alice_phone.access_token),
            Some(&json!({"user": "bob"})),
        )
        .await;
    assert_eq!(added.status, 200, "{:?}", added.body);
    assert_eq!(added.body["members"], json!(["alice", "bob"]));

    let (mut a1, _) = online(&server, "alice", "alice-phone", Replica::new()).await;
    let (mut a2, _) = online(&server, "alice", "alice-laptop", Replica::new()).await;
    let (mut b1, _) = online(&server, "bob", "bob-phone", Replica::new()).await;

    let mut w = Writer::new("alice-phone");
    let ack = a1
        .push(
            1,
            vec![w.put(&team, "messages", "m1", json!({"text": "hi"}))],
        )
        .await;
    assert_eq!(ack.results[0].outcome, Outcome::Applied { rev: 1 });
    for client in [&mut a1, &mut a2, &mut b1] {
        let live = client.changes(&team).await;
        assert_eq!(live.changes.len(), 1);
        assert_eq!(live.changes[0].doc_id.as_str(), "m1");
        assert_eq!(
            live.changes[0].origin.as_ref().unwrap().as_str(),
            "alice-phone"
        );
    }

    // A personal write reaches Alice's other device and not Bob.
    a1.push(2, vec![w.put(&personal("alice"), "notes", "n1", json!({}))])
        .await;
    let live = a2.changes(&personal("alice")).await;
    assert_eq!(live.changes[0].doc_id.as_str(), "n1");
    a1.push(
        3,
        vec![w.put(&team, "messages", "m2", json!({"text": "again"}))],
    )
    .await;
    // Bob's next change (coordination messages of his own devices may come
    // between) is the team's, not Alice's personal one.
    match b1
        .recv_matching("changes", |m| matches!(m, ServerMessage::Changes(_)))
        .await
    {
        ServerMessage::Changes(c) => {
            assert_eq!(c.space, team);
            assert_eq!(c.changes[0].doc_id.as_str(), "m2");
        }
        other => panic!("bob got {other:?}"),
    }
}

#[tokio::test]
async fn checksums_can_be_recomputed_by_a_client() {
    let server = TestServer::start(TestServerOptions::dev().with(|c| c.feed.page_size = 3)).await;
    let space = personal("alice");
    let (mut phone, mut phone_replica) = online(&server, "alice", "phone", Replica::new()).await;
    let mut w = Writer::new("phone");
    let mut batch = 0;
    let mut push = |m| {
        batch += 1;
        (batch, vec![m])
    };
    let mut ops = Vec::new();
    for i in 0..8 {
        ops.push(push(w.put(
            &space,
            "tasks",
            &format!("t{i}"),
            json!({"n": i}),
        )));
    }
    ops.push(push(w.patch(&space, "tasks", "t1", json!({"n": 100}))));
    ops.push(push(w.delete(&space, "tasks", "t2")));
    ops.push(push(w.delete(&space, "tasks", "t5")));
    ops.push(push(w.put(&space, "tasks", "t5", json!({"back": true}))));
    ops.push(push(w.put(&space, "other", "t1", json!({}))));
    let last = ops.len() as u64;
    for (id, muts) in ops {
        phone.push(id, muts).await;
    }
    // Live changes carry checksums too; the replica checks each one.
    phone
        .sync_into(
            &mut phone_replica,
            std::slice::from_ref(&space),
            &BTreeMap::from([(space.clone(), last)]),
        )
        .await;
    assert!(phone_replica.checksums_checked >= last as usize);

    // A new device catches up in pages of 3; the final page's checksum is
    // what it recomputes from the documents it received.
    let (_, fresh) = online(&server, "alice", "tablet", Replica::new()).await;
    assert_eq!(fresh.cursor(&space), last);
    assert_eq!(fresh.checksum(&space), phone_replica.checksum(&space));
    assert_eq!(fresh.live(&space).len(), 8);
    assert!(fresh.checksums_checked >= 1);
}

#[tokio::test]
async fn policies_from_the_schema_decide_and_are_announced() {
    let server = TestServer::start(TestServerOptions::dev().schema(
        r#"{"collections": {
            "messages": {"policy": "append_only", "set_fields": ["read_by"],
                         "fields": {"text": {"type": "string", "required": true, "max_length": 10}}},
            "contacts": {"policy": "server_wins"}
        }}"#,
    ).with(|c| c.limits.max_document_bytes = 2_000))
    .await;
    let space = personal("alice");
    let http = Http::new(server.http_url());
    let creds = http.register("dev:alice", "phone").await;
    let mut phone = WsClient::connect_ok(&server.sync_url(), &creds.access_token).await;
    let welcome = phone.hello("phone", BTreeMap::new()).await;
    assert_eq!(welcome.policies.len(), 2);
    assert_eq!(
        welcome.policies[&"messages".parse().unwrap()].policy,
        Policy::AppendOnly
    );
    assert!(welcome.policies[&"messages".parse().unwrap()].is_set_field("read_by"));

    let mut w = Writer::new("phone");
    let first = w.put(&space, "messages", "m1", json!({"text": "hello"}));
    let again = w.put(&space, "messages", "m1", json!({"text": "changed"}));
    let patch = w.patch(&space, "messages", "m1", json!({"text": "x"}));
    let read = w.set_add(&space, "messages", "m1", "read_by", vec![json!("laptop")]);
    let invalid = w.put(
        &space,
        "messages",
        "m2",
        json!({"text": "far too long text"}),
    );
    let missing = w.put(&space, "messages", "m3", json!({}));
    let huge = w.put(&space, "notes", "big", json!({"blob": "x".repeat(3_000)}));
    let contact = w.put(&space, "contacts", "c1", json!({"name": "Ann"}));
    let mut stale = w.patch(&space, "contacts", "c1", json!({"name": "Bea"}));
    stale.base_version = Some(99);
    let ack = phone
        .push(
            1,
            vec![
                first, again, patch, read, invalid, missing, huge, contact, stale,
            ],
        )
        .await;
    let outcomes: Vec<_> = ack.results.iter().map(|r| r.outcome.clone()).collect();
    assert_eq!(outcomes[0], Outcome::Applied { rev: 1 });
    assert_eq!(
        outcomes[1],
        Outcome::Duplicate { rev: 1 },
        "append_only create of an existing id"
    );
    assert!(matches!(
        &outcomes[2],
        Outcome::Rejected {
            code: RejectCode::UpdateNotAllowed,
            ..
        }
    ));
    assert_eq!(
        outcomes[3],
        Outcome::Applied { rev: 2 },
        "set fields change append_only documents"
    );
    match &outcomes[4] {
        Outcome::Rejected {
            code,
            field,
            reason,
        } => {
            assert_eq!(*code, RejectCode::ValidationFailed);
            assert_eq!(field.as_deref(), Some("text"));
            assert!(reason.contains("at most 10"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(&outcomes[5], Outcome::Rejected { code: RejectCode::ValidationFailed, field: Some(f), .. } if f == "text")
    );
    assert!(matches!(
        &outcomes[6],
        Outcome::Rejected {
            code: RejectCode::DocumentTooLarge,
            ..
        }
    ));
    assert_eq!(outcomes[7], Outcome::Applied { rev: 3 });
    match &outcomes[8] {
        Outcome::Conflict {
            document: Some(doc),
        } => {
            assert_eq!(doc.version, Some(3));
            assert_eq!(doc.fields()["name"], json!("Ann"));
        }
        other => panic!("{other:?}"),
    }
    let empty = phone.push(2, vec![]).await;
    assert!(empty.results.is_empty());
}

#[tokio::test]
async fn http_push_and_pull_work_like_the_socket() {
    let server = TestServer::start(TestServerOptions::dev().with(|c| c.feed.page_size = 2)).await;
    let http = Http::new(server.http_url());
    let creds = http.register("dev:alice", "watch").await;
    let space = personal("alice");
    let mut w = Writer::new("watch");
    let muts: Vec<_> = (0..5)
        .map(|i| w.put(&space, "steps", &format!("s{i}"), json!({"n": i})))
        .collect();
    let push = ClientMessage::Push(tandem_protocol::wire::Push {
        batch_id: 7,
        mutations: muts.clone(),
    });
    let answer = http
        .call_raw("POST", "/v1/push", Some(&creds.access_token), push.encode())
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["type"], json!("ack"));
    assert_eq!(answer.body["batch_id"], json!(7));
    assert_eq!(
        answer.body["results"][4]["outcome"],
        json!({"status": "applied", "rev": 5})
    );
    let retry = http
        .call_raw("POST", "/v1/push", Some(&creds.access_token), push.encode())
        .await;
    assert_eq!(
        retry.body["results"][0]["outcome"],
        json!({"status": "duplicate", "rev": 1})
    );

    let mut replica = Replica::new();
    let mut cursor = 0;
    let mut pages = 0;
    loop {
        let page = http
            .call(
                "GET",
                &format!("/v1/spaces/personal:alice/changes?cursor={cursor}"),
                Some(&creds.access_token),
                None,
            )
            .await;
        assert_eq!(page.status, 200, "{:?}", page.body);
        let ServerMessage::Changes(changes) = serde_json::from_value(page.body).unwrap() else {
            panic!("not a changes page");
        };
        pages += 1;
        replica.apply(&changes).unwrap();
        cursor = replica.cursor(&space);
        if !changes.more {
            assert!(changes.checksum.is_some());
            break;
        }
        assert!(
            changes.checksum.is_none(),
            "no checksum in the middle of a catch-up"
        );
    }
    assert_eq!(pages, 3);
    assert_eq!(cursor, 5);
    assert_eq!(replica.live(&space).len(), 5);
}

#[tokio::test]
async fn membership_changes_reach_connected_devices() {
    let server = TestServer::dev().await;
    let http = Http::new(server.http_url());
    let alice = http.register("dev:alice", "alice-phone").await;
    let bob = http.register("dev:bob", "bob-phone").await;
    let team = SpaceId::shared("team").unwrap();
    http.call(
        "POST",
        "/v1/spaces",
        Some(&alice.access_token),
        Some(&json!({"name": "team"})),
    )
    .await;
    let mut a = WsClient::connect_ok(&server.sync_url(), &alice.access_token).await;
    let welcome = a.hello("alice-phone", BTreeMap::new()).await;
    assert!(welcome.spaces.contains(&team));
    let mut b = WsClient::connect_ok(&server.sync_url(), &bob.access_token).await;
    let welcome = b.hello("bob-phone", BTreeMap::new()).await;
    assert_eq!(welcome.spaces, vec![personal("bob")]);
    // Bob's catch-up, taken now so that the changes he hears later are
    // the live ones.
    b.sync_into(&mut Replica::new(), &welcome.spaces, &BTreeMap::new())
        .await;
    let mut w = Writer::new("alice-phone");
    a.push(
        1,
        vec![w.put(&team, "messages", "m1", json!({"text": "before bob"}))],
    )
    .await;

    http.call(
        "POST",
        "/v1/spaces/team/members",
        Some(&alice.access_token),
        Some(&json!({"user": "bob"})),
    )
    .await;
    let spaces = b
        .recv_matching("spaces", |m| matches!(m, ServerMessage::Spaces(_)))
        .await;
    let ServerMessage::Spaces(spaces) = spaces else {
        unreachable!()
    };
    assert!(spaces.spaces.contains(&team));
    b.send(&ClientMessage::Subscribe(
        tandem_protocol::wire::Subscribe {
            space: team.clone(),
            cursor: 0,
        },
    ))
    .await;
    let page = b.changes(&team).await;
    assert!(!page.more);
    assert_eq!(page.changes[0].doc_id.as_str(), "m1");
    a.push(
        2,
        vec![w.put(&team, "messages", "m2", json!({"text": "hi bob"}))],
    )
    .await;
    assert_eq!(b.changes(&team).await.changes[0].doc_id.as_str(), "m2");

    // Bob leaves; his connection stops receiving the space at once.
    let left = http
        .call(
            "DELETE",
            "/v1/spaces/team/members/bob",
            Some(&bob.access_token),
            None,
        )
        .await;
    assert_eq!(left.status, 200, "{:?}", left.body);
    let spaces = b
        .recv_matching("spaces", |m| matches!(m, ServerMessage::Spaces(_)))
        .await;
    let ServerMessage::Spaces(spaces) = spaces else {
        unreachable!()
    };
    assert!(!spaces.spaces.contains(&team));
    a.push(
        3,
        vec![w.put(&team, "messages", "m3", json!({"text": "bob is gone"}))],
    )
    .await;
    let mut wb = Writer::new("bob-phone");
    b.push(1, vec![wb.put(&personal("bob"), "notes", "n", json!({}))])
        .await;
    // Bob's own change comes, and nothing of the team's before it (m3 was
    // committed first, so it would have come first).
    b.recv_matching("bob's own change", |m| {
        matches!(m, ServerMessage::Changes(c)
            if c.space == personal("bob") && c.changes.iter().any(|c| c.doc_id.as_str() == "n"))
    })
    .await;
    let heard = b.take_unclaimed();
    assert!(
        heard
            .iter()
            .all(|m| !matches!(m, ServerMessage::Changes(c) if c.space == team)),
        "bob still heard the team: {heard:?}"
    );
}
