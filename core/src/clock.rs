//! Where the core reads the time.
//!
//! The sync engine takes a [`Clock`] so tests and simulators control time;
//! the store stamps local bookkeeping (retry times, last sync) with
//! [`now_millis`].

use std::time::{SystemTime, UNIX_EPOCH};

/// Where the engine reads the time (injected, so tests control it).
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        now_millis()
    }
}

/// Milliseconds since the Unix epoch, by the wall clock.
pub(crate) fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
