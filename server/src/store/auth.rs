//! Accounts: devices, their credentials, and the spaces users belong to.

use tandem_protocol::{DeviceId, UserId};

use super::StoreError;
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
    /// revoked (a [`StoreEvent::DeviceRevoked`] is announced).
    Reused(DeviceIdentity),
    /// The token expired.
    Expired,
    /// No such token (never issued, or purged by a revocation).
    Unknown,
}
