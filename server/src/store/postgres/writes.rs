//! Write operations other than pushes, each in its own transaction (they are
//! rare next to pushes). Every operation on a space's membership locks the
//! space's row first, as pushes do, so a push and a membership change of the
//! same space are ordered the same way on every instance.

use std::collections::BTreeMap;

use deadpool_postgres::GenericClient;
use tandem_protocol::api::SpaceMembers;
use tandem_protocol::{SpaceId, UserId};

use super::coordination::PgTx;
use super::reads::{self, int, is_member, members_of, not_a_member, spaces_of_user};
use super::{TxError, WriteTx};
use crate::auth::TokenHash;
use crate::store::coordination::transactions;
use crate::store::{
    CompactionReport, CompactionRule, DeviceIdentity, DeviceRegistration, NewCredentials,
    RefreshOutcome, StoreError, StoreEvent,
};

const ACCESS: i16 = 0;
const REFRESH: i16 = 1;

/// How long membership changes and revocations are kept for a listener
/// that reconnects.
const ANNOUNCEMENT_RETENTION_SECS: f64 = 24.0 * 3600.0;

async fn insert_credentials(
    w: &WriteTx<'_>,
    device: &DeviceIdentity,
    creds: &NewCredentials,
) -> Result<(), TxError> {
    let statement =
        w.tx.prepare_cached(
            "INSERT INTO credentials (token_hash, kind, user_id, device_id, expires_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .await?;
    for (hash, kind, expires) in [
        (creds.access, ACCESS, creds.access_expires_at),
        (creds.refresh, REFRESH, creds.refresh_expires_at),
    ] {
        w.tx.execute(
            &statement,
            &[
                &&hash.0[..],
                &kind,
                &device.user.as_str(),
                &device.device.as_str(),
                &int(expires),
            ],
        )
        .await?;
    }
    Ok(())
}

async fn delete_credentials(w: &WriteTx<'_>, device: &DeviceIdentity) -> Result<(), TxError> {
    w.tx.execute(
        "DELETE FROM credentials WHERE user_id = $1 AND device_id = $2",
        &[&device.user.as_str(), &device.device.as_str()],
    )
    .await?;
    Ok(())
}

/// Whether the device was revoked.
async fn is_revoked(w: &WriteTx<'_>, device: &DeviceIdentity) -> Result<bool, TxError> {
    Ok(w.tx
        .query_opt(
            "SELECT 1 FROM devices WHERE user_id = $1 AND device_id = $2
             AND revoked_at IS NOT NULL",
            &[&device.user.as_str(), &device.device.as_str()],
        )
        .await?
        .is_some())
}

/// Registers a device (see [`crate::store::AuthStore::register_device`]).
pub(crate) async fn register_device(
    w: &mut WriteTx<'_>,
    reg: &DeviceRegistration,
    creds: &NewCredentials,
    max_devices: usize,
    now_ms: u64,
) -> Result<(), TxError> {
    let id = &reg.identity;
    if is_revoked(w, id).await? {
        return Err(StoreError::Revoked(format!(
            "device {} was revoked; a revoked device cannot register again",
            id.device
        ))
        .into());
    }
    let personal = SpaceId::personal(&id.user);
    w.tx.execute(
        "INSERT INTO spaces (space, owner) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        &[&personal.as_str(), &id.user.as_str()],
    )
    .await?;
    // Registrations of one user take turns on the row of the user's
    // personal space, so two instances registering new devices at once
    // cannot both take the last place.
    lock_space(w, &personal).await?;
    let others: i64 =
        w.tx.query_one(
            "SELECT COUNT(*) FROM devices
             WHERE user_id = $1 AND device_id <> $2 AND revoked_at IS NULL",
            &[&id.user.as_str(), &id.device.as_str()],
        )
        .await?
        .get(0);
    let others = u64::try_from(others).unwrap_or(0);
    if others >= max_devices as u64 {
        return Err(crate::store::too_many_devices(&id.user, others, max_devices).into());
    }
    w.tx.execute(
        "INSERT INTO devices (user_id, device_id, name, platform, app_version, registered_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (user_id, device_id) DO UPDATE SET
             name = excluded.name, platform = excluded.platform,
             app_version = excluded.app_version",
        &[
            &id.user.as_str(),
            &id.device.as_str(),
            &reg.name,
            &reg.platform,
            &reg.app_version,
            &int(now_ms),
        ],
    )
    .await?;
    delete_credentials(w, id).await?;
    insert_credentials(w, id, creds).await?;
    w.tx.execute(
        "INSERT INTO members (space, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        &[&personal.as_str(), &id.user.as_str()],
    )
    .await?;
    transactions::announce_devices(&mut PgTx::new(w), &id.user).await
}

/// Spends a refresh token (see [`crate::store::AuthStore::refresh_credentials`]).
/// The token's row is locked, so two instances presenting the same token at
/// once rotate it once and see the second presentation as a reuse.
pub(crate) async fn refresh_credentials(
    w: &mut WriteTx<'_>,
    presented: &TokenHash,
    next: &NewCredentials,
    now_ms: u64,
) -> Result<RefreshOutcome, TxError> {
    let row =
        w.tx.query_opt(
            "SELECT user_id, device_id, expires_at, rotated_at FROM credentials
             WHERE token_hash = $1 AND kind = $2 FOR UPDATE",
            &[&&presented.0[..], &REFRESH],
        )
        .await?;
    let Some(row) = row else {
        return Ok(RefreshOutcome::Unknown);
    };
    let identity = DeviceIdentity {
        user: reads::user(row.get(0))?,
        device: tandem_protocol::DeviceId::new(row.get::<_, String>(1))
            .map_err(|e| reads::corrupt("device id", e))?,
    };
    let expires_at: i64 = row.get(2);
    let rotated_at: Option<i64> = row.get(3);
    if rotated_at.is_some() {
        delete_credentials(w, &identity).await?;
        w.announce(StoreEvent::DeviceRevoked(identity.clone()));
        return Ok(RefreshOutcome::Reused(identity));
    }
    if expires_at <= int(now_ms) {
        return Ok(RefreshOutcome::Expired);
    }
    w.tx.execute(
        "UPDATE credentials SET rotated_at = $2 WHERE token_hash = $1",
        &[&&presented.0[..], &int(now_ms)],
    )
    .await?;
    insert_credentials(w, &identity, next).await?;
    Ok(RefreshOutcome::Rotated(identity))
}

/// Revokes a device for good (see [`crate::store::AuthStore::revoke_device`]).
pub(crate) async fn revoke_device(
    w: &mut WriteTx<'_>,
    device: &DeviceIdentity,
) -> Result<(), TxError> {
    delete_credentials(w, device).await?;
    transactions::retire_device(&mut PgTx::new(w), device).await?;
    w.announce(StoreEvent::DeviceRevoked(device.clone()));
    Ok(())
}

/// Locks a space's row; its owner, if the space exists.
async fn lock_space(w: &WriteTx<'_>, space: &SpaceId) -> Result<Option<UserId>, TxError> {
    let row =
        w.tx.query_opt(
            "SELECT owner FROM spaces WHERE space = $1 FOR UPDATE",
            &[&space.as_str()],
        )
        .await?;
    Ok(row.map(|row| reads::user(row.get(0))).transpose()?)
}

async fn membership_event(
    w: &mut WriteTx<'_>,
    user: &UserId,
    space: &SpaceId,
    member: bool,
) -> Result<(), TxError> {
    let spaces = spaces_of_user(&w.tx, user)
        .await?
        .into_iter()
        .map(|s| s.space)
        .collect();
    w.announce(StoreEvent::MembershipChanged {
        user: user.clone(),
        space: space.clone(),
        member,
        spaces,
    });
    Ok(())
}

async fn space_members(
    w: &WriteTx<'_>,
    space: &SpaceId,
    owner: UserId,
) -> Result<SpaceMembers, TxError> {
    Ok(SpaceMembers {
        space: space.clone(),
        owner,
        members: members_of(&w.tx, space).await?,
    })
}

/// Creates a shared space.
pub(crate) async fn create_space(
    w: &mut WriteTx<'_>,
    owner: &UserId,
    space: &SpaceId,
) -> Result<SpaceMembers, TxError> {
    if space.personal_owner().is_some() {
        return Err(StoreError::InvalidRequest(
            "personal spaces are created with the device registration".into(),
        )
        .into());
    }
    let created =
        w.tx.execute(
            "INSERT INTO spaces (space, owner) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&space.as_str(), &owner.as_str()],
        )
        .await?;
    if created == 0 {
        return Err(StoreError::AlreadyExists(format!("a space named {space} exists")).into());
    }
    w.tx.execute(
        "INSERT INTO members (space, user_id) VALUES ($1, $2)",
        &[&space.as_str(), &owner.as_str()],
    )
    .await?;
    membership_event(w, owner, space, true).await?;
    space_members(w, space, owner.clone()).await
}

/// The owner adds a member.
pub(crate) async fn add_member(
    w: &mut WriteTx<'_>,
    actor: &UserId,
    space: &SpaceId,
    member: &UserId,
) -> Result<SpaceMembers, TxError> {
    // A non-member learns nothing, not even whether the space exists.
    let owner = match lock_space(w, space).await? {
        Some(owner) if is_member(&w.tx, space, actor).await? => owner,
        _ => return Err(not_a_member(space).into()),
    };
    if &owner != actor {
        return Err(
            StoreError::Forbidden(format!("only the owner of {space} can add members")).into(),
        );
    }
    if space.personal_owner().is_some() {
        return Err(StoreError::Forbidden("a personal space has no other members".into()).into());
    }
    let added =
        w.tx.execute(
            "INSERT INTO members (space, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&space.as_str(), &member.as_str()],
        )
        .await?;
    if added > 0 {
        membership_event(w, member, space, true).await?;
    }
    space_members(w, space, owner).await
}

/// The owner removes a member, or a member leaves.
pub(crate) async fn remove_member(
    w: &mut WriteTx<'_>,
    actor: &UserId,
    space: &SpaceId,
    member: &UserId,
) -> Result<SpaceMembers, TxError> {
    let owner = match lock_space(w, space).await? {
        Some(owner) if is_member(&w.tx, space, actor).await? => owner,
        _ => return Err(not_a_member(space).into()),
    };
    if &owner != actor && actor != member {
        return Err(StoreError::Forbidden(format!(
            "only the owner of {space} can remove other members"
        ))
        .into());
    }
    if &owner == member {
        return Err(StoreError::InvalidRequest(format!("the owner cannot leave {space}")).into());
    }
    let removed =
        w.tx.execute(
            "DELETE FROM members WHERE space = $1 AND user_id = $2",
            &[&space.as_str(), &member.as_str()],
        )
        .await?;
    if removed == 0 {
        return Err(StoreError::NotFound(format!("{member} is not a member of {space}")).into());
    }
    membership_event(w, member, space, false).await?;
    space_members(w, space, owner).await
}

/// Purges what `rule` names (see [`crate::store::FeedStore::compact`]). Only one
/// instance compacts at a time; the others find the lock taken and report
/// nothing done.
pub(crate) async fn compact(
    w: &mut WriteTx<'_>,
    rule: &CompactionRule,
    lock_key: i64,
) -> Result<CompactionReport, TxError> {
    let mut report = CompactionReport::default();
    let locked: bool =
        w.tx.query_one("SELECT pg_try_advisory_xact_lock($1)", &[&lock_key])
            .await?
            .get(0);
    if !locked {
        return Ok(report);
    }
    if rule.tombstones_before_ms.is_some() || rule.tombstones_up_to_rev.is_some() {
        let before = rule.tombstones_before_ms.map_or(i64::MAX, int);
        let up_to = rule.tombstones_up_to_rev.map_or(i64::MAX, int);
        // Lock the spaces concerned in name order (as pushes do), then purge
        // under the locks, so no writer moves a horizon or head meanwhile.
        let spaces: Vec<String> =
            w.tx.query(
                "SELECT space FROM spaces WHERE space IN (
                     SELECT DISTINCT space FROM documents
                     WHERE deleted AND updated_at < $1 AND version <= $2)
                 ORDER BY space FOR UPDATE",
                &[&before, &up_to],
            )
            .await?
            .into_iter()
            .map(|row| row.get(0))
            .collect();
        if !spaces.is_empty() {
            let purged =
                w.tx.query(
                    "DELETE FROM documents
                     WHERE space = ANY($1) AND deleted AND updated_at < $2 AND version <= $3
                     RETURNING space, version",
                    &[&spaces, &before, &up_to],
                )
                .await?;
            // A cursor below the newest purged tombstone has not seen it and
            // can no longer learn of it from the feed.
            let mut horizons: BTreeMap<String, i64> = BTreeMap::new();
            for row in &purged {
                let space: String = row.get(0);
                let version: i64 = row.get(1);
                let horizon = horizons.entry(space).or_insert(0);
                *horizon = (*horizon).max(version);
            }
            let (names, revs): (Vec<String>, Vec<i64>) = horizons.into_iter().unzip();
            w.tx.execute(
                "UPDATE spaces s SET horizon = GREATEST(s.horizon, h.rev)
                 FROM unnest($1::text[], $2::bigint[]) AS h(space, rev)
                 WHERE s.space = h.space",
                &[&names, &revs],
            )
            .await?;
            report.tombstones = purged.len() as u64;
        }
    }
    if let Some(before) = rule.mutations_before_ms {
        report.mutations =
            w.tx.execute(
                "DELETE FROM mutations WHERE created_at < $1",
                &[&int(before)],
            )
            .await?;
    }
    if let Some(before) = rule.credentials_before_ms {
        report.credentials =
            w.tx.execute(
                "DELETE FROM credentials WHERE expires_at < $1",
                &[&int(before)],
            )
            .await?;
    }
    w.tx.execute(
        "DELETE FROM announcements WHERE at < now() - make_interval(secs => $1)",
        &[&ANNOUNCEMENT_RETENTION_SECS],
    )
    .await?;
    Ok(report)
}
