//! Bad input and limits: each gets a stable error code, and none of them
//! crashes the server or disturbs another connection.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use tandem_e2e::{
    Http, PATIENCE, Replica, TestServer, TestServerOptions, Writer, WsClient, personal,
};
use tandem_protocol::wire::Outcome;
use tandem_protocol::{ErrorCode, RejectCode, ServerMessage};
use tokio_tungstenite::tungstenite::Message;

/// A connected, greeted device that keeps working while others misbehave.
async fn bystander(server: &TestServer) -> (WsClient, Writer) {
    let http = Http::new(server.http_url());
    let creds = http.register("dev:carol", "carol-phone").await;
    let mut client = WsClient::connect_ok(&server.sync_url(), &creds.access_token).await;
    client.hello("carol-phone", BTreeMap::new()).await;
    (client, Writer::new("carol-phone"))
}

async fn still_works(client: &mut WsClient, w: &mut Writer, batch: u64) {
    let ack = client
        .push(
            batch,
            vec![w.put(&personal("carol"), "notes", &format!("n{batch}"), json!({}))],
        )
        .await;
    assert!(matches!(ack.results[0].outcome, Outcome::Applied { .. }));
}

/// Sends `frame` first (instead of or after hello) and expects a fatal
/// `code` then the close.
async fn expect_fatal(client: &mut WsClient, code: ErrorCode) {
    let seen = client.until_closed().await;
    let error = seen.iter().rev().find_map(|m| match m {
        ServerMessage::Error(e) => Some(e.clone()),
        _ => None,
    });
    let error = error.unwrap_or_else(|| panic!("no error before the close: {seen:?}"));
    assert_eq!(error.code, code, "{error:?}");
    assert!(error.fatal);
}

#[tokio::test]
async fn malformed_frames_get_bad_frame_and_a_close() {
    let server = TestServer::dev().await;
    let (mut carol, mut w) = bystander(&server).await;
    let bad_frames = [
        "not json",
        r#"{"type":"shout"}"#,
        r#"{"type":"ping","nonce":1,"colour":"red"}"#,
        r#"{"type":"push","batch_id":1,"mutations":[{"mutation_id":"nope"}]}"#,
    ];
    for (i, frame) in bad_frames.iter().enumerate() {
        // Before hello and after it.
        for greeted in [false, true] {
            let device = format!("d{i}{greeted}");
            let mut client = server.connect("dave", &device).await;
            if greeted {
                client.hello(&device, BTreeMap::new()).await;
            }
            client.send_text(*frame).await;
            expect_fatal(&mut client, ErrorCode::BadFrame).await;
        }
    }
    let mut binary = server.connect("dave", "bin").await;
    binary.send_raw(Message::binary(vec![1, 2, 3])).await;
    expect_fatal(&mut binary, ErrorCode::BadFrame).await;
    still_works(&mut carol, &mut w, 1).await;
}

#[tokio::test]
async fn hello_first_once_and_in_the_right_version() {
    let server = TestServer::dev().await;
    let (mut carol, mut w) = bystander(&server).await;
    let mut client = server.connect("dave", "d1").await;
    client.send_text(r#"{"type":"ping","nonce":1}"#).await;
    expect_fatal(&mut client, ErrorCode::HelloRequired).await;

    let mut client = server.connect("dave", "d2").await;
    client.hello("d2", BTreeMap::new()).await;
    client
        .send_text(r#"{"type":"hello","protocol":1,"device_id":"d2","cursors":{}}"#)
        .await;
    expect_fatal(&mut client, ErrorCode::HelloRequired).await;

    let mut client = server.connect("dave", "d3").await;
    client
        .send_text(r#"{"type":"hello","protocol":99,"device_id":"d3","cursors":{}}"#)
        .await;
    expect_fatal(&mut client, ErrorCode::UnsupportedProtocol).await;
    still_works(&mut carol, &mut w, 1).await;
}

#[tokio::test]
async fn a_frame_over_the_limit_is_refused() {
    let server =
        TestServer::start(TestServerOptions::dev().with(|c| c.limits.max_frame_bytes = 64 * 1024))
            .await;
    let (mut carol, mut w) = bystander(&server).await;
    let mut client = server.connect("dave", "d1").await;
    client.hello("d1", BTreeMap::new()).await;
    let huge = format!(
        r#"{{"type":"ping","nonce":1,"pad":"{}"}}"#,
        "x".repeat(100 * 1024)
    );
    client.send_text(huge).await;
    let seen = client.until_closed().await;
    // The server says why if the socket still lets it; it always closes.
    if let Some(ServerMessage::Error(e)) = seen.last() {
        assert_eq!(e.code, ErrorCode::FrameTooLarge);
    }
    // Counted as the session ends, which the socket's close may overtake.
    let metrics = server.metrics();
    tandem_e2e::eventually("the refusal to be counted", || {
        metrics.errors(ErrorCode::FrameTooLarge) >= 1
    })
    .await;
    assert_eq!(metrics.errors(ErrorCode::FrameTooLarge), 1);
    still_works(&mut carol, &mut w, 1).await;
    // HTTP bodies have the same limit.
    let http = Http::new(server.http_url());
    let creds = http.register("dev:dave", "d2").await;
    let answer = http
        .call_raw(
            "POST",
            "/v1/push",
            Some(&creds.access_token),
            "x".repeat(100 * 1024),
        )
        .await;
    assert_eq!((answer.status, answer.code()), (413, "frame_too_large"));
}

#[tokio::test]
async fn a_batch_over_the_limit_is_refused_whole_and_the_connection_goes_on() {
    let server =
        TestServer::start(TestServerOptions::dev().with(|c| c.limits.max_batch_mutations = 5))
            .await;
    let mut client = server.connect("dave", "d1").await;
    let welcome = client.hello("d1", BTreeMap::new()).await;
    assert_eq!(welcome.limits.max_batch_mutations, 5);
    let space = personal("dave");
    let mut w = Writer::new("d1");
    let batch: Vec<_> = (0..6)
        .map(|i| w.put(&space, "n", &format!("{i}"), json!({})))
        .collect();
    client
        .send(&tandem_protocol::ClientMessage::Push(
            tandem_protocol::wire::Push {
                batch_id: 1,
                mutations: batch,
            },
        ))
        .await;
    let error = client.error(ErrorCode::BatchTooLarge).await;
    assert_eq!(error.batch_id, Some(1));
    assert!(!error.fatal);
    let ack = client
        .push(2, vec![w.put(&space, "n", "ok", json!({}))])
        .await;
    assert_eq!(
        ack.results[0].outcome,
        Outcome::Applied { rev: 1 },
        "nothing of batch 1 was applied"
    );
}

#[tokio::test]
async fn a_device_over_its_rate_is_told_to_slow_down() {
    let server = TestServer::start(TestServerOptions::dev().with(|c| {
        c.limits.device_mutations_per_sec = 1;
        c.limits.device_mutation_burst = 5;
    }))
    .await;
    let (mut carol, mut wc) = bystander(&server).await;
    let mut client = server.connect("dave", "d1").await;
    client.hello("d1", BTreeMap::new()).await;
    let space = personal("dave");
    let mut w = Writer::new("d1");
    let five: Vec<_> = (0..5)
        .map(|i| w.put(&space, "n", &format!("{i}"), json!({})))
        .collect();
    client.push(1, five).await;
    let more: Vec<_> = (5..10)
        .map(|i| w.put(&space, "n", &format!("{i}"), json!({})))
        .collect();
    client
        .send(&tandem_protocol::ClientMessage::Push(
            tandem_protocol::wire::Push {
                batch_id: 2,
                mutations: more,
            },
        ))
        .await;
    let error = client.error(ErrorCode::RateLimited).await;
    assert_eq!(error.batch_id, Some(2));
    assert!(!error.fatal);
    // Other devices have their own budget.
    still_works(&mut carol, &mut wc, 1).await;
}

#[tokio::test]
async fn hello_must_arrive_in_time() {
    let server = TestServer::start(
        TestServerOptions::dev().with(|c| c.limits.handshake_timeout = Duration::from_millis(300)),
    )
    .await;
    let (mut carol, mut w) = bystander(&server).await;
    let mut silent = server.connect("dave", "d1").await;
    expect_fatal(&mut silent, ErrorCode::HandshakeTimeout).await;
    still_works(&mut carol, &mut w, 1).await;
}

#[tokio::test]
async fn a_slow_consumer_is_disconnected_and_resumes_from_its_cursor() {
    let server = TestServer::start(TestServerOptions::dev().with(|c| {
        c.feed.outbound_queue = 4;
        c.limits.device_mutation_burst = 100_000;
        c.limits.device_mutations_per_sec = 100_000;
    }))
    .await;
    let space = personal("erin");
    let mut slow = server.connect("erin", "slow").await;
    let welcome = slow.hello("slow", BTreeMap::new()).await;
    let mut replica = Replica::new();
    slow.sync_into(&mut replica, &welcome.spaces, &BTreeMap::new())
        .await;
    // The slow device now stops reading. Another device of the same user
    // writes large documents until the server gives up on the slow one.
    let mut fast = server.connect("erin", "fast").await;
    fast.hello("fast", BTreeMap::new()).await;
    let mut w = Writer::new("fast");
    let blob = "x".repeat(200 * 1024);
    let mut written = 0u64;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while server.metrics().errors(ErrorCode::SlowConsumer) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow consumer was never disconnected"
        );
        written += 1;
        fast.push(
            written,
            vec![w.put(
                &space,
                "blobs",
                &format!("b{written}"),
                json!({"blob": blob}),
            )],
        )
        .await;
        // The writer reads its own live changes, so it is never the slow one.
        fast.changes(&space).await;
    }
    // The slow device reads what was sent before the disconnection, then
    // sees the connection end (with slow_consumer, if the buffers let it
    // through).
    let seen = slow.until_closed().await;
    for message in &seen {
        match message {
            ServerMessage::Changes(c) => replica.apply(c).unwrap(),
            ServerMessage::Error(e) => assert_eq!(e.code, ErrorCode::SlowConsumer),
            // Sent once the first catch-up is done.
            ServerMessage::Devices(_) | ServerMessage::Role(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(replica.cursor(&space) < written);
    // Reconnecting from its cursor, it catches up to everything.
    let mut again = server.connect("erin", "slow").await;
    let welcome = again.hello("slow", replica.cursors()).await;
    assert!(welcome.reset_required.is_empty());
    again
        .sync_into(
            &mut replica,
            &welcome.spaces,
            &BTreeMap::from([(space.clone(), written)]),
        )
        .await;
    assert_eq!(replica.live(&space).len() as u64, written);
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn rejected(outcome: &Outcome) -> (RejectCode, &str, Option<&str>) {
    match outcome {
        Outcome::Rejected {
            code,
            reason,
            field,
        } => (*code, reason.as_str(), field.as_deref()),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_readings_from_the_future_or_of_another_device_are_refused() {
    let server = TestServer::dev().await;
    let space = personal("dave");
    let mut client = server.connect("dave", "d1").await;
    client.hello("d1", BTreeMap::new()).await;
    let mut w = Writer::new("d1");
    // The year 3000, another device's clock, and 2 minutes ahead (within
    // the 5 minutes allowed).
    let mut future = w.put(&space, "notes", "n", json!({"title": "from 3000"}));
    future.hlc.millis = 32_503_680_000_000;
    let mut forged = w.put(&space, "notes", "n", json!({"title": "forged"}));
    forged.hlc.node = tandem_protocol::DeviceId::new("someone-else").unwrap();
    let mut ahead = w.put(&space, "notes", "n", json!({"title": "ahead"}));
    ahead.hlc.millis = wall_ms() + 2 * 60_000;
    let ack = client
        .push(1, vec![future.clone(), forged, ahead.clone()])
        .await;
    let (code, reason, field) = rejected(&ack.results[0].outcome);
    assert_eq!((code, field), (RejectCode::ClockSkew, None));
    assert!(
        reason.contains("days ahead of the server's clock, more than the 5 min allowed")
            && reason.contains("set this device's clock right"),
        "{reason}"
    );
    let (code, reason, _) = rejected(&ack.results[1].outcome);
    assert_eq!(code, RejectCode::InvalidMutation);
    assert!(reason.contains("someone-else"), "{reason}");
    assert_eq!(ack.results[2].outcome, Outcome::Applied { rev: 1 });

    // Over HTTP, the same; and sending it again gets the same answer.
    let http = Http::new(server.http_url());
    let creds = http.register("dev:dave", "d2").await;
    let mut w2 = Writer::new("d2");
    let mut late = w2.put(&space, "notes", "m", json!({}));
    late.hlc.millis = wall_ms() + 60 * 60_000;
    let body = tandem_protocol::ClientMessage::Push(tandem_protocol::wire::Push {
        batch_id: 7,
        mutations: vec![late],
    })
    .encode();
    for _ in 0..2 {
        let answer = http
            .call_raw("POST", "/v1/push", Some(&creds.access_token), body.clone())
            .await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        assert_eq!(answer.body["results"][0]["outcome"]["code"], "clock_skew");
        assert!(
            answer.body["results"][0]["outcome"]["reason"]
                .as_str()
                .unwrap()
                .contains("60 min ahead"),
            "{:?}",
            answer.body
        );
    }

    // A real device sees the reading 2 minutes ahead, and its own next
    // write to the field is stamped after it: it wins, on the server too.
    let phone = tandem_e2e::Device::online(&server.http_url(), "dave", "phone").await;
    tandem_e2e::eventually("the phone has the note", || {
        phone.docs(None, "notes").contains_key("n")
    })
    .await;
    phone
        .client
        .patch(
            tandem_core::DocKey::personal("notes", "n"),
            r#"{"title": "from the phone"}"#,
        )
        .unwrap();
    phone.settle().await;
    let docs = tandem_e2e::server_docs(&server.http_url(), "dave", "personal:dave", "notes").await;
    assert_eq!(docs.len(), 1, "nothing of the refused writes: {docs:?}");
    assert_eq!(docs["n"].0["title"], json!("from the phone"));
    assert!(phone.client.failed_mutations().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integers_beyond_64_bits_are_refused_and_the_rest_of_the_push_is_applied() {
    let server = TestServer::dev().await;
    let space = personal("dave");
    let mut client = server.connect("dave", "d1").await;
    client.hello("d1", BTreeMap::new()).await;
    let mut w = Writer::new("d1");
    let big = "123456789012345678901234567890";
    // 7777 stands for the big number in the text; serde_json would round
    // it before it was sent.
    let mutations = vec![
        w.put(&space, "n", "before", json!({"v": 1})),
        w.put(&space, "n", "big", json!({"ok": 1, "count": 7777})),
        w.put(&space, "n", "after", json!({"v": u64::MAX})),
    ];
    let text = |batch_id: u64| {
        tandem_protocol::ClientMessage::Push(tandem_protocol::wire::Push {
            batch_id,
            mutations: mutations.clone(),
        })
        .encode()
        .replace("7777", big)
    };
    client.send_text(text(1)).await;
    let ack = client.ack(1).await;
    assert_eq!(ack.results[0].outcome, Outcome::Applied { rev: 1 });
    let (code, reason, field) = rejected(&ack.results[1].outcome);
    assert_eq!((code, field), (RejectCode::InvalidMutation, Some("count")));
    assert!(
        reason.starts_with(&format!(
            "count: the integer {big} is outside the 64-bit range"
        )),
        "{reason}"
    );
    assert_eq!(ack.results[2].outcome, Outcome::Applied { rev: 2 });

    // Over HTTP the same answers (the others are duplicates now).
    let http = Http::new(server.http_url());
    let creds = http.register("dev:dave", "d1").await;
    let answer = http
        .call_raw("POST", "/v1/push", Some(&creds.access_token), text(2))
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let outcomes: Vec<&str> = (0..3)
        .map(|i| {
            answer.body["results"][i]["outcome"]["status"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(outcomes, ["duplicate", "rejected", "duplicate"]);
    assert_eq!(answer.body["results"][1]["outcome"]["field"], "count");

    let docs = tandem_e2e::server_docs(&server.http_url(), "dave", "personal:dave", "n").await;
    assert_eq!(
        docs.keys().collect::<Vec<_>>(),
        ["after", "before"],
        "nothing of the refused write"
    );
    assert_eq!(docs["after"].0["v"], json!(u64::MAX), "kept exactly");
}

#[tokio::test]
async fn a_user_has_at_most_the_allowed_devices_and_revoking_one_frees_a_place() {
    let server =
        TestServer::start(TestServerOptions::dev().with(|c| c.limits.max_devices_per_user = 3))
            .await;
    let http = Http::new(server.http_url());
    http.register("dev:erin", "phone").await;
    http.register("dev:erin", "tablet").await;
    http.register("dev:erin", "laptop").await;
    let refused = http.try_register("dev:erin", "watch").await;
    assert_eq!((refused.status, refused.code()), (409, "too_many_devices"));
    let message = refused.body["message"].as_str().unwrap();
    assert!(
        message.contains("at most 3") && message.contains("revoke one"),
        "{message}"
    );
    assert_eq!(server.metrics().errors(ErrorCode::TooManyDevices), 1);
    // Registering a device again takes no new place, however often.
    for _ in 0..3 {
        http.register("dev:erin", "phone").await;
    }
    // Another user's devices do not count.
    http.register("dev:frank", "phone").await;
    let phone = http.register("dev:erin", "phone").await;
    let devices = http
        .call("GET", "/v1/devices", Some(&phone.access_token), None)
        .await;
    assert_eq!(devices.body["devices"].as_array().unwrap().len(), 3);
    // Revoking one frees its place (and it cannot take one again).
    let revoked = http
        .call(
            "DELETE",
            "/v1/devices/tablet",
            Some(&phone.access_token),
            None,
        )
        .await;
    assert_eq!(revoked.status, 200, "{:?}", revoked.body);
    http.register("dev:erin", "watch").await;
    let again = http.try_register("dev:erin", "tablet").await;
    assert_eq!((again.status, again.code()), (401, "revoked"));
    let full = http.try_register("dev:erin", "ring").await;
    assert_eq!((full.status, full.code()), (409, "too_many_devices"));
}
