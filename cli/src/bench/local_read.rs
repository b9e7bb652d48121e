//! `local-read`: one conversation's messages out of a large database.
//!
//! The database holds 100,000 messages (by default) in conversations of
//! 1,000, written through `Client::put` with their conversations
//! interleaved, as messages arrive; an index on (conversation, sent_at) is
//! declared. Each measured read is `Client::query` with an equality filter
//! on the conversation and an order by `sent_at`, returning 1,000
//! `LocalDocument`s; it is repeated 3,000 times (by default) over the
//! conversations in turn.
//!
//! With `--encrypted`, a second device whose database is encrypted
//! (SQLCipher) holds the same documents and answers the same reads,
//! reported as `encrypted`.
//!
//! Floor: the same 1,000 rows (id and the same JSON text) selected with a
//! bare `SELECT ... WHERE conversation = ? ORDER BY sent_at` from a plain
//! table with an index on (conversation, sent_at), holding the same rows.

use std::time::{Duration, Instant};

use rusqlite::Connection;
use tandem_core::{Client, ClientConfig, DatabaseKey, DocKey, Query};
use tandem_protocol::DocId;

use super::local_write::message;
use super::{BenchArgs, Latencies, Measurement, Report};
use crate::failure::Failure;

const DEFAULT_DOCUMENTS: u64 = 100_000;
const DEFAULT_REPEAT: u64 = 3_000;
const CONVERSATION_SIZE: u64 = 1_000;

pub fn run(args: &BenchArgs) -> Result<Report, Failure> {
    let documents = args.count.unwrap_or(DEFAULT_DOCUMENTS);
    let repeat = args.repeat.unwrap_or(DEFAULT_REPEAT);
    let conversations = (documents / CONVERSATION_SIZE).max(1);
    let per_conversation = documents / conversations;
    let dir = tempfile::tempdir().map_err(|e| Failure::new("io", e))?;
    let sql = |e: rusqlite::Error| Failure::new("storage", e);

    let plain = open_device(&dir.path().join("device"), None)?;
    let encrypted = if args.encrypted {
        Some(open_device(
            &dir.path().join("encrypted"),
            Some(super::bench_key()?),
        )?)
    } else {
        None
    };

    let floor_db = Connection::open(dir.path().join("floor.db")).map_err(sql)?;
    floor_db
        .execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE messages (id TEXT PRIMARY KEY, conversation TEXT NOT NULL,
                                    sent_at INTEGER NOT NULL, fields TEXT NOT NULL);
             CREATE INDEX messages_by_conversation ON messages (conversation, sent_at);
             BEGIN;",
        )
        .map_err(sql)?;
    for i in 0..documents {
        let id = DocId::generate();
        let json = message(i, i % conversations);
        for client in std::iter::once(&plain).chain(encrypted.as_ref()) {
            client
                .put(DocKey::personal("messages", id.as_str()), &json)
                .map_err(core)?;
        }
        floor_db
            .prepare_cached(
                "INSERT INTO messages (id, conversation, sent_at, fields)
                 VALUES (?1, json_extract(?2, '$.conversation'), json_extract(?2, '$.sent_at'), ?2)",
            )
            .and_then(|mut stmt| stmt.execute([id.as_str(), &json]))
            .map_err(sql)?;
    }
    floor_db.execute_batch("COMMIT").map_err(sql)?;

    let conversation = |r: u64| format!("c{:03}", r % conversations);
    let reads = |client: &Client, name: &str| -> Result<Measurement, Failure> {
        let mut latencies = Latencies::new()?;
        let mut total = Duration::ZERO;
        for r in 0..repeat {
            let query = Query::new("messages")
                .eq("conversation", conversation(r).as_str())
                .order("sent_at");
            let start = Instant::now();
            let docs = client.query(query).map_err(core)?;
            let took = start.elapsed();
            total += took;
            latencies.record(took);
            if docs.len() as u64 != per_conversation {
                return Err(Failure::new(
                    "internal",
                    format!("read {} documents, expected {per_conversation}", docs.len()),
                ));
            }
        }
        client.close();
        Ok(latencies.measurement(name, total, false))
    };
    let measured = reads(&plain, "local-read")?;
    let encrypted = encrypted
        .map(|client| reads(&client, "local-read (encrypted)"))
        .transpose()?;

    let mut latencies = Latencies::new()?;
    let mut total = Duration::ZERO;
    for r in 0..repeat {
        let conversation = conversation(r);
        let start = Instant::now();
        let rows: Vec<(String, String)> = floor_db
            .prepare_cached(
                "SELECT id, fields FROM messages WHERE conversation = ?1 ORDER BY sent_at",
            )
            .and_then(|mut stmt| {
                stmt.query_map([&conversation], |row| Ok((row.get(0)?, row.get(1)?)))?
                    .collect()
            })
            .map_err(sql)?;
        let took = start.elapsed();
        total += took;
        latencies.record(took);
        if rows.len() as u64 != per_conversation {
            return Err(Failure::new(
                "internal",
                format!(
                    "floor read {} rows, expected {per_conversation}",
                    rows.len()
                ),
            ));
        }
    }
    let floor = latencies.measurement("bare-select", total, false);

    Ok(Report {
        measured,
        floor,
        encrypted,
    })
}

fn core(e: tandem_core::Error) -> Failure {
    Failure::new(e.code(), e)
}

/// A device in `data` (encrypted with `key` if given) with the index the
/// reads use.
fn open_device(data: &std::path::Path, key: Option<DatabaseKey>) -> Result<Client, Failure> {
    let data = data
        .to_str()
        .ok_or_else(|| Failure::new("io", "temporary directory is not UTF-8"))?;
    let mut config = ClientConfig::new(data, "alice", "bench");
    config.encryption_key = key;
    let client = Client::open(config).map_err(core)?;
    client
        .declare_index("messages", vec!["conversation".into(), "sent_at".into()])
        .map_err(core)?;
    Ok(client)
}
