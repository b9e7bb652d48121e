//! Read operations. They run on the read connections (each read in one
//! transaction, so one snapshot) and some also inside write jobs.

use rusqlite::{Connection, OptionalExtension, params};
use tandem_protocol::api::{SpaceMembers, SpaceSummary};
use tandem_protocol::{
    Change, Collection, DeviceId, DocId, DocState, MutationId, SpaceChecksum, SpaceId, UserId,
};
use uuid::Uuid;

use super::writer::backend;
use crate::auth::TokenHash;
use crate::store::{ChangePage, DeviceIdentity, FeedPosition, PageFill, PageLimit, StoreError};

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("stored {what} is unreadable: {e}"))
}

fn user(text: String) -> Result<UserId, StoreError> {
    UserId::new(text).map_err(|e| corrupt("user id", e))
}

/// The spaces `user` belongs to, personal space first.
pub fn spaces_of_user(conn: &Connection, member: &UserId) -> Result<Vec<SpaceSummary>, StoreError> {
    let personal = SpaceId::personal(member);
    let mut stmt = conn
        .prepare_cached(
            "SELECT s.space, s.owner FROM members m JOIN spaces s ON s.space = m.space
             WHERE m.user = ?1 ORDER BY s.space <> ?2, s.space",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map([member.as_str(), personal.as_str()], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })
        .map_err(backend)?;
    let mut out = Vec::new();
    for row in rows {
        let (space, owner) = row.map_err(backend)?;
        out.push(SpaceSummary {
            space: SpaceId::new(space).map_err(|e| corrupt("space id", e))?,
            owner: user(owner)?,
        });
    }
    Ok(out)
}

/// Every member of `space`, sorted.
pub fn members_of(conn: &Connection, space: &SpaceId) -> Result<Vec<UserId>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT user FROM members WHERE space = ?1 ORDER BY user")
        .map_err(backend)?;
    let rows = stmt
        .query_map([space.as_str()], |r| r.get::<_, String>(0))
        .map_err(backend)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(user(row.map_err(backend)?)?);
    }
    Ok(out)
}

fn is_member(conn: &Connection, space: &SpaceId, reader: &UserId) -> Result<bool, StoreError> {
    conn.prepare_cached("SELECT 1 FROM members WHERE space = ?1 AND user = ?2")
        .map_err(backend)?
        .exists([space.as_str(), reader.as_str()])
        .map_err(backend)
}

fn not_a_member(space: &SpaceId) -> StoreError {
    StoreError::Forbidden(format!("not a member of space {space}"))
}

/// A space and its members, for a member.
pub fn space_members(
    conn: &Connection,
    actor: &UserId,
    space: &SpaceId,
) -> Result<SpaceMembers, StoreError> {
    if !is_member(conn, space, actor)? {
        return Err(not_a_member(space));
    }
    let owner: String = conn
        .query_row(
            "SELECT owner FROM spaces WHERE space = ?1",
            [space.as_str()],
            |r| r.get(0),
        )
        .map_err(backend)?;
    Ok(SpaceMembers {
        space: space.clone(),
        owner: user(owner)?,
        members: members_of(conn, space)?,
    })
}

/// The device of an unexpired access token.
pub fn device_for_access_token(
    conn: &Connection,
    access: &TokenHash,
    now_ms: u64,
) -> Result<Option<DeviceIdentity>, StoreError> {
    let row: Option<(String, String)> = conn
        .prepare_cached(
            "SELECT user, device_id FROM credentials
             WHERE token_hash = ?1 AND kind = 0 AND expires_at > ?2",
        )
        .map_err(backend)?
        .query_row(
            params![&access.0[..], i64::try_from(now_ms).unwrap_or(i64::MAX)],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(backend)?;
    row.map(|(u, d)| {
        Ok(DeviceIdentity {
            user: user(u)?,
            device: DeviceId::new(d).map_err(|e| corrupt("device id", e))?,
        })
    })
    .transpose()
}

fn position(conn: &Connection, space: &SpaceId) -> Result<FeedPosition, StoreError> {
    let (head, checksum, horizon): (i64, i64, i64) = conn
        .prepare_cached("SELECT head, checksum, horizon FROM spaces WHERE space = ?1")
        .map_err(backend)?
        .query_row([space.as_str()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map_err(backend)?;
    Ok(FeedPosition {
        head: u64::try_from(head).unwrap_or(0),
        checksum: SpaceChecksum(checksum as u64),
        horizon: u64::try_from(horizon).unwrap_or(0),
    })
}

/// The positions of the named spaces `reader` belongs to.
pub fn feed_positions(
    conn: &Connection,
    reader: &UserId,
    spaces: &[SpaceId],
) -> Result<Vec<(SpaceId, FeedPosition)>, StoreError> {
    let mut out = Vec::with_capacity(spaces.len());
    for space in spaces {
        if is_member(conn, space, reader)? {
            out.push((space.clone(), position(conn, space)?));
        }
    }
    Ok(out)
}

/// A page of the change feed, for a member. Rows are read one at a time,
/// so a page cut short by its byte limit never reads the documents after it.
pub fn read_changes(
    conn: &Connection,
    reader: &UserId,
    space: &SpaceId,
    after: u64,
    limit: PageLimit,
) -> Result<ChangePage, StoreError> {
    if !is_member(conn, space, reader)? {
        return Err(not_a_member(space));
    }
    let position = position(conn, space)?;
    let mut stmt = conn
        .prepare_cached(
            "SELECT collection, doc_id, version, state, deleted, origin, mutation_id
             FROM documents WHERE space = ?1 AND version > ?2
             ORDER BY version LIMIT ?3",
        )
        .map_err(backend)?;
    let mut rows = stmt
        .query(params![
            space.as_str(),
            i64::try_from(after).unwrap_or(i64::MAX),
            i64::try_from(limit.changes.max(1).saturating_add(1)).unwrap_or(i64::MAX)
        ])
        .map_err(backend)?;
    let mut changes = Vec::new();
    let mut fill = PageFill::new(limit);
    let mut more = false;
    while let Some(row) = rows.next().map_err(backend)? {
        let collection: String = row.get(0).map_err(backend)?;
        let doc_id: String = row.get(1).map_err(backend)?;
        let version: i64 = row.get(2).map_err(backend)?;
        let state: String = row.get(3).map_err(backend)?;
        let deleted: bool = row.get(4).map_err(backend)?;
        let origin: Option<String> = row.get(5).map_err(backend)?;
        let mutation_id: Option<Vec<u8>> = row.get(6).map_err(backend)?;
        let state: DocState = serde_json::from_str(&state).map_err(|e| corrupt("document", e))?;
        let change = Change {
            space: space.clone(),
            rev: u64::try_from(version).unwrap_or(0),
            collection: Collection::new(collection).map_err(|e| corrupt("collection", e))?,
            doc_id: DocId::new(doc_id).map_err(|e| corrupt("document id", e))?,
            state,
            deleted,
            origin: origin
                .map(DeviceId::new)
                .transpose()
                .map_err(|e| corrupt("device id", e))?,
            mutation_id: mutation_id
                .map(|b| Uuid::from_slice(&b).map(MutationId::from_uuid))
                .transpose()
                .map_err(|e| corrupt("mutation id", e))?,
        };
        if !fill.admit(&change) {
            more = true;
            break;
        }
        changes.push(change);
    }
    Ok(ChangePage {
        changes,
        more,
        position,
    })
}
