//! `tandem bench cross-device`: device A writes, device B's observer sees
//! it, while other devices are connected and other users write.
//!
//! Setup: an in-process server; `--count` raw devices (default 100) of
//! other users connected and reading; a raw device of another user pushing
//! background load of 1,000 mutations per second (ten every 10 ms); devices
//! A and B of one user, both `tandem_core` clients syncing, B observing one
//! document. Measured, `--repeat` times (default 500): from A's `patch`
//! call to B's observer being called with the new value: A's push, the
//! server's commit and fan-out, B applying the live change, B's observer
//! thread re-reading the document.
//!
//! The floor, in the same run and under the same load: the raw WebSocket
//! round trip of one push to its ack (what the server-ingest benchmark
//! measures), as many times.

use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use tandem_core::{DocKey, DocumentObserver, LocalDocument};

use super::initial_sync::{BenchDevice, BenchServer, RawDevice, doc_fields, failure};
use super::{BenchArgs, Latencies, Report};
use crate::failure::Failure;

/// Background mutations per second.
const LOAD_PER_SEC: u64 = 1_000;

/// Forwards the value of field `i` each time B's view changes.
struct Probe(std_mpsc::Sender<i64>);

impl DocumentObserver for Probe {
    fn on_document(&self, document: Option<LocalDocument>) {
        let i = document
            .and_then(|d| serde_json::from_str::<serde_json::Value>(&d.fields_json).ok())
            .and_then(|v| v.get("i").and_then(serde_json::Value::as_i64));
        if let Some(i) = i {
            let _ = self.0.send(i);
        }
    }
}

/// Runs the scenario.
pub fn run(args: &BenchArgs) -> Result<Report, Failure> {
    let idle_devices = args.count.unwrap_or(100);
    let repeat = args.repeat.unwrap_or(500).max(1);
    let runtime = super::runtime()?;
    runtime.block_on(async move {
        let server = BenchServer::start().await?;
        // Connected devices of other users, reading whatever they get.
        let mut readers = Vec::new();
        for d in 0..idle_devices {
            let raw = server
                .raw_device(&format!("other{}", d % 50), &format!("other-device{d}"))
                .await?;
            readers.push(tokio::spawn(drain(raw)));
        }
        // Background load.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let loader = server.raw_device("other0", "loader").await?;
        let load = tokio::spawn(background_load(loader, Arc::clone(&stop)));

        let a = BenchDevice::open("a")?;
        let b = BenchDevice::open("b")?;
        a.start(&server).await?;
        b.start(&server).await?;
        let key = DocKey::personal("probes", "probe");
        a.client.put(key.clone(), r#"{"i": -1}"#).map_err(failure)?;
        a.caught_up(Duration::from_secs(60)).await?;
        b.caught_up(Duration::from_secs(60)).await?;
        let (tx, rx) = std_mpsc::channel();
        let _subscription = b
            .client
            .observe_document(key.clone(), Arc::new(Probe(tx)))
            .map_err(failure)?;
        let mut measured = Latencies::new()?;
        let began = Instant::now();
        for i in 0..repeat {
            let i = i64::try_from(i).map_err(failure)?;
            let sent = Instant::now();
            a.client
                .patch(key.clone(), &format!(r#"{{"i": {i}}}"#))
                .map_err(failure)?;
            let rx_wait = Duration::from_secs(30);
            loop {
                let seen = tokio::task::block_in_place(|| rx.recv_timeout(rx_wait))
                    .map_err(|_| failure("device B never saw the write"))?;
                if seen == i {
                    break;
                }
            }
            measured.record(sent.elapsed());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let measured_total = began.elapsed();

        // The floor: a raw push-to-ack round trip under the same load.
        let mut raw = server.raw_device("floor", "floor-device").await?;
        let mut floor = Latencies::new()?;
        let began = Instant::now();
        for i in 0..repeat {
            let m = raw.put("probes", "floor-probe", doc_fields(i))?;
            let sent = Instant::now();
            let batch = raw.send(vec![m]).await?;
            raw.ack(batch).await?;
            floor.record(sent.elapsed());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let floor_total = began.elapsed();

        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = load.await;
        a.client.stop_sync().await;
        b.client.stop_sync().await;
        server.server.shutdown().await;
        for reader in readers {
            let _ = reader.await;
        }
        Ok(Report {
            measured: measured.measurement("cross-device", measured_total, true),
            floor: floor.measurement("raw push round trip", floor_total, true),
            encrypted: None,
        })
    })
}

/// Reads everything a device receives until the server closes.
async fn drain(mut raw: RawDevice) {
    use futures::StreamExt;
    while let Some(Ok(_)) = raw.socket.next().await {}
}

/// Pushes ten mutations every 10 ms until stopped, reading what comes back.
async fn background_load(mut raw: RawDevice, stop: Arc<std::sync::atomic::AtomicBool>) {
    let per_tick = LOAD_PER_SEC / 100;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        tick.tick().await;
        let mut batch = Vec::new();
        for _ in 0..per_tick {
            let Ok(m) = raw.put("load", &format!("load-{}", n % 10_000), doc_fields(n)) else {
                return;
            };
            batch.push(m);
            n += 1;
        }
        let Ok(id) = raw.send(batch).await else {
            return;
        };
        if raw.ack(id).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_small_run_reports_every_key() {
        let value = crate::bench::small_run::report(
            "cross-device",
            Some(5),
            Some(10),
            &["scenario", "p50_ms", "p99_ms", "p999_ms", "per_sec"],
        );
        assert_eq!(value["count"], serde_json::json!(10));
    }
}
