//! `local-write`: local writes through the real `Client` API.
//!
//! Each write is `Client::put` of a new chat message (about 150 bytes of
//! JSON, a UUIDv7 id, into one of 100 conversations, with an index on
//! conversation and time declared): JSON parsing, the merge, the document,
//! its index entry and its outbox entry in one transaction, and the commit.
//! Latency is measured per write, 100,000 writes by default.
//!
//! With `--encrypted`, the same writes also go to a device whose database
//! is encrypted (SQLCipher), reported as `encrypted`.
//!
//! Floor: a bare single-row `INSERT` of the same JSON text into a plain
//! table, in its own transaction, on a connection opened with exactly the
//! store's writer settings (`store::open_writer`: WAL, `synchronous`,
//! background checkpoints, a writers' lock).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_core::store::{CheckpointSettings, WriterLock, open_writer};
use tandem_core::{Client, ClientConfig, DatabaseKey, DocKey, Durability};
use tandem_protocol::DocId;

use super::{BenchArgs, Latencies, Measurement, Report};
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

    let measured = measure(&dir.path().join("device"), writes, None)?;
    let encrypted = if args.encrypted {
        let key = super::bench_key()?;
        Some(measure(&dir.path().join("encrypted"), writes, Some(key))?)
    } else {
        None
    };

    let floor = {
        let path = dir.path().join("floor.db");
        // Like the store, every write holds the writers' lock, which the
        // checkpointer takes to restart an oversized WAL.
        let writers = Arc::new(WriterLock::new(()));
        let (conn, _checkpointer) = open_writer(
            &path,
            None,
            Durability::Normal,
            CheckpointSettings::default(),
            Arc::clone(&writers),
            &tandem_core::background::Threads,
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

    Ok(Report {
        measured,
        floor,
        encrypted,
    })
}

/// `writes` puts through a client in `data` (encrypted with `key` if
/// given).
fn measure(
    data: &std::path::Path,
    writes: u64,
    key: Option<DatabaseKey>,
) -> Result<Measurement, Failure> {
    let data = data
        .to_str()
        .ok_or_else(|| Failure::new("io", "temporary directory is not UTF-8"))?;
    let encrypted = key.is_some();
    let mut config = ClientConfig::new(data, "alice", "bench");
    config.encryption_key = key;
    let client = Client::open(config).map_err(|e| Failure::new(e.code(), e))?;
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
    let name = if encrypted {
        "local-write (encrypted)"
    } else {
        "local-write"
    };
    Ok(latencies.measurement(name, total, true))
}
