//! Bad input and limits: each gets a stable error code, and none of them
//! crashes the server or disturbs another connection.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use tandem_e2e::{Http, PATIENCE, Replica, TestServer, TestServerOptions, Writer, WsClient};
use tandem_protocol::wire::Outcome;
use tandem_protocol::{ErrorCode, ServerMessage, SpaceId, UserId};
use tokio_tungstenite::tungstenite::Message;

fn personal(user: &str) -> SpaceId {
    SpaceId::personal(&UserId::new(user).unwrap())
}

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

async fn connected(server: &TestServer, user: &str, device: &str) -> WsClient {
    let http = Http::new(server.http_url());
    let creds = http.register(&format!("dev:{user}"), device).await;
    WsClient::connect_ok(&server.sync_url(), &creds.access_token).await
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
            let mut client = connected(&server, "dave", &device).await;
            if greeted {
                client.hello(&device, BTreeMap::new()).await;
            }
            client.send_text(*frame).await;
            expect_fatal(&mut client, ErrorCode::BadFrame).await;
        }
    }
    let mut binary = connected(&server, "dave", "bin").await;
    binary.send_raw(Message::binary(vec![1, 2, 3])).await;
    expect_fatal(&mut binary, ErrorCode::BadFrame).await;
    still_works(&mut carol, &mut w, 1).await;
}

#[tokio::test]
async fn hello_first_once_and_in_the_right_version() {
    let server = TestServer::dev().await;
    let (mut carol, mut w) = bystander(&server).await;
    let mut client = connected(&server, "dave", "d1").await;
    client.send_text(r#"{"type":"ping","nonce":1}"#).await;
    expect_fatal(&mut client, ErrorCode::HelloRequired).await;

    let mut client = connected(&server, "dave", "d2").await;
    client.hello("d2", BTreeMap::new()).await;
    client
        .send_text(r#"{"type":"hello","protocol":1,"device_id":"d2","cursors":{}}"#)
        .await;
    expect_fatal(&mut client, ErrorCode::HelloRequired).await;

    let mut client = connected(&server, "dave", "d3").await;
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
    let mut client = connected(&server, "dave", "d1").await;
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
    assert_eq!(server.metrics().errors(ErrorCode::FrameTooLarge), 1);
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
    let mut client = connected(&server, "dave", "d1").await;
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
    let mut client = connected(&server, "dave", "d1").await;
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
    let mut silent = connected(&server, "dave", "d1").await;
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
    let mut slow = connected(&server, "erin", "slow").await;
    let welcome = slow.hello("slow", BTreeMap::new()).await;
    let mut replica = Replica::new();
    slow.sync_into(&mut replica, &welcome.spaces, &BTreeMap::new())
        .await;
    // The slow device now stops reading. Another device of the same user
    // writes large documents until the server gives up on the slow one.
    let mut fast = connected(&server, "erin", "fast").await;
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
    let mut again = connected(&server, "erin", "slow").await;
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
