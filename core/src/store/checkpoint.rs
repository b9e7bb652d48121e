//! WAL checkpoints, off the write path.
//!
//! In WAL mode every commit appends pages to the WAL; a checkpoint copies
//! them back into the database file and fsyncs it. By default SQLite runs
//! that checkpoint inside whichever commit pushes the WAL past 1000 pages,
//! so one write in a few hundred pays for copying and fsyncing megabytes,
//! and the tail latency of local writes is the checkpoint's, not the
//! commit's. So the writer connection has `wal_autocheckpoint = 0`, and its
//! WAL hook (called after each commit with the WAL's size) wakes a
//! background thread with its own connection, which runs PASSIVE
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use rusqlite::Connection;
use rusqlite::wal::CheckpointMode;

use crate::config::DatabaseKey;
use crate::error::Error;

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

/// The lock every write to a database holds, around a `T` (the writer
/// connection and what goes with it).
///
/// A plain mutex is not fair: a writer that releases it and takes it again
/// at once wins over a thread that was already waiting, so a checkpointer
/// waiting for a pause could starve (measured: tens of milliseconds while
/// a burst of writes went on, which then made its pass long). A waiting
/// checkpointer holds the turnstile, which every writer passes through
/// before taking the lock, so it is next.
pub struct WriterLock<T> {
    turnstile: Mutex<()>,
    inner: Mutex<T>,
}

impl<T> WriterLock<T> {
    /// A lock around `value`.
    pub fn new(value: T) -> WriterLock<T> {
        WriterLock {
            turnstile: Mutex::new(()),
            inner: Mutex::new(value),
        }
    }

    /// Takes the lock for a write. A panic while it was held does not make
    /// it unusable: what it guards is a connection, whose open transaction
    /// rolls back when dropped during the unwinding.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, T> {
        drop(
            self.turnstile
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the lock ahead of writers that have not reached it yet.
    fn lock_first(&self) -> (std::sync::MutexGuard<'_, ()>, std::sync::MutexGuard<'_, T>) {
        let turnstile = self
            .turnstile
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        (turnstile, inner)
    }
}

/// The background checkpointer of one database. Stops (and joins its
/// thread) when dropped.
pub struct Checkpointer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    signal: Mutex<Signal>,
    wake: Condvar,
    passive_runs: AtomicU64,
    restart_runs: AtomicU64,
    frames_checkpointed: AtomicU64,
}

#[derive(Default)]
struct Signal {
    wanted: bool,
    stop: bool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Signal> {
        // The signal is two flags; a panic elsewhere cannot leave them
        // inconsistent, so a poisoned lock is still usable.
        self.signal.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Checkpointer {
    /// Installs the WAL hook on `writer` (which must have
    /// `wal_autocheckpoint = 0` already: setting that pragma replaces the
    /// hook) and starts the thread, with its own connection to `path`.
    /// `writers` is the lock every write to the database holds; the thread
    /// holds it during a restart pass.
    pub fn start<T: Send + 'static>(
        path: &Path,
        key: Option<&DatabaseKey>,
        writer: &mut Connection,
        writers: Arc<WriterLock<T>>,
        settings: CheckpointSettings,
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

        let shared = Arc::new(Shared {
            signal: Mutex::new(Signal::default()),
            wake: Condvar::new(),
            passive_runs: AtomicU64::new(0),
            restart_runs: AtomicU64::new(0),
            frames_checkpointed: AtomicU64::new(0),
        });
        let hook_shared = Arc::clone(&shared);
        let every = settings.passive_pages.max(1);
        // The WAL size at which the hook next wakes the thread. It runs on
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
                let mut signal = hook_shared.lock();
                signal.wanted = true;
                hook_shared.wake.notify_one();
            }
            Ok(())
        }))?;

        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("tandem-checkpoint".into())
            .spawn(move || run(&conn, &writers, &thread_shared, settings))?;
        Ok(Checkpointer {
            shared,
            thread: Some(thread),
        })
    }

    /// What the thread has done so far.
    pub fn stats(&self) -> CheckpointStats {
        CheckpointStats {
            passive_runs: self.shared.passive_runs.load(Ordering::Relaxed),
            restart_runs: self.shared.restart_runs.load(Ordering::Relaxed),
            frames_checkpointed: self.shared.frames_checkpointed.load(Ordering::Relaxed),
        }
    }

    /// Stops the thread and waits for it.
    pub fn stop(&mut self) {
        {
            let mut signal = self.shared.lock();
            signal.stop = true;
            self.shared.wake.notify_one();
        }
        if let Some(thread) = self.thread.take() {
            // A panic in the thread has nothing to hand back; the database
            // is consistent whatever a checkpoint was doing.
            let _ = thread.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One passive checkpoint; returns the WAL's size in frames.
fn passive(conn: &Connection, shared: &Shared) -> Option<i32> {
    // An error (SQLITE_BUSY when another process checkpoints, or I/O) is
    // not fatal: the frames stay in the WAL, reads and writes stay
    // correct, and the next wake-up tries again.
    let (log, done) = conn
        .wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE)
        .ok()?;
    shared
        .frames_checkpointed
        .store(u64::try_from(done).unwrap_or(0), Ordering::Relaxed);
    Some(log)
}

fn run<T>(
    conn: &Connection,
    writers: &WriterLock<T>,
    shared: &Shared,
    settings: CheckpointSettings,
) {
    loop {
        {
            let mut signal = shared.lock();
            while !signal.wanted && !signal.stop {
                signal = shared
                    .wake
                    .wait(signal)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if signal.stop {
                return;
            }
            signal.wanted = false;
        }
        let Some(log) = passive(conn, shared) else {
            continue;
        };
        shared.passive_runs.fetch_add(1, Ordering::Relaxed);
        if log >= settings.restart_pages {
            let _writers_held = writers.lock_first();
            if passive(conn, shared).is_some() {
                shared.restart_runs.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
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
