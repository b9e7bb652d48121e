//! The lock every write to a database holds.

use std::sync::{Mutex, PoisonError};

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
    pub(crate) fn lock_first(
        &self,
    ) -> (std::sync::MutexGuard<'_, ()>, std::sync::MutexGuard<'_, T>) {
        let turnstile = self
            .turnstile
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        (turnstile, inner)
    }
}
