//! Write operations, run by the writer thread inside a group transaction.

use std::sync::Arc;

use rusqlite::{OptionalExtension, Transaction, params};
use tandem_protocol::api::SpaceMembers;
use tandem_protocol::wire::{MutationResult, Outcome};
use tandem_protocol::{
    Change, DocState, Document, Mutation, MutationId, SpaceChecksum, SpaceId, UserId,
};

use super::coordination::{SqliteTx, ready};
use super::reads::{members_of, spaces_of_user};
use super::writer::{WriteCtx, backend};
use crate::apply::{self, Decision};
use crate::auth::TokenHash;
use crate::store::coordination::transactions;
use crate::store::{
    CommittedChanges, CompactionReport, CompactionRule, DeviceIdentity, DeviceRegistration,
    NewCredentials, PushRules, RefreshOutcome, StoreError, StoreEvent,
};

const ACCESS: i64 = 0;
const REFRESH: i64 = 1;

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Stores a credential pair for `device`.
fn insert_credentials(
    tx: &Transaction<'_>,
    device: &DeviceIdentity,
    creds: &NewCredentials,
) -> Result<(), StoreError> {
    let mut stmt = tx
        .prepare_cached(
            "INSERT INTO credentials (token_hash, kind, user, device_id, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .map_err(backend)?;
    for (hash, kind, expires) in [
        (creds.access, ACCESS, creds.access_expires_at),
        (creds.refresh, REFRESH, creds.refresh_expires_at),
    ] {
        stmt.execute(params![
            &hash.0[..],
            kind,
            device.user.as_str(),
            device.device.as_str(),
            ms(expires)
        ])
        .map_err(backend)?;
    }
    Ok(())
}

fn delete_credentials(tx: &Transaction<'_>, device: &DeviceIdentity) -> Result<(), StoreError> {
    tx.execute(
        "DELETE FROM credentials WHERE user = ?1 AND device_id = ?2",
        params![device.user.as_str(), device.device.as_str()],
    )
    .map_err(backend)?;
    Ok(())
}

/// Whether the device was revoked.
fn is_revoked(tx: &Transaction<'_>, device: &DeviceIdentity) -> Result<bool, StoreError> {
    tx.prepare_cached(
        "SELECT 1 FROM devices WHERE user = ?1 AND device_id = ?2 AND revoked_at IS NOT NULL",
    )
    .map_err(backend)?
    .exists(params![device.user.as_str(), device.device.as_str()])
    .map_err(backend)
}

/// Registers a device (see [`crate::store::AuthStore::register_device`]).
pub fn register_device(
    ctx: &mut WriteCtx<'_>,
    reg: &DeviceRegistration,
    creds: &NewCredentials,
    max_devices: usize,
    now_ms: u64,
) -> Result<(), StoreError> {
    let tx = ctx.tx;
    let id = &reg.identity;
    if is_revoked(tx, id)? {
        return Err(StoreError::Revoked(format!(
            "device {} was revoked; a revoked device cannot register again",
            id.device
        )));
    }
    // The single writer orders registrations: nothing registers between
    // this count and the insert.
    let others: i64 = tx
        .prepare_cached(
            "SELECT COUNT(*) FROM devices
             WHERE user = ?1 AND device_id <> ?2 AND revoked_at IS NULL",
        )
        .map_err(backend)?
        .query_row(params![id.user.as_str(), id.device.as_str()], |r| r.get(0))
        .map_err(backend)?;
    let others = u64::try_from(others).unwrap_or(0);
    if others >= max_devices as u64 {
        return Err(crate::store::too_many_devices(
            &id.user,
            others,
            max_devices,
        ));
    }
    tx.execute(
        "INSERT INTO devices (user, device_id, name, platform, app_version, registered_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (user, device_id) DO UPDATE SET
             name = excluded.name, platform = excluded.platform,
             app_version = excluded.app_version",
        params![
            id.user.as_str(),
            id.device.as_str(),
            reg.name,
            reg.platform,
            reg.app_version,
            ms(now_ms)
        ],
    )
    .map_err(backend)?;
    delete_credentials(tx, id)?;
    insert_credentials(tx, id, creds)?;
    let personal = SpaceId::personal(&id.user);
    tx.execute(
        "INSERT OR IGNORE INTO spaces (space, owner) VALUES (?1, ?2)",
        params![personal.as_str(), id.user.as_str()],
    )
    .map_err(backend)?;
    tx.execute(
        "INSERT OR IGNORE INTO members (space, user) VALUES (?1, ?2)",
        params![personal.as_str(), id.user.as_str()],
    )
    .map_err(backend)?;
    ready(transactions::announce_devices(
        &mut SqliteTx::new(ctx),
        &id.user,
    ))
}

/// Spends a refresh token (see [`crate::store::AuthStore::refresh_credentials`]).
pub fn refresh_credentials(
    ctx: &mut WriteCtx<'_>,
    presented: &TokenHash,
    next: &NewCredentials,
    now_ms: u64,
) -> Result<RefreshOutcome, StoreError> {
    let tx = ctx.tx;
    let row: Option<(String, String, i64, Option<i64>)> = tx
        .query_row(
            "SELECT user, device_id, expires_at, rotated_at FROM credentials
             WHERE token_hash = ?1 AND kind = ?2",
            params![&presented.0[..], REFRESH],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()
        .map_err(backend)?;
    let Some((user, device, expires_at, rotated_at)) = row else {
        return Ok(RefreshOutcome::Unknown);
    };
    let identity = DeviceIdentity {
        user: UserId::new(user).map_err(|e| StoreError::Backend(e.to_string()))?,
        device: tandem_protocol::DeviceId::new(device)
            .map_err(|e| StoreError::Backend(e.to_string()))?,
    };
    if rotated_at.is_some() {
        delete_credentials(tx, &identity)?;
        ctx.events.push(StoreEvent::DeviceRevoked(identity.clone()));
        return Ok(RefreshOutcome::Reused(identity));
    }
    if expires_at <= ms(now_ms) {
        return Ok(RefreshOutcome::Expired);
    }
    tx.execute(
        "UPDATE credentials SET rotated_at = ?2 WHERE token_hash = ?1",
        params![&presented.0[..], ms(now_ms)],
    )
    .map_err(backend)?;
    insert_credentials(tx, &identity, next)?;
    Ok(RefreshOutcome::Rotated(identity))
}

/// Revokes a device for good (see [`crate::store::AuthStore::revoke_device`]).
pub fn revoke_device(ctx: &mut WriteCtx<'_>, device: &DeviceIdentity) -> Result<(), StoreError> {
    delete_credentials(ctx.tx, device)?;
    ready(transactions::retire_device(&mut SqliteTx::new(ctx), device))?;
    ctx.events.push(StoreEvent::DeviceRevoked(device.clone()));
    Ok(())
}

fn space_owner(tx: &Transaction<'_>, space: &SpaceId) -> Result<Option<UserId>, StoreError> {
    let owner: Option<String> = tx
        .prepare_cached("SELECT owner FROM spaces WHERE space = ?1")
        .map_err(backend)?
        .query_row([space.as_str()], |r| r.get(0))
        .optional()
        .map_err(backend)?;
    owner
        .map(|o| UserId::new(o).map_err(|e| StoreError::Backend(e.to_string())))
        .transpose()
}

fn is_member(tx: &Transaction<'_>, space: &SpaceId, user: &UserId) -> Result<bool, StoreError> {
    tx.prepare_cached("SELECT 1 FROM members WHERE space = ?1 AND user = ?2")
        .map_err(backend)?
        .exists([space.as_str(), user.as_str()])
        .map_err(backend)
}

fn not_a_member(space: &SpaceId) -> StoreError {
    StoreError::Forbidden(format!("not a member of space {space}"))
}

fn membership_event(
    ctx: &mut WriteCtx<'_>,
    user: &UserId,
    space: &SpaceId,
    member: bool,
) -> Result<(), StoreError> {
    let spaces = spaces_of_user(ctx.tx, user)?
        .into_iter()
        .map(|s| s.space)
        .collect();
    ctx.events.push(StoreEvent::MembershipChanged {
        user: user.clone(),
        space: space.clone(),
        member,
        spaces,
    });
    Ok(())
}

fn space_members(
    tx: &Transaction<'_>,
    space: &SpaceId,
    owner: UserId,
) -> Result<SpaceMembers, StoreError> {
    Ok(SpaceMembers {
        space: space.clone(),
        owner,
        members: members_of(tx, space)?,
    })
}

/// Creates a shared space.
pub fn create_space(
    ctx: &mut WriteCtx<'_>,
    owner: &UserId,
    space: &SpaceId,
) -> Result<SpaceMembers, StoreError> {
    if space.personal_owner().is_some() {
        return Err(StoreError::InvalidRequest(
            "personal spaces are created with the device registration".into(),
        ));
    }
    if space_owner(ctx.tx, space)?.is_some() {
        return Err(StoreError::AlreadyExists(format!(
            "a space named {space} exists"
        )));
    }
    ctx.tx
        .execute(
            "INSERT INTO spaces (space, owner) VALUES (?1, ?2)",
            params![space.as_str(), owner.as_str()],
        )
        .map_err(backend)?;
    ctx.tx
        .execute(
            "INSERT INTO members (space, user) VALUES (?1, ?2)",
            params![space.as_str(), owner.as_str()],
        )
        .map_err(backend)?;
    membership_event(ctx, owner, space, true)?;
    space_members(ctx.tx, space, owner.clone())
}

/// The owner adds a member.
pub fn add_member(
    ctx: &mut WriteCtx<'_>,
    actor: &UserId,
    space: &SpaceId,
    member: &UserId,
) -> Result<SpaceMembers, StoreError> {
    // A non-member learns nothing, not even whether the space exists.
    let owner = match space_owner(ctx.tx, space)? {
        Some(owner) if is_member(ctx.tx, space, actor)? => owner,
        _ => return Err(not_a_member(space)),
    };
    if &owner != actor {
        return Err(StoreError::Forbidden(format!(
            "only the owner of {space} can add members"
        )));
    }
    if space.personal_owner().is_some() {
        return Err(StoreError::Forbidden(
            "a personal space has no other members".into(),
        ));
    }
    let added = ctx
        .tx
        .execute(
            "INSERT OR IGNORE INTO members (space, user) VALUES (?1, ?2)",
            params![space.as_str(), member.as_str()],
        )
        .map_err(backend)?;
    if added > 0 {
        membership_event(ctx, member, space, true)?;
    }
    space_members(ctx.tx, space, owner)
}

/// The owner removes a member, or a member leaves.
pub fn remove_member(
    ctx: &mut WriteCtx<'_>,
    actor: &UserId,
    space: &SpaceId,
    member: &UserId,
) -> Result<SpaceMembers, StoreError> {
    let owner = match space_owner(ctx.tx, space)? {
        Some(owner) if is_member(ctx.tx, space, actor)? => owner,
        _ => return Err(not_a_member(space)),
    };
    if &owner != actor && actor != member {
        return Err(StoreError::Forbidden(format!(
            "only the owner of {space} can remove other members"
        )));
    }
    if &owner == member {
        return Err(StoreError::InvalidRequest(format!(
            "the owner cannot leave {space}"
        )));
    }
    let removed = ctx
        .tx
        .execute(
            "DELETE FROM members WHERE space = ?1 AND user = ?2",
            params![space.as_str(), member.as_str()],
        )
        .map_err(backend)?;
    if removed == 0 {
        return Err(StoreError::NotFound(format!(
            "{member} is not a member of {space}"
        )));
    }
    membership_event(ctx, member, space, false)?;
    space_members(ctx.tx, space, owner)
}

/// Applies a batch (see [`crate::store::FeedStore::push`]).
pub fn push(
    ctx: &mut WriteCtx<'_>,
    rules: &PushRules,
    author: &DeviceIdentity,
    mutations: &[Mutation],
    now_ms: u64,
) -> Result<Vec<MutationResult>, StoreError> {
    let mut results = Vec::with_capacity(mutations.len());
    for m in mutations {
        let outcome = push_one(ctx, rules, author, m, now_ms)?;
        results.push(MutationResult {
            mutation_id: m.mutation_id,
            outcome,
        });
    }
    Ok(results)
}

fn push_one(
    ctx: &mut WriteCtx<'_>,
    rules: &PushRules,
    author: &DeviceIdentity,
    m: &Mutation,
    now_ms: u64,
) -> Result<Outcome, StoreError> {
    let tx = ctx.tx;
    if let Some((user, device, recorded)) = recorded_outcome(tx, &m.mutation_id)? {
        if user == author.user.as_str() && device == author.device.as_str() {
            return Ok(apply::as_retry(recorded));
        }
        return Ok(apply::foreign_mutation_id(m));
    }
    if let Err(outcome) = apply::check_claims(author, m, rules, now_ms) {
        return Ok(outcome);
    }
    let outcome = if !is_member(tx, &m.space, &author.user)? {
        apply::not_a_member(m)
    } else if let Some(fence) = &m.fence
        && !ready(transactions::fence_holds(
            &SqliteTx::new(ctx),
            author,
            fence,
        ))?
    {
        apply::stale_fence(fence)
    } else {
        let current = load_document(tx, m)?;
        match apply::decide(current.as_ref(), m, rules) {
            Decision::Answer(outcome) => outcome,
            Decision::Write(state) => {
                let rev = write_document(ctx, author, m, current.as_ref(), state, now_ms)?;
                Outcome::Applied { rev }
            }
        }
    };
    record_outcome(tx, author, m, &outcome, now_ms)?;
    Ok(outcome)
}

fn recorded_outcome(
    tx: &Transaction<'_>,
    id: &MutationId,
) -> Result<Option<(String, String, Outcome)>, StoreError> {
    let row: Option<(String, String, String)> = tx
        .prepare_cached("SELECT user, device_id, outcome FROM mutations WHERE mutation_id = ?1")
        .map_err(backend)?
        .query_row([&id.as_uuid().as_bytes()[..]], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()
        .map_err(backend)?;
    row.map(|(user, device, outcome)| {
        let outcome = serde_json::from_str(&outcome)
            .map_err(|e| StoreError::Backend(format!("a recorded outcome is unreadable: {e}")))?;
        Ok((user, device, outcome))
    })
    .transpose()
}

fn record_outcome(
    tx: &Transaction<'_>,
    author: &DeviceIdentity,
    m: &Mutation,
    outcome: &Outcome,
    now_ms: u64,
) -> Result<(), StoreError> {
    let text = serde_json::to_string(outcome).map_err(|e| StoreError::Backend(e.to_string()))?;
    tx.prepare_cached(
        "INSERT INTO mutations (mutation_id, user, device_id, outcome, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .map_err(backend)?
    .execute(params![
        &m.mutation_id.as_uuid().as_bytes()[..],
        author.user.as_str(),
        author.device.as_str(),
        text,
        ms(now_ms)
    ])
    .map_err(backend)?;
    Ok(())
}

fn load_document(tx: &Transaction<'_>, m: &Mutation) -> Result<Option<Document>, StoreError> {
    let row: Option<(i64, String)> = tx
        .prepare_cached(
            "SELECT version, state FROM documents
             WHERE space = ?1 AND collection = ?2 AND doc_id = ?3",
        )
        .map_err(backend)?
        .query_row(
            [m.space.as_str(), m.collection.as_str(), m.doc_id.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(backend)?;
    row.map(|(version, state)| {
        let state: DocState = serde_json::from_str(&state)
            .map_err(|e| StoreError::Backend(format!("a stored document is unreadable: {e}")))?;
        Ok(Document {
            space: m.space.clone(),
            collection: m.collection.clone(),
            id: m.doc_id.clone(),
            version: Some(u64::try_from(version).unwrap_or(0)),
            state,
        })
    })
    .transpose()
}

/// Writes the new state under the space's next revision and updates the
/// space's head and checksum; returns the revision.
fn write_document(
    ctx: &mut WriteCtx<'_>,
    author: &DeviceIdentity,
    m: &Mutation,
    current: Option<&Document>,
    state: DocState,
    now_ms: u64,
) -> Result<u64, StoreError> {
    let tx = ctx.tx;
    let (head, checksum): (i64, i64) = tx
        .prepare_cached("SELECT head, checksum FROM spaces WHERE space = ?1")
        .map_err(backend)?
        .query_row([m.space.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(backend)?;
    let rev = u64::try_from(head).unwrap_or(0) + 1;
    let mut sum = SpaceChecksum(checksum as u64);
    if let Some(old) = current
        && !old.is_deleted()
    {
        sum.remove(
            m.collection.as_str(),
            m.doc_id.as_str(),
            old.version.unwrap_or(0),
        );
    }
    let deleted = state.is_deleted();
    if !deleted {
        sum.add(m.collection.as_str(), m.doc_id.as_str(), rev);
    }
    tx.prepare_cached("UPDATE spaces SET head = ?2, checksum = ?3 WHERE space = ?1")
        .map_err(backend)?
        .execute(params![m.space.as_str(), ms(rev), sum.0 as i64])
        .map_err(backend)?;
    let state_text =
        serde_json::to_string(&state).map_err(|e| StoreError::Backend(e.to_string()))?;
    tx.prepare_cached(
        "INSERT INTO documents
             (space, collection, doc_id, version, state, deleted, origin, mutation_id, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (space, collection, doc_id) DO UPDATE SET
             version = excluded.version, state = excluded.state,
             deleted = excluded.deleted, origin = excluded.origin,
             mutation_id = excluded.mutation_id, updated_at = excluded.updated_at",
    )
    .map_err(backend)?
    .execute(params![
        m.space.as_str(),
        m.collection.as_str(),
        m.doc_id.as_str(),
        ms(rev),
        state_text,
        deleted,
        author.device.as_str(),
        &m.mutation_id.as_uuid().as_bytes()[..],
        ms(now_ms)
    ])
    .map_err(backend)?;
    let change = Change {
        space: m.space.clone(),
        rev,
        collection: m.collection.clone(),
        doc_id: m.doc_id.clone(),
        state,
        deleted,
        origin: Some(author.device.clone()),
        mutation_id: Some(m.mutation_id),
    };
    ctx.events
        .push(StoreEvent::Changes(Arc::new(CommittedChanges {
            space: m.space.clone(),
            changes: vec![change],
            checksum: sum,
        })));
    Ok(rev)
}

/// Purges what `rule` names (see [`crate::store::FeedStore::compact`]).
pub fn compact(
    ctx: &mut WriteCtx<'_>,
    rule: &CompactionRule,
) -> Result<CompactionReport, StoreError> {
    let tx = ctx.tx;
    let mut report = CompactionReport::default();
    if rule.tombstones_before_ms.is_some() || rule.tombstones_up_to_rev.is_some() {
        let before = rule.tombstones_before_ms.map_or(i64::MAX, ms);
        let up_to = rule.tombstones_up_to_rev.map_or(i64::MAX, ms);
        let purged: Vec<(String, i64, i64)> = {
            let mut stmt = tx
                .prepare(
                    "SELECT space, MAX(version), COUNT(*) FROM documents
                     WHERE deleted = 1 AND updated_at < ?1 AND version <= ?2
                     GROUP BY space",
                )
                .map_err(backend)?;
            stmt.query_map(params![before, up_to], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .map_err(backend)?
            .collect::<Result<_, _>>()
            .map_err(backend)?
        };
        for (space, max_version, count) in purged {
            tx.execute(
                "DELETE FROM documents
                 WHERE space = ?1 AND deleted = 1 AND updated_at < ?2 AND version <= ?3",
                params![space, before, up_to],
            )
            .map_err(backend)?;
            // A cursor below the newest purged tombstone has not seen it and
            // can no longer learn of it from the feed.
            tx.execute(
                "UPDATE spaces SET horizon = MAX(horizon, ?2) WHERE space = ?1",
                params![space, max_version],
            )
            .map_err(backend)?;
            report.tombstones += u64::try_from(count).unwrap_or(0);
        }
    }
    if let Some(before) = rule.mutations_before_ms {
        report.mutations = tx
            .execute("DELETE FROM mutations WHERE created_at < ?1", [ms(before)])
            .map_err(backend)? as u64;
    }
    if let Some(before) = rule.credentials_before_ms {
        report.credentials = tx
            .execute(
                "DELETE FROM credentials WHERE expires_at < ?1",
                [ms(before)],
            )
            .map_err(backend)? as u64;
    }
    Ok(report)
}
