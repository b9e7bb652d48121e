//! Accounts: users, their devices and credentials, and the spaces users
//! belong to ([`AuthStore`]).
//!
//! Contract every implementation keeps (the conformance suite checks it):
//!
//! - **A device is registered once per user and device id.** Registering
//!   again replaces its details and revokes its earlier credentials; a user
//!   has at most the allowed number of devices that are not revoked, counted
//!   in the registering transaction.
//! - **Credentials are stored as hashes.** An access token names its device
//!   until it expires; a refresh token is spent once: presenting it again
//!   revokes every credential of its device.
//! - **Revocation is for good.** A revoked device's credentials are
//!   deleted, its connections close, and registering it again is refused.
//! - **Spaces have an owner and members.** Every user has a personal space
//!   from its first registration; the owner of a shared space adds and
//!   removes members, a member may leave, and every change of membership is
//!   announced.

use tandem_protocol::api::{SpaceMembers, SpaceSummary};
use tandem_protocol::{DeviceId, SpaceId, UserId};

use super::{StoreError, StoreFuture};
use crate::auth::TokenHash;

/// The refusal of a new device of `user`, who has `registered` devices
/// (not revoked) and may have at most `max_devices`.
pub fn too_many_devices(user: &UserId, registered: u64, max_devices: usize) -> StoreError {
    StoreError::TooManyDevices(format!(
        "{user} has {registered} registered devices and may have at most {max_devices}: \
         revoke one (DELETE /v1/devices/{{device}}) to register another"
    ))
}

/// A device of a user: who is acting.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceIdentity {
    /// The user.
    pub user: UserId,
    /// The device.
    pub device: DeviceId,
}

/// A device's registration details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRegistration {
    /// Whose device.
    pub identity: DeviceIdentity,
    /// A name for people.
    pub name: String,
    /// The platform.
    pub platform: String,
    /// The app's version.
    pub app_version: String,
}

/// Hashes and expiry times of a fresh access/refresh token pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewCredentials {
    /// The access token's hash.
    pub access: TokenHash,
    /// When it expires, Unix milliseconds.
    pub access_expires_at: u64,
    /// The refresh token's hash.
    pub refresh: TokenHash,
    /// When it expires, Unix milliseconds.
    pub refresh_expires_at: u64,
}

/// What presenting a refresh token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The token was current: it is spent and the new pair is stored.
    Rotated(DeviceIdentity),
    /// The token had already been rotated: every credential of the device is
    /// revoked (a [`StoreEvent::DeviceRevoked`](crate::store::StoreEvent::DeviceRevoked) is announced).
    Reused(DeviceIdentity),
    /// The token expired.
    Expired,
    /// No such token (never issued, or purged by a revocation).
    Unknown,
}

/// Accounts: who a device is, and which spaces its user may read and write.
pub trait AuthStore: Send + Sync + 'static {
    /// Registers (or registers again) a device, creates its user's personal
    /// space if needed, and stores a fresh credential pair. Credentials of an
    /// earlier registration of the same device are revoked. A device not
    /// registered yet is refused with [`StoreError::TooManyDevices`] when
    /// its user already has `max_devices` devices that are not revoked
    /// (counted in the same transaction: two racing registrations cannot
    /// both take the last place).
    fn register_device(
        &self,
        device: DeviceRegistration,
        credentials: NewCredentials,
        max_devices: usize,
        now_ms: u64,
    ) -> StoreFuture<'_, ()>;

    /// The device an unexpired access token belongs to.
    fn device_for_access_token(
        &self,
        access: TokenHash,
        now_ms: u64,
    ) -> StoreFuture<'_, Option<DeviceIdentity>>;

    /// Spends a refresh token for `next` (see [`RefreshOutcome`]).
    fn refresh_credentials(
        &self,
        presented: TokenHash,
        next: NewCredentials,
        now_ms: u64,
    ) -> StoreFuture<'_, RefreshOutcome>;

    /// Revokes a device for good: its credentials are deleted (its
    /// connections close), it leaves the registry and its role candidacies,
    /// and registering it again is refused with [`StoreError::Revoked`].
    fn revoke_device(&self, device: DeviceIdentity) -> StoreFuture<'_, ()>;

    /// Creates a shared space owned by `owner`.
    fn create_space(&self, owner: UserId, space: SpaceId) -> StoreFuture<'_, SpaceMembers>;

    /// The owner adds `member` (adding a member twice is not an error).
    fn add_member(
        &self,
        actor: UserId,
        space: SpaceId,
        member: UserId,
    ) -> StoreFuture<'_, SpaceMembers>;

    /// The owner removes a member, or a member leaves (`actor == member`).
    fn remove_member(
        &self,
        actor: UserId,
        space: SpaceId,
        member: UserId,
    ) -> StoreFuture<'_, SpaceMembers>;

    /// The spaces `user` belongs to, personal space first.
    fn spaces_of(&self, user: UserId) -> StoreFuture<'_, Vec<SpaceSummary>>;

    /// A space's members, for a member of it.
    fn space_members(&self, actor: UserId, space: SpaceId) -> StoreFuture<'_, SpaceMembers>;
}
