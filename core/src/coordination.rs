//! Coordination between the devices of one user: the device registry,
//! roles and the duplicate guard, as the app sees them.
//!
//! - **Roles.** [`Client::claim_role`](crate::Client::claim_role) makes this
//!   device a candidate for a named duty (it stays one, across reconnects,
//!   until [`release_role`](crate::Client::release_role)); the server gives
//!   the role to one connected candidate at a time. While this device holds
//!   a role, the sync engine renews its lease every
//!   [`SyncTuning::role_renew_interval`](crate::SyncTuning) (0.5 s); a
//!   holder that stops renewing (gone, cut off) loses the role when its lease
//!   runs out (1.5 s on the server by default), and the next device takes it.
//!   Each change of holder moves the role's **epoch**, and every observer
//!   ([`RoleObserver`]) hears of it.
//! - **Fencing.** A write or a guard made on behalf of a role carries the
//!   epoch this device held it at ([`Client::current_fence`](crate::Client::current_fence)):
//!   the server refuses it (`stale_epoch`) unless this device still holds
//!   the role at that epoch when it commits. So a device that lost the role
//!   while it was cut off cannot act on it when it comes back, even though
//!   it did not know. What a device believes (`is_self`) is the last state
//!   the server sent; the fence is what makes acting on it safe.
//! - **Duplicate guard.** [`Client::guard`](crate::Client::guard) asks the
//!   server whether normalized content was already seen in a scope within a
//!   window: exactly one caller gets [`GuardOutcome::First`].
//! - **Registry.** [`Client::devices`](crate::Client::devices) lists the
//!   user's devices; [`observe_devices`](crate::Client::observe_devices) hears
//!   of every change (a device connects, disconnects, is renamed, revoked).

use serde::Serialize;
use tandem_protocol::wire::{DeviceInfo as WireDevice, RoleState};
use tandem_protocol::{DeviceId, RoleFence};

/// A role of the user, as this device last heard of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoleInfo {
    /// The role's name.
    pub role: String,
    /// The holder's device id, if the role has a holder.
    pub holder: Option<String>,
    /// The holder's name, as registered.
    pub holder_name: Option<String>,
    /// The fencing token: grows on every change of holder.
    pub epoch: u64,
    /// Whether this device is the holder.
    pub is_self: bool,
    /// When the holder's lease runs out unless renewed, Unix milliseconds.
    pub lease_expires_at: Option<u64>,
}

impl RoleInfo {
    pub(crate) fn from_state(state: RoleState, me: &DeviceId) -> RoleInfo {
        RoleInfo {
            is_self: state.holder.as_ref() == Some(me),
            role: state.role,
            holder: state.holder.map(|d| d.to_string()),
            holder_name: state.holder_name,
            epoch: state.epoch,
            lease_expires_at: state.lease_expires_at,
        }
    }

    /// The fence to tag writes and guards made on behalf of this role with,
    /// if this device holds it.
    pub fn fence(&self) -> Option<RoleFence> {
        self.is_self.then(|| RoleFence {
            role: self.role.clone(),
            epoch: self.epoch,
        })
    }
}

/// A device of the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceInfo {
    /// The device's id.
    pub device_id: String,
    /// Its name.
    pub name: String,
    /// Its platform.
    pub platform: String,
    /// Its app version.
    pub app_version: String,
    /// When it registered, Unix milliseconds.
    pub registered_at: u64,
    /// When it was last connected (now, if online), Unix milliseconds.
    pub last_seen: Option<u64>,
    /// Whether it is connected to the server now.
    pub online: bool,
    /// Whether it is this device.
    pub is_self: bool,
}

impl DeviceInfo {
    pub(crate) fn from_wire(device: WireDevice, me: &DeviceId) -> DeviceInfo {
        DeviceInfo {
            is_self: &device.device_id == me,
            device_id: device.device_id.to_string(),
            name: device.name,
            platform: device.platform,
            app_version: device.app_version,
            registered_at: device.registered_at,
            last_seen: device.last_seen,
            online: device.online,
        }
    }
}

/// The duplicate guard's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardOutcome {
    /// The first occurrence in the window: go ahead.
    First,
    /// Already seen in the window: someone else went ahead.
    Duplicate,
}

impl GuardOutcome {
    /// `first` or `duplicate`.
    pub fn as_str(self) -> &'static str {
        match self {
            GuardOutcome::First => "first",
            GuardOutcome::Duplicate => "duplicate",
        }
    }
}

/// Hears about one role. Called on the client's observer task (never the
/// sync engine's), in order: return quickly.
pub trait RoleObserver: Send + Sync {
    /// The role's state: first the current one (if known), then each change
    /// of holder or epoch.
    fn on_role(&self, role: RoleInfo);
}

/// Hears about the user's devices. Called on the client's observer task
/// (never the sync engine's), in order: return quickly.
pub trait DevicesObserver: Send + Sync {
    /// The user's devices: first the current list (if known), then after
    /// each change.
    fn on_devices(&self, devices: Vec<DeviceInfo>);
}
