//! Coordination between the user's devices: the registry, roles with
//! fencing, the duplicate guard and push hints. One-line wrappers of the
//! core's calls (see `tandem_core::coordination` for the rules), plus the
//! records and the observers the app implements.

use std::sync::Arc;
use std::time::Duration;

use crate::client::Client;
use crate::document::{DocKey, Document};
use crate::error::{TandemError, call_foreign, guard};
use crate::observe::Subscription;
use crate::runtime;
use crate::sync::SyncOutcome;

/// A role of the user, as this device last heard of it.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct RoleInfo {
    /// The role's name.
    pub role: String,
    /// The holder's device id, if the role has a holder.
    pub holder: Option<String>,
    /// The holder's name.
    pub holder_name: Option<String>,
    /// The fencing token: grows on every change of holder.
    pub epoch: u64,
    /// Whether this device holds the role.
    pub is_self: bool,
    /// When the holder's lease runs out unless renewed, ms since the Unix
    /// epoch.
    pub lease_expires_at_ms: Option<u64>,
}

impl From<tandem_core::RoleInfo> for RoleInfo {
    fn from(r: tandem_core::RoleInfo) -> RoleInfo {
        RoleInfo {
            role: r.role,
            holder: r.holder,
            holder_name: r.holder_name,
            epoch: r.epoch,
            is_self: r.is_self,
            lease_expires_at_ms: r.lease_expires_at,
        }
    }
}

/// The role and epoch a write or guard acts under.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct RoleFence {
    /// The role.
    pub role: String,
    /// The epoch this device holds it at.
    pub epoch: u64,
}

impl From<RoleFence> for tandem_core::RoleFence {
    fn from(f: RoleFence) -> tandem_core::RoleFence {
        tandem_core::RoleFence {
            role: f.role,
            epoch: f.epoch,
        }
    }
}

impl From<tandem_core::RoleFence> for RoleFence {
    fn from(f: tandem_core::RoleFence) -> RoleFence {
        RoleFence {
            role: f.role,
            epoch: f.epoch,
        }
    }
}

/// A device of the user.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct DeviceInfo {
    /// The device's id.
    pub device_id: String,
    /// Its name.
    pub name: String,
    /// Its platform.
    pub platform: String,
    /// Its app version.
    pub app_version: String,
    /// When it was last connected (now, if online), ms since the Unix
    /// epoch.
    pub last_seen_ms: Option<u64>,
    /// Whether it is connected now.
    pub online: bool,
    /// Whether it is this device.
    pub is_self: bool,
}

impl From<tandem_core::DeviceInfo> for DeviceInfo {
    fn from(d: tandem_core::DeviceInfo) -> DeviceInfo {
        DeviceInfo {
            device_id: d.device_id,
            name: d.name,
            platform: d.platform,
            app_version: d.app_version,
            last_seen_ms: d.last_seen,
            online: d.online,
            is_self: d.is_self,
        }
    }
}

fn devices(list: Vec<tandem_core::DeviceInfo>) -> Vec<DeviceInfo> {
    list.into_iter().map(DeviceInfo::from).collect()
}

/// The duplicate guard's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, uniffi::Enum)]
pub enum GuardOutcome {
    /// The first occurrence in the window: go ahead.
    First,
    /// Already seen in the window: another device went ahead.
    Duplicate,
}

impl From<tandem_core::GuardOutcome> for GuardOutcome {
    fn from(g: tandem_core::GuardOutcome) -> GuardOutcome {
        match g {
            tandem_core::GuardOutcome::First => GuardOutcome::First,
            tandem_core::GuardOutcome::Duplicate => GuardOutcome::Duplicate,
        }
    }
}

/// Hears about one role.
#[uniffi::export(callback_interface)]
pub trait RoleObserver: Send + Sync {
    /// The role's state: the current one if known, then each change of
    /// holder or epoch. Called on the client's observer thread (never the
    /// sync engine's), after the other observers' calls posted before it:
    /// return quickly. An error is logged; the subscription goes on.
    fn on_role(&self, role: RoleInfo) -> Result<(), TandemError>;
}

/// Hears about the user's devices.
#[uniffi::export(callback_interface)]
pub trait DevicesObserver: Send + Sync {
    /// The user's devices: the current list if known, then after each
    /// change (a device connects, disconnects, registers, is renamed or
    /// revoked). Called on the client's observer thread (never the sync
    /// engine's): return quickly.
    fn on_devices(&self, devices: Vec<DeviceInfo>) -> Result<(), TandemError>;
}

struct RoleObserverBridge(Box<dyn RoleObserver>);

impl tandem_core::RoleObserver for RoleObserverBridge {
    fn on_role(&self, role: tandem_core::RoleInfo) {
        let role = RoleInfo::from(role);
        call_foreign("a role observer", || self.0.on_role(role));
    }
}

struct DevicesObserverBridge(Box<dyn DevicesObserver>);

impl tandem_core::DevicesObserver for DevicesObserverBridge {
    fn on_devices(&self, list: Vec<tandem_core::DeviceInfo>) {
        let list = devices(list);
        call_foreign("a devices observer", || self.0.on_devices(list));
    }
}

#[uniffi::export]
impl Client {
    /// Makes this device a candidate for `role` (until `release_role`) and
    /// its holder if the role has no live holder. `priority` orders the
    /// candidates when the holder is lost (higher first, then the most
    /// recently active device).
    pub async fn claim_role(&self, role: String, priority: i32) -> Result<RoleInfo, TandemError> {
        let inner = Arc::clone(&self.inner);
        runtime::spawn(async move { inner.claim_role(&role, priority).await.map(RoleInfo::from) })
            .await
    }

    /// Stops being a candidate for `role`; a holder hands it on.
    pub async fn release_role(&self, role: String) -> Result<RoleInfo, TandemError> {
        let inner = Arc::clone(&self.inner);
        runtime::spawn(async move { inner.release_role(&role).await.map(RoleInfo::from) }).await
    }

    /// Gives `role`, which this device holds, to the connected device
    /// `to_device_id`. `RoleLost` if this device does not hold it.
    pub async fn handoff_role(
        &self,
        role: String,
        to_device_id: String,
    ) -> Result<RoleInfo, TandemError> {
        let inner = Arc::clone(&self.inner);
        runtime::spawn(async move {
            inner
                .handoff_role(&role, &to_device_id)
                .await
                .map(RoleInfo::from)
        })
        .await
    }

    /// The role's state as this device last heard it.
    pub fn role(&self, role: String) -> Option<RoleInfo> {
        self.inner.role(&role).map(RoleInfo::from)
    }

    /// The fence for writes and guards on behalf of `role`: present while
    /// this device holds it.
    pub fn current_fence(&self, role: String) -> Option<RoleFence> {
        self.inner.current_fence(&role).map(RoleFence::from)
    }

    /// Calls `observer` with the role's state now (if known) and on each
    /// change of holder or epoch, until the subscription is cancelled or
    /// released.
    pub fn observe_role(
        &self,
        role: String,
        observer: Box<dyn RoleObserver>,
    ) -> Result<Arc<Subscription>, TandemError> {
        let observer = Arc::new(RoleObserverBridge(observer));
        guard(|| self.inner.observe_role(&role, observer))
            .map(|inner| Subscription::new(inner, &self.subscriptions))
    }

    /// Asks the duplicate guard whether `content` (trimmed, NFC, whitespace
    /// collapsed) was already seen in `scope` by a device of the user within
    /// `window_ms` (default 5 s): exactly one caller gets `First`.
    pub async fn guard(
        &self,
        scope: String,
        content: String,
        window_ms: Option<u64>,
    ) -> Result<GuardOutcome, TandemError> {
        let inner = Arc::clone(&self.inner);
        runtime::spawn(async move {
            inner
                .guard(&scope, &content, window_ms)
                .await
                .map(GuardOutcome::from)
        })
        .await
    }

    /// `guard` on behalf of a role: `RoleLost` (recording nothing) unless
    /// this device holds the role at the fence's epoch.
    pub async fn guard_fenced(
        &self,
        scope: String,
        content: String,
        window_ms: Option<u64>,
        fence: RoleFence,
    ) -> Result<GuardOutcome, TandemError> {
        let inner = Arc::clone(&self.inner);
        runtime::spawn(async move {
            inner
                .guard_fenced(&scope, &content, window_ms, fence.into())
                .await
                .map(GuardOutcome::from)
        })
        .await
    }

    /// `put` on behalf of a role: the server refuses the write (it becomes
    /// failed, with `stale_epoch`) unless this device still holds the role
    /// at the fence's epoch when it arrives.
    pub fn put_fenced(
        &self,
        key: DocKey,
        fields_json: String,
        fence: RoleFence,
    ) -> Result<Document, TandemError> {
        guard(|| {
            self.inner
                .put_fenced(key.into(), &fields_json, fence.into())
                .map(Document::from)
        })
    }

    /// `mutate` (`put`, `patch`, `delete`) on behalf of a role.
    pub fn mutate_fenced(
        &self,
        key: DocKey,
        operation: String,
        payload_json: String,
        fence: RoleFence,
    ) -> Result<Document, TandemError> {
        guard(|| {
            self.inner
                .mutate_fenced(key.into(), &operation, &payload_json, fence.into())
                .map(Document::from)
        })
    }

    /// The user's devices, from the server.
    pub async fn devices(&self) -> Result<Vec<DeviceInfo>, TandemError> {
        let inner = Arc::clone(&self.inner);
        runtime::spawn(async move { inner.devices().await.map(devices) }).await
    }

    /// Calls `observer` with the user's devices (now if known, then after
    /// each change) until the subscription is cancelled or released.
    pub fn observe_devices(
        &self,
        observer: Box<dyn DevicesObserver>,
    ) -> Result<Arc<Subscription>, TandemError> {
        let observer = Arc::new(DevicesObserverBridge(observer));
        guard(|| self.inner.observe_devices(observer))
            .map(|inner| Subscription::new(inner, &self.subscriptions))
    }

    /// Renames a device of the user; returns the devices.
    pub async fn rename_device(
        &self,
        device_id: String,
        name: String,
    ) -> Result<Vec<DeviceInfo>, TandemError> {
        let inner = Arc::clone(&self.inner);
        runtime::spawn(async move { inner.rename_device(&device_id, &name).await.map(devices) })
            .await
    }

    /// Revokes a device of the user: its connections close, its
    /// credentials stop working, it cannot register again. Returns the
    /// remaining devices.
    pub async fn revoke_device(&self, device_id: String) -> Result<Vec<DeviceInfo>, TandemError> {
        let inner = Arc::clone(&self.inner);
        runtime::spawn(async move { inner.revoke_device(&device_id).await.map(devices) }).await
    }

    /// Registers this device's push token (`provider`: `apns`, `fcm`, …).
    pub async fn register_push_token(
        &self,
        token: String,
        provider: String,
    ) -> Result<(), TandemError> {
        let inner = Arc::clone(&self.inner);
        runtime::spawn(async move { inner.register_push_token(&token, &provider).await }).await
    }

    /// Removes this device's push token.
    pub async fn unregister_push_token(&self) -> Result<(), TandemError> {
        let inner = Arc::clone(&self.inner);
        runtime::spawn(async move { inner.unregister_push_token().await }).await
    }

    /// Handles a push hint (the payload the server sent the app's push
    /// webhook): a bounded sync of at most `timeout_ms`, for a background
    /// push handler. `InvalidInput` if the hint is not for this device.
    pub async fn handle_push_hint(
        &self,
        payload_json: String,
        timeout_ms: u64,
    ) -> Result<SyncOutcome, TandemError> {
        let inner = Arc::clone(&self.inner);
        let timeout = Duration::from_millis(timeout_ms);
        runtime::spawn(async move {
            inner
                .handle_push_hint(&payload_json, timeout)
                .await
                .map(SyncOutcome::from)
        })
        .await
    }
}
