//! UniFFI bindings of Tandem's client engine, for Swift and Kotlin.
//!
//! This crate is a thin layer over [`tandem_core`]: it owns what only the
//! boundary needs and nothing else.
//!
//! - [`Client`] wraps the core's client (`inner: Arc<tandem_core::Client>`)
//!   with one-line methods; documents cross as [`Document`] records whose
//!   fields are JSON text and whose metadata is typed.
//! - [`TandemError`] is the one error the app sees; [`error`] holds every
//!   mapping into it (core errors, failed callbacks, panics).
//! - Streams are an observer the app implements ([`QueryObserver`],
//!   [`DocumentObserver`], [`StatusObserver`]) plus a [`Subscription`]
//!   handle that cancels when released and has an explicit `cancel()`.
//! - [`runtime`] is the one tokio runtime of the bindings.
//! - [`set_logger`] sends the engine's `tracing` records to the app's
//!   [`Logger`].
//! - [`Client::start_sync`] and the calls after it drive the sync engine;
//!   [`TokenProvider`] and [`ConflictHandler`] are its host hooks.
//! - [`coordination`]: the user's devices, roles with fencing
//!   ([`RoleObserver`], [`DevicesObserver`]), the duplicate guard, push
//!   hints.
//!
//! Everything is exported with UniFFI's proc-macros; `scripts/gen-bindings.sh`
//! generates the Swift and Kotlin sources from the built library.

uniffi::setup_scaffolding!();

pub mod auth;
pub mod client;
pub mod config;
pub mod conflict;
pub mod coordination;
pub mod document;
pub mod error;
pub mod logging;
pub mod observe;
pub mod query;
pub mod runtime;
pub mod status;
pub mod sync;

pub use auth::{CredentialStore, TokenProvider};
pub use client::{Client, change_encryption_key};
pub use config::{ClientConfig, CollectionPolicy, MergePolicy};
pub use conflict::{Conflict, ConflictHandler, ConflictRecord, Resolution};
pub use coordination::{
    DeviceInfo, DevicesObserver, GuardOutcome, RoleFence, RoleInfo, RoleObserver,
};
pub use document::{DocKey, Document};
pub use error::TandemError;
pub use logging::{LogLevel, Logger, set_logger};
pub use observe::{DocumentObserver, QueryObserver, StatusObserver, Subscription};
pub use query::{Filter, FilterOp, FilterValue, Query};
pub use status::{
    ConnectionState, MutationFailure, OutboxState, PendingMutation, SpaceProgress, SyncError,
    SyncErrorKind, SyncStatus,
};
pub use sync::{SpaceInfo, SyncConfig, SyncOutcome, SyncTuning, default_sync_tuning};
