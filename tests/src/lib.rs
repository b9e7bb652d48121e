//! Support for Tandem's end-to-end tests: a real server on 127.0.0.1 with a
//! real SQLite database in a temporary directory, and small clients that
//! speak the protocol over real sockets.
//!
//! - [`TestServer`] starts (and restarts, on the same database) an in-process
//!   server on a free port.
//! - [`Http`] calls the HTTP endpoints and returns status and JSON.
//! - [`WsClient`] is a raw WebSocket client: it sends and receives protocol
//!   messages (or arbitrary text) with generous timeouts.
//! - [`Replica`] applies `changes` messages the way a device must (resets,
//!   cursors, checksums), so tests can compare what devices see.
//! - [`Writer`] builds mutations with a hybrid logical clock.
//! - [`tokens`] signs user tokens for servers that check JWTs.
//! - [`Proxy`] is a TCP proxy that injects faults: cuts, resets, half-open
//!   connections, partitions, latency with jitter, bandwidth limits.
//! - [`ServerProcess`] and [`DeviceSpec`] run a server and devices as OS
//!   processes that tests kill with SIGKILL and start again.
//! - [`Rng`] is a seeded generator, so a random run can be replayed.
//! - [`tls::TestCa`] makes a throwaway certificate authority and server
//!   certificates for the TLS tests.
//! - [`Device`] is a real device: a `tandem_core::Client` with its own
//!   SQLite database, syncing with a test server.

mod client;
mod device;
mod http;
mod process;
mod proxy;
mod replica;
mod rng;
mod server;
pub mod tls;
pub mod tokens;
mod writer;

pub use client::{WsClient, WsError};
pub use device::{
    Device, caught_up, converged, eventually, eventually_async, server_docs, test_tuning,
};
pub use http::{Http, Response};
pub use process::{DeviceSpec, ServerProcess, integrity_check, kill, read_log};
pub use proxy::Proxy;
pub use replica::Replica;
pub use rng::Rng;
pub use server::{TestServer, TestServerOptions};
pub use writer::Writer;

use std::time::Duration;

use tandem_protocol::{SpaceId, UserId};

/// How long a test waits for anything before it fails: generous, only to
/// turn a hang into a failure.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The personal space of `user`.
pub fn personal(user: &str) -> SpaceId {
    let user = UserId::new(user).unwrap_or_else(|e| panic!("user id {user:?}: {e}"));
    SpaceId::personal(&user)
}

/// Whether `text` is somewhere in `bytes` (a file's content, say).
pub fn contains_text(bytes: &[u8], text: &str) -> bool {
    bytes
        .windows(text.len())
        .any(|window| window == text.as_bytes())
}

/// Where reliability tests leave their one-line summaries, under the
/// target directory's `tmp/` (`CARGO_TARGET_TMPDIR` of the calling test);
/// `scripts/test.sh` prints every file there after `cargo test`, so the
/// figures show in CI's output and not only with `--nocapture`.
pub const SUMMARY_DIR: &str = "reliability-summary";

/// Prints `line` and writes it to `<target_tmpdir>/reliability-summary/<name>.txt`
/// (see [`SUMMARY_DIR`]). A file that cannot be written only costs the
/// summary, so it is reported and not fatal.
pub fn record_summary(target_tmpdir: &str, name: &str, line: &str) {
    println!("{line}");
    let dir = std::path::Path::new(target_tmpdir).join(SUMMARY_DIR);
    let written = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(dir.join(format!("{name}.txt")), format!("{line}\n")));
    if let Err(e) = written {
        eprintln!(
            "{name}: the summary could not be written to {}: {e}",
            dir.display()
        );
    }
}

/// The runtime of a test process (the server, a soak device, a responder):
/// two workers, as a phone app or a small server would have.
pub fn process_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}
