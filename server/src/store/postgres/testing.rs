//! Test support: the PostgreSQL server tests use, and a fresh schema per
//! test (available with the `conformance` feature).
//!
//! Tests find PostgreSQL through `TANDEM_TEST_POSTGRES_URL` (set by
//! `scripts/test.sh`, which starts a throwaway cluster with
//! `scripts/pg-cluster.sh`). Without it a test fails, unless the caller opted
//! out with `TANDEM_SKIP_POSTGRES=1`; then it says loudly that it skipped.

use uuid::Uuid;

use super::{PostgresOptions, PostgresStore};

/// The variable naming the test database.
pub const URL_VARIABLE: &str = "TANDEM_TEST_POSTGRES_URL";
/// The variable that skips PostgreSQL tests when set to `1`.
pub const SKIP_VARIABLE: &str = "TANDEM_SKIP_POSTGRES";

/// The test database's connection string; `None` (after a loud message) if
/// the caller opted out of PostgreSQL tests. Panics if neither is set.
pub fn test_url() -> Option<String> {
    match std::env::var(URL_VARIABLE) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ if std::env::var(SKIP_VARIABLE).as_deref() == Ok("1") => {
            eprintln!(
                "SKIPPED: PostgreSQL test not run ({SKIP_VARIABLE}=1 and {URL_VARIABLE} is not set)"
            );
            None
        }
        _ => panic!(
            "{URL_VARIABLE} is not set. Run scripts/test.sh (it starts a throwaway cluster), \
             or start one with `scripts/pg-cluster.sh start DIR` and export its connection \
             string as {URL_VARIABLE}; set {SKIP_VARIABLE}=1 to skip the PostgreSQL tests"
        ),
    }
}

/// A schema of its own for one test, dropped with everything in it when
/// this value is dropped.
pub struct TestSchema {
    options: PostgresOptions,
}

impl TestSchema {
    /// A fresh schema name on the test database; `None` if PostgreSQL tests
    /// are skipped.
    pub fn new(prefix: &str) -> Option<TestSchema> {
        let url = test_url()?;
        let mut options = PostgresOptions::new(url);
        options.schema = format!("{prefix}_{}", Uuid::now_v7().simple());
        Some(TestSchema { options })
    }

    /// Options for a store on this schema.
    pub fn options(&self) -> PostgresOptions {
        self.options.clone()
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let options = self.options.clone();
        // Drop runs inside the test's runtime, which cannot block on a
        // future; a thread with a runtime of its own can.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime
                .block_on(PostgresStore::drop_schema(&options))
                .map_err(|e| e.to_string())
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("dropping test schema {} failed: {e}", self.options.schema);
        }
    }
}
