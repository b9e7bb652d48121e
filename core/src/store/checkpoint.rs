//! WAL checkpoints, off the write path.
//!
//! In WAL mode every commit appends pages to the WAL; a checkpoint copies
//! them back into the database file and fsyncs it. By default SQLite runs
//! that checkpoint inside whichever commit pushes the WAL past 1000 pages,
//! so one write in a few hundred pays for copying and fsyncing megabytes:
//! measured here, checkpoints, not commits, make the tail latency of local
//! writes. So the writer connection has `wal_autocheckpoint = 0`, and its
//! WAL hook (called after each commit with the WAL's size) wakes a
//! background thread with its own connection, which runs PASSIVE
//! checkpoints: they copy what they can without taking any lock a writer
//! needs.
//!
//! A PASSIVE checkpoint can never finish while a writer keeps appending, and
//! SQLite restarts the WAL from its beginning only after a checkpoint has
//! copied every frame. Under a long burst of writes the WAL would therefore
//! grow without bound. When it passes [`CheckpointSettings::restart_pages`]
//! the thread runs one RESTART checkpoint, which waits for the current write
//! to end, holds writers off while it copies the few frames the passive
//! pass left, and lets the next write start the WAL afresh. That stalls one
//! write for the length of the copy and an fsync, once every few thousand
//! writes of a sustained burst, instead of every few hundred.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;
use rusqlite::wal::CheckpointMode;

use crate::error::Error;

/// When checkpoints run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointSettings {
    /// Wake the checkpointer when the WAL holds this many pages (SQLite's
    /// own autocheckpoint default is 1000, about 4 MiB).
    pub passive_pages: i32,
    /// Hold writers off and finish the checkpoint when the WAL is still
    /// this large after a passive pass (16384 pages, 64 MiB).
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
    pub fn start(
        path: &Path,
        writer: &mut Connection,
        settings: CheckpointSettings,
    ) -> Result<Checkpointer, Error> {
        let conn = Connection::open(path)?;
        // RESTART waits for the running write and for readers through the
        // busy handler; give them time rather than fail.
        conn.busy_timeout(Duration::from_secs(5))?;

        let shared = Arc::new(Shared {
            signal: Mutex::new(Signal::default()),
            wake: Condvar::new(),
            passive_runs: AtomicU64::new(0),
            restart_runs: AtomicU64::new(0),
        });
        let hook_shared = Arc::clone(&shared);
        let threshold = settings.passive_pages;
        writer.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages: i32| {
            if pages >= threshold {
                let mut signal = hook_shared.lock();
                if !signal.wanted {
                    signal.wanted = true;
                    hook_shared.wake.notify_one();
                }
            }
            Ok(())
        }))?;

        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("tandem-checkpoint".into())
            .spawn(move || run(&conn, &thread_shared, settings))?;
        Ok(Checkpointer {
            shared,
            thread: Some(thread),
        })
    }

    /// How many passive and restart checkpoints have run.
    pub fn runs(&self) -> (u64, u64) {
        (
            self.shared.passive_runs.load(Ordering::Relaxed),
            self.shared.restart_runs.load(Ordering::Relaxed),
        )
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

fn run(conn: &Connection, shared: &Shared, settings: CheckpointSettings) {
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
        // Errors (SQLITE_BUSY when another checkpoint runs, or I/O) are not
        // fatal: the frames stay in the WAL, reads and writes stay correct,
        // and the next commit's hook asks again.
        let log = match conn.wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE) {
            Ok((log, _)) => log,
            Err(_) => continue,
        };
        shared.passive_runs.fetch_add(1, Ordering::Relaxed);
        if log >= settings.restart_pages
            && conn
                .wal_checkpoint_v2(None::<&str>, CheckpointMode::RESTART)
                .is_ok()
        {
            shared.restart_runs.fetch_add(1, Ordering::Relaxed);
        }
    }
}
