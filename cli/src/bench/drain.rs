//! `tandem bench drain`: a device wrote 10,000 mutations (`--count`)
//! offline; it reconnects and its outbox drains.
//!
//! Measured: from `start_sync` (registration included) to `sync_once`
//! returning caught up with the outbox empty: every mutation pushed (in
//! batches of up to 500, several in flight), acknowledged and confirmed by
//! its change. `p50_ms` is that time (one run); `per_sec` is mutations per
//! second.
//!
//! The floor, in the same run: a raw WebSocket device pushing the same
//! number of mutations in the same batches, eight in flight, until the
//! last ack.

use std::time::{Duration, Instant};

use super::initial_sync::{BenchDevice, BenchServer, doc_fields, failure, one_run};
use super::{BenchArgs, Report};
use crate::failure::Failure;

/// Runs the scenario.
pub fn run(args: &BenchArgs) -> Result<Report, Failure> {
    let count = args.count.unwrap_or(10_000).max(1);
    let runtime = super::runtime()?;
    runtime.block_on(async move {
        let server = BenchServer::start().await?;
        let device = BenchDevice::open("offline-phone")?;
        for i in 0..count {
            let fields = serde_json::Value::Object(doc_fields(i)).to_string();
            device
                .client
                .put(
                    tandem_core::DocKey::personal("items", &format!("offline-{i:08}")),
                    &fields,
                )
                .map_err(failure)?;
        }
        let began = Instant::now();
        device.start(&server).await?;
        device.caught_up(Duration::from_secs(600)).await?;
        let took = began.elapsed();
        let status = device.client.status().map_err(failure)?;
        if status.pending != 0 {
            return Err(failure(format!("{} still pending", status.pending)));
        }
        device.client.stop_sync().await;
        let measured = one_run("drain", count, took)?;

        let mut raw = server.raw_device("floor-user", "raw-pusher").await?;
        let began = Instant::now();
        raw.seed("items", "raw-", count).await?;
        let floor = one_run("raw push of the same batches", count, began.elapsed())?;
        server.server.shutdown().await;
        Ok(Report {
            measured,
            floor,
            encrypted: None,
        })
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_small_run_reports_every_key() {
        let value = crate::bench::small_run::report(
            "drain",
            Some(700),
            None,
            &["scenario", "p50_ms", "p99_ms", "per_sec"],
        );
        assert_eq!(value["count"], serde_json::json!(700));
    }
}
