//! Tandem's client engine.
//!
//! Every device keeps a local SQLite database that is the single source of
//! truth for its UI, and a durable outbox of the mutations it has made. An
//! app opens a [`Client`] on a data directory and writes, reads, queries
//! and observes documents through it; everything is local and immediate,
//! and every write is one transaction holding both the document's new local
//! view and its outbox entry.
//!
//! - [`client`]: the [`Client`] facade, shaped for the FFI layer, its
//!   methods by feature (local data, status, sync, account, coordination);
//! - [`store`]: the database (connections, pragmas, schema and migrations,
//!   local writes, queries, the outbox, confirmed state and view rebuilds);
//! - [`observe`]: query and document observers, coalesced, notified after
//!   commit;
//! - [`sync`]: the sans-I/O sync engine (events in, actions out) and, with
//!   the `native` feature, the tokio driver that runs it over a WebSocket;
//! - [`background`]: who runs checkpoints and observer deliveries (a
//!   thread each, or the host's own turn);
//! - [`query`], [`document`], [`coordination`], [`credentials`],
//!   [`clock`], [`config`] and [`error`].
//!
//! # Features
//!
//! - `native` (default): the tokio driver, the socket, HTTP and TLS
//!   (`Client::start_sync` and everything that talks to the server).
//!   Without it the crate is the store, the engine and the observers, with
//!   no socket, runtime or TLS dependency: what a host with its own
//!   transport (a browser, an app extension, a simulator) builds on; it
//!   compiles for `wasm32-unknown-unknown`.
//! - `encryption`: SQLCipher instead of plain SQLite.
//! - `failpoints`: named fail points for crash tests.
//!
//! `docs/ENGINE.md` describes the engine for people using it.

// Without the native driver, the engine's and the credentials' plumbing
// waits for the host's own driver (built beside this crate), so parts of
// it are unused in that build alone.
#![cfg_attr(
    not(feature = "native"),
    allow(dead_code, reason = "the driver that uses these comes with the host")
)]

pub mod background;
pub mod client;
pub mod clock;
pub mod config;
pub mod coordination;
pub mod credentials;
pub mod document;
pub mod error;
pub mod observe;
pub mod query;
pub mod store;
pub mod sync;

pub use client::{Client, Operation};
#[cfg(feature = "native")]
pub use client::{PUSH_HINT_SYNC_TIMEOUT, SpaceInfo, SyncOutcome};
pub use clock::{Clock, SystemClock};
pub use config::{
    ClientConfig, DATABASE_FILE, DEFAULT_MAX_DOCUMENT_BYTES, DatabaseKey, Durability,
};
pub use coordination::{DeviceInfo, DevicesObserver, GuardOutcome, RoleInfo, RoleObserver};
pub use credentials::{CredentialStore, CredentialStoreError, MemoryCredentialStore};
pub use document::{DocKey, DocRef, LocalDocument};
pub use error::Error;
pub use observe::{DocumentObserver, QueryObserver, Subscription};
pub use query::{Filter, FilterOp, FilterValue, Query};
pub use store::{ConflictRecord, OutboxState, PendingMutation};
pub use sync::{
    Conflict, ConflictHandler, ConnectionState, MutationFailure, Resolution, SpaceProgress,
    StaticToken, StatusObserver, SyncError, SyncErrorKind, SyncStatus, SyncTuning, TokenError,
    TokenProvider,
};
#[cfg(feature = "native")]
pub use sync::{SyncConfig, TlsSettings};
pub use tandem_protocol::RoleFence;
