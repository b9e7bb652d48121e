//! Syncing with the server.
//!
//! - `engine`: the sans-I/O state machine (events in, actions out) that
//!   decides what to send, how to apply what arrives, when to reconnect and
//!   retry, and how conflicts end;
//! - `driver`: runs the engine on tokio over a WebSocket
//!   (tokio-tungstenite), with tokio timers and reqwest for registration,
//!   token refresh and the HTTP endpoints;
//! - `api`: the HTTP calls;
//! - `endpoint`: the server's URL, normalized once;
//! - [`tls`]: the one TLS configuration of the HTTP calls and the socket;
//! - [`backoff`]: backoff schedules and jitter;
//! - [`status`], [`conflict`]: what the app observes and decides.
//!
//! The split: the engine holds every rule and is tested deterministically
//! with a fake clock, seeded jitter and no network (`engine_tests.rs`); the
//! driver only carries bytes, arms timers and makes HTTP calls, and is
//! tested end to end against a real server (`tests/`).

pub(crate) mod api;
pub mod backoff;
pub mod conflict;
pub(crate) mod driver;
pub(crate) mod endpoint;
pub(crate) mod engine;
pub mod status;
pub mod tls;
pub mod tokens;

#[cfg(test)]
mod engine_tests;

pub use backoff::{Backoff, Jitter, SeededJitter};
pub use conflict::{Conflict, ConflictHandler, Resolution};
pub use engine::{Clock, SyncTuning, SystemClock};
pub use status::{
    MutationFailure, SpaceProgress, StatusObserver, SyncError, SyncErrorKind, SyncStatus,
};
pub use tls::TlsSettings;
pub use tokens::{StaticToken, TokenError, TokenProvider};
