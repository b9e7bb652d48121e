//! `tandem bench`: benchmark scenarios.
//!
//! A scenario measures something and, in the same run on the same machine,
//! a floor (the bare operation underneath, so a number can be judged). It
//! returns a [`Report`]; this module prints it as a table, or with `--json`
//! as one object: `{"scenario", "count", "p50_ms", "p99_ms", "p999_ms"
//! (where measured), "max_ms", "per_sec", "floor": {same keys}}`, plus
//! `"encrypted": {same keys}` with `--encrypted`.
//!
//! To add a scenario: a module with `pub fn run(&BenchArgs) -> Result<Report,
//! Failure>` and one line in [`SCENARIOS`].

mod catch_up;
mod cross_device;
mod drain;
mod initial_sync;
mod local_read;
mod local_write;
mod server_ingest;

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::failure::Failure;

/// Options of `tandem bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// The scenario to run: local-write, local-read, server-ingest,
    /// initial-sync, catch-up, drain, cross-device.
    pub scenario: String,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// How many operations or documents (the scenario's default otherwise;
    /// smaller runs are for quick checks, not for numbers). `--docs` is the
    /// same flag, for the sync scenarios.
    #[arg(long, visible_alias = "docs", value_name = "N")]
    pub count: Option<u64>,
    /// How many times to repeat a measured operation that is repeated (the
    /// scenario's default otherwise).
    #[arg(long, value_name = "N")]
    pub repeat: Option<u64>,
    /// local-write and local-read: also measure a device whose database is
    /// encrypted (SQLCipher), in the same run; reported as `encrypted`.
    #[arg(long)]
    pub encrypted: bool,
    /// Options of the server-ingest scenario.
    #[command(flatten)]
    pub server: server_ingest::ServerOptions,
}

/// A scenario: runs with the options and reports.
type Scenario = fn(&BenchArgs) -> Result<Report, Failure>;

/// Every scenario, by name.
const SCENARIOS: &[(&str, Scenario)] = &[
    ("local-write", local_write::run),
    ("local-read", local_read::run),
    ("server-ingest", server_ingest::run),
    ("initial-sync", initial_sync::run),
    ("catch-up", catch_up::run),
    ("drain", drain::run),
    ("cross-device", cross_device::run),
];

/// Runs one scenario and prints its report.
pub fn run(args: BenchArgs) -> Result<(), Failure> {
    let Some((_, scenario)) = SCENARIOS.iter().find(|(name, _)| *name == args.scenario) else {
        let names: Vec<&str> = SCENARIOS.iter().map(|(name, _)| *name).collect();
        return Err(Failure::new(
            "unknown_scenario",
            format!(
                "no scenario named {}; there are: {}",
                args.scenario,
                names.join(", ")
            ),
        ));
    };
    let report = scenario(&args)?;
    if args.json {
        let line = serde_json::to_string(&report).map_err(|e| Failure::new("internal", e))?;
        println!("{line}");
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

/// The multi-threaded runtime a sync scenario runs its server and devices
/// on.
fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new("bench_failed", e))
}

/// A fixed database key for the encrypted measurements (the key's value
/// does not change the cost).
fn bench_key() -> Result<tandem_core::DatabaseKey, Failure> {
    tandem_core::DatabaseKey::new(&[0x5a; 32]).map_err(|e| Failure::new(e.code(), e))
}

/// What a scenario measured, and its floor.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The measurement.
    #[serde(flatten)]
    pub measured: Measurement,
    /// The floor, measured in the same run.
    pub floor: Measurement,
    /// The same measurement on an encrypted database (`--encrypted`), in
    /// the same run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<Measurement>,
}

/// Latency percentiles and throughput of one measured loop.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// What was measured.
    pub scenario: String,
    /// How many operations.
    pub count: u64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// 99.9th percentile, ms (where measured).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p999_ms: Option<f64>,
    /// Slowest, ms.
    pub max_ms: f64,
    /// Operations per second over the whole loop.
    pub per_sec: f64,
}

/// A latency histogram, in nanoseconds.
pub struct Latencies {
    histogram: Histogram<u64>,
}

impl Latencies {
    /// An empty histogram covering 100 ns to 100 s at 3 significant digits.
    pub fn new() -> Result<Latencies, Failure> {
        Histogram::new_with_bounds(100, 100_000_000_000, 3)
            .map(|histogram| Latencies { histogram })
            .map_err(|e| Failure::new("internal", e))
    }

    /// Records one operation.
    pub fn record(&mut self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        // Values beyond the range are clamped to it rather than lost.
        self.histogram.saturating_record(nanos.max(100));
    }

    /// The measurement of `count` operations that took `elapsed` in all.
    pub fn measurement(&self, scenario: &str, elapsed: Duration, with_p999: bool) -> Measurement {
        let ms = |nanos: u64| nanos as f64 / 1e6;
        let count = self.histogram.len();
        Measurement {
            scenario: scenario.to_owned(),
            count,
            p50_ms: ms(self.histogram.value_at_quantile(0.50)),
            p99_ms: ms(self.histogram.value_at_quantile(0.99)),
            p999_ms: with_p999.then(|| ms(self.histogram.value_at_quantile(0.999))),
            max_ms: ms(self.histogram.max()),
            per_sec: count as f64 / elapsed.as_secs_f64().max(1e-9),
        }
    }
}

impl Report {
    fn table(&self) -> String {
        let mut out = format!(
            "{:<24} {:>9} {:>9} {:>9} {:>9} {:>9} {:>12}\n",
            "scenario", "count", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "per sec"
        );
        let mut rows = vec![("", &self.measured)];
        if let Some(encrypted) = &self.encrypted {
            rows.push(("encrypted: ", encrypted));
        }
        rows.push(("floor: ", &self.floor));
        for (label, m) in rows {
            let p999 = m
                .p999_ms
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"));
            out.push_str(&format!(
                "{:<24} {:>9} {:>9.3} {:>9.3} {:>9} {:>9.3} {:>12.0}\n",
                format!("{label}{}", m.scenario),
                m.count,
                m.p50_ms,
                m.p99_ms,
                p999,
                m.max_ms,
                m.per_sec
            ));
        }
        out
    }
}

/// Small runs of the scenarios, for their tests.
#[cfg(test)]
pub(crate) mod small_run {
    use super::*;

    /// Runs `scenario` at a small size and returns its report as JSON,
    /// after checking that the measurement and its floor both carry `keys`.
    pub fn report(
        scenario: &str,
        count: Option<u64>,
        repeat: Option<u64>,
        keys: &[&str],
    ) -> serde_json::Value {
        let args = BenchArgs {
            scenario: scenario.into(),
            json: true,
            count,
            repeat,
            encrypted: false,
            server: Default::default(),
        };
        let (_, run) = SCENARIOS
            .iter()
            .find(|(name, _)| *name == scenario)
            .unwrap_or_else(|| panic!("no scenario {scenario}"));
        let report = run(&args).unwrap_or_else(|f| panic!("{}: {}", f.code, f.message));
        let value = serde_json::to_value(&report).unwrap_or_default();
        for key in keys {
            assert!(value.get(key).is_some(), "missing {key}: {value}");
            assert!(
                value["floor"].get(key).is_some(),
                "floor is missing {key}: {value}"
            );
        }
        assert_eq!(value["scenario"], serde_json::json!(scenario), "{value}");
        value
    }
}
