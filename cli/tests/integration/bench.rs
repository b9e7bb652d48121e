//! `tandem bench local-write` and `local-read` at a small size print one
//! JSON object with the agreed keys. (Numbers are for release builds at full
//! size: see BENCHMARKS.md.)
#![allow(clippy::unwrap_used)]

use std::process::Command;

use serde_json::Value;

fn bench(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "one object: {text}");
    serde_json::from_str(&text).unwrap()
}

fn assert_measurement(m: &Value, scenario: &str, count: u64, with_p999: bool) {
    assert_eq!(m["scenario"], scenario);
    assert_eq!(m["count"], count);
    let mut keys = vec!["p50_ms", "p99_ms", "per_sec"];
    if with_p999 {
        keys.push("p999_ms");
    } else {
        assert!(m.get("p999_ms").is_none());
    }
    for key in keys {
        let v = m[key].as_f64().unwrap_or_else(|| panic!("{key} in {m}"));
        assert!(v > 0.0, "{key} in {m}");
    }
    assert!(m["p50_ms"].as_f64() <= m["p99_ms"].as_f64());
}

#[test]
fn local_write_prints_percentiles_and_its_floor() {
    let report = bench(&["local-write", "--count", "300"]);
    assert_measurement(&report, "local-write", 300, true);
    assert_measurement(&report["floor"], "bare-insert", 300, true);
}

#[test]
fn local_read_prints_percentiles_and_its_floor() {
    let report = bench(&["local-read", "--count", "1000", "--repeat", "5"]);
    assert_measurement(&report, "local-read", 5, false);
    assert_measurement(&report["floor"], "bare-select", 5, false);
}

#[test]
fn an_unknown_scenario_is_an_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["bench", "no-such-thing"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.starts_with("error: unknown_scenario: "), "{stderr}");
}
