//! The seam between device coordination and a database: the primitive
//! reads and writes each backend implements in its own SQL. What a request
//! does is written once, over this seam, in [`super::transactions`]; a
//! backend only says how to read and write its tables.
//!
//! What an implementation keeps:
//!
//! - **A primitive decides nothing.** Each is one statement, or a few that
//!   belong together, run in the transaction of the step that calls it (or,
//!   for [`CoordinationReads`] alone, on a read connection). Whether a role
//!   moves, a guard is first or a device is hinted is the step's business.
//! - **[`CoordinationReads::now`] is the store's clock** (see
//!   [`super`]): the process's for SQLite, the database's for PostgreSQL.
//! - **[`CoordinationTx::lock_role`] takes the lock it is asked for** and
//!   holds it until the transaction ends: with [`RowLock::Update`] no other
//!   transaction reads the row to change it, with [`RowLock::Share`] no
//!   change of holder commits in between. SQLite's single writer holds both
//!   already; PostgreSQL takes `FOR UPDATE` or `FOR SHARE`.
//! - **Errors are the backend's own** ([`CoordinationReads::Error`]), so a
//!   step's failure still says what the backend needs to know (PostgreSQL:
//!   whether running the transaction again may succeed).

use tandem_protocol::api::PushToken;
use tandem_protocol::wire::{DeviceInfo, RoleState};
use tandem_protocol::{SpaceId, UserId};

use super::PresenceStamp;
use crate::roles::{CandidacyChange, Candidate, RoleRow};
use crate::store::{DeviceIdentity, StoreError, StoreEvent};

/// The lock [`CoordinationTx::lock_role`] takes on a role's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RowLock {
    /// To change the row: other changes wait for this transaction.
    Update,
    /// To rely on the row (a fence check): a change of holder waits for
    /// this transaction, other readers do not.
    Share,
}

/// An offline device with a push token, a member of a changed space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HintCandidate {
    /// The changed space.
    pub space: SpaceId,
    /// The device.
    pub device: DeviceIdentity,
    /// Its push token.
    pub token: PushToken,
    /// When it was last hinted, Unix milliseconds.
    pub last_hint_at: Option<u64>,
}

/// Reads of coordination state: on a read connection, or inside a
/// transaction through [`CoordinationTx`].
pub(crate) trait CoordinationReads {
    /// What a primitive fails with.
    type Error: From<StoreError>;

    /// The store's clock, Unix milliseconds.
    async fn now(&self) -> Result<u64, Self::Error>;

    /// The user's devices that are not revoked, by name then id, each
    /// online if it has a presence row running at `now`.
    async fn devices(&self, user: &UserId, now: u64) -> Result<Vec<DeviceInfo>, Self::Error>;

    /// A role's state, its holder's name included; `None` if it was never
    /// claimed.
    async fn role(&self, user: &UserId, role: &str) -> Result<Option<RoleState>, Self::Error>;

    /// The states of the user's roles, by name.
    async fn roles(&self, user: &UserId) -> Result<Vec<RoleState>, Self::Error>;

    /// The roles whose holder's lease ran out by `now` or whose holder is
    /// offline, and those without holder that have an online candidate.
    async fn roles_to_check(&self, now: u64) -> Result<Vec<(UserId, String)>, Self::Error>;
}

/// The writes of one coordination transaction, and the reads that decide
/// them (the row locks among them).
pub(crate) trait CoordinationTx: CoordinationReads {
    /// Queues `event` for announcement once the transaction commits.
    fn announce(&mut self, event: StoreEvent);

    /// Renames a device that is not revoked; `false` if there is none.
    async fn rename_device(&self, device: &DeviceIdentity, name: &str)
    -> Result<bool, Self::Error>;

    /// Sets or removes a device's push token (and forgets its last hint).
    async fn set_push_token(
        &self,
        device: &DeviceIdentity,
        token: Option<&PushToken>,
    ) -> Result<(), Self::Error>;

    /// Marks a device revoked at `now`, drops its push token, its presence
    /// rows and its role candidacies.
    async fn retire_device(&self, device: &DeviceIdentity, now: u64) -> Result<(), Self::Error>;

    /// Whether a device that is not revoked has a presence row (of any
    /// instance) running at `now`.
    async fn is_online(&self, device: &DeviceIdentity, now: u64) -> Result<bool, Self::Error>;

    /// Inserts or extends `instance`'s presence row of the stamped device
    /// until `expires_at`; its last activity only moves forward.
    async fn stamp_presence(
        &self,
        instance: &str,
        stamp: &PresenceStamp,
        expires_at: u64,
    ) -> Result<(), Self::Error>;

    /// Deletes `instance`'s presence row of `device`; whether there was one.
    async fn remove_presence(
        &self,
        instance: &str,
        device: &DeviceIdentity,
    ) -> Result<bool, Self::Error>;

    /// Sets a device's last-seen time.
    async fn set_last_seen(&self, device: &DeviceIdentity, at: u64) -> Result<(), Self::Error>;

    /// Deletes every presence row (of any instance) that ran out by `now`,
    /// moving each device's last-seen time up to the row's last activity;
    /// returns the users of those devices.
    async fn expire_presence(&self, now: u64) -> Result<Vec<UserId>, Self::Error>;

    /// Creates the role's row (no holder, epoch 0) if it has none.
    async fn create_role(&self, user: &UserId, role: &str) -> Result<(), Self::Error>;

    /// Reads the role's row under `lock`; `None` if it was never claimed.
    async fn lock_role(
        &self,
        user: &UserId,
        role: &str,
        lock: RowLock,
    ) -> Result<Option<RoleRow>, Self::Error>;

    /// The role's candidates, each online if it has a presence row running
    /// at `now`, with its latest activity.
    async fn candidates(
        &self,
        user: &UserId,
        role: &str,
        now: u64,
    ) -> Result<Vec<Candidate>, Self::Error>;

    /// Applies a candidacy change; a new candidate claimed at `now`.
    async fn write_candidacy(
        &self,
        user: &UserId,
        role: &str,
        change: &CandidacyChange,
        now: u64,
    ) -> Result<(), Self::Error>;

    /// Writes the role's row (which exists).
    async fn write_role(&self, user: &UserId, role: &str, row: &RoleRow)
    -> Result<(), Self::Error>;

    /// Records the guard of `hash` for `author.user` until `expires_at`, or
    /// takes over a record whose window ran out by `now`, in one statement;
    /// `false` if a running record was there.
    async fn insert_guard(
        &self,
        author: &DeviceIdentity,
        hash: &[u8; 32],
        expires_at: u64,
        now: u64,
    ) -> Result<bool, Self::Error>;

    /// Deletes the guard records whose window ran out by `now`; how many.
    async fn sweep_guards(&self, now: u64) -> Result<u64, Self::Error>;

    /// The devices that are not revoked, have a push token and are offline
    /// at `now`, of the members of `spaces` (one entry per space and
    /// device). PostgreSQL locks their rows until the transaction ends, so
    /// two instances do not hint one device at once.
    async fn hint_candidates(
        &self,
        spaces: &[SpaceId],
        now: u64,
    ) -> Result<Vec<HintCandidate>, Self::Error>;

    /// Sets a device's last hint time.
    async fn set_last_hint(&self, device: &DeviceIdentity, at: u64) -> Result<(), Self::Error>;
}

/// What a role's row says, as the protocol's [`RoleState`]: the holder's
/// name only with a holder.
pub(crate) fn role_state(role: &str, row: RoleRow, holder_name: Option<String>) -> RoleState {
    RoleState {
        request_id: None,
        role: role.to_owned(),
        holder_name: row.holder.as_ref().and(holder_name),
        holder: row.holder,
        epoch: row.epoch,
        lease_expires_at: row.lease_expires_at,
    }
}
