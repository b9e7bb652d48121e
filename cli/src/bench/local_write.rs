//! `local-write`: local writes through the real `Client` API.
//!
//! Each write is `Client::put` of a new chat message (about 150 bytes of
//! JSON, a UUIDv7 id, into one of 100 conversations, with an index on
//! conversation and time declared): JSON parsing, the merge, the document,
//! its index entry and its outbox entry in one transaction, and the commit.
//! Latency is measured per write, 100,000 writes by default.
//!
//! Floor: a bare single-row `INSERT` of the same JSON text into a plain
//! table, in its own transaction, on a connection opened with exactly the
//! store's writer settings (`store::open_writer`: WAL, `synchronous`,
//! background checkpoints, a writers' lock).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_core::store::{CheckpointSettings, WriterLock, open_writer};
use tandem_core::{Client, ClientConfig, DocKey, Durability};
use tandem_protocol::DocId;

use super::{BenchArgs, Latencies, Report};
use crate::failure::Failure;

const DEFAULT_WRITES: u64 = 100_000;

/// The JSON of message `i`, in conversation `conversation`.
pub(super) fn message(i: u64, conversation: u64) -> String {
    format!(
        r#"{{"conversation":"c{conversation:03}","sent_at":{},"author":"alice","body":"Message number {i}: on my way, see you at the station in ten minutes."}}"#,
        1_764_000_000_000 + i
    )
}

pub fn run(args: &BenchArgs) -> Result<Report, Failure> {
    let writes = args.count.unwrap_or(DEFAULT_WRITES);
    let dir = tempfile::tempdir().map_err(|e| Failure::new("io", e))?;

    let measured = {
        let data = dir.path().join("device");
        let data = data
            .to_str()
            .ok_or_else(|| Failure::new("io", "temporary directory is not UTF-8"))?;
        let client = Client::open(ClientConfig::new(data, "alice", "bench"))
            .map_err(|e| Failure::new(e.code(), e))?;
        client
            .declare_index("messages", vec!["conversation".into(), "sent_at".into()])
            .map_err(|e| Failure::new(e.code(), e))?;
        let mut latencies = Latencies::new()?;
        let mut total = Duration::ZERO;
        for i in 0..writes {
            let key = DocKey::personal("messages", DocId::generate().as_str());
            let json = message(i, i % 100);
            let start = Instant::now();
            client
                .put(key, &json)
                .map_err(|e| Failure::new(e.code(), e))?;
            let took = start.elapsed();
            total += took;
            latencies.record(took);
        }
        client.close();
        latencies.measurement("local-write", total, true)
    };

    let floor = {
        let path = dir.path().join("floor.db");
        // Like the store, every write holds the writers' lock, which the
        // checkpointer takes to restart an oversized WAL.
        let writers = Arc::new(WriterLock::new(()));
        let (conn, _checkpointer) = open_writer(
            &path,
            Durability::Normal,
            CheckpointSettings::default(),
            Arc::clone(&writers),
        )
        .map_err(|e| Failure::new(e.code(), e))?;
        let sql = |e: rusqlite::Error| Failure::new("storage", e);
        conn.execute_batch("CREATE TABLE floor (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
            .map_err(sql)?;
        let mut latencies = Latencies::new()?;
        let mut total = Duration::ZERO;
        for i in 0..writes {
            let json = message(i, i % 100);
            let start = Instant::now();
            {
                let _writing = writers.lock();
                conn.prepare_cached("INSERT INTO floor (body) VALUES (?1)")
                    .and_then(|mut stmt| stmt.execute([&json]))
                    .map_err(sql)?;
            }
            let took = start.elapsed();
            total += took;
            latencies.record(took);
        }
        latencies.measurement("bare-insert", total, true)
    };

    Ok(Report { measured, floor })
}
