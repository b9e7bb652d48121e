//! Where each space's sync stands: the last revision applied and the
//! checksum of the confirmed documents at it.

use std::collections::BTreeMap;

use rusqlite::Connection;
use tandem_protocol::SpaceChecksum;

use crate::error::Error;
use crate::store::{Store, from_sql_int};

/// A space's sync position: the last revision applied and the checksum of
/// the confirmed documents at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub rev: u64,
    pub checksum: SpaceChecksum,
}

pub(crate) fn load_cursors(conn: &Connection) -> Result<BTreeMap<String, Cursor>, Error> {
    let mut stmt = conn.prepare_cached("SELECT space, rev, checksum FROM cursors")?;
    let rows = stmt.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, i64>(1)?,
            row.get::<_, String>(2)?,
        ))
    })?;
    let mut out = BTreeMap::new();
    for row in rows {
        let (space, rev, checksum) = row?;
        let checksum = SpaceChecksum::try_from(checksum)
            .map_err(|e| Error::CorruptStore(format!("checksum of {space}: {e}")))?;
        out.insert(
            space,
            Cursor {
                rev: from_sql_int(rev, "cursor")?,
                checksum,
            },
        );
    }
    Ok(out)
}

impl Store {
    /// Every space's cursor.
    pub(crate) fn cursors(&self) -> Result<BTreeMap<String, Cursor>, Error> {
        self.readers.with(load_cursors)
    }
}
