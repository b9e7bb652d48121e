//! Read operations. Each is one statement (so one snapshot) where the
//! answer must be consistent, e.g. a page of the feed and the space's
//! position; they also run inside write transactions.

use deadpool_postgres::GenericClient;
use tandem_protocol::api::{SpaceMembers, SpaceSummary};
use tandem_protocol::{
    Change, Collection, DeviceId, DocId, DocState, MutationId, SpaceChecksum, SpaceId, UserId,
};
use tokio_postgres::Row;
use uuid::Uuid;

use super::pg_error;
use crate::auth::TokenHash;
use crate::store::{ChangePage, DeviceIdentity, FeedPosition, PageFill, PageLimit, StoreError};

pub(crate) fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("stored {what} is unreadable: {e}"))
}

pub(crate) fn user(text: String) -> Result<UserId, StoreError> {
    UserId::new(text).map_err(|e| corrupt("user id", e))
}

pub(crate) fn space(text: String) -> Result<SpaceId, StoreError> {
    SpaceId::new(text).map_err(|e| corrupt("space id", e))
}

/// A revision or count as PostgreSQL stores it.
pub(crate) fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A stored revision or count.
pub(crate) fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// The feed columns a change is made of, from `offset` on: collection,
/// doc_id, version, checksum, state, deleted, origin, mutation_id. Returns
/// the change and the space's checksum right after it.
pub(crate) fn change_from_row(
    space: &SpaceId,
    row: &Row,
    offset: usize,
) -> Result<(Change, SpaceChecksum), StoreError> {
    let collection: String = row.try_get(offset).map_err(pg_error)?;
    let doc_id: String = row.try_get(offset + 1).map_err(pg_error)?;
    let version: i64 = row.try_get(offset + 2).map_err(pg_error)?;
    let checksum: i64 = row.try_get(offset + 3).map_err(pg_error)?;
    let state: String = row.try_get(offset + 4).map_err(pg_error)?;
    let deleted: bool = row.try_get(offset + 5).map_err(pg_error)?;
    let origin: Option<String> = row.try_get(offset + 6).map_err(pg_error)?;
    let mutation_id: Option<Uuid> = row.try_get(offset + 7).map_err(pg_error)?;
    let state: DocState = serde_json::from_str(&state).map_err(|e| corrupt("document", e))?;
    let change = Change {
        space: space.clone(),
        rev: uint(version),
        collection: Collection::new(collection).map_err(|e| corrupt("collection", e))?,
        doc_id: DocId::new(doc_id).map_err(|e| corrupt("document id", e))?,
        state,
        deleted,
        origin: origin
            .map(DeviceId::new)
            .transpose()
            .map_err(|e| corrupt("device id", e))?,
        mutation_id: mutation_id.map(MutationId::from_uuid),
    };
    Ok((change, SpaceChecksum(checksum as u64)))
}

/// The spaces `member` belongs to, personal space first.
pub(crate) async fn spaces_of_user(
    c: &impl GenericClient,
    member: &UserId,
) -> Result<Vec<SpaceSummary>, StoreError> {
    let personal = SpaceId::personal(member);
    let statement = c
        .prepare_cached(
            "SELECT s.space, s.owner FROM members m JOIN spaces s ON s.space = m.space
             WHERE m.user_id = $1 ORDER BY s.space <> $2, s.space",
        )
        .await
        .map_err(pg_error)?;
    let rows = c
        .query(&statement, &[&member.as_str(), &personal.as_str()])
        .await
        .map_err(pg_error)?;
    rows.into_iter()
        .map(|row| {
            Ok(SpaceSummary {
                space: space(row.get(0))?,
                owner: user(row.get(1))?,
            })
        })
        .collect()
}

/// Every member of `space`, sorted.
pub(crate) async fn members_of(
    c: &impl GenericClient,
    space: &SpaceId,
) -> Result<Vec<UserId>, StoreError> {
    let statement = c
        .prepare_cached("SELECT user_id FROM members WHERE space = $1 ORDER BY user_id")
        .await
        .map_err(pg_error)?;
    c.query(&statement, &[&space.as_str()])
        .await
        .map_err(pg_error)?
        .into_iter()
        .map(|row| user(row.get(0)))
        .collect()
}

/// Whether `user` is a member of `space`.
pub(crate) async fn is_member(
    c: &impl GenericClient,
    space: &SpaceId,
    user: &UserId,
) -> Result<bool, StoreError> {
    let statement = c
        .prepare_cached("SELECT 1 FROM members WHERE space = $1 AND user_id = $2")
        .await
        .map_err(pg_error)?;
    Ok(c.query_opt(&statement, &[&space.as_str(), &user.as_str()])
        .await
        .map_err(pg_error)?
        .is_some())
}

pub(crate) fn not_a_member(space: &SpaceId) -> StoreError {
    StoreError::Forbidden(format!("not a member of space {space}"))
}

/// A space and its members, for a member (one snapshot).
pub(crate) async fn space_members(
    c: &impl GenericClient,
    actor: &UserId,
    space: &SpaceId,
) -> Result<SpaceMembers, StoreError> {
    let statement = c
        .prepare_cached(
            "SELECT s.owner, m.user_id FROM spaces s JOIN members m ON m.space = s.space
             WHERE s.space = $1
               AND EXISTS (SELECT 1 FROM members a WHERE a.space = $1 AND a.user_id = $2)
             ORDER BY m.user_id",
        )
        .await
        .map_err(pg_error)?;
    let rows = c
        .query(&statement, &[&space.as_str(), &actor.as_str()])
        .await
        .map_err(pg_error)?;
    let Some(first) = rows.first() else {
        return Err(not_a_member(space));
    };
    let owner = user(first.get(0))?;
    let members = rows
        .iter()
        .map(|row| user(row.get(1)))
        .collect::<Result<_, _>>()?;
    Ok(SpaceMembers {
        space: space.clone(),
        owner,
        members,
    })
}

/// The device of an unexpired access token.
pub(crate) async fn device_for_access_token(
    c: &impl GenericClient,
    access: &TokenHash,
    now_ms: u64,
) -> Result<Option<DeviceIdentity>, StoreError> {
    let statement = c
        .prepare_cached(
            "SELECT user_id, device_id FROM credentials
             WHERE token_hash = $1 AND kind = 0 AND expires_at > $2",
        )
        .await
        .map_err(pg_error)?;
    let row = c
        .query_opt(&statement, &[&&access.0[..], &int(now_ms)])
        .await
        .map_err(pg_error)?;
    row.map(|row| {
        Ok(DeviceIdentity {
            user: user(row.get(0))?,
            device: DeviceId::new(row.get::<_, String>(1)).map_err(|e| corrupt("device id", e))?,
        })
    })
    .transpose()
}

/// Whether a device holds any credential.
pub(crate) async fn has_credentials(
    c: &impl GenericClient,
    device: &DeviceIdentity,
) -> Result<bool, StoreError> {
    let statement = c
        .prepare_cached("SELECT 1 FROM credentials WHERE user_id = $1 AND device_id = $2 LIMIT 1")
        .await
        .map_err(pg_error)?;
    Ok(c.query_opt(
        &statement,
        &[&device.user.as_str(), &device.device.as_str()],
    )
    .await
    .map_err(pg_error)?
    .is_some())
}

/// Whether `user` is a member of `space` now, and all of the user's spaces.
pub(crate) async fn membership_now(
    c: &impl GenericClient,
    user: &UserId,
    space: &SpaceId,
) -> Result<(bool, Vec<SpaceId>), StoreError> {
    let spaces: Vec<SpaceId> = spaces_of_user(c, user)
        .await?
        .into_iter()
        .map(|s| s.space)
        .collect();
    Ok((spaces.contains(space), spaces))
}

/// The positions of the named spaces `reader` belongs to (one snapshot).
pub(crate) async fn feed_positions(
    c: &impl GenericClient,
    reader: &UserId,
    spaces: &[SpaceId],
) -> Result<Vec<(SpaceId, FeedPosition)>, StoreError> {
    let names: Vec<&str> = spaces.iter().map(|s| s.as_str()).collect();
    let statement = c
        .prepare_cached(
            "SELECT s.space, s.head, s.checksum, s.horizon
             FROM unnest($1::text[]) WITH ORDINALITY AS n(space, i)
             JOIN spaces s ON s.space = n.space
             JOIN members m ON m.space = s.space AND m.user_id = $2
             ORDER BY n.i",
        )
        .await
        .map_err(pg_error)?;
    c.query(&statement, &[&names, &reader.as_str()])
        .await
        .map_err(pg_error)?
        .into_iter()
        .map(|row| {
            Ok((
                space(row.get(0))?,
                FeedPosition {
                    head: uint(row.get(1)),
                    checksum: SpaceChecksum(row.get::<_, i64>(2) as u64),
                    horizon: uint(row.get(3)),
                },
            ))
        })
        .collect()
}

/// A page of the change feed, for a member: the membership check, the
/// space's position and the page come from one statement, so one snapshot.
///
/// The statement leaves out the documents that start past the page's byte
/// limit (counting each state's stored length, which is less than its
/// change's), so a page of large documents does not fetch the ones after
/// it; the exact count is [`PageFill`]'s. `available` (how many documents
/// the statement had before leaving any out) tells whether more follow.
pub(crate) async fn read_changes(
    c: &impl GenericClient,
    reader: &UserId,
    space: &SpaceId,
    after: u64,
    limit: PageLimit,
) -> Result<ChangePage, StoreError> {
    let statement = c
        .prepare_cached(
            "SELECT s.head, s.checksum, s.horizon,
                    d.collection, d.doc_id, d.version, d.checksum, d.state, d.deleted,
                    d.origin, d.mutation_id, d.available
             FROM spaces s
             LEFT JOIN LATERAL (
                 SELECT w.* FROM (
                     SELECT l.*,
                            sum(octet_length(l.state)) OVER (ORDER BY l.version)
                                - octet_length(l.state) AS bytes_before,
                            count(*) OVER () AS available
                     FROM (
                         SELECT * FROM documents
                         WHERE documents.space = s.space AND documents.version > $3
                         ORDER BY documents.version LIMIT $4
                     ) l
                 ) w
                 WHERE w.bytes_before <= $5
             ) d ON true
             WHERE s.space = $1
               AND EXISTS (SELECT 1 FROM members m WHERE m.space = $1 AND m.user_id = $2)
             ORDER BY d.version",
        )
        .await
        .map_err(pg_error)?;
    let rows = c
        .query(
            &statement,
            &[
                &space.as_str(),
                &reader.as_str(),
                &int(after),
                &int(limit.changes.max(1) as u64 + 1),
                &int(limit.bytes as u64),
            ],
        )
        .await
        .map_err(pg_error)?;
    let Some(first) = rows.first() else {
        return Err(not_a_member(space));
    };
    let position = FeedPosition {
        head: uint(first.get(0)),
        checksum: SpaceChecksum(first.get::<_, i64>(1) as u64),
        horizon: uint(first.get(2)),
    };
    let available = first.get::<_, Option<i64>>(11).map_or(0, uint);
    let mut changes = Vec::new();
    let mut fill = PageFill::new(limit);
    let mut more = false;
    for row in &rows {
        let version: Option<i64> = row.get(5);
        if version.is_none() {
            break;
        }
        let change = change_from_row(space, row, 3)?.0;
        if !fill.admit(&change) {
            more = true;
            break;
        }
        changes.push(change);
    }
    more |= (changes.len() as u64) < available;
    Ok(ChangePage {
        changes,
        more,
        position,
    })
}
