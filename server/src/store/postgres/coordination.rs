//! Device coordination on PostgreSQL: the registry, presence, roles, guards
//! and push tokens, shared by every instance.
//!
//! What keeps several instances right:
//!
//! - **One clock.** Leases, presence and guard windows are decided against
//!   the database's clock ([`db_now`]), never an instance's own, so two
//!   instances agree on whether a lease has run out.
//! - **Roles under a row lock.** A change reads the role's row `FOR
//!   UPDATE`, decides ([`crate::roles::decide`]) and writes it back in the
//!   same transaction: two instances racing on a role take turns and the
//!   second sees the first's epoch. A fenced push or guard reads the row
//!   `FOR SHARE`, so it commits entirely before or after a change of holder.
//! - **Guards are a primary key.** Insert, or take over a row whose window
//!   ran out, is one statement: of two instances inserting the same key,
//!   the second waits for the first and then finds its row.
//! - **Presence expires.** Every instance stamps its devices' rows every
//!   second; a crashed instance stops stamping and its rows run out, which
//!   any instance's heartbeat notices.

use std::collections::BTreeMap;

use deadpool_postgres::GenericClient;
use tandem_protocol::api::PushToken;
use tandem_protocol::wire::{DeviceInfo, GuardVerdict, RoleState};
use tandem_protocol::{DeviceId, RoleFence, UserId};

use super::reads::{corrupt, int, uint, user};
use super::{TxError, WriteTx, pg_error};
use crate::roles::{self, CandidacyChange, Candidate, RoleRow};
use crate::store::{
    DeviceIdentity, HintClaim, HintTarget, HintedSpace, Leases, PresenceStamp, RoleChange,
    RoleRequest, StoreError, StoreEvent,
};

/// The database's clock, Unix milliseconds.
pub(crate) async fn db_now(c: &impl GenericClient) -> Result<u64, StoreError> {
    let row = c
        .query_one(
            "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
            &[],
        )
        .await
        .map_err(pg_error)?;
    Ok(uint(row.get(0)))
}

fn device_id(text: String) -> Result<DeviceId, StoreError> {
    DeviceId::new(text).map_err(|e| corrupt("device id", e))
}

/// The user's devices that are not revoked, by name.
pub(crate) async fn devices_of(
    c: &impl GenericClient,
    user_id: &UserId,
) -> Result<Vec<DeviceInfo>, StoreError> {
    let now = int(db_now(c).await?);
    let rows = c
        .query(
            "SELECT d.device_id, d.name, d.platform, d.app_version, d.registered_at, d.last_seen,
                    (SELECT MAX(p.last_active) FROM presence p
                     WHERE p.user_id = d.user_id AND p.device_id = d.device_id
                       AND p.expires_at > $2)
             FROM devices d WHERE d.user_id = $1 AND d.revoked_at IS NULL
             ORDER BY d.name, d.device_id",
            &[&user_id.as_str(), &now],
        )
        .await
        .map_err(pg_error)?;
    let mut out = Vec::new();
    for row in rows {
        let last_seen: Option<i64> = row.get(5);
        let active: Option<i64> = row.get(6);
        out.push(DeviceInfo {
            device_id: device_id(row.get(0))?,
            name: row.get(1),
            platform: row.get(2),
            app_version: row.get(3),
            registered_at: uint(row.get(4)),
            last_seen: active.or(last_seen).map(uint),
            online: active.is_some(),
        });
    }
    Ok(out)
}

/// Queues the announcement of the user's devices (read again by every
/// instance when the notification arrives).
pub(crate) async fn announce_devices(w: &mut WriteTx<'_>, user_id: &UserId) -> Result<(), TxError> {
    let devices = devices_of(&w.tx, user_id).await?;
    w.announce(StoreEvent::DevicesChanged {
        user: user_id.clone(),
        devices,
    });
    Ok(())
}

/// Whether the device was revoked.
pub(crate) async fn is_revoked(
    c: &impl GenericClient,
    device: &DeviceIdentity,
) -> Result<bool, StoreError> {
    Ok(c.query_opt(
        "SELECT 1 FROM devices WHERE user_id = $1 AND device_id = $2
             AND revoked_at IS NOT NULL",
        &[&device.user.as_str(), &device.device.as_str()],
    )
    .await
    .map_err(pg_error)?
    .is_some())
}

/// Marks the device revoked and drops its presence and candidacies.
pub(crate) async fn retire_device(
    w: &mut WriteTx<'_>,
    device: &DeviceIdentity,
) -> Result<(), TxError> {
    let (u, d) = (device.user.as_str(), device.device.as_str());
    let now = int(db_now(&w.tx).await?);
    w.tx.execute(
        "UPDATE devices SET revoked_at = $3, push_token = NULL, push_provider = NULL
         WHERE user_id = $1 AND device_id = $2",
        &[&u, &d, &now],
    )
    .await?;
    w.tx.execute(
        "DELETE FROM presence WHERE user_id = $1 AND device_id = $2",
        &[&u, &d],
    )
    .await?;
    w.tx.execute(
        "DELETE FROM role_candidates WHERE user_id = $1 AND device_id = $2",
        &[&u, &d],
    )
    .await?;
    announce_devices(w, &device.user).await
}

/// Renames a device.
pub(crate) async fn rename_device(
    w: &mut WriteTx<'_>,
    device: &DeviceIdentity,
    name: &str,
) -> Result<(), TxError> {
    let n =
        w.tx.execute(
            "UPDATE devices SET name = $3 WHERE user_id = $1 AND device_id = $2
             AND revoked_at IS NULL",
            &[&device.user.as_str(), &device.device.as_str(), &name],
        )
        .await?;
    if n == 0 {
        return Err(StoreError::NotFound(format!(
            "{} has no device {}",
            device.user, device.device
        ))
        .into());
    }
    announce_devices(w, &device.user).await
}

/// Sets or removes a push token.
pub(crate) async fn set_push_token(
    w: &mut WriteTx<'_>,
    device: &DeviceIdentity,
    token: Option<&PushToken>,
) -> Result<(), TxError> {
    w.tx.execute(
        "UPDATE devices SET push_token = $3, push_provider = $4, last_hint_at = NULL
         WHERE user_id = $1 AND device_id = $2",
        &[
            &device.user.as_str(),
            &device.device.as_str(),
            &token.map(|t| t.token.as_str()),
            &token.map(|t| t.provider.as_str()),
        ],
    )
    .await?;
    Ok(())
}

/// Claims the push hints due for the members of `spaces`; the devices'
/// rows are locked, so two instances do not both send a device's hint.
pub(crate) async fn claim_push_hints(
    w: &mut WriteTx<'_>,
    spaces: &[HintedSpace],
    min_interval_ms: u64,
) -> Result<HintClaim, TxError> {
    let now = int(db_now(&w.tx).await?);
    let names: Vec<&str> = spaces.iter().map(|s| s.space.as_str()).collect();
    let told_after: BTreeMap<&str, u64> = spaces
        .iter()
        .map(|s| (s.space.as_str(), s.told_after_ms))
        .collect();
    let rows =
        w.tx.query(
            "SELECT m.space, d.user_id, d.device_id, d.push_token, d.push_provider,
                    d.last_hint_at
             FROM members m JOIN devices d ON d.user_id = m.user_id
             WHERE m.space = ANY($1) AND d.push_token IS NOT NULL AND d.revoked_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM presence p WHERE p.user_id = d.user_id
                               AND p.device_id = d.device_id AND p.expires_at > $2)
             ORDER BY d.user_id, d.device_id
             FOR UPDATE OF d",
            &[&names, &now],
        )
        .await?;
    let mut targets: BTreeMap<(String, String), HintTarget> = BTreeMap::new();
    let mut retry_at: Option<u64> = None;
    for row in rows {
        let last: Option<i64> = row.get(5);
        let space: &str = row.get(0);
        if let (Some(last), Some(told_after)) = (last, told_after.get(space))
            && uint(last) >= *told_after
        {
            continue;
        }
        if let Some(last) = last
            && uint(last) + min_interval_ms > uint(now)
        {
            let at = uint(last) + min_interval_ms;
            retry_at = Some(retry_at.map_or(at, |r| r.min(at)));
            continue;
        }
        let user_text: String = row.get(1);
        let device_text: String = row.get(2);
        let key = (user_text.clone(), device_text.clone());
        if !targets.contains_key(&key) {
            targets.insert(
                key.clone(),
                HintTarget {
                    device: DeviceIdentity {
                        user: user(user_text)?,
                        device: device_id(device_text)?,
                    },
                    token: PushToken {
                        token: row.get(3),
                        provider: row.get(4),
                    },
                    spaces: Vec::new(),
                },
            );
        }
        if let Some(target) = targets.get_mut(&key) {
            target.spaces.push(super::reads::space(row.get(0))?);
        }
    }
    let mut claim = HintClaim {
        ready: Vec::new(),
        retry_at,
    };
    for mut target in targets.into_values() {
        w.tx.execute(
            "UPDATE devices SET last_hint_at = $3 WHERE user_id = $1 AND device_id = $2",
            &[
                &target.device.user.as_str(),
                &target.device.device.as_str(),
                &now,
            ],
        )
        .await?;
        target.spaces.sort();
        target.spaces.dedup();
        claim.ready.push(target);
    }
    Ok(claim)
}

async fn stamp(
    w: &WriteTx<'_>,
    instance: &str,
    stamp: &PresenceStamp,
    leases: Leases,
    now: i64,
) -> Result<bool, TxError> {
    let existed =
        w.tx.query_opt(
            "SELECT 1 FROM presence WHERE user_id = $1 AND device_id = $2 AND expires_at > $3
             LIMIT 1",
            &[
                &stamp.device.user.as_str(),
                &stamp.device.device.as_str(),
                &now,
            ],
        )
        .await?
        .is_some();
    w.tx.execute(
        "INSERT INTO presence (user_id, device_id, instance, last_active, expires_at)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (user_id, device_id, instance) DO UPDATE SET
             last_active = GREATEST(presence.last_active, excluded.last_active),
             expires_at = excluded.expires_at",
        &[
            &stamp.device.user.as_str(),
            &stamp.device.device.as_str(),
            &instance,
            &int(stamp.last_active),
            &(now + int(leases.presence_ms)),
        ],
    )
    .await?;
    Ok(!existed)
}

/// A device connected.
pub(crate) async fn presence_connected(
    w: &mut WriteTx<'_>,
    instance: &str,
    presence: &PresenceStamp,
    leases: Leases,
) -> Result<(), TxError> {
    let now = int(db_now(&w.tx).await?);
    if stamp(w, instance, presence, leases, now).await? {
        announce_devices(w, &presence.device.user).await?;
    }
    Ok(())
}

/// A device's last connection to `instance` closed.
pub(crate) async fn presence_disconnected(
    w: &mut WriteTx<'_>,
    instance: &str,
    device: &DeviceIdentity,
) -> Result<(), TxError> {
    let (u, d) = (device.user.as_str(), device.device.as_str());
    let now = int(db_now(&w.tx).await?);
    let removed =
        w.tx.execute(
            "DELETE FROM presence WHERE user_id = $1 AND device_id = $2 AND instance = $3",
            &[&u, &d, &instance],
        )
        .await?;
    w.tx.execute(
        "UPDATE devices SET last_seen = $3 WHERE user_id = $1 AND device_id = $2",
        &[&u, &d, &now],
    )
    .await?;
    if removed > 0 {
        announce_devices(w, &device.user).await?;
    }
    Ok(())
}

/// Stamps `instance`'s devices and removes rows (of any instance) that ran
/// out.
pub(crate) async fn presence_heartbeat(
    w: &mut WriteTx<'_>,
    instance: &str,
    stamps: &[PresenceStamp],
    leases: Leases,
) -> Result<(), TxError> {
    let now = int(db_now(&w.tx).await?);
    let mut users = std::collections::BTreeSet::new();
    for s in stamps {
        if stamp(w, instance, s, leases, now).await? {
            users.insert(s.device.user.clone());
        }
    }
    let expired =
        w.tx.query(
            "DELETE FROM presence WHERE expires_at <= $1
             RETURNING user_id, device_id, last_active",
            &[&now],
        )
        .await?;
    for row in expired {
        let (u, d, last): (String, String, i64) = (row.get(0), row.get(1), row.get(2));
        w.tx.execute(
            "UPDATE devices SET last_seen = GREATEST(COALESCE(last_seen, 0), $3)
             WHERE user_id = $1 AND device_id = $2",
            &[&u, &d, &last],
        )
        .await?;
        users.insert(user(u)?);
    }
    for u in users {
        announce_devices(w, &u).await?;
    }
    Ok(())
}

/// The role's row and its holder's name, locked for update if `lock`.
async fn role_row(
    c: &impl GenericClient,
    user_id: &UserId,
    role: &str,
    lock: bool,
) -> Result<Option<(RoleRow, Option<String>)>, StoreError> {
    let sql = if lock {
        "SELECT r.holder, r.epoch, r.lease_expires_at,
                (SELECT d.name FROM devices d WHERE d.user_id = r.user_id AND d.device_id = r.holder)
         FROM roles r WHERE r.user_id = $1 AND r.role = $2 FOR UPDATE"
    } else {
        "SELECT r.holder, r.epoch, r.lease_expires_at,
                (SELECT d.name FROM devices d WHERE d.user_id = r.user_id AND d.device_id = r.holder)
         FROM roles r WHERE r.user_id = $1 AND r.role = $2"
    };
    let row = c
        .query_opt(sql, &[&user_id.as_str(), &role])
        .await
        .map_err(pg_error)?;
    row.map(|row| {
        let holder: Option<String> = row.get(0);
        let lease: Option<i64> = row.get(2);
        Ok((
            RoleRow {
                holder: holder.map(device_id).transpose()?,
                epoch: uint(row.get(1)),
                lease_expires_at: lease.map(uint),
            },
            row.get(3),
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

/// The role's state now (for an announcement another instance made).
pub(crate) async fn role_state(
    c: &impl GenericClient,
    user_id: &UserId,
    role: &str,
) -> Result<RoleState, StoreError> {
    let (row, name) = role_row(c, user_id, role, false).await?.unwrap_or_default();
    Ok(state_of(role, row, name))
}

/// Applies a role request under the role's row lock.
pub(crate) async fn change_role(
    w: &mut WriteTx<'_>,
    actor: &DeviceIdentity,
    role: &str,
    request: &RoleRequest,
    leases: Leases,
) -> Result<RoleChange, TxError> {
    let user_id = &actor.user;
    if matches!(request, RoleRequest::Claim { .. }) {
        // The row exists before it is locked, so two first claims on two
        // instances take turns on it.
        w.tx.execute(
            "INSERT INTO roles (user_id, role) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&user_id.as_str(), &role],
        )
        .await?;
    }
    let Some((row, _)) = role_row(&w.tx, user_id, role, true).await? else {
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
    let now = db_now(&w.tx).await?;
    let rows =
        w.tx.query(
            "SELECT c.device_id, c.priority,
                    (SELECT MAX(p.last_active) FROM presence p
                     WHERE p.user_id = c.user_id AND p.device_id = c.device_id
                       AND p.expires_at > $3)
             FROM role_candidates c WHERE c.user_id = $1 AND c.role = $2",
            &[&user_id.as_str(), &role, &int(now)],
        )
        .await?;
    let mut candidates = Vec::new();
    for r in rows {
        let active: Option<i64> = r.get(2);
        candidates.push(Candidate {
            device: device_id(r.get(0))?,
            priority: r.get(1),
            present: active.is_some(),
            last_active: active.map_or(0, uint),
        });
    }
    let target_present = match request {
        RoleRequest::Handoff { to } => {
            w.tx.query_opt(
                "SELECT 1 FROM presence p JOIN devices d
                   ON d.user_id = p.user_id AND d.device_id = p.device_id
                 WHERE p.user_id = $1 AND p.device_id = $2 AND p.expires_at > $3
                   AND d.revoked_at IS NULL LIMIT 1",
                &[&user_id.as_str(), &to.as_str(), &int(now)],
            )
            .await?
            .is_some()
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
    match &decision.candidacy {
        CandidacyChange::Keep => {}
        CandidacyChange::Upsert(device, priority) => {
            w.tx.execute(
                "INSERT INTO role_candidates (user_id, role, device_id, priority, claimed_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (user_id, role, device_id) DO UPDATE SET priority = excluded.priority",
                &[
                    &user_id.as_str(),
                    &role,
                    &device.as_str(),
                    priority,
                    &int(now),
                ],
            )
            .await?;
        }
        CandidacyChange::Remove(device) => {
            w.tx.execute(
                "DELETE FROM role_candidates WHERE user_id = $1 AND role = $2 AND device_id = $3",
                &[&user_id.as_str(), &role, &device.as_str()],
            )
            .await?;
        }
    }
    if decision.row != row {
        let next = &decision.row;
        w.tx.execute(
            "UPDATE roles SET holder = $3, epoch = $4, lease_expires_at = $5
             WHERE user_id = $1 AND role = $2",
            &[
                &user_id.as_str(),
                &role,
                &next.holder.as_ref().map(DeviceId::as_str),
                &int(next.epoch),
                &next.lease_expires_at.map(int),
            ],
        )
        .await?;
    }
    let (row, name) = role_row(&w.tx, user_id, role, false)
        .await?
        .unwrap_or_default();
    let state = state_of(role, row, name);
    if decision.changed {
        w.announce(StoreEvent::RoleChanged {
            user: user_id.clone(),
            state: state.clone(),
        });
    }
    Ok(RoleChange {
        state,
        changed: decision.changed,
    })
}

/// The roles of `user`.
pub(crate) async fn roles_of(
    c: &impl GenericClient,
    user_id: &UserId,
) -> Result<Vec<RoleState>, StoreError> {
    let rows = c
        .query(
            "SELECT r.role, r.holder, r.epoch, r.lease_expires_at,
                    (SELECT d.name FROM devices d WHERE d.user_id = r.user_id AND d.device_id = r.holder)
             FROM roles r WHERE r.user_id = $1 ORDER BY r.role",
            &[&user_id.as_str()],
        )
        .await
        .map_err(pg_error)?;
    let mut out = Vec::new();
    for row in rows {
        let role: String = row.get(0);
        let holder: Option<String> = row.get(1);
        let lease: Option<i64> = row.get(3);
        out.push(state_of(
            &role,
            RoleRow {
                holder: holder.map(device_id).transpose()?,
                epoch: uint(row.get(2)),
                lease_expires_at: lease.map(uint),
            },
            row.get(4),
        ));
    }
    Ok(out)
}

/// Roles that need a check, by the database's clock.
pub(crate) async fn roles_to_check(
    c: &impl GenericClient,
) -> Result<Vec<(UserId, String)>, StoreError> {
    let rows = c
        .query(
            "WITH now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS t)
             SELECT r.user_id, r.role FROM roles r, now
             WHERE (r.holder IS NOT NULL AND (r.lease_expires_at <= now.t OR NOT EXISTS (
                        SELECT 1 FROM presence p WHERE p.user_id = r.user_id
                        AND p.device_id = r.holder AND p.expires_at > now.t)))
                OR (r.holder IS NULL AND EXISTS (
                        SELECT 1 FROM role_candidates c JOIN presence p
                        ON p.user_id = c.user_id AND p.device_id = c.device_id
                           AND p.expires_at > now.t
                        WHERE c.user_id = r.user_id AND c.role = r.role))",
            &[],
        )
        .await
        .map_err(pg_error)?;
    rows.into_iter()
        .map(|row| Ok((user(row.get(0))?, row.get(1))))
        .collect()
}

/// Reads the roles named by `fences` of `user_id` `FOR SHARE` (a change of
/// holder waits for this transaction), with the database's clock.
pub(crate) async fn fenced_roles(
    c: &impl GenericClient,
    keys: &[(String, String)],
) -> Result<(BTreeMap<(String, String), RoleRow>, u64), StoreError> {
    let now = db_now(c).await?;
    if keys.is_empty() {
        return Ok((BTreeMap::new(), now));
    }
    let users: Vec<&str> = keys.iter().map(|(u, _)| u.as_str()).collect();
    let names: Vec<&str> = keys.iter().map(|(_, r)| r.as_str()).collect();
    let rows = c
        .query(
            "SELECT r.user_id, r.role, r.holder, r.epoch, r.lease_expires_at
             FROM roles r JOIN unnest($1::text[], $2::text[]) AS k(user_id, role)
               ON r.user_id = k.user_id AND r.role = k.role
             ORDER BY r.user_id, r.role
             FOR SHARE OF r",
            &[&users, &names],
        )
        .await
        .map_err(pg_error)?;
    let mut out = BTreeMap::new();
    for row in rows {
        let holder: Option<String> = row.get(2);
        let lease: Option<i64> = row.get(4);
        out.insert(
            (row.get(0), row.get(1)),
            RoleRow {
                holder: holder.map(device_id).transpose()?,
                epoch: uint(row.get(3)),
                lease_expires_at: lease.map(uint),
            },
        );
    }
    // The clock after the locks: a lease that ran out while this waited is
    // seen as run out.
    let now = db_now(c).await?.max(now);
    Ok((out, now))
}

/// The duplicate guard.
pub(crate) async fn guard(
    w: &mut WriteTx<'_>,
    author: &DeviceIdentity,
    hash: &[u8; 32],
    window_ms: u64,
    fence: Option<&RoleFence>,
) -> Result<GuardVerdict, TxError> {
    if let Some(fence) = fence {
        let key = (author.user.to_string(), fence.role.clone());
        let (rows, now) = fenced_roles(&w.tx, std::slice::from_ref(&key)).await?;
        if !rows
            .get(&key)
            .is_some_and(|row| row.admits(&author.device, fence, now))
        {
            return Err(StoreError::StaleEpoch(roles::stale_reason(fence)).into());
        }
    }
    let now = int(db_now(&w.tx).await?);
    let first =
        w.tx.query_opt(
            "INSERT INTO guards (user_id, hash, device_id, expires_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (user_id, hash) DO UPDATE SET device_id = excluded.device_id,
                 expires_at = excluded.expires_at
             WHERE guards.expires_at <= $5
             RETURNING 1",
            &[
                &author.user.as_str(),
                &&hash[..],
                &author.device.as_str(),
                &(now + int(window_ms)),
                &now,
            ],
        )
        .await?
        .is_some();
    Ok(if first {
        GuardVerdict::First
    } else {
        GuardVerdict::Duplicate
    })
}

/// Deletes guard rows whose window ran out.
pub(crate) async fn sweep_guards(w: &mut WriteTx<'_>) -> Result<u64, TxError> {
    let now = int(db_now(&w.tx).await?);
    Ok(w.tx
        .execute("DELETE FROM guards WHERE expires_at <= $1", &[&now])
        .await?)
}
