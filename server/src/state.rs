//! What every request handler and session shares.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServerConfig;
use crate::fanout::FanOut;
use crate::metrics::Metrics;
use crate::rate_limit::DeviceRateLimit;
use crate::store::Store;

/// The running server's shared state.
pub struct ServerState {
    /// The settings it started with.
    pub config: ServerConfig,
    /// The database.
    pub store: Arc<dyn Store>,
    /// Live fan-out.
    pub fanout: Arc<FanOut>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Per-device mutation rate limit.
    pub rate_limit: DeviceRateLimit,
    /// Per-device cap on open WebSocket connections.
    pub connections: crate::connection_limit::DeviceConnections,
    /// Cancelled when the server begins to shut down.
    pub shutdown: CancellationToken,
    /// WebSocket sessions, so that shutdown can wait for them.
    pub sessions: TaskTracker,
    /// This instance's connected devices.
    pub presence: crate::coordination::Presence,
}

/// Wall-clock time in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
