//! `tandem demo` runs on its own (embedded server, temporary databases) and
//! tells the story it promises: offline writes synced, a concurrent edit
//! merged, exactly one device answering each message, a takeover when the
//! holder goes away, and the old holder's epoch refused.

#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn the_demo_runs_and_every_step_holds() {
    let output = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("demo")
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(output.status.success(), "{stdout}\n{stderr}");
    for expected in [
        "3 waiting in its outbox",
        "the phone shows all 3 notes",
        r#"all show {"color":"green","done":true,"title":"Groceries for Saturday"}"#,
        "holder: phone (epoch 1)",
        "the phone answers",
        "the tablet holds the role at epoch 2",
        "the tablet answers",
        "refused (stale_epoch)",
        "2 messages, 2 answers, 0 duplicates, 0 missed.",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    // Each of Bob's two messages has exactly one answer.
    let counts: Vec<&str> = stdout
        .lines()
        .filter(|line| line.contains("answers to it"))
        .collect();
    assert_eq!(counts.len(), 2, "{stdout}");
    for line in counts {
        assert!(line.contains(": 1"), "{line}");
    }
}
