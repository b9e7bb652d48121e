//! A space of large documents syncs within the frame limit the server
//! announces: catch-up pages, live changes and the HTTP pull all end before
//! a message would be longer than `max_frame_bytes`.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use serde_json::json;
use tandem_core::SyncOutcome;
use tandem_e2e::{Device, Http, PATIENCE, Replica, TestServer, Writer, WsClient};
use tandem_protocol::wire::Outcome;
use tandem_protocol::{ServerMessage, SpaceId, UserId};

/// Documents of about 460 KB: two fit in one push (the server reads frames
/// of at most 1 MiB too), and the 40 of them (18 MB) are more than a device's
/// WebSocket library accepts in one message by default (16 MiB), so a page
/// of them all would fail every device, not only one that honours the
/// announced limit.
const DOCS: usize = 40;
const BLOB_BYTES: usize = 460 * 1024;

fn blob(i: usize) -> String {
    format!("{i:04}-{}", "x".repeat(BLOB_BYTES))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_space_of_large_documents_syncs_within_the_announced_frame_limit() {
    let server = TestServer::dev().await;
    let http = Http::new(server.http_url());
    let space = SpaceId::personal(&UserId::new("alice").unwrap());

    // A device connected from the start receives everything live.
    let reader_creds = http.register("dev:alice", "reader").await;
    let mut reader = WsClient::connect_ok(&server.sync_url(), &reader_creds.access_token).await;
    let welcome = reader.hello("reader", BTreeMap::new()).await;
    let limit = usize::try_from(welcome.limits.max_frame_bytes).unwrap();
    assert_eq!(limit, 1 << 20);
    let mut live = Replica::new();
    reader
        .sync_into(&mut live, &welcome.spaces, &BTreeMap::new())
        .await;

    let writer_creds = http.register("dev:alice", "writer").await;
    let mut writer =
        WsClient::connect_limited(&server.sync_url(), &writer_creds.access_token, limit).await;
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
                .all(|r| matches!(r.outcome, Outcome::Applied { .. })),
            "{:?}",
            ack.results
        );
    }
    // One commit of twelve small patches to a large document: twelve
    // changes, each with the whole 460 KB state (5.5 MB), so the live
    // changes of this one commit take several messages.
    let patches = (0..12)
        .map(|n| w.patch(&space, "blobs", "b00", json!({"n": n})))
        .collect();
    let ack = writer.push(100, patches).await;
    let head = match ack.results.last().map(|r| &r.outcome) {
        Some(Outcome::Applied { rev }) => *rev,
        other => panic!("{other:?}"),
    };
    assert_eq!(head, DOCS as u64 + 12);

    // Live: every message within the limit, the commit in several parts
    // (all but the last with `more`), and the copy exactly the server's.
    let mut parts_of_the_big_commit = 0;
    while live.cursor(&space) < head {
        let changes = reader.changes(&space).await;
        if changes.changes.iter().any(|c| c.rev > DOCS as u64) {
            parts_of_the_big_commit += 1;
        }
        live.apply(&changes).unwrap();
    }
    assert!(
        parts_of_the_big_commit >= 5,
        "{parts_of_the_big_commit} messages"
    );
    assert!(
        reader.largest_frame() <= limit,
        "{}",
        reader.largest_frame()
    );
    assert!(
        reader.largest_frame() > limit / 2,
        "the messages were large"
    );
    assert_eq!(live.live(&space).len(), DOCS);
    assert_eq!(
        live.document(&space, "blobs", "b00").unwrap().state.fields["n"],
        json!(11)
    );
    // The writer read its own live changes through a 1 MiB limit too.
    writer
        .recv_matching(
            "the last live change",
            |m| matches!(m, ServerMessage::Changes(c) if c.head == Some(head) && !c.more),
        )
        .await;
    assert!(writer.largest_frame() <= limit);

    // Catch-up from 0 by a device whose library refuses longer frames:
    // several pages, each within the limit, then everything.
    let fresh_creds = http.register("dev:alice", "fresh").await;
    let mut fresh =
        WsClient::connect_limited(&server.sync_url(), &fresh_creds.access_token, limit).await;
    let welcome = fresh.hello("fresh", BTreeMap::new()).await;
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
    assert!(pages >= DOCS / 2, "{pages} pages");
    assert!(fresh.largest_frame() <= limit, "{}", fresh.largest_frame());
    assert_eq!(caught_up.cursor(&space), head);
    assert_eq!(caught_up.checksums_checked, 1);
    assert_eq!(caught_up.live(&space).len(), DOCS);
    assert_eq!(welcome.limits.max_frame_bytes, limit as u64);

    // The HTTP pull: every answer within the limit, every document once.
    let client = reqwest::Client::new();
    let mut cursor = 0u64;
    let mut pulled = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + PATIENCE * 3;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "pull took too long");
        let body = client
            .get(format!(
                "{}/v1/spaces/{space}/changes?cursor={cursor}&limit=1000",
                server.http_url()
            ))
            .bearer_auth(&fresh_creds.access_token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(body.len() <= limit, "a pull page of {} bytes", body.len());
        let ServerMessage::Changes(page) = ServerMessage::decode(&body).unwrap() else {
            panic!("not a changes message")
        };
        for change in &page.changes {
            pulled.insert(change.doc_id.to_string(), change.rev);
            cursor = change.rev;
        }
        if !page.more {
            break;
        }
    }
    assert_eq!(pulled.len(), DOCS);
    println!(
        "{DOCS} documents of {BLOB_BYTES} bytes: live, the 12-change commit in {parts_of_the_big_commit} messages, \
         longest frame {} bytes; catch-up in {pages} pages, longest {} bytes (limit {limit})",
        reader.largest_frame(),
        fresh.largest_frame()
    );

    // A real device catches up with all of it: 18 MB to fetch, check and
    // store, which takes a debug build on a loaded machine most of PATIENCE
    // (14 s with two CPU-bound processes beside it), so it gets the pull's
    // allowance.
    let device = Device::online(&server.http_url(), "alice", "phone").await;
    let outcome = device.client.sync_once(PATIENCE * 3).await.unwrap();
    assert_eq!(outcome, SyncOutcome::CaughtUp);
    let docs = device.docs(None, "blobs");
    assert_eq!(docs["b07"].0["blob"], json!(blob(7)));
    assert_eq!(docs["b00"].0["n"], json!(11));
    assert_eq!(docs["b00"].1, Some(head));
}
