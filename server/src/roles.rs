//! Roles: which device of a user holds a named duty, and at which epoch.
//!
//! This module is the rule, without a database: every store loads a role's
//! row and its candidates inside a transaction that locks the row, asks
//! [`decide`] what the request does, and writes the answer back in the same
//! transaction. So the rule is the same on SQLite and on PostgreSQL, and
//! only the locking differs.
//!
//! The rule:
//!
//! - A role has at most one holder. The holder is **live** while its lease
//!   has not run out and it is connected (has a presence row).
//! - The **epoch** grows by one on every change of holder (to nobody
//!   included) and never goes back: it is the fencing token writes and
//!   guards carry.
//! - **Candidates** are the devices that claimed the role and have not
//!   released it; a claim lasts across reconnects. When the holder is lost
//!   (released, disconnected, lease ran out) the role goes to the **next
//!   eligible** candidate: connected, highest priority first, then the most
//!   recently active, then the smallest device id (so the choice is the same
//!   on every instance).
//! - `handoff` moves the role from its live holder to a named connected
//!   device, which becomes a candidate.
//! - `renew` extends the live holder's lease at its current epoch only; a
//!   holder whose lease ran out has lost the role, even before anybody else
//!   took it.

use tandem_protocol::{DeviceId, RoleFence};

use crate::store::{RoleRequest, StoreError};

/// A role's row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoleRow {
    /// The holder, if any.
    pub holder: Option<DeviceId>,
    /// The epoch.
    pub epoch: u64,
    /// When the holder's lease runs out, Unix milliseconds.
    pub lease_expires_at: Option<u64>,
}

impl RoleRow {
    /// Whether `fence` is good for `device` at `now_ms`: the device holds
    /// the role at that epoch and its lease runs.
    pub fn admits(&self, device: &DeviceId, fence: &RoleFence, now_ms: u64) -> bool {
        self.holder.as_ref() == Some(device)
            && self.epoch == fence.epoch
            && self.lease_expires_at.is_some_and(|at| at > now_ms)
    }
}

/// Why a fence was refused, for people.
pub fn stale_reason(fence: &RoleFence) -> String {
    format!(
        "this device does not hold role {} at epoch {} (the epoch moved on, or its lease ran out)",
        fence.role, fence.epoch
    )
}

/// A device that claimed the role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The device.
    pub device: DeviceId,
    /// Its priority (higher first).
    pub priority: i32,
    /// Whether it is connected now.
    pub present: bool,
    /// When it was last active, Unix milliseconds (0 if unknown).
    pub last_active: u64,
}

/// What to do with the actor's candidacy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CandidacyChange {
    /// Nothing.
    Keep,
    /// Insert or update this candidate with this priority.
    Upsert(DeviceId, i32),
    /// Remove this candidate.
    Remove(DeviceId),
}

/// What a request does to a role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The row after the request.
    pub row: RoleRow,
    /// Whether the holder changed (the epoch moved).
    pub changed: bool,
    /// The candidacy change.
    pub candidacy: CandidacyChange,
}

/// Decides what `request` of `actor` does to `row`. `candidates` are the
/// role's candidates with their presence; `target_present` says whether a
/// handoff's target is connected; `lease_ms` is the lease a new or renewed
/// holder gets.
pub fn decide(
    row: &RoleRow,
    candidates: &[Candidate],
    actor: &DeviceId,
    request: &RoleRequest,
    target_present: bool,
    lease_ms: u64,
    now_ms: u64,
) -> Result<Decision, StoreError> {
    let present = |d: &DeviceId| candidates.iter().any(|c| &c.device == d && c.present);
    let lease_runs = row.lease_expires_at.is_some_and(|at| at > now_ms);
    let live_holder = row
        .holder
        .as_ref()
        .filter(|h| lease_runs && present(h))
        .cloned();
    let mut candidates = candidates.to_vec();
    let mut candidacy = CandidacyChange::Keep;
    let next_holder: Option<DeviceId> = match request {
        RoleRequest::Claim { priority } => {
            candidacy = CandidacyChange::Upsert(actor.clone(), *priority);
            match candidates.iter_mut().find(|c| &c.device == actor) {
                Some(c) => {
                    c.priority = *priority;
                    c.present = true;
                }
                None => candidates.push(Candidate {
                    device: actor.clone(),
                    priority: *priority,
                    present: true,
                    last_active: now_ms,
                }),
            }
            match live_holder {
                Some(holder) => Some(holder),
                None => best(&candidates, None),
            }
        }
        RoleRequest::Release => {
            candidacy = CandidacyChange::Remove(actor.clone());
            candidates.retain(|c| &c.device != actor);
            match live_holder {
                Some(holder) if &holder != actor => Some(holder),
                _ => best(&candidates, Some(actor)),
            }
        }
        RoleRequest::Handoff { to } => {
            if live_holder.as_ref() != Some(actor) {
                return Err(StoreError::StaleEpoch(
                    "only the holder of a role can hand it off".into(),
                ));
            }
            if !target_present {
                return Err(StoreError::InvalidRequest(format!(
                    "device {to} is not connected; a role goes only to a connected device"
                )));
            }
            if !candidates.iter().any(|c| &c.device == to) {
                candidacy = CandidacyChange::Upsert(to.clone(), 0);
            }
            Some(to.clone())
        }
        RoleRequest::Renew { epoch } => {
            if live_holder.as_ref() != Some(actor) || *epoch != row.epoch {
                return Err(StoreError::StaleEpoch(format!(
                    "this device does not hold the role at epoch {epoch}"
                )));
            }
            return Ok(Decision {
                row: RoleRow {
                    holder: row.holder.clone(),
                    epoch: row.epoch,
                    lease_expires_at: Some(now_ms + lease_ms),
                },
                changed: false,
                candidacy,
            });
        }
        RoleRequest::Check => match live_holder {
            Some(holder) => Some(holder),
            // A holder that lost its lease is passed over even if it is
            // still connected: it stopped renewing (a partition, a hang).
            None => best(&candidates, row.holder.as_ref()),
        },
    };
    if next_holder == row.holder {
        return Ok(Decision {
            row: row.clone(),
            changed: false,
            candidacy,
        });
    }
    let lease_expires_at = next_holder.as_ref().map(|_| now_ms + lease_ms);
    Ok(Decision {
        row: RoleRow {
            holder: next_holder,
            epoch: row.epoch + 1,
            lease_expires_at,
        },
        changed: true,
        candidacy,
    })
}

/// The next eligible candidate: connected, highest priority, most recently
/// active, smallest id; never `excluded`.
fn best(candidates: &[Candidate], excluded: Option<&DeviceId>) -> Option<DeviceId> {
    candidates
        .iter()
        .filter(|c| c.present && Some(&c.device) != excluded)
        .max_by(|a, b| {
            a.priority
                .cmp(&b.priority)
                .then(a.last_active.cmp(&b.last_active))
                .then(b.device.as_str().cmp(a.device.as_str()))
        })
        .map(|c| c.device.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(name: &str) -> DeviceId {
        DeviceId::new(name).unwrap()
    }

    fn c(name: &str, priority: i32, present: bool, last_active: u64) -> Candidate {
        Candidate {
            device: d(name),
            priority,
            present,
            last_active,
        }
    }

    const NOW: u64 = 10_000;
    const LEASE: u64 = 1_500;

    fn held(by: &str, epoch: u64) -> RoleRow {
        RoleRow {
            holder: Some(d(by)),
            epoch,
            lease_expires_at: Some(NOW + 500),
        }
    }

    #[test]
    fn the_first_claim_takes_a_vacant_role_and_moves_the_epoch() {
        let out = decide(
            &RoleRow::default(),
            &[],
            &d("phone"),
            &RoleRequest::Claim { priority: 0 },
            false,
            LEASE,
            NOW,
        )
        .unwrap();
        assert_eq!(out.row.holder, Some(d("phone")));
        assert_eq!(out.row.epoch, 1);
        assert_eq!(out.row.lease_expires_at, Some(NOW + LEASE));
        assert!(out.changed);
        assert_eq!(out.candidacy, CandidacyChange::Upsert(d("phone"), 0));
    }

    #[test]
    fn a_claim_on_a_live_holder_only_adds_a_candidate() {
        let row = held("phone", 4);
        let candidates = [c("phone", 0, true, NOW)];
        let out = decide(
            &row,
            &candidates,
            &d("tablet"),
            &RoleRequest::Claim { priority: 9 },
            false,
            LEASE,
            NOW,
        )
        .unwrap();
        assert_eq!(out.row, row);
        assert!(!out.changed);
    }

    #[test]
    fn a_lost_holder_goes_to_priority_then_recent_activity() {
        let mut row = held("phone", 4);
        row.lease_expires_at = Some(NOW - 1);
        let candidates = [
            c("phone", 5, true, NOW),
            c("tablet", 1, true, 100),
            c("laptop", 1, true, 200),
            c("watch", 7, false, 300),
        ];
        let out = decide(
            &row,
            &candidates,
            &d("server"),
            &RoleRequest::Check,
            false,
            LEASE,
            NOW,
        )
        .unwrap();
        // The phone stopped renewing: passed over though connected; the
        // watch is not connected; laptop and tablet tie on priority.
        assert_eq!(out.row.holder, Some(d("laptop")));
        assert_eq!(out.row.epoch, 5);
        assert!(out.changed);
    }

    #[test]
    fn a_disconnected_holder_is_replaced_and_nobody_left_still_moves_the_epoch() {
        let row = held("phone", 2);
        let out = decide(
            &row,
            &[c("phone", 0, false, 0)],
            &d("phone"),
            &RoleRequest::Check,
            false,
            LEASE,
            NOW,
        )
        .unwrap();
        assert_eq!(out.row.holder, None);
        assert_eq!(out.row.epoch, 3);
        assert_eq!(out.row.lease_expires_at, None);
    }

    #[test]
    fn release_hands_on_and_removes_the_candidacy() {
        let row = held("phone", 2);
        let candidates = [c("phone", 0, true, NOW), c("tablet", 0, true, 1)];
        let out = decide(
            &row,
            &candidates,
            &d("phone"),
            &RoleRequest::Release,
            false,
            LEASE,
            NOW,
        )
        .unwrap();
        assert_eq!(out.row.holder, Some(d("tablet")));
        assert_eq!(out.row.epoch, 3);
        assert_eq!(out.candidacy, CandidacyChange::Remove(d("phone")));
    }

    #[test]
    fn handoff_needs_the_live_holder_and_a_connected_target() {
        let row = held("phone", 2);
        let candidates = [c("phone", 0, true, NOW)];
        let handoff = RoleRequest::Handoff { to: d("laptop") };
        assert!(matches!(
            decide(&row, &candidates, &d("tablet"), &handoff, true, LEASE, NOW),
            Err(StoreError::StaleEpoch(_))
        ));
        assert!(matches!(
            decide(&row, &candidates, &d("phone"), &handoff, false, LEASE, NOW),
            Err(StoreError::InvalidRequest(_))
        ));
        let out = decide(&row, &candidates, &d("phone"), &handoff, true, LEASE, NOW).unwrap();
        assert_eq!(out.row.holder, Some(d("laptop")));
        assert_eq!(out.row.epoch, 3);
        assert_eq!(out.candidacy, CandidacyChange::Upsert(d("laptop"), 0));
    }

    #[test]
    fn renew_extends_only_the_current_epoch_of_a_live_lease() {
        let row = held("phone", 2);
        let candidates = [c("phone", 0, true, NOW)];
        let out = decide(
            &row,
            &candidates,
            &d("phone"),
            &RoleRequest::Renew { epoch: 2 },
            false,
            LEASE,
            NOW,
        )
        .unwrap();
        assert_eq!(out.row.lease_expires_at, Some(NOW + LEASE));
        assert!(!out.changed);
        assert!(
            decide(
                &row,
                &candidates,
                &d("phone"),
                &RoleRequest::Renew { epoch: 1 },
                false,
                LEASE,
                NOW
            )
            .is_err()
        );
        let mut expired = row.clone();
        expired.lease_expires_at = Some(NOW);
        assert!(
            decide(
                &expired,
                &candidates,
                &d("phone"),
                &RoleRequest::Renew { epoch: 2 },
                false,
                LEASE,
                NOW
            )
            .is_err()
        );
    }

    #[test]
    fn fences_need_holder_epoch_and_a_running_lease() {
        let row = held("phone", 2);
        let fence = |epoch| RoleFence {
            role: "r".into(),
            epoch,
        };
        assert!(row.admits(&d("phone"), &fence(2), NOW));
        assert!(!row.admits(&d("phone"), &fence(1), NOW));
        assert!(!row.admits(&d("tablet"), &fence(2), NOW));
        assert!(!row.admits(&d("phone"), &fence(2), NOW + 500));
    }
}
