//! What syncing tells the app as it happens: the status, the user's
//! roles and devices, writes that failed, and the app's observers of them.
//!
//! The host's driver publishes here after each engine step; the hub keeps
//! the latest of each (what [`Client::role`](crate::Client::role) and
//! [`Client::status`](crate::Client::status) read) and hands the
//! calls to the app's observers to the client's observer task
//! (`crate::observe`), in order. No app code runs on the sync engine's
//! task: a slow observer delays other observers, never syncing.
//!
//! An observer added gets the current value at once, on the caller's
//! thread; later values come from the observer task, each to the observers
//! there were when it was published (so a new observer never hears a value
//! older than its first), in the order they were published. A cancelled
//! observer is not called by deliveries that start after the cancel.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::coordination::{DeviceInfo, DevicesObserver, RoleInfo, RoleObserver};
use crate::observe::Notices;
use crate::sync::status::{MutationFailure, StatusObserver, SyncStatus};

/// A role observer: the role it watches and itself.
type RoleObserverEntry = (String, Arc<dyn RoleObserver>);

/// The app's observers, by subscription id.
#[derive(Default)]
struct AppObservers {
    status: Mutex<BTreeMap<u64, Arc<dyn StatusObserver>>>,
    roles: Mutex<BTreeMap<u64, RoleObserverEntry>>,
    devices: Mutex<BTreeMap<u64, Arc<dyn DevicesObserver>>>,
}

impl AppObservers {
    /// The status observers now, to be called later if still there.
    fn status_now(&self) -> Vec<(u64, Arc<dyn StatusObserver>)> {
        lock(&self.status)
            .iter()
            .map(|(id, o)| (*id, Arc::clone(o)))
            .collect()
    }

    fn has_status(&self, id: u64) -> bool {
        lock(&self.status).contains_key(&id)
    }
}

/// The latest of each thing syncing reported.
#[derive(Default)]
struct Latest {
    status: Option<SyncStatus>,
    roles: BTreeMap<String, RoleInfo>,
    devices: Option<Vec<DeviceInfo>>,
}

/// The hub of one client.
pub(crate) struct LiveHub {
    latest: Mutex<Latest>,
    observers: Arc<AppObservers>,
    next_id: AtomicU64,
    notices: Notices,
}

impl LiveHub {
    /// A hub delivering through `notices`.
    pub fn new(notices: Notices) -> LiveHub {
        LiveHub {
            latest: Mutex::new(Latest::default()),
            observers: Arc::new(AppObservers::default()),
            next_id: AtomicU64::new(1),
            notices,
        }
    }

    /// The last status published.
    pub fn status(&self) -> Option<SyncStatus> {
        lock(&self.latest).status.clone()
    }

    /// The role's last known state.
    pub fn role(&self, role: &str) -> Option<RoleInfo> {
        lock(&self.latest).roles.get(role).cloned()
    }

    /// Forgets the status, roles and devices (syncing stopped).
    pub fn clear(&self) {
        *lock(&self.latest) = Latest::default();
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Adds a status observer (the caller gives it the current status).
    pub fn add_status_observer(&self, observer: Arc<dyn StatusObserver>) -> u64 {
        let id = self.next_id();
        lock(&self.observers.status).insert(id, observer);
        id
    }

    /// Adds a role observer and calls it with the role's state if known.
    pub fn add_role_observer(&self, role: &str, observer: Arc<dyn RoleObserver>) -> u64 {
        let id = self.next_id();
        lock(&self.observers.roles).insert(id, (role.to_owned(), Arc::clone(&observer)));
        if let Some(info) = self.role(role) {
            observer.on_role(info);
        }
        id
    }

    /// Adds a devices observer and calls it with the list if known.
    pub fn add_devices_observer(&self, observer: Arc<dyn DevicesObserver>) -> u64 {
        let id = self.next_id();
        lock(&self.observers.devices).insert(id, Arc::clone(&observer));
        let known = lock(&self.latest).devices.clone();
        if let Some(devices) = known {
            observer.on_devices(devices);
        }
        id
    }

    /// Removes the observer with subscription `id`, of whatever kind.
    pub fn remove_observer(&self, id: u64) {
        lock(&self.observers.status).remove(&id);
        lock(&self.observers.roles).remove(&id);
        lock(&self.observers.devices).remove(&id);
    }

    /// Publishes the status; observers hear of it if it changed.
    pub fn publish_status(&self, status: SyncStatus) {
        {
            let mut latest = lock(&self.latest);
            if latest.status.as_ref() == Some(&status) {
                return;
            }
            latest.status = Some(status.clone());
        }
        let observers = Arc::clone(&self.observers);
        let targets = observers.status_now();
        self.notices.post(Box::new(move || {
            for (id, observer) in targets {
                if observers.has_status(id) {
                    observer.on_status(status.clone());
                }
            }
        }));
    }

    /// Tells the status observers that a write failed for good.
    pub fn publish_failure(&self, failure: MutationFailure) {
        let observers = Arc::clone(&self.observers);
        let targets = observers.status_now();
        self.notices.post(Box::new(move || {
            for (id, observer) in targets {
                if observers.has_status(id) {
                    observer.on_mutation_failed(failure.clone());
                }
            }
        }));
    }

    /// Publishes a role's new state.
    pub fn publish_role(&self, info: RoleInfo) {
        lock(&self.latest)
            .roles
            .insert(info.role.clone(), info.clone());
        let observers = Arc::clone(&self.observers);
        let targets: Vec<(u64, Arc<dyn RoleObserver>)> = lock(&observers.roles)
            .iter()
            .filter(|(_, (role, _))| role == &info.role)
            .map(|(id, (_, o))| (*id, Arc::clone(o)))
            .collect();
        self.notices.post(Box::new(move || {
            for (id, observer) in targets {
                if lock(&observers.roles).contains_key(&id) {
                    observer.on_role(info.clone());
                }
            }
        }));
    }

    /// Publishes the user's devices.
    pub fn publish_devices(&self, devices: Vec<DeviceInfo>) {
        lock(&self.latest).devices = Some(devices.clone());
        let observers = Arc::clone(&self.observers);
        let targets: Vec<(u64, Arc<dyn DevicesObserver>)> = lock(&observers.devices)
            .iter()
            .map(|(id, o)| (*id, Arc::clone(o)))
            .collect();
        self.notices.post(Box::new(move || {
            for (id, observer) in targets {
                if lock(&observers.devices).contains_key(&id) {
                    observer.on_devices(devices.clone());
                }
            }
        }));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
