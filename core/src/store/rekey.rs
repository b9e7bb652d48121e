//! Changing the key a device's database is encrypted with: encrypting a
//! plain database, decrypting one, or moving to a new key.
//!
//! The pages are written again under the new key into a new file beside
//! the database (SQLCipher's `sqlcipher_export`), which is flushed and then
//! renamed over the old one: a crash before the rename leaves the old
//! database as it was, after it the new one complete. The old database's
//! WAL is checkpointed and gone before the rename, so no page of it can be
//! applied to the new file. No client may have the directory open.

use std::path::{Path, PathBuf};

use crate::config::{DATABASE_FILE, DatabaseKey};
use crate::error::Error;
use crate::store::connect;

/// Re-encrypts the database in `data_dir` from `current` to `new` (`None`:
/// plain SQLite).
pub(crate) fn change_key(
    data_dir: &Path,
    current: Option<&DatabaseKey>,
    new: Option<&DatabaseKey>,
) -> Result<(), Error> {
    let path = data_dir.join(DATABASE_FILE);
    if !path.exists() {
        return Err(Error::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no database in {}", data_dir.display()),
        )));
    }
    let next = with_suffix(&path, ".rekey");
    remove_if_present(&next)?;
    {
        let conn = connect(&path, current)?;
        // Everything in the WAL goes into the database file first: the
        // export reads through the connection either way, but the WAL must
        // be empty before the file is replaced.
        let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        if busy != 0 {
            return Err(Error::Storage(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                Some("the database is open elsewhere: close every client first".into()),
            )));
        }
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let target = next
            .to_str()
            .ok_or_else(|| Error::InvalidConfig("the data directory is not UTF-8".into()))?
            .replace('\'', "''");
        // `KEY ''` attaches a plain database.
        let key = new
            .map(DatabaseKey::raw_literal)
            .unwrap_or_default()
            .replace('\'', "''");
        conn.execute_batch(&format!(
            "ATTACH DATABASE '{target}' AS rekeyed KEY '{key}';
             SELECT sqlcipher_export('rekeyed');
             PRAGMA rekeyed.user_version = {version};
             DETACH DATABASE rekeyed;"
        ))?;
    }
    std::fs::File::open(&next)?.sync_all()?;
    // The old connection is closed: SQLite removed an empty WAL; one that
    // is still there and not empty would hold pages of the old database.
    for suffix in ["-wal", "-shm"] {
        let side = with_suffix(&path, suffix);
        if std::fs::metadata(&side).is_ok_and(|m| m.len() > 0) && suffix == "-wal" {
            remove_if_present(&next)?;
            return Err(Error::CorruptStore(
                "the old database's WAL was not emptied; nothing was changed".into(),
            ));
        }
        remove_if_present(&side)?;
    }
    std::fs::rename(&next, &path)?;
    if let Ok(dir) = std::fs::File::open(data_dir) {
        // The rename is durable once the directory is flushed (not every
        // platform can open a directory; the rename is atomic either way).
        let _ = dir.sync_all();
    }
    Ok(())
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn remove_if_present(path: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Io(e)),
    }
}
