//! The long reliability runs: the fault soak and the kill -9 loop. Each
//! runs a server process and device processes that it kills with SIGKILL,
//! for a minute or more, and leaves a one-line summary of its figures that
//! `scripts/test.sh` prints (see `tandem_e2e::record_summary`).
//!
//! They have a binary of their own, apart from the other end-to-end tests,
//! so that those do not run beside ten device processes and a fault loop:
//! that load is the soak's to impose, not a condition the other suites were
//! written for. Within this binary they run one after the other
//! ([`one_at_a_time`]), as they did as separate processes, so each one's
//! figures are measured on a machine it does not share with the other.

use tempfile::TempDir;
use tokio::sync::{Mutex, MutexGuard};

mod kill_loop;
mod soak;

/// Taken for the whole of each test of this binary.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// Waits until no other test of this binary is running; the test runs
/// alone while it holds the guard. (An async lock: it is held across the
/// test's awaits, and it is not poisoned when a test fails.)
async fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().await
}

/// The number in the environment variable `name`, if it holds one.
fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// A fresh directory for a run's databases and logs. It is removed at the
/// end unless `TANDEM_SOAK_KEEP` is set; then it stays, for a look after
/// the run, and the run (`what`) says where it is.
fn run_directory(what: &str) -> TempDir {
    let mut dir = TempDir::new().unwrap_or_else(|e| panic!("{what}: a directory: {e}"));
    if std::env::var_os("TANDEM_SOAK_KEEP").is_some() {
        dir.disable_cleanup(true);
        println!("{what}: files kept in {}", dir.path().display());
    }
    dir
}
