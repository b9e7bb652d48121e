//! `tandem bench catch-up`: a device that was offline while 1,000 changes
//! (`--count`) were made elsewhere reconnects and catches up.
//!
//! Setup: an in-process server; a device syncs once and stops syncing; a
//! raw device writes the changes. Measured, `--repeat` times (default 10):
//! from `start_sync` (credentials already stored) to `sync_once` returning
//! caught up: connect, handshake, pages applied, checksum checked.
//!
//! The floor, in the same run: a raw WebSocket device connecting from the
//! same cursor and reading the same pages to the final one, without
//! applying them.

use std::time::{Duration, Instant};

use super::initial_sync::{BenchDevice, BenchServer, USER, failure};
use super::{BenchArgs, Latencies, Report};
use crate::failure::Failure;

/// Runs the scenario.
pub fn run(args: &BenchArgs) -> Result<Report, Failure> {
    let changes = args.count.unwrap_or(1_000).max(1);
    let repeat = args.repeat.unwrap_or(10).max(1);
    let runtime = super::runtime()?;
    runtime.block_on(async move {
        let server = BenchServer::start().await?;
        let mut writer = server.raw_device(USER, "writer").await?;
        let (reader_identity, reader_token) = server.register(USER, "raw-reader").await?;
        let device = BenchDevice::open("laptop")?;
        device.start(&server).await?;
        device.caught_up(Duration::from_secs(60)).await?;
        let mut measured = Latencies::new()?;
        let mut floor = Latencies::new()?;
        let mut measured_total = Duration::ZERO;
        let mut floor_total = Duration::ZERO;
        for round in 0..repeat {
            device.client.stop_sync().await;
            let cursor = round * changes;
            writer
                .seed("items", &format!("round{round}-"), changes)
                .await?;
            let began = Instant::now();
            device.start(&server).await?;
            device.caught_up(Duration::from_secs(60)).await?;
            let took = began.elapsed();
            measured.record(took);
            measured_total += took;
            let began = Instant::now();
            let raw = server
                .connect_raw(reader_identity.clone(), &reader_token, cursor)
                .await?;
            let took = began.elapsed();
            drop(raw);
            floor.record(took);
            floor_total += took;
        }
        device.client.stop_sync().await;
        let expected = repeat * changes;
        let status = device.client.status().map_err(failure)?;
        if status.cursors.get(&format!("personal:{USER}")).copied() != Some(expected) {
            return Err(failure(format!(
                "caught up to {:?}, expected {expected}",
                status.cursors
            )));
        }
        server.server.shutdown().await;
        Ok(Report {
            measured: measured.measurement("catch-up", measured_total, false),
            floor: floor.measurement("raw read of the same pages", floor_total, false),
            encrypted: None,
        })
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_small_run_reports_every_key() {
        let value = crate::bench::small_run::report(
            "catch-up",
            Some(50),
            Some(2),
            &["scenario", "p50_ms", "p99_ms", "per_sec"],
        );
        assert_eq!(value["count"], serde_json::json!(2));
    }
}
