//! What each coordination request does, written once for every backend
//! over the [seam](super::seam). Each function is the work of one
//! transaction (or one read): the backend opens it, hands over its side of
//! the seam, and commits what the function returns `Ok` for, announcing the
//! events it queued.
//!
//! Every time here comes from the seam's clock, read in the transaction
//! after any row lock it waits for: a lease that ran out while this waited
//! is seen as run out.

use std::collections::{BTreeMap, BTreeSet};

use tandem_protocol::wire::{DeviceInfo, GuardVerdict, RoleState};
use tandem_protocol::{DeviceId, RoleFence, UserId};

use super::seam::{CoordinationReads, CoordinationTx, RowLock, role_state as state_of};
use super::{HintClaim, HintTarget, HintedSpace, Leases, PresenceStamp, RoleChange, RoleRequest};
use crate::roles::{self, CandidacyChange, RoleRow};
use crate::store::{DeviceIdentity, StoreError, StoreEvent};

/// The user's devices that are not revoked, by name.
pub(crate) async fn devices_of<R: CoordinationReads>(
    reads: &R,
    user: &UserId,
) -> Result<Vec<DeviceInfo>, R::Error> {
    let now = reads.now().await?;
    reads.devices(user, now).await
}

/// Queues the announcement of the user's devices as they are now.
pub(crate) async fn announce_devices<T: CoordinationTx>(
    tx: &mut T,
    user: &UserId,
) -> Result<(), T::Error> {
    let devices = devices_of(tx, user).await?;
    tx.announce(StoreEvent::DevicesChanged {
        user: user.clone(),
        devices,
    });
    Ok(())
}

/// Renames a device (see
/// [`CoordinationStore::rename_device`](super::CoordinationStore::rename_device)).
pub(crate) async fn rename_device<T: CoordinationTx>(
    tx: &mut T,
    device: &DeviceIdentity,
    name: &str,
) -> Result<(), T::Error> {
    if !tx.rename_device(device, name).await? {
        return Err(StoreError::NotFound(format!(
            "{} has no device {}",
            device.user, device.device
        ))
        .into());
    }
    announce_devices(tx, &device.user).await
}

/// Marks a device revoked and drops its presence and candidacies, for
/// [`AuthStore::revoke_device`](crate::store::AuthStore::revoke_device),
/// which deletes its credentials and announces the revocation.
pub(crate) async fn retire_device<T: CoordinationTx>(
    tx: &mut T,
    device: &DeviceIdentity,
) -> Result<(), T::Error> {
    let now = tx.now().await?;
    tx.retire_device(device, now).await?;
    announce_devices(tx, &device.user).await
}

/// Claims the push hints due for the members of `spaces` (see
/// [`CoordinationStore::claim_push_hints`](super::CoordinationStore::claim_push_hints)).
pub(crate) async fn claim_push_hints<T: CoordinationTx>(
    tx: &mut T,
    spaces: &[HintedSpace],
    min_interval_ms: u64,
) -> Result<HintClaim, T::Error> {
    let now = tx.now().await?;
    let names: Vec<_> = spaces.iter().map(|s| s.space.clone()).collect();
    let told_after: BTreeMap<_, _> = spaces.iter().map(|s| (&s.space, s.told_after_ms)).collect();
    let mut targets: BTreeMap<(UserId, DeviceId), HintTarget> = BTreeMap::new();
    let mut retry_at: Option<u64> = None;
    for candidate in tx.hint_candidates(&names, now).await? {
        if let (Some(last), Some(told_after)) =
            (candidate.last_hint_at, told_after.get(&candidate.space))
            && last >= *told_after
        {
            // Hinted after these changes already.
            continue;
        }
        if let Some(last) = candidate.last_hint_at
            && last.saturating_add(min_interval_ms) > now
        {
            let at = last.saturating_add(min_interval_ms);
            retry_at = Some(retry_at.map_or(at, |r| r.min(at)));
            continue;
        }
        let key = (
            candidate.device.user.clone(),
            candidate.device.device.clone(),
        );
        targets
            .entry(key)
            .or_insert_with(|| HintTarget {
                device: candidate.device,
                token: candidate.token,
                spaces: Vec::new(),
            })
            .spaces
            .push(candidate.space);
    }
    let mut claim = HintClaim {
        ready: Vec::new(),
        retry_at,
    };
    for mut target in targets.into_values() {
        tx.set_last_hint(&target.device, now).await?;
        target.spaces.sort();
        target.spaces.dedup();
        claim.ready.push(target);
    }
    Ok(claim)
}

/// Stamps a device's presence on `instance`; whether it came online (it
/// had no running row before).
async fn stamp<T: CoordinationTx>(
    tx: &T,
    instance: &str,
    stamp: &PresenceStamp,
    leases: Leases,
    now: u64,
) -> Result<bool, T::Error> {
    let was_online = tx.is_online(&stamp.device, now).await?;
    tx.stamp_presence(instance, stamp, now.saturating_add(leases.presence_ms))
        .await?;
    Ok(!was_online)
}

/// A device connected to `instance`.
pub(crate) async fn presence_connected<T: CoordinationTx>(
    tx: &mut T,
    instance: &str,
    presence: &PresenceStamp,
    leases: Leases,
) -> Result<(), T::Error> {
    let now = tx.now().await?;
    if stamp(tx, instance, presence, leases, now).await? {
        announce_devices(tx, &presence.device.user).await?;
    }
    Ok(())
}

/// A device's last connection to `instance` closed.
pub(crate) async fn presence_disconnected<T: CoordinationTx>(
    tx: &mut T,
    instance: &str,
    device: &DeviceIdentity,
) -> Result<(), T::Error> {
    let now = tx.now().await?;
    let removed = tx.remove_presence(instance, device).await?;
    tx.set_last_seen(device, now).await?;
    if removed {
        announce_devices(tx, &device.user).await?;
    }
    Ok(())
}

/// Stamps `instance`'s devices and removes the rows (of any instance) that
/// ran out.
pub(crate) async fn presence_heartbeat<T: CoordinationTx>(
    tx: &mut T,
    instance: &str,
    stamps: &[PresenceStamp],
    leases: Leases,
) -> Result<(), T::Error> {
    let now = tx.now().await?;
    let mut users = BTreeSet::new();
    for s in stamps {
        if stamp(tx, instance, s, leases, now).await? {
            users.insert(s.device.user.clone());
        }
    }
    users.extend(tx.expire_presence(now).await?);
    for user in users {
        announce_devices(tx, &user).await?;
    }
    Ok(())
}

/// A role's state now; a role never claimed has no holder at epoch 0.
pub(crate) async fn role_state<R: CoordinationReads>(
    reads: &R,
    user: &UserId,
    role: &str,
) -> Result<RoleState, R::Error> {
    Ok(reads
        .role(user, role)
        .await?
        .unwrap_or_else(|| state_of(role, RoleRow::default(), None)))
}

/// Applies a role request under the role's row lock (see
/// [`CoordinationStore::change_role`](super::CoordinationStore::change_role)).
pub(crate) async fn change_role<T: CoordinationTx>(
    tx: &mut T,
    actor: &DeviceIdentity,
    role: &str,
    request: &RoleRequest,
    leases: Leases,
) -> Result<RoleChange, T::Error> {
    let user = &actor.user;
    if matches!(request, RoleRequest::Claim { .. }) {
        // The row exists before it is locked, so two first claims (on two
        // instances) take turns on it.
        tx.create_role(user, role).await?;
    }
    let Some(row) = tx.lock_role(user, role, RowLock::Update).await? else {
        // Never claimed: nothing to release, hand off, renew or check.
        return match request {
            RoleRequest::Handoff { .. } | RoleRequest::Renew { .. } => {
                Err(StoreError::StaleEpoch(format!("role {role} has no holder")).into())
            }
            _ => Ok(RoleChange {
                state: state_of(role, RoleRow::default(), None),
                changed: false,
            }),
        };
    };
    let now = tx.now().await?;
    let candidates = tx.candidates(user, role, now).await?;
    let target_present = match request {
        RoleRequest::Handoff { to } => {
            let target = DeviceIdentity {
                user: user.clone(),
                device: to.clone(),
            };
            tx.is_online(&target, now).await?
        }
        _ => false,
    };
    let decision = roles::decide(
        &row,
        &candidates,
        &actor.device,
        request,
        target_present,
        leases.role_ms,
        now,
    )?;
    if decision.candidacy != CandidacyChange::Keep {
        tx.write_candidacy(user, role, &decision.candidacy, now)
            .await?;
    }
    if decision.row != row {
        tx.write_role(user, role, &decision.row).await?;
    }
    let state = role_state(tx, user, role).await?;
    if decision.changed {
        tx.announce(StoreEvent::RoleChanged {
            user: user.clone(),
            state: state.clone(),
        });
    }
    Ok(RoleChange {
        state,
        changed: decision.changed,
    })
}

/// The roles of `user` that were ever claimed.
pub(crate) async fn roles_of<R: CoordinationReads>(
    reads: &R,
    user: &UserId,
) -> Result<Vec<RoleState>, R::Error> {
    reads.roles(user).await
}

/// Roles that need a check by the store's clock.
pub(crate) async fn roles_to_check<R: CoordinationReads>(
    reads: &R,
) -> Result<Vec<(UserId, String)>, R::Error> {
    let now = reads.now().await?;
    reads.roles_to_check(now).await
}

/// Whether `fence` is good for `author` now: the role's row, read under a
/// share lock (no change of holder commits before this transaction does),
/// names the author at the fence's epoch with a running lease.
pub(crate) async fn fence_holds<T: CoordinationTx>(
    tx: &T,
    author: &DeviceIdentity,
    fence: &RoleFence,
) -> Result<bool, T::Error> {
    let row = tx
        .lock_role(&author.user, &fence.role, RowLock::Share)
        .await?;
    let now = tx.now().await?;
    Ok(row.is_some_and(|row| row.admits(&author.device, fence, now)))
}

/// The duplicate guard (see
/// [`CoordinationStore::guard`](super::CoordinationStore::guard)).
pub(crate) async fn guard<T: CoordinationTx>(
    tx: &mut T,
    author: &DeviceIdentity,
    hash: &[u8; 32],
    window_ms: u64,
    fence: Option<&RoleFence>,
) -> Result<GuardVerdict, T::Error> {
    if let Some(fence) = fence
        && !fence_holds(tx, author, fence).await?
    {
        return Err(StoreError::StaleEpoch(roles::stale_reason(fence)).into());
    }
    let now = tx.now().await?;
    let first = tx
        .insert_guard(author, hash, now.saturating_add(window_ms), now)
        .await?;
    Ok(if first {
        GuardVerdict::First
    } else {
        GuardVerdict::Duplicate
    })
}

/// Deletes the guard records whose window ran out.
pub(crate) async fn sweep_guards<T: CoordinationTx>(tx: &mut T) -> Result<u64, T::Error> {
    let now = tx.now().await?;
    tx.sweep_guards(now).await
}
