//! Compaction and resets, graceful shutdown, and restarts: every acked
//! mutation survives.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;
use tandem_e2e::{Http, Replica, TestServer, Writer, personal};
use tandem_protocol::wire::{Outcome, Push, Subscribe};
use tandem_protocol::{ClientMessage, ErrorCode, ServerMessage};
use tandem_server::store::CompactionRule;

#[tokio::test]
async fn a_cursor_below_the_compaction_horizon_must_reset() {
    let server = TestServer::dev().await;
    let space = personal("alice");
    let mut phone = server.connect("alice", "phone").await;
    phone.hello("phone", BTreeMap::new()).await;
    let mut w = Writer::new("phone");
    for i in 0..4 {
        phone
            .push(
                i,
                vec![w.put(&space, "tasks", &format!("t{i}"), json!({"i": i}))],
            )
            .await;
    }
    // The laptop syncs up to here and goes away.
    let mut laptop = server.connect("alice", "laptop").await;
    let welcome = laptop.hello("laptop", BTreeMap::new()).await;
    let mut stale = Replica::new();
    laptop
        .sync_into(&mut stale, &welcome.spaces, &BTreeMap::new())
        .await;
    laptop.close().await;
    assert_eq!(stale.cursor(&space), 4);

    // Deletes, then compaction purges the tombstones.
    phone.push(10, vec![w.delete(&space, "tasks", "t0")]).await;
    phone.push(11, vec![w.delete(&space, "tasks", "t1")]).await;
    phone
        .push(12, vec![w.put(&space, "tasks", "t9", json!({"new": true}))])
        .await;
    let report = server
        .store()
        .compact(CompactionRule {
            tombstones_before_ms: None,
            tombstones_up_to_rev: Some(u64::MAX),
            mutations_before_ms: None,
            credentials_before_ms: None,
        })
        .await
        .unwrap();
    assert_eq!(report.tombstones, 2);

    // The stale cursor (4) is below the horizon (6): reset, and the feed
    // starts again from 0.
    let mut laptop = server.connect("alice", "laptop").await;
    let welcome = laptop.hello("laptop", stale.cursors()).await;
    assert_eq!(welcome.reset_required, vec![space.clone()]);
    let first = laptop.changes(&space).await;
    assert!(first.reset);
    let mut replica = stale.clone();
    replica.apply(&first).unwrap();
    assert_eq!(replica.resets, 1);
    assert!(replica.checksums_checked > stale.checksums_checked);
    let ids: BTreeSet<_> = replica
        .live(&space)
        .iter()
        .map(|c| c.doc_id.to_string())
        .collect();
    assert_eq!(ids, BTreeSet::from(["t2".into(), "t3".into(), "t9".into()]));

    // The same cursor through subscribe and through the HTTP pull.
    laptop
        .send(&ClientMessage::Subscribe(Subscribe {
            space: space.clone(),
            cursor: 4,
        }))
        .await;
    let page = laptop.changes(&space).await;
    assert!(page.reset);
    let http = Http::new(server.http_url());
    let creds = http.register("dev:alice", "tablet").await;
    let pulled = http
        .call(
            "GET",
            "/v1/spaces/personal:alice/changes?cursor=4",
            Some(&creds.access_token),
            None,
        )
        .await;
    assert_eq!(pulled.body["reset"], json!(true));
    // A cursor at or above the horizon resumes normally.
    let pulled = http
        .call(
            "GET",
            "/v1/spaces/personal:alice/changes?cursor=6",
            Some(&creds.access_token),
            None,
        )
        .await;
    assert!(pulled.body.get("reset").is_none());
    assert_eq!(pulled.body["changes"].as_array().unwrap().len(), 1);
    // A cursor from the future (a server restored from an older backup)
    // also resets.
    let pulled = http
        .call(
            "GET",
            "/v1/spaces/personal:alice/changes?cursor=999",
            Some(&creds.access_token),
            None,
        )
        .await;
    assert_eq!(pulled.body["reset"], json!(true));
}

#[tokio::test]
async fn every_acked_mutation_survives_a_restart_in_the_middle_of_a_stream() {
    let mut server = TestServer::dev().await;
    let space = personal("alice");
    let mut phone = server.connect("alice", "phone").await;
    phone.hello("phone", BTreeMap::new()).await;
    let mut w = Writer::new("phone");
    let mut acked = BTreeMap::new();
    let mut shutting_down = false;
    let mut batch = 0u64;
    // Pipelined pushes, several in flight; the server is told to shut down
    // after the first 30 acks.
    let mut sent: BTreeMap<u64, tandem_protocol::Mutation> = BTreeMap::new();
    for _ in 0..8 {
        batch += 1;
        let m = w.put(&space, "log", &format!("e{batch}"), json!({"n": batch}));
        sent.insert(batch, m.clone());
        phone
            .send(&ClientMessage::Push(Push {
                batch_id: batch,
                mutations: vec![m],
            }))
            .await;
    }
    loop {
        match phone.recv().await {
            Some(ServerMessage::Ack(ack)) => {
                let m = sent.remove(&ack.batch_id).unwrap();
                let Outcome::Applied { rev } = ack.results[0].outcome else {
                    panic!("{:?}", ack.results[0]);
                };
                acked.insert(m.mutation_id, (m.clone(), rev));
                if acked.len() == 30 {
                    server.begin_shutdown();
                }
                if !shutting_down {
                    batch += 1;
                    let m = w.put(&space, "log", &format!("e{batch}"), json!({"n": batch}));
                    sent.insert(batch, m.clone());
                    phone
                        .send(&ClientMessage::Push(Push {
                            batch_id: batch,
                            mutations: vec![m],
                        }))
                        .await;
                }
            }
            Some(ServerMessage::Error(e)) => {
                assert_eq!(e.code, ErrorCode::ShuttingDown, "{e:?}");
                shutting_down = true;
            }
            Some(_) => {}
            None => break,
        }
    }
    assert!(shutting_down);
    assert!(acked.len() >= 30);
    server.restart().await;

    let mut laptop = server.connect("alice", "laptop").await;
    let welcome = laptop.hello("laptop", BTreeMap::new()).await;
    let mut replica = Replica::new();
    laptop
        .sync_into(&mut replica, &welcome.spaces, &BTreeMap::new())
        .await;
    for (mutation_id, (m, rev)) in &acked {
        let doc_id = m.doc_id.as_str();
        let doc = replica
            .document(&space, "log", doc_id)
            .unwrap_or_else(|| panic!("acked {doc_id} at rev {rev} is missing after the restart"));
        assert_eq!(doc.rev, *rev);
        assert_eq!(doc.mutation_id, Some(*mutation_id));
    }
    // Unacked mutations are sent again by the device: each is applied once.
    let mut retry = server.connect("alice", "phone").await;
    retry.hello("phone", replica.cursors()).await;
    let unacked: Vec<_> = sent.into_values().collect();
    if !unacked.is_empty() {
        let ack = retry.push(1000, unacked.clone()).await;
        for result in &ack.results {
            assert!(matches!(
                result.outcome,
                Outcome::Applied { .. } | Outcome::Duplicate { .. }
            ));
        }
    }
    // A retry of an acked mutation after the restart is a duplicate at the
    // original revision.
    let (m, rev) = acked.values().next().unwrap().clone();
    let ack = retry.push(1001, vec![m]).await;
    assert_eq!(ack.results[0].outcome, Outcome::Duplicate { rev });
}
