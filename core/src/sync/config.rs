//! How syncing is configured: the engine's tunables, and (with the native
//! driver) how to reach the server.

use std::time::Duration;

use crate::sync::backoff::Backoff;
#[cfg(feature = "native")]
use crate::sync::tls::TlsSettings;

/// The engine's tunables. The defaults are the documented behaviour; tests
/// and benchmarks shorten them.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncTuning {
    /// Reconnect backoff (default 0.5 s doubling to 30 s).
    pub reconnect: Backoff,
    /// Retry backoff of a mutation (default 1 s doubling to 60 s).
    pub retry: Backoff,
    /// Sends of one mutation before it fails (default 10).
    pub max_attempts: u32,
    /// Send `ping` after this long without receiving anything (default
    /// 20 s; the server pings an idle connection every 30 s).
    pub ping_after: Duration,
    /// Drop the connection after this long without receiving anything
    /// (default 60 s).
    pub dead_after: Duration,
    /// A batch not answered within this long is retried on a new
    /// connection (default 30 s).
    pub ack_timeout: Duration,
    /// Batches sent and not yet answered, at most (default 8; the server
    /// reads 16 ahead).
    pub max_outstanding_batches: usize,
    /// Mutations per batch, at most (the server's limit applies too;
    /// default 500).
    pub max_batch: usize,
    /// Refresh the access token when this fraction of its remaining
    /// lifetime has passed (default 0.8).
    pub refresh_at_fraction: f64,
    /// How often a role holder renews its leases (default 0.5 s; the
    /// server's lease lasts 1.5 s by default, so two renewals may be lost).
    pub role_renew_interval: Duration,
}

impl Default for SyncTuning {
    fn default() -> Self {
        SyncTuning {
            reconnect: Backoff::RECONNECT,
            retry: Backoff::RETRY,
            max_attempts: 10,
            ping_after: Duration::from_secs(20),
            dead_after: Duration::from_secs(60),
            ack_timeout: Duration::from_secs(30),
            max_outstanding_batches: 8,
            max_batch: 500,
            refresh_at_fraction: 0.8,
            role_renew_interval: Duration::from_millis(500),
        }
    }
}

/// How to reach the sync server ([`Client::start_sync`](crate::Client::start_sync)).
#[cfg(feature = "native")]
#[derive(Debug, Clone, PartialEq)]
pub struct SyncConfig {
    /// The server: `https://host[:port][/prefix]`, or `http://` for a
    /// development server; the `wss://` and `ws://` forms of the same
    /// address mean the same server. Checked at [`Client::start_sync`](crate::Client::start_sync).
    pub server_url: String,
    /// Extra trusted roots and public-key pins for an `https://` server
    /// (see [`crate::sync::tls`] for what each platform trusts by itself).
    pub tls: TlsSettings,
    /// The platform the device reports ("ios", "android", "cli", ...).
    pub platform: String,
    /// The app's version, as the device reports it.
    pub app_version: String,
    /// Timings and limits of the engine; the defaults are the documented
    /// behaviour.
    pub tuning: SyncTuning,
}

#[cfg(feature = "native")]
impl SyncConfig {
    /// Defaults for `server_url`.
    pub fn new(server_url: &str) -> SyncConfig {
        SyncConfig {
            server_url: server_url.to_owned(),
            tls: TlsSettings::default(),
            platform: std::env::consts::OS.to_owned(),
            app_version: env!("CARGO_PKG_VERSION").to_owned(),
            tuning: SyncTuning::default(),
        }
    }
}
