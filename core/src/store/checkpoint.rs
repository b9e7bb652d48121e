//! WAL checkpoints, off the write path.
//!
//! In WAL mode every commit appends pages to the WAL; a checkpoint copies
//! them back into the database file and fsyncs it. By default SQLite runs
//! that checkpoint inside whichever commit pushes the WAL past 1000 pages,
//! so one write in a few hundred pays for copying and fsyncing megabytes,
//! and the tail latency of local writes is the checkpoint's, not the
//! commit's. So the writer connection has `wal_autocheckpoint = 0`, and its
//! WAL hook (called after each commit with the WAL's size) wakes a
//! background task (`crate::background`: a thread of its own by default)
//! with its own connection, which runs PASSIVE
//! checkpoints: they copy what they can without taking any lock a writer
//! needs. The hook wakes the thread once per
//! [`CheckpointSettings::passive_pages`] pages appended, not on every
//! commit, so a burst of writes does not become a burst of fsyncs.
//!
//! SQLite starts the WAL over from its beginning only when a write begins
//! after a checkpoint has copied every frame. During a sustained burst of
//! writes a passive checkpoint never has: frames keep arriving while it
//! runs. Left alone, the WAL then grows by every page written (gigabytes
//! in the 100,000-write benchmark), and reads slow down as the WAL index
//! grows. So when the WAL is still larger than
//! [`CheckpointSettings::restart_pages`] after a passive pass, the thread
//! takes the [`WriterLock`] that every write holds (a mutex in the process,
//! not a SQLite lock, so the waiting write resumes the moment it is
//! released rather than when SQLite's busy handler next polls) and runs one
//! more passive pass: it copies only the frames that arrived during the
//! last one, and the next write starts the WAL over. One write in several
//! thousand of a sustained burst waits for that short pass; at the rates of
//! a real app it never happens, because the WAL restarts between writes.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::Connection;
use rusqlite::wal::CheckpointMode;

use crate::background::{Background, BackgroundTask, TaskHandle};
use crate::config::DatabaseKey;
use crate::error::Error;
use crate::store::WriterLock;

/// When checkpoints run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointSettings {
    /// Run a passive checkpoint each time this many pages have been
    /// appended to the WAL (SQLite's own autocheckpoint default is 1000,
    /// about 4 MiB).
    pub passive_pages: i32,
    /// Hold writers off for one short pass when the WAL is still this large
    /// after a passive pass (16384 pages, 64 MiB). Each such pass stalls
    /// one write for about two fsyncs; measured on the 100,000-write
    /// benchmark, 8192 pages gave a p99.9 of 1.1 ms and 16384 pages 0.5 ms,
    /// for a WAL that may reach twice the size during a sustained burst.
    pub restart_pages: i32,
}

impl Default for CheckpointSettings {
    fn default() -> CheckpointSettings {
        CheckpointSettings {
            passive_pages: 1000,
            restart_pages: 16384,
        }
    }
}

/// Counters of a [`Checkpointer`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckpointStats {
    /// Passive checkpoints that ran while writers ran.
    pub passive_runs: u64,
    /// Passes that held writers off because the WAL had grown past
    /// [`CheckpointSettings::restart_pages`].
    pub restart_runs: u64,
    /// How many frames of the WAL were in the database file after the
    /// last pass (zero if none could run).
    pub frames_checkpointed: u64,
}

/// The background checkpointer of one database. Stops (and waits for a
/// pass in progress) when dropped.
pub struct Checkpointer {
    counters: Arc<Counters>,
    task: Arc<dyn TaskHandle>,
}

#[derive(Default)]
struct Counters {
    passive_runs: AtomicU64,
    restart_runs: AtomicU64,
    frames_checkpointed: AtomicU64,
}

/// The checkpoint pass, run by the background task when the hook wakes it.
struct Pass<T> {
    conn: Mutex<Connection>,
    writers: Arc<WriterLock<T>>,
    settings: CheckpointSettings,
    counters: Arc<Counters>,
    /// Set by the hook; a pass takes it (a wake without it, such as a
    /// spurious one, does nothing).
    wanted: Arc<AtomicBool>,
}

impl Checkpointer {
    /// Installs the WAL hook on `writer` (which must have
    /// `wal_autocheckpoint = 0` already: setting that pragma replaces the
    /// hook) and starts the checkpoint task on `background`, with its own
    /// connection to `path`. `writers` is the lock every write to the
    /// database holds; the task holds it during a restart pass.
    pub fn start<T: Send + 'static>(
        path: &Path,
        key: Option<&DatabaseKey>,
        writer: &mut Connection,
        writers: Arc<WriterLock<T>>,
        settings: CheckpointSettings,
        background: &dyn Background,
    ) -> Result<Checkpointer, Error> {
        let conn = crate::store::connect(path, key)?;
        // A connection learns that the database is in WAL mode when it
        // first reads it; until then a checkpoint on it does nothing and
        // reports -1 frames.
        let mode: String = conn.pragma_query_value(None, "journal_mode", |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::CorruptStore(format!(
                "the database is in {mode} mode, not WAL"
            )));
        }

        let counters = Arc::new(Counters::default());
        let wanted = Arc::new(AtomicBool::new(false));
        let task = background.start(
            "tandem-checkpoint",
            Arc::new(Pass {
                conn: Mutex::new(conn),
                writers,
                settings,
                counters: Arc::clone(&counters),
                wanted: Arc::clone(&wanted),
            }),
        )?;
        let hook_task = Arc::clone(&task);
        let every = settings.passive_pages.max(1);
        // The WAL size at which the hook next wakes the task. It runs on
        // the writer's thread, inside the commit, so it only compares
        // numbers unless it is time to signal.
        let mut next_wake = every;
        writer.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages: i32| {
            if pages < next_wake - every {
                // The WAL started over.
                next_wake = every;
            }
            if pages >= next_wake {
                next_wake = pages.saturating_add(every);
                wanted.store(true, Ordering::SeqCst);
                hook_task.wake();
            }
            Ok(())
        }))?;
        Ok(Checkpointer { counters, task })
    }

    /// What the task has done so far.
    pub fn stats(&self) -> CheckpointStats {
        CheckpointStats {
            passive_runs: self.counters.passive_runs.load(Ordering::Relaxed),
            restart_runs: self.counters.restart_runs.load(Ordering::Relaxed),
            frames_checkpointed: self.counters.frames_checkpointed.load(Ordering::Relaxed),
        }
    }

    /// Stops the task and waits for a pass in progress.
    pub fn stop(&mut self) {
        self.task.stop();
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl<T: Send> BackgroundTask for Pass<T> {
    fn run_pending(&self) {
        if !self.wanted.swap(false, Ordering::SeqCst) {
            return;
        }
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(log) = passive(&conn, &self.counters) else {
            return;
        };
        self.counters.passive_runs.fetch_add(1, Ordering::Relaxed);
        if log >= self.settings.restart_pages {
            let _writers_held = self.writers.lock_first();
            if passive(&conn, &self.counters).is_some() {
                self.counters.restart_runs.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One passive checkpoint; returns the WAL's size in frames.
fn passive(conn: &Connection, counters: &Counters) -> Option<i32> {
    // An error (SQLITE_BUSY when another process checkpoints, or I/O) is
    // not fatal: the frames stay in the WAL, reads and writes stay
    // correct, and the next wake-up tries again.
    let (log, done) = conn
        .wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE)
        .ok()?;
    counters
        .frames_checkpointed
        .store(u64::try_from(done).unwrap_or(0), Ordering::Relaxed);
    Some(log)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Durability;
    use crate::store::open_writer;
    use std::time::{Duration, Instant};

    /// The WAL's size in frames, by a passive checkpoint on `conn` (retried
    /// while the checkpointer thread runs one of its own).
    fn wal_frames(conn: &Connection) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match conn.wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE) {
                Ok((frames, _)) => return frames,
                Err(e) => assert!(Instant::now() < deadline, "{e}"),
            }
        }
    }

    #[test]
    fn an_oversized_wal_is_restarted_while_writers_are_held_off() {
        let dir = tempfile::tempdir().unwrap();
        let writers = Arc::new(WriterLock::new(()));
        let settings = CheckpointSettings {
            passive_pages: 8,
            restart_pages: 1,
        };
        let (conn, checkpointer) = open_writer(
            &dir.path().join("t.db"),
            None,
            Durability::Normal,
            settings,
            Arc::clone(&writers),
            &crate::background::Threads,
        )
        .unwrap();
        conn.execute_batch("CREATE TABLE t (x TEXT)").unwrap();

        // Writes keep coming, each under the writers' lock as in the store,
        // so every passive pass leaves frames behind and only a pass that
        // holds writers off can copy them all.
        let stats = Arc::new(checkpointer);
        let writer = {
            let writers = Arc::clone(&writers);
            let stats = Arc::clone(&stats);
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut rows = 0;
                while stats.stats().restart_runs == 0 {
                    assert!(Instant::now() < deadline, "no restart pass ran");
                    let _held = writers.lock();
                    conn.execute("INSERT INTO t VALUES (randomblob(2000))", [])
                        .unwrap();
                    rows += 1;
                }
                (conn, rows)
            })
        };
        let (conn, rows) = writer.join().unwrap();
        assert!(stats.stats().passive_runs >= 1);

        // Everything was copied while no write could begin, so the next
        // write starts the WAL over.
        let _held = writers.lock();
        conn.execute("INSERT INTO t VALUES ('small')", []).unwrap();
        let after = wal_frames(&conn);
        assert!(
            after < 8,
            "the WAL did not start over: {after} frames after {rows} writes"
        );
    }
}
