//! Syncing with the server.
//!
//! The engine, which holds every rule and runs wherever the store does:
//!
//! - [`interface`]: the seam, events in and actions out;
//! - `engine`: the sans-I/O state machine (connection, catch-up,
//!   delivery, roles; `engine/settle.rs` settles conflicts);
//! - [`config`], [`status`], [`conflict`], [`backoff`]: its tunables,
//!   what the app observes and decides, and its backoff schedules;
//! - `live`: the latest status, roles and devices, and the app's
//!   observers of them, delivered off the engine's task;
//! - [`tokens`]: where a device gets the user token it registers with.
//!
//! The native driver (feature `native`: tokio, tungstenite, reqwest,
//! rustls; what ships to iOS, Android, the CLI and the server's tests):
//!
//! - `driver`: runs the engine on tokio and carries out its actions;
//! - `socket`: the WebSocket and its reader task;
//! - `access`: credentials (register, refresh) and the HTTP calls made
//!   with them (`api`), to the server's URL (`endpoint`);
//! - [`tls`]: the one TLS configuration of the HTTP calls and the socket.
//!
//! The split: the engine is tested deterministically with a fake clock,
//! seeded jitter and no network (`engine/tests.rs`, and whole sessions
//! recorded as traces in `engine/tests/traces.rs`); the driver only carries
//! bytes, arms timers and makes HTTP calls, and is tested end to end
//! against a real server (`tests/`).

pub mod backoff;
pub mod config;
pub mod conflict;
pub(crate) mod engine;
pub mod interface;
pub(crate) mod live;
pub mod status;
pub mod tokens;

#[cfg(feature = "native")]
pub(crate) mod access;
#[cfg(feature = "native")]
pub(crate) mod api;
#[cfg(feature = "native")]
pub(crate) mod driver;
#[cfg(feature = "native")]
pub(crate) mod endpoint;
#[cfg(feature = "native")]
pub(crate) mod socket;
#[cfg(feature = "native")]
pub mod tls;

pub use backoff::{Backoff, Jitter, SeededJitter};
#[cfg(feature = "native")]
pub use config::SyncConfig;
pub use config::SyncTuning;
pub use conflict::{Conflict, ConflictHandler, Resolution};
pub use status::{
    ConnectionState, MutationFailure, SpaceProgress, StatusObserver, SyncError, SyncErrorKind,
    SyncStatus,
};
#[cfg(feature = "native")]
pub use tls::TlsSettings;
pub use tokens::{StaticToken, TokenError, TokenProvider};
