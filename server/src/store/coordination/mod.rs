//! Device coordination: the registry, presence, roles, the duplicate guard
//! and push hints ([`CoordinationStore`]).
//!
//! Contract every implementation keeps (the conformance suite checks it):
//!
//! - **Roles are one row per (user, role).** The row holds the holder, the
//!   epoch and the lease; every change of it happens in a transaction that
//!   reads and writes the row under a lock (SQLite's single writer, a
//!   PostgreSQL row lock), so two instances never hand out one epoch twice.
//!   The decision itself is [`crate::roles::decide`], shared by every store.
//! - **Fences are checked where the write commits.** A mutation or guard
//!   carrying a fence is accepted only if, in the transaction that commits
//!   it, the role's row names the author at that epoch with a running lease.
//! - **Guards are a unique key.** One row per (user, hash of scope and
//!   normalized content); inserting it, or taking over an expired one, is
//!   one statement whose result says `first` or `duplicate`.
//! - **Presence is rows with a lease.** Each instance stamps a row per
//!   connected device; rows of a crashed instance run out.
//! - **The store's clock decides.** Every time coordination compares
//!   against or records (leases, presence expiry, guard windows, push-hint
//!   intervals, fence checks, a device's last-seen and revocation times) is
//!   read by the store from its own clock, in the transaction that uses it,
//!   so no method takes a `now_ms`. SQLite serves one process and reads
//!   that process's clock; PostgreSQL reads the database's
//!   (`clock_timestamp()`), the one clock every instance shares, so two
//!   instances agree on whether a lease ran out. What callers pass in are
//!   their own observations: [`PresenceStamp::last_active`], stored as
//!   given, and [`HintedSpace::told_after_ms`], compared with the store's
//!   hint times (`crate::push_hints` pads it for a database clock behind
//!   its own).
//!
//! Each request is written once, for every backend, in `transactions`: the
//! work of one transaction over the primitive reads and writes of `seam`,
//! which each backend implements in its own SQL
//! (`store/{sqlite,postgres}/coordination.rs`).

pub(crate) mod seam;
pub(crate) mod transactions;

use tandem_protocol::api::PushToken;
use tandem_protocol::wire::{DeviceInfo, GuardVerdict, RoleState};
use tandem_protocol::{DeviceId, RoleFence, SpaceId, UserId};

use super::{DeviceIdentity, StoreFuture};

/// What a device asks of a role ([`CoordinationStore::change_role`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleRequest {
    /// Become a candidate (with this priority), and the holder if the role
    /// has no live holder.
    Claim {
        /// Higher is preferred.
        priority: i32,
    },
    /// Stop being a candidate; a holder hands the role on.
    Release,
    /// The holder gives the role to `to`, which must be connected.
    Handoff {
        /// The device that takes the role.
        to: DeviceId,
    },
    /// The holder extends its lease at `epoch`.
    Renew {
        /// The epoch the device holds the role at.
        epoch: u64,
    },
    /// Look again: if the holder's lease ran out or it is not connected,
    /// the next eligible candidate takes the role (or nobody does); a role
    /// without holder goes to the best connected candidate.
    Check,
}

/// The result of [`CoordinationStore::change_role`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleChange {
    /// The role's state after the request.
    pub state: RoleState,
    /// Whether the holder (and so the epoch) changed.
    pub changed: bool,
}

/// A device's presence on this instance, as the instance stamps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceStamp {
    /// The device.
    pub device: DeviceIdentity,
    /// When it last sent something, Unix milliseconds.
    pub last_active: u64,
}

/// Coordination timings the store needs to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leases {
    /// How long a role's lease lasts after a claim, handoff or renewal.
    pub role_ms: u64,
    /// How long a presence row lasts after its last stamp.
    pub presence_ms: u64,
}

/// A push hint to send: an offline device with a push token, and the spaces
/// that changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HintTarget {
    /// The device.
    pub device: DeviceIdentity,
    /// Its token.
    pub token: PushToken,
    /// The changed spaces it belongs to, sorted.
    pub spaces: Vec<SpaceId>,
}

/// A space whose changes wait for push hints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HintedSpace {
    /// The space.
    pub space: SpaceId,
    /// A device whose last hint is at or after this time (Unix
    /// milliseconds) was hinted after these changes committed: it is not
    /// hinted again for them.
    pub told_after_ms: u64,
}

/// What [`CoordinationStore::claim_push_hints`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HintClaim {
    /// Hints to send now (their devices' last hint time is now set).
    pub ready: Vec<HintTarget>,
    /// The earliest time a device left out by its rate limit may get a hint,
    /// Unix milliseconds.
    pub retry_at: Option<u64>,
}

/// Device coordination: the devices of one user seeing each other, sharing
/// roles and avoiding doing the same thing twice. No method takes the time:
/// the store reads its own clock (see the module documentation).
pub trait CoordinationStore: Send + Sync + 'static {
    /// The user's devices that are not revoked, by name.
    fn devices_of(&self, user: UserId) -> StoreFuture<'_, Vec<DeviceInfo>>;

    /// Renames a device of `device.user`
    /// ([`StoreError::NotFound`](super::StoreError::NotFound) if it has no
    /// such device).
    fn rename_device(&self, device: DeviceIdentity, name: String) -> StoreFuture<'_, ()>;

    /// Sets (or with `None` removes) a device's push token.
    fn set_push_token(
        &self,
        device: DeviceIdentity,
        token: Option<PushToken>,
    ) -> StoreFuture<'_, ()>;

    /// The offline devices with a push token among the members of `spaces`
    /// that were not hinted since the space's changes (`told_after_ms`) and
    /// whose last hint is older than `min_interval_ms`; their last hint time
    /// becomes now (so another instance does not send the same hint).
    fn claim_push_hints(
        &self,
        spaces: Vec<HintedSpace>,
        min_interval_ms: u64,
    ) -> StoreFuture<'_, HintClaim>;

    /// A device connected to `instance`: stamps its presence row (a new
    /// row announces
    /// [`StoreEvent::DevicesChanged`](super::StoreEvent::DevicesChanged)).
    fn presence_connected(
        &self,
        instance: String,
        stamp: PresenceStamp,
        leases: Leases,
    ) -> StoreFuture<'_, ()>;

    /// A device's last connection to `instance` closed: its row goes and its
    /// last-seen time is kept.
    fn presence_disconnected(
        &self,
        instance: String,
        device: DeviceIdentity,
    ) -> StoreFuture<'_, ()>;

    /// Stamps every device connected to `instance` again, and deletes every
    /// presence row (of any instance) that ran out: a crashed instance's
    /// devices go offline.
    fn presence_heartbeat(
        &self,
        instance: String,
        stamps: Vec<PresenceStamp>,
        leases: Leases,
    ) -> StoreFuture<'_, ()>;

    /// Applies `request` of `actor` (a device of the role's user) to the
    /// role, atomically (see [`crate::roles::decide`]); a change of holder
    /// is announced
    /// ([`StoreEvent::RoleChanged`](super::StoreEvent::RoleChanged)).
    fn change_role(
        &self,
        actor: DeviceIdentity,
        role: String,
        request: RoleRequest,
        leases: Leases,
    ) -> StoreFuture<'_, RoleChange>;

    /// The roles of `user` that have a row (were ever claimed).
    fn roles_of(&self, user: UserId) -> StoreFuture<'_, Vec<RoleState>>;

    /// Roles that need [`RoleRequest::Check`]: a holder whose lease ran out
    /// or who is not connected, or no holder and a connected candidate.
    fn roles_to_check(&self) -> StoreFuture<'_, Vec<(UserId, String)>>;

    /// The duplicate guard: records the first occurrence of `hash` for
    /// `author.user` for `window_ms`, atomically: `first` if it was not
    /// recorded (or its window ran out), `duplicate` otherwise. A stale
    /// `fence` fails with
    /// [`StoreError::StaleEpoch`](super::StoreError::StaleEpoch) and records
    /// nothing.
    fn guard(
        &self,
        author: DeviceIdentity,
        hash: [u8; 32],
        window_ms: u64,
        fence: Option<RoleFence>,
    ) -> StoreFuture<'_, GuardVerdict>;

    /// Deletes guard records whose window ran out; returns how many.
    fn sweep_guards(&self) -> StoreFuture<'_, u64>;
}
