//! The device's identity: created once, kept for the life of the data
//! directory.

use rusqlite::{Connection, OptionalExtension, params};
use tandem_protocol::{DeviceId, Hlc, SpaceId, UserId};

use crate::clock::now_millis;
use crate::error::Error;
use crate::store::to_sql_int;

/// Who this device is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LocalIdentity {
    /// Generated when the directory was first used; never changes.
    pub device_id: DeviceId,
    /// The user the directory belongs to.
    pub user_id: UserId,
    /// The user's personal space, where documents go by default.
    pub personal_space: SpaceId,
    /// The last clock reading handed out before this open (see
    /// [`last_reading`]).
    pub last_hlc: Option<Hlc>,
}

/// Reads the device row, creating it on first use. A different `user`
/// than the stored one is refused; a different `device_name` renames the
/// device.
pub(crate) fn load_or_create(
    conn: &Connection,
    user: &str,
    device_name: &str,
) -> Result<LocalIdentity, Error> {
    let user_id = UserId::new(user)?;
    let stored: Option<(String, String, String, Option<String>)> = conn
        .query_row(
            "SELECT device_id, user_id, device_name, last_hlc FROM device WHERE singleton = 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
        )
        .optional()?;
    let Some((device_id, stored_user, stored_name, last_hlc)) = stored else {
        let device_id = DeviceId::generate();
        conn.execute(
            "INSERT INTO device (singleton, device_id, device_name, user_id, last_hlc, created_at)
             VALUES (1, ?1, ?2, ?3, NULL, ?4)",
            params![
                device_id.as_str(),
                device_name,
                user_id.as_str(),
                to_sql_int(now_millis())
            ],
        )?;
        return Ok(LocalIdentity {
            personal_space: SpaceId::personal(&user_id),
            device_id,
            user_id,
            last_hlc: None,
        });
    };
    if stored_user != user_id.as_str() {
        return Err(Error::UserMismatch {
            stored: stored_user,
            requested: user_id.to_string(),
        });
    }
    if stored_name != device_name {
        conn.execute(
            "UPDATE device SET device_name = ?1 WHERE singleton = 1",
            [device_name],
        )?;
    }
    let device_id =
        DeviceId::new(device_id).map_err(|e| Error::CorruptStore(format!("device id: {e}")))?;
    let last_hlc = last_hlc
        .map(|text| text.parse::<Hlc>())
        .transpose()
        .map_err(|e| Error::CorruptStore(format!("device clock: {e}")))?;
    Ok(LocalIdentity {
        personal_space: SpaceId::personal(&user_id),
        device_id,
        user_id,
        last_hlc,
    })
}

/// The device's last clock reading: the later of `device.last_hlc` and the
/// stamp of the newest outbox entry.
///
/// A local write does not update `device.last_hlc`: that would add a page
/// to every commit's WAL frames (one in nine, measured), for a value the
/// write's own outbox entry already records. Entries are stamped in seq
/// order under the writer lock, so the newest entry carries the latest
/// stamp. The rule that keeps this true: whatever deletes outbox entries
/// (an acknowledgement, a discard) first saves the clock with
/// [`save_clock`] in the same transaction.
pub(crate) fn last_reading(conn: &Connection, saved: Option<Hlc>) -> Result<Option<Hlc>, Error> {
    let newest: Option<String> = conn
        .query_row(
            "SELECT json_extract(mutation, '$.hlc') FROM outbox ORDER BY seq DESC LIMIT 1",
            [],
            |row| row.get(0),
        )
        .optional()?
        .flatten();
    let newest = newest
        .map(|text| text.parse::<Hlc>())
        .transpose()
        .map_err(|e| Error::CorruptStore(format!("outbox clock: {e}")))?;
    Ok(saved.max(newest))
}

/// Records the clock's last reading (see [`last_reading`] for when).
pub(crate) fn save_clock(conn: &Connection, hlc: &Hlc) -> Result<(), Error> {
    conn.prepare_cached("UPDATE device SET last_hlc = ?1 WHERE singleton = 1")?
        .execute([hlc.to_string()])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::schema;

    fn db(dir: &std::path::Path) -> Connection {
        let mut conn = Connection::open(dir.join("t.db")).unwrap();
        schema::prepare(&mut conn).unwrap();
        conn
    }

    #[test]
    fn the_device_id_is_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let conn = db(dir.path());
        let first = load_or_create(&conn, "alice", "phone").unwrap();
        let again = load_or_create(&conn, "alice", "renamed").unwrap();
        assert_eq!(first.device_id, again.device_id);
        assert_eq!(first.personal_space.as_str(), "personal:alice");
        let name: String = conn
            .query_row("SELECT device_name FROM device", [], |r| r.get(0))
            .unwrap();
        assert_eq!(name, "renamed");
    }

    #[test]
    fn another_user_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let conn = db(dir.path());
        load_or_create(&conn, "alice", "phone").unwrap();
        assert!(matches!(
            load_or_create(&conn, "bob", "phone"),
            Err(Error::UserMismatch { .. })
        ));
    }
}
