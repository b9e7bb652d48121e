//! The per-device cap on open WebSocket connections of this instance.
//!
//! A device needs one connection; a few more cover a reconnect while the
//! old connection has not yet timed out. Without a cap, one valid access
//! token could open sockets until the server runs out of file descriptors
//! or memory (each session has its own task and outbound queue). An upgrade
//! over the cap is refused with `429 rate_limited` before it becomes a
//! socket; the count drops when a session ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::store::DeviceIdentity;

type Counts = Arc<Mutex<HashMap<DeviceIdentity, usize>>>;

/// Open connections per device on this instance.
pub struct DeviceConnections {
    max_per_device: usize,
    counts: Counts,
}

/// One counted connection; dropping it uncounts it.
pub struct ConnectionSlot {
    device: DeviceIdentity,
    counts: Counts,
}

fn lock(counts: &Counts) -> MutexGuard<'_, HashMap<DeviceIdentity, usize>> {
    counts.lock().unwrap_or_else(PoisonError::into_inner)
}

impl DeviceConnections {
    /// At most `max_per_device` connections per device (at least one).
    pub fn new(max_per_device: usize) -> DeviceConnections {
        DeviceConnections {
            max_per_device: max_per_device.max(1),
            counts: Counts::default(),
        }
    }

    /// The cap.
    pub fn max_per_device(&self) -> usize {
        self.max_per_device
    }

    /// Counts a new connection of `device`, or `None` if it has the most
    /// it may have.
    pub fn try_open(&self, device: &DeviceIdentity) -> Option<ConnectionSlot> {
        let mut counts = lock(&self.counts);
        let open = counts.entry(device.clone()).or_insert(0);
        if *open >= self.max_per_device {
            return None;
        }
        *open += 1;
        Some(ConnectionSlot {
            device: device.clone(),
            counts: self.counts.clone(),
        })
    }

    /// The connections `device` has open.
    pub fn open(&self, device: &DeviceIdentity) -> usize {
        lock(&self.counts).get(device).copied().unwrap_or(0)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        if let Some(open) = counts.get_mut(&self.device) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                counts.remove(&self.device);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_protocol::{DeviceId, UserId};

    fn device(user: &str, id: &str) -> DeviceIdentity {
        DeviceIdentity {
            user: UserId::new(user).unwrap(),
            device: DeviceId::new(id).unwrap(),
        }
    }

    #[test]
    fn the_cap_is_per_device_and_a_closed_connection_frees_its_place() {
        let connections = DeviceConnections::new(2);
        let phone = device("alice", "phone");
        let first = connections.try_open(&phone).unwrap();
        let _second = connections.try_open(&phone).unwrap();
        assert!(connections.try_open(&phone).is_none());
        // Another device, and the same device id of another user, are
        // counted on their own.
        let _laptop = connections.try_open(&device("alice", "laptop")).unwrap();
        let _bobs = connections.try_open(&device("bob", "phone")).unwrap();
        drop(first);
        assert_eq!(connections.open(&phone), 1);
        let _third = connections.try_open(&phone).unwrap();
        assert!(connections.try_open(&phone).is_none());
    }
}
