//! The server's limits end to end on PostgreSQL: pages and live changes
//! within the announced frame limit (with states large enough to be stored
//! compressed), a change too long for one frame refused, clock readings
//! from the future refused, and the per-user device cap. Runs on a schema
//! of its own in the database named by `TANDEM_TEST_POSTGRES_URL`.

use std::collections::BTreeMap;

use serde_json::json;
use tandem_e2e::{Http, Replica, TestServer, TestServerOptions, Writer, WsClient};
use tandem_protocol::wire::Outcome;
use tandem_protocol::{RejectCode, ServerMessage, SpaceId, UserId};
use tandem_server::store::postgres::testing::TestSchema;

const FRAME: usize = 64 * 1024;
const DOCS: usize = 30;

fn blob(i: usize) -> String {
    format!("{i:04}-{}", "y".repeat(20 * 1024))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_clocks_and_device_places_hold_on_postgresql() {
    let Some(schema) = TestSchema::new("limits") else {
        return;
    };
    let mut server = TestServer::start(TestServerOptions::dev().with(|c| {
        c.postgres = Some(schema.options());
        c.limits.max_frame_bytes = FRAME;
        c.limits.max_document_bytes = FRAME;
        c.limits.max_devices_per_user = 3;
    }))
    .await;
    let http = Http::new(server.http_url());
    let space = SpaceId::personal(&UserId::new("alice").unwrap());

    let reader_creds = http.register("dev:alice", "reader").await;
    let mut reader =
        WsClient::connect_limited(&server.sync_url(), &reader_creds.access_token, FRAME).await;
    let welcome = reader.hello("reader", BTreeMap::new()).await;
    assert_eq!(welcome.limits.max_frame_bytes, FRAME as u64);
    let mut live = Replica::new();
    reader
        .sync_into(&mut live, &welcome.spaces, &BTreeMap::new())
        .await;

    let writer_creds = http.register("dev:alice", "writer").await;
    let mut writer =
        WsClient::connect_limited(&server.sync_url(), &writer_creds.access_token, FRAME).await;
    writer.hello("writer", BTreeMap::new()).await;
    let mut w = Writer::new("writer");
    for pair in 0..DOCS / 2 {
        let mutations = (2 * pair..2 * pair + 2)
            .map(|i| {
                w.put(
                    &space,
                    "blobs",
                    &format!("b{i:02}"),
                    json!({"blob": blob(i)}),
                )
            })
            .collect();
        let ack = writer.push(pair as u64 + 1, mutations).await;
        assert!(
            ack.results
                .iter()
                .all(|r| matches!(r.outcome, Outcome::Applied { .. }))
        );
    }
    // Eight patches of one 20 KB document in one commit: 160 KB of live
    // changes, in several messages.
    let patches = (0..8)
        .map(|n| w.patch(&space, "blobs", "b00", json!({"n": n})))
        .collect();
    let ack = writer.push(100, patches).await;
    let head = DOCS as u64 + 8;
    assert_eq!(
        ack.results.last().map(|r| &r.outcome),
        Some(&Outcome::Applied { rev: head })
    );
    // Within the document limit, but its change would not fit in a frame.
    let too_long = w.put(
        &space,
        "blobs",
        "huge",
        json!({"blob": "z".repeat(FRAME - 300)}),
    );
    let ack = writer.push(101, vec![too_long]).await;
    assert!(
        matches!(&ack.results[0].outcome,
            Outcome::Rejected { code: RejectCode::DocumentTooLarge, reason, .. } if reason.contains("frame limit")),
        "{:?}",
        ack.results[0].outcome
    );
    // A clock reading an hour ahead.
    let mut ahead = w.put(&space, "notes", "n", json!({}));
    ahead.hlc.millis += 3_600_000;
    let ack = writer.push(102, vec![ahead]).await;
    assert!(matches!(
        ack.results[0].outcome,
        Outcome::Rejected {
            code: RejectCode::ClockSkew,
            ..
        }
    ));

    let mut messages = 0;
    while live.cursor(&space) < head {
        live.apply(&reader.changes(&space).await).unwrap();
        messages += 1;
    }
    assert!(messages > DOCS / 2, "{messages} live messages");
    assert!(
        reader.largest_frame() <= FRAME,
        "{}",
        reader.largest_frame()
    );
    assert_eq!(live.live(&space).len(), DOCS);

    let fresh_creds = http.register("dev:alice", "fresh").await;
    let mut fresh =
        WsClient::connect_limited(&server.sync_url(), &fresh_creds.access_token, FRAME).await;
    fresh.hello("fresh", BTreeMap::new()).await;
    let mut caught_up = Replica::new();
    let mut pages = 0;
    loop {
        let page = fresh.changes(&space).await;
        pages += 1;
        caught_up.apply(&page).unwrap();
        if !page.more {
            break;
        }
    }
    assert!(pages >= DOCS / 3, "{pages} pages");
    assert!(fresh.largest_frame() <= FRAME, "{}", fresh.largest_frame());
    assert_eq!(caught_up.cursor(&space), head);
    assert_eq!(caught_up.live(&space).len(), DOCS);

    let pulled = pull_all(&server, &fresh_creds.access_token, &space).await;
    assert_eq!(pulled, DOCS);

    // Three devices: a fourth waits for a revocation.
    let refused = http.try_register("dev:alice", "fourth").await;
    assert_eq!((refused.status, refused.code()), (409, "too_many_devices"));
    http.register("dev:alice", "reader").await;
    let revoked = http
        .call(
            "DELETE",
            "/v1/devices/fresh",
            Some(&writer_creds.access_token),
            None,
        )
        .await;
    assert_eq!(revoked.status, 200, "{:?}", revoked.body);
    http.register("dev:alice", "fourth").await;

    reader.close().await;
    writer.close().await;
    server.stop().await;
}

/// Pulls the space over HTTP page by page, checking each answer's length;
/// returns how many documents it holds.
async fn pull_all(server: &TestServer, token: &str, space: &SpaceId) -> usize {
    let http = Http::new(server.http_url());
    let mut cursor = 0u64;
    let mut docs = BTreeMap::new();
    loop {
        let page = http
            .call(
                "GET",
                &format!("/v1/spaces/{space}/changes?cursor={cursor}"),
                Some(token),
                None,
            )
            .await;
        assert_eq!(page.status, 200, "{:?}", page.body);
        // The body as sent, compact (only its keys' order may differ).
        let text = page.body.to_string();
        assert!(text.len() <= FRAME, "a pull answer of {} bytes", text.len());
        let ServerMessage::Changes(page) = ServerMessage::decode(&text).unwrap() else {
            panic!("not a changes message")
        };
        for change in &page.changes {
            docs.insert(change.doc_id.to_string(), change.rev);
            cursor = change.rev;
        }
        if !page.more {
            return docs.len();
        }
    }
}
