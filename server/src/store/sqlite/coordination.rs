//! Device coordination on SQLite: the registry, presence, roles, guards and
//! push tokens. Writes run on the writer thread (so each is atomic and
//! ordered with pushes); reads run on the read connections.

use rusqlite::{Connection, OptionalExtension, params};
use tandem_protocol::api::PushToken;
use tandem_protocol::wire::{DeviceInfo, GuardVerdict, RoleState};
use tandem_protocol::{DeviceId, RoleFence, UserId};

use super::writer::{WriteCtx, backend};
use crate::roles::{self, CandidacyChange, Candidate, RoleRow};
use crate::store::{
    DeviceIdentity, HintClaim, HintTarget, HintedSpace, Leases, PresenceStamp, RoleChange,
    RoleRequest, StoreError, StoreEvent,
};

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("stored {what} is unreadable: {e}"))
}

fn device_id(text: String) -> Result<DeviceId, StoreError> {
    DeviceId::new(text).map_err(|e| corrupt("device id", e))
}

/// The user's devices that are not revoked, by name.
pub fn devices_of(
    conn: &Connection,
    user: &UserId,
    now_ms: u64,
) -> Result<Vec<DeviceInfo>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT d.device_id, d.name, d.platform, d.app_version, d.registered_at, d.last_seen,
                    (SELECT MAX(p.last_active) FROM presence p
                     WHERE p.user = d.user AND p.device_id = d.device_id AND p.expires_at > ?2)
             FROM devices d WHERE d.user = ?1 AND d.revoked_at IS NULL
             ORDER BY d.name, d.device_id",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map(params![user.as_str(), ms(now_ms)], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, Option<i64>>(5)?,
                r.get::<_, Option<i64>>(6)?,
            ))
        })
        .map_err(backend)?;
    let mut out = Vec::new();
    for row in rows {
        let (device, name, platform, app_version, registered_at, last_seen, active) =
            row.map_err(backend)?;
        out.push(DeviceInfo {
            device_id: device_id(device)?,
            name,
            platform,
            app_version,
            registered_at: uint(registered_at),
            last_seen: active.or(last_seen).map(uint),
            online: active.is_some(),
        });
    }
    Ok(out)
}

/// Announces the user's devices as they are now.
pub fn announce_devices(
    ctx: &mut WriteCtx<'_>,
    user: &UserId,
    now_ms: u64,
) -> Result<(), StoreError> {
    let devices = devices_of(ctx.tx, user, now_ms)?;
    ctx.events.push(StoreEvent::DevicesChanged {
        user: user.clone(),
        devices,
    });
    Ok(())
}

/// Whether the device was revoked.
pub fn is_revoked(conn: &Connection, device: &DeviceIdentity) -> Result<bool, StoreError> {
    conn.prepare_cached(
        "SELECT 1 FROM devices WHERE user = ?1 AND device_id = ?2 AND revoked_at IS NOT NULL",
    )
    .map_err(backend)?
    .exists(params![device.user.as_str(), device.device.as_str()])
    .map_err(backend)
}

/// Marks the device revoked and drops its presence and candidacies; the
/// caller deletes its credentials and announces the revocation.
pub fn retire_device(
    ctx: &mut WriteCtx<'_>,
    device: &DeviceIdentity,
    now_ms: u64,
) -> Result<(), StoreError> {
    let (user, id) = (device.user.as_str(), device.device.as_str());
    ctx.tx
        .execute(
            "UPDATE devices SET revoked_at = ?3, push_token = NULL, push_provider = NULL
             WHERE user = ?1 AND device_id = ?2",
            params![user, id, ms(now_ms)],
        )
        .map_err(backend)?;
    ctx.tx
        .execute(
            "DELETE FROM presence WHERE user = ?1 AND device_id = ?2",
            params![user, id],
        )
        .map_err(backend)?;
    ctx.tx
        .execute(
            "DELETE FROM role_candidates WHERE user = ?1 AND device_id = ?2",
            params![user, id],
        )
        .map_err(backend)?;
    announce_devices(ctx, &device.user, now_ms)
}

/// Renames a device.
pub fn rename_device(
    ctx: &mut WriteCtx<'_>,
    device: &DeviceIdentity,
    name: &str,
    now_ms: u64,
) -> Result<(), StoreError> {
    let n = ctx
        .tx
        .execute(
            "UPDATE devices SET name = ?3 WHERE user = ?1 AND device_id = ?2
             AND revoked_at IS NULL",
            params![device.user.as_str(), device.device.as_str(), name],
        )
        .map_err(backend)?;
    if n == 0 {
        return Err(StoreError::NotFound(format!(
            "{} has no device {}",
            device.user, device.device
        )));
    }
    announce_devices(ctx, &device.user, now_ms)
}

/// Sets or removes a push token.
pub fn set_push_token(
    ctx: &mut WriteCtx<'_>,
    device: &DeviceIdentity,
    token: Option<&PushToken>,
) -> Result<(), StoreError> {
    ctx.tx
        .execute(
            "UPDATE devices SET push_token = ?3, push_provider = ?4, last_hint_at = NULL
             WHERE user = ?1 AND device_id = ?2",
            params![
                device.user.as_str(),
                device.device.as_str(),
                token.map(|t| t.token.as_str()),
                token.map(|t| t.provider.as_str())
            ],
        )
        .map_err(backend)?;
    Ok(())
}

/// Claims the push hints due for the members of `spaces`.
pub fn claim_push_hints(
    ctx: &mut WriteCtx<'_>,
    spaces: &[HintedSpace],
    min_interval_ms: u64,
    now_ms: u64,
) -> Result<HintClaim, StoreError> {
    let mut claim = HintClaim::default();
    let mut targets: std::collections::BTreeMap<(String, String), HintTarget> =
        std::collections::BTreeMap::new();
    let mut limited: Vec<u64> = Vec::new();
    {
        let mut stmt = ctx
            .tx
            .prepare_cached(
                "SELECT d.user, d.device_id, d.push_token, d.push_provider, d.last_hint_at
                 FROM members m JOIN devices d ON d.user = m.user
                 WHERE m.space = ?1 AND d.push_token IS NOT NULL AND d.revoked_at IS NULL
                   AND NOT EXISTS (SELECT 1 FROM presence p WHERE p.user = d.user
                                   AND p.device_id = d.device_id AND p.expires_at > ?2)",
            )
            .map_err(backend)?;
        for HintedSpace {
            space,
            told_after_ms,
        } in spaces
        {
            let rows = stmt
                .query_map(params![space.as_str(), ms(now_ms)], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, Option<i64>>(4)?,
                    ))
                })
                .map_err(backend)?;
            for row in rows {
                let (user, device, token, provider, last) = row.map_err(backend)?;
                let last = last.map(uint);
                if last.is_some_and(|last| last >= *told_after_ms) {
                    continue;
                }
                if let Some(last) = last
                    && last + min_interval_ms > now_ms
                {
                    limited.push(last + min_interval_ms);
                    continue;
                }
                let key = (user.clone(), device.clone());
                let target = match targets.get_mut(&key) {
                    Some(target) => target,
                    None => targets.entry(key).or_insert(HintTarget {
                        device: DeviceIdentity {
                            user: UserId::new(user).map_err(|e| corrupt("user id", e))?,
                            device: device_id(device)?,
                        },
                        token: PushToken { token, provider },
                        spaces: Vec::new(),
                    }),
                };
                target.spaces.push(space.clone());
            }
        }
    }
    for target in targets.into_values() {
        ctx.tx
            .execute(
                "UPDATE devices SET last_hint_at = ?3 WHERE user = ?1 AND device_id = ?2",
                params![
                    target.device.user.as_str(),
                    target.device.device.as_str(),
                    ms(now_ms)
                ],
            )
            .map_err(backend)?;
        let mut target = target;
        target.spaces.sort();
        target.spaces.dedup();
        claim.ready.push(target);
    }
    claim.retry_at = limited.into_iter().min();
    Ok(claim)
}

/// Forgets every presence row: at start, every row belongs to a process
/// that is gone.
pub fn clear_presence(conn: &Connection) -> Result<(), StoreError> {
    conn.execute("DELETE FROM presence", []).map_err(backend)?;
    Ok(())
}

fn stamp(
    ctx: &WriteCtx<'_>,
    instance: &str,
    stamp: &PresenceStamp,
    leases: Leases,
    now_ms: u64,
) -> Result<bool, StoreError> {
    let existed = ctx
        .tx
        .prepare_cached(
            "SELECT 1 FROM presence WHERE user = ?1 AND device_id = ?2 AND expires_at > ?3",
        )
        .map_err(backend)?
        .exists(params![
            stamp.device.user.as_str(),
            stamp.device.device.as_str(),
            ms(now_ms)
        ])
        .map_err(backend)?;
    ctx.tx
        .prepare_cached(
            "INSERT INTO presence (user, device_id, instance, last_active, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (user, device_id, instance) DO UPDATE SET
                 last_active = MAX(last_active, excluded.last_active),
                 expires_at = excluded.expires_at",
        )
        .map_err(backend)?
        .execute(params![
            stamp.device.user.as_str(),
            stamp.device.device.as_str(),
            instance,
            ms(stamp.last_active),
            ms(now_ms + leases.presence_ms)
        ])
        .map_err(backend)?;
    Ok(!existed)
}

/// A device connected.
pub fn presence_connected(
    ctx: &mut WriteCtx<'_>,
    instance: &str,
    presence: &PresenceStamp,
    leases: Leases,
    now_ms: u64,
) -> Result<(), StoreError> {
    if stamp(ctx, instance, presence, leases, now_ms)? {
        announce_devices(ctx, &presence.device.user, now_ms)?;
    }
    Ok(())
}

/// A device's last connection to `instance` closed.
pub fn presence_disconnected(
    ctx: &mut WriteCtx<'_>,
    instance: &str,
    device: &DeviceIdentity,
    now_ms: u64,
) -> Result<(), StoreError> {
    let (user, id) = (device.user.as_str(), device.device.as_str());
    let removed = ctx
        .tx
        .execute(
            "DELETE FROM presence WHERE user = ?1 AND device_id = ?2 AND instance = ?3",
            params![user, id, instance],
        )
        .map_err(backend)?;
    ctx.tx
        .execute(
            "UPDATE devices SET last_seen = ?3 WHERE user = ?1 AND device_id = ?2",
            params![user, id, ms(now_ms)],
        )
        .map_err(backend)?;
    if removed > 0 {
        announce_devices(ctx, &device.user, now_ms)?;
    }
    Ok(())
}

/// Stamps `instance`'s devices and removes rows that ran out.
pub fn presence_heartbeat(
    ctx: &mut WriteCtx<'_>,
    instance: &str,
    stamps: &[PresenceStamp],
    leases: Leases,
    now_ms: u64,
) -> Result<(), StoreError> {
    let mut users = std::collections::BTreeSet::new();
    for s in stamps {
        if stamp(ctx, instance, s, leases, now_ms)? {
            users.insert(s.device.user.clone());
        }
    }
    let expired: Vec<(String, String, i64)> = {
        let mut stmt = ctx
            .tx
            .prepare_cached(
                "SELECT user, device_id, last_active FROM presence WHERE expires_at <= ?1",
            )
            .map_err(backend)?;
        stmt.query_map([ms(now_ms)], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(backend)?
            .collect::<Result<_, _>>()
            .map_err(backend)?
    };
    for (user, device, last_active) in expired {
        ctx.tx
            .execute(
                "DELETE FROM presence WHERE user = ?1 AND device_id = ?2 AND expires_at <= ?3",
                params![user, device, ms(now_ms)],
            )
            .map_err(backend)?;
        ctx.tx
            .execute(
                "UPDATE devices SET last_seen = MAX(COALESCE(last_seen, 0), ?3)
                 WHERE user = ?1 AND device_id = ?2",
                params![user, device, last_active],
            )
            .map_err(backend)?;
        users.insert(UserId::new(user).map_err(|e| corrupt("user id", e))?);
    }
    for user in users {
        announce_devices(ctx, &user, now_ms)?;
    }
    Ok(())
}

/// A `roles` row as read: holder, epoch, lease expiry, the holder's name.
type RawRoleRow = (Option<String>, i64, Option<i64>, Option<String>);

fn role_row(
    conn: &Connection,
    user: &UserId,
    role: &str,
) -> Result<Option<(RoleRow, Option<String>)>, StoreError> {
    let row: Option<RawRoleRow> = conn
        .prepare_cached(
            "SELECT r.holder, r.epoch, r.lease_expires_at, d.name FROM roles r
             LEFT JOIN devices d ON d.user = r.user AND d.device_id = r.holder
             WHERE r.user = ?1 AND r.role = ?2",
        )
        .map_err(backend)?
        .query_row(params![user.as_str(), role], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()
        .map_err(backend)?;
    row.map(|(holder, epoch, lease, name)| {
        Ok((
            RoleRow {
                holder: holder.map(device_id).transpose()?,
                epoch: uint(epoch),
                lease_expires_at: lease.map(uint),
            },
            name,
        ))
    })
    .transpose()
}

fn state_of(role: &str, row: RoleRow, holder_name: Option<String>) -> RoleState {
    RoleState {
        request_id: None,
        role: role.to_owned(),
        holder_name: row.holder.as_ref().and(holder_name),
        holder: row.holder,
        epoch: row.epoch,
        lease_expires_at: row.lease_expires_at,
    }
}

fn candidates(
    conn: &Connection,
    user: &UserId,
    role: &str,
    now_ms: u64,
) -> Result<Vec<Candidate>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT c.device_id, c.priority,
                    (SELECT MAX(p.last_active) FROM presence p
                     WHERE p.user = c.user AND p.device_id = c.device_id AND p.expires_at > ?3)
             FROM role_candidates c WHERE c.user = ?1 AND c.role = ?2",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map(params![user.as_str(), role, ms(now_ms)], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<i64>>(2)?,
            ))
        })
        .map_err(backend)?;
    let mut out = Vec::new();
    for row in rows {
        let (device, priority, active) = row.map_err(backend)?;
        out.push(Candidate {
            device: device_id(device)?,
            priority: i32::try_from(priority).unwrap_or(0),
            present: active.is_some(),
            last_active: active.map_or(0, uint),
        });
    }
    Ok(out)
}

fn is_present(conn: &Connection, user: &UserId, device: &DeviceId, now_ms: u64) -> bool {
    conn.prepare_cached(
        "SELECT 1 FROM presence p JOIN devices d ON d.user = p.user AND d.device_id = p.device_id
         WHERE p.user = ?1 AND p.device_id = ?2 AND p.expires_at > ?3 AND d.revoked_at IS NULL",
    )
    .and_then(|mut s| s.exists(params![user.as_str(), device.as_str(), ms(now_ms)]))
    .unwrap_or(false)
}

/// Applies a role request (see [`crate::store::CoordinationStore::change_role`]).
pub fn change_role(
    ctx: &mut WriteCtx<'_>,
    actor: &DeviceIdentity,
    role: &str,
    request: &RoleRequest,
    leases: Leases,
    now_ms: u64,
) -> Result<RoleChange, StoreError> {
    let user = &actor.user;
    let (row, _) = role_row(ctx.tx, user, role)?.unwrap_or_default();
    let candidates = candidates(ctx.tx, user, role, now_ms)?;
    let target_present = match request {
        RoleRequest::Handoff { to } => is_present(ctx.tx, user, to, now_ms),
        _ => false,
    };
    let decision = roles::decide(
        &row,
        &candidates,
        &actor.device,
        request,
        target_present,
        leases.role_ms,
        now_ms,
    )?;
    match &decision.candidacy {
        CandidacyChange::Keep => {}
        CandidacyChange::Upsert(device, priority) => {
            ctx.tx
                .execute(
                    "INSERT INTO role_candidates (user, role, device_id, priority, claimed_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (user, role, device_id) DO UPDATE SET priority = excluded.priority",
                    params![user.as_str(), role, device.as_str(), priority, ms(now_ms)],
                )
                .map_err(backend)?;
        }
        CandidacyChange::Remove(device) => {
            ctx.tx
                .execute(
                    "DELETE FROM role_candidates WHERE user = ?1 AND role = ?2 AND device_id = ?3",
                    params![user.as_str(), role, device.as_str()],
                )
                .map_err(backend)?;
        }
    }
    let next = &decision.row;
    if next != &row || !matches!(request, RoleRequest::Check) {
        ctx.tx
            .execute(
                "INSERT INTO roles (user, role, holder, epoch, lease_expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (user, role) DO UPDATE SET holder = excluded.holder,
                     epoch = excluded.epoch, lease_expires_at = excluded.lease_expires_at",
                params![
                    user.as_str(),
                    role,
                    next.holder.as_ref().map(DeviceId::as_str),
                    ms(next.epoch),
                    next.lease_expires_at.map(ms)
                ],
            )
            .map_err(backend)?;
    }
    let (row, name) = role_row(ctx.tx, user, role)?.unwrap_or_default();
    let state = state_of(role, row, name);
    if decision.changed {
        ctx.events.push(StoreEvent::RoleChanged {
            user: user.clone(),
            state: state.clone(),
        });
    }
    Ok(RoleChange {
        state,
        changed: decision.changed,
    })
}

/// The roles of `user`.
pub fn roles_of(conn: &Connection, user: &UserId) -> Result<Vec<RoleState>, StoreError> {
    let names: Vec<String> = {
        let mut stmt = conn
            .prepare_cached("SELECT role FROM roles WHERE user = ?1 ORDER BY role")
            .map_err(backend)?;
        stmt.query_map([user.as_str()], |r| r.get(0))
            .map_err(backend)?
            .collect::<Result<_, _>>()
            .map_err(backend)?
    };
    let mut out = Vec::new();
    for role in names {
        if let Some((row, name)) = role_row(conn, user, &role)? {
            out.push(state_of(&role, row, name));
        }
    }
    Ok(out)
}

/// Roles that need a check.
pub fn roles_to_check(conn: &Connection, now_ms: u64) -> Result<Vec<(UserId, String)>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT r.user, r.role FROM roles r
             WHERE (r.holder IS NOT NULL AND (r.lease_expires_at <= ?1 OR NOT EXISTS (
                        SELECT 1 FROM presence p WHERE p.user = r.user
                        AND p.device_id = r.holder AND p.expires_at > ?1)))
                OR (r.holder IS NULL AND EXISTS (
                        SELECT 1 FROM role_candidates c JOIN presence p
                        ON p.user = c.user AND p.device_id = c.device_id AND p.expires_at > ?1
                        WHERE c.user = r.user AND c.role = r.role))",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map([ms(now_ms)], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })
        .map_err(backend)?;
    let mut out = Vec::new();
    for row in rows {
        let (user, role) = row.map_err(backend)?;
        out.push((UserId::new(user).map_err(|e| corrupt("user id", e))?, role));
    }
    Ok(out)
}

/// Whether `fence` is good for `author` now.
pub fn fence_holds(
    conn: &Connection,
    author: &DeviceIdentity,
    fence: &RoleFence,
    now_ms: u64,
) -> Result<bool, StoreError> {
    Ok(role_row(conn, &author.user, &fence.role)?
        .is_some_and(|(row, _)| row.admits(&author.device, fence, now_ms)))
}

/// The duplicate guard (see [`crate::store::CoordinationStore::guard`]).
pub fn guard(
    ctx: &mut WriteCtx<'_>,
    author: &DeviceIdentity,
    hash: &[u8; 32],
    window_ms: u64,
    fence: Option<&RoleFence>,
    now_ms: u64,
) -> Result<GuardVerdict, StoreError> {
    if let Some(fence) = fence
        && !fence_holds(ctx.tx, author, fence, now_ms)?
    {
        return Err(StoreError::StaleEpoch(roles::stale_reason(fence)));
    }
    // One statement: insert, or take over a row whose window ran out; a
    // row comes back only in those two cases.
    let first = ctx
        .tx
        .prepare_cached(
            "INSERT INTO guards (user, hash, device_id, expires_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (user, hash) DO UPDATE SET device_id = excluded.device_id,
                 expires_at = excluded.expires_at
             WHERE guards.expires_at <= ?5
             RETURNING 1",
        )
        .map_err(backend)?
        .query_row(
            params![
                author.user.as_str(),
                &hash[..],
                author.device.as_str(),
                ms(now_ms + window_ms),
                ms(now_ms)
            ],
            |_| Ok(()),
        )
        .optional()
        .map_err(backend)?
        .is_some();
    Ok(if first {
        GuardVerdict::First
    } else {
        GuardVerdict::Duplicate
    })
}

/// Deletes guard rows whose window ran out.
pub fn sweep_guards(ctx: &mut WriteCtx<'_>, now_ms: u64) -> Result<u64, StoreError> {
    Ok(ctx
        .tx
        .execute("DELETE FROM guards WHERE expires_at <= ?1", [ms(now_ms)])
        .map_err(backend)? as u64)
}
