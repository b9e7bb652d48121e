//! Device coordination at run time: this instance's connected devices, and
//! the background work that keeps roles and presence true.
//!
//! - [`Presence`] counts this instance's connections per device. The first
//!   connection of a device stamps its presence row, the last one removes it
//!   (and looks at the roles the device held at once, so a holder that
//!   disconnects is replaced without waiting for its lease). A heartbeat
//!   stamps every connected device again each second, with the time it was
//!   last active (a frame received), and removes rows that ran out — those
//!   of a crashed instance.
//! - The role checker asks the store every 100 ms for roles whose lease ran
//!   out or whose holder left, and checks each one
//!   ([`RoleRequest::Check`]): the next eligible device takes it, and the
//!   change is announced to every connection of the user, on every
//!   instance. On PostgreSQL every instance runs it; the role's row lock
//!   makes a second check of the same role a no-op.
//! - Guard records whose window ran out are swept every 10 s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tracing::{debug, warn};

use crate::config::CoordinationConfig;
use crate::state::{ServerState, now_ms};
use crate::store::{DeviceIdentity, Leases, PresenceStamp, RoleRequest};

/// This instance's connected devices.
pub struct Presence {
    /// The instance's id in presence rows.
    instance: String,
    connections: Mutex<HashMap<DeviceIdentity, (usize, u64)>>,
}

impl Default for Presence {
    fn default() -> Self {
        Presence {
            instance: uuid::Uuid::now_v7().to_string(),
            connections: Mutex::new(HashMap::new()),
        }
    }
}

impl Presence {
    /// The instance's id.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceIdentity, (usize, u64)>> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes activity of a connected device (a frame arrived).
    pub fn touch(&self, device: &DeviceIdentity) {
        if let Some(entry) = self.lock().get_mut(device) {
            entry.1 = now_ms();
        }
    }

    fn stamps(&self) -> Vec<PresenceStamp> {
        self.lock()
            .iter()
            .map(|(device, (_, last_active))| PresenceStamp {
                device: device.clone(),
                last_active: *last_active,
            })
            .collect()
    }
}

/// The leases the store applies.
pub fn leases(config: &CoordinationConfig) -> Leases {
    Leases {
        role_ms: millis(config.role_lease),
        presence_ms: millis(config.presence_ttl),
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A connection of `device` was welcomed.
pub async fn connected(state: &ServerState, device: &DeviceIdentity) {
    let now = now_ms();
    let first = {
        let mut connections = state.presence.lock();
        let entry = connections.entry(device.clone()).or_insert((0, now));
        entry.0 += 1;
        entry.1 = now;
        entry.0 == 1
    };
    if first {
        let stamp = PresenceStamp {
            device: device.clone(),
            last_active: now,
        };
        let leases = leases(&state.config.coordination);
        if let Err(e) = state
            .store
            .presence_connected(state.presence.instance.clone(), stamp, leases)
            .await
        {
            warn!(error = %e, "stamping a device's presence failed");
        }
    }
}

/// A connection of `device` ended.
pub async fn disconnected(state: &ServerState, device: &DeviceIdentity) {
    let last = {
        let mut connections = state.presence.lock();
        match connections.get_mut(device) {
            Some(entry) if entry.0 > 1 => {
                entry.0 -= 1;
                false
            }
            Some(_) => {
                connections.remove(device);
                true
            }
            None => false,
        }
    };
    if !last {
        return;
    }
    let store = &state.store;
    if let Err(e) = store
        .presence_disconnected(state.presence.instance.clone(), device.clone())
        .await
    {
        warn!(error = %e, "removing a device's presence failed");
    }
    // Its roles go to the next device now rather than at the next check.
    match store.roles_of(device.user.clone()).await {
        Ok(roles) => {
            for role in roles
                .into_iter()
                .filter(|r| r.holder.as_ref() == Some(&device.device))
            {
                check(state, device, role.role).await;
            }
        }
        Err(e) => warn!(error = %e, "reading a user's roles failed"),
    }
}

async fn check(state: &ServerState, actor: &DeviceIdentity, role: String) {
    let leases = leases(&state.config.coordination);
    match state
        .store
        .change_role(actor.clone(), role.clone(), RoleRequest::Check, leases)
        .await
    {
        Ok(change) if change.changed => {
            debug!(user = %actor.user, %role, holder = ?change.state.holder, epoch = change.state.epoch, "role moved");
        }
        Ok(_) => {}
        Err(e) => warn!(error = %e, %role, "checking a role failed"),
    }
}

/// Runs the role checker, the presence heartbeat and the guard sweep until
/// shutdown.
pub async fn run(state: Arc<ServerState>) {
    let config = state.config.coordination;
    let mut roles = tokio::time::interval(config.role_check_interval);
    let mut heartbeat = tokio::time::interval(config.presence_heartbeat);
    let mut sweep = tokio::time::interval(config.guard_sweep_interval);
    for timer in [&mut roles, &mut heartbeat, &mut sweep] {
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = roles.tick() => {
                match state.store.roles_to_check().await {
                    Ok(due) => {
                        for (user, role) in due {
                            // The actor of a check is nobody in particular;
                            // only the user matters.
                            let Ok(device) = tandem_protocol::DeviceId::new("tandem-server") else {
                                continue;
                            };
                            let actor = DeviceIdentity { user, device };
                            check(&state, &actor, role).await;
                        }
                    }
                    Err(e) => debug!(error = %e, "looking for roles to check failed"),
                }
            }
            _ = heartbeat.tick() => {
                let stamps = state.presence.stamps();
                if let Err(e) = state
                    .store
                    .presence_heartbeat(
                        state.presence.instance.clone(),
                        stamps,
                        leases(&config),
                    )
                    .await
                {
                    warn!(error = %e, "the presence heartbeat failed");
                }
            }
            _ = sweep.tick() => {
                if let Err(e) = state.store.sweep_guards().await {
                    debug!(error = %e, "sweeping guards failed");
                }
            }
        }
    }
}
