//! Tandem's wire protocol and data model.
//!
//! This crate is pure: no I/O, no clocks, no randomness beyond id generation.
//! The client engine (`tandem-core`) and the server (`tandem-server`) both
//! depend on it, and nothing else ties them together. It holds:
//!
//! - [`ids`]: validated identifiers (spaces, collections, documents, devices,
//!   users) and UUIDv7 mutation ids;
//! - [`hlc`]: the hybrid logical clock that stamps every write;
//! - [`document`], [`mutation`], [`change`]: the document model, the client's
//!   intent (a mutation, the outbox entry) and the server's record of a
//!   committed write (a change);
//! - [`policy`] and [`merge`]: per-collection merge policies and the pure
//!   functions that apply mutations and changes under them;
//! - [`wire`]: the messages exchanged over the WebSocket, with a protocol
//!   version;
//! - [`checksum`]: the per-space checksum a client recomputes to detect drift;
//! - [`numbers`]: finds integers in JSON text that a 64-bit parser would
//!   round, which devices and the server refuse;
//! - [`api`]: the bodies of the HTTP endpoints (device registration, token
//!   refresh, spaces).
//!
//! `docs/PROTOCOL.md` describes the same things for implementers in other
//! languages; the snapshot tests in this crate keep the two in step.

pub mod api;
pub mod canonical;
pub mod change;
pub mod checksum;
pub mod document;
pub mod hlc;
pub mod ids;
pub mod merge;
pub mod mutation;
pub mod numbers;
pub mod policy;
pub mod wire;

pub use change::Change;
pub use checksum::SpaceChecksum;
pub use document::{DocState, Document, OrElement, OrSet};
pub use hlc::{Hlc, HybridClock};
pub use ids::{Collection, DeviceId, DocId, IdError, MutationId, SpaceId, UserId};
pub use merge::{MergeOutcome, Rejection};
pub use mutation::{Mutation, Op, RoleFence};
pub use policy::{CollectionPolicy, Policy};
pub use wire::{ClientMessage, ErrorCode, PROTOCOL_VERSION, RejectCode, ServerMessage};
