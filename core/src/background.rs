//! Work the core does off the caller's path, and who runs it.
//!
//! Two jobs must not run on the thread that writes or syncs: WAL
//! checkpoints (they would put their milliseconds into a write's latency,
//! see `store/checkpoint.rs`) and calls to the app's observers (a slow
//! observer must not stall a write or the sync engine, see `observe.rs`).
//! Each is a [`BackgroundTask`]: it does what is pending when asked and
//! returns, never waiting for more. A [`Background`] decides where that
//! runs:
//!
//! - [`Threads`] (the default) gives each task a thread of its own that
//!   sleeps until woken: what phones and servers want.
//! - [`HostDriven`] runs nothing by itself: the host calls
//!   [`HostDriven::run_pending`] on its own turn (a browser's event loop,
//!   a single-threaded app extension, a deterministic simulator), after
//!   being told that work is waiting.
//!
//! The contract every implementation keeps: after [`TaskHandle::wake`],
//! `run_pending` runs at least once, and one task's `run_pending` never
//! runs twice at the same time; after [`TaskHandle::stop`] returns it does
//! not start again (unless `stop` was called from inside the task, which
//! then only finishes its current run).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{JoinHandle, ThreadId};

use crate::error::Error;

/// Work that runs when woken.
pub trait BackgroundTask: Send + Sync {
    /// Does what is pending now, then returns.
    fn run_pending(&self);
}

/// How the core asks for a task to run.
pub trait TaskHandle: Send + Sync {
    /// Work is pending: run the task soon. Cheap, never blocks on the task.
    fn wake(&self);

    /// Ends the task (see the module's contract). Idempotent.
    fn stop(&self);
}

/// Runs the core's background tasks.
pub trait Background: Send + Sync {
    /// Takes in `task`, named `name` (a thread name, or a label in the
    /// host's logs).
    fn start(
        &self,
        name: &str,
        task: Arc<dyn BackgroundTask>,
    ) -> Result<Arc<dyn TaskHandle>, Error>;
}

/// One thread per task, sleeping until woken.
#[derive(Debug, Clone, Copy, Default)]
pub struct Threads;

impl Background for Threads {
    fn start(
        &self,
        name: &str,
        task: Arc<dyn BackgroundTask>,
    ) -> Result<Arc<dyn TaskHandle>, Error> {
        let signal = Arc::new(Signal::default());
        let thread_signal = Arc::clone(&signal);
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                while thread_signal.next() {
                    task.run_pending();
                }
            })?;
        let id = thread.thread().id();
        Ok(Arc::new(ThreadHandle {
            signal,
            thread: Mutex::new(Some(thread)),
            id,
        }))
    }
}

/// What a task's thread waits on.
#[derive(Default)]
struct Signal {
    state: Mutex<SignalState>,
    changed: Condvar,
}

#[derive(Default)]
struct SignalState {
    wanted: bool,
    stop: bool,
    /// The thread is waiting (so waking must notify it; otherwise it looks
    /// at `wanted` before it waits again, and a burst of wakes costs no
    /// system calls).
    idle: bool,
}

impl Signal {
    /// Waits until woken (`true`) or stopped (`false`).
    fn next(&self) -> bool {
        let mut state = lock(&self.state);
        while !state.wanted && !state.stop {
            state.idle = true;
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.idle = false;
        state.wanted = false;
        !state.stop
    }

    fn set(&self, change: impl FnOnce(&mut SignalState)) {
        let mut state = lock(&self.state);
        change(&mut state);
        if state.idle {
            state.idle = false;
            self.changed.notify_one();
        }
    }
}

struct ThreadHandle {
    signal: Arc<Signal>,
    thread: Mutex<Option<JoinHandle<()>>>,
    id: ThreadId,
}

impl TaskHandle for ThreadHandle {
    fn wake(&self) {
        self.signal.set(|s| s.wanted = true);
    }

    fn stop(&self) {
        self.signal.set(|s| s.stop = true);
        if std::thread::current().id() == self.id {
            // Called by the task itself: its thread ends after this run.
            return;
        }
        let thread = lock(&self.thread).take();
        if let Some(thread) = thread {
            // A panic in the task has nothing to hand back.
            let _ = thread.join();
        }
    }
}

impl Drop for ThreadHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Tasks run by the host, on its own turn.
pub struct HostDriven {
    tasks: Mutex<Vec<Arc<HostTask>>>,
    on_wake: Arc<dyn Fn() + Send + Sync>,
}

impl HostDriven {
    /// A runner that calls `on_wake` whenever a task has work waiting (to
    /// schedule a turn that calls [`HostDriven::run_pending`]; it must not
    /// run the tasks itself, since it may be called with a store lock
    /// held).
    pub fn new(on_wake: impl Fn() + Send + Sync + 'static) -> HostDriven {
        HostDriven {
            tasks: Mutex::new(Vec::new()),
            on_wake: Arc::new(on_wake),
        }
    }

    /// Runs every task that was woken, once each. Returns how many ran.
    pub fn run_pending(&self) -> usize {
        let tasks: Vec<Arc<HostTask>> = {
            let mut tasks = lock(&self.tasks);
            tasks.retain(|t| !t.stopped.load(Ordering::SeqCst));
            tasks.clone()
        };
        let mut ran = 0;
        for task in tasks {
            if task.wanted.swap(false, Ordering::SeqCst) && !task.stopped.load(Ordering::SeqCst) {
                task.task.run_pending();
                ran += 1;
            }
        }
        ran
    }
}

impl std::fmt::Debug for HostDriven {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostDriven")
            .field("tasks", &lock(&self.tasks).len())
            .finish_non_exhaustive()
    }
}

impl Background for HostDriven {
    fn start(
        &self,
        _name: &str,
        task: Arc<dyn BackgroundTask>,
    ) -> Result<Arc<dyn TaskHandle>, Error> {
        let entry = Arc::new(HostTask {
            task,
            wanted: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            on_wake: Arc::clone(&self.on_wake),
        });
        lock(&self.tasks).push(Arc::clone(&entry));
        Ok(entry)
    }
}

struct HostTask {
    task: Arc<dyn BackgroundTask>,
    wanted: AtomicBool,
    stopped: AtomicBool,
    on_wake: Arc<dyn Fn() + Send + Sync>,
}

impl TaskHandle for HostTask {
    fn wake(&self) {
        if !self.wanted.swap(true, Ordering::SeqCst) && !self.stopped.load(Ordering::SeqCst) {
            (self.on_wake)();
        }
    }

    fn stop(&self) {
        // The host runs tasks on its one thread: nothing can be running
        // now unless this is called from inside the task.
        self.stopped.store(true, Ordering::SeqCst);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::{Duration, Instant};

    #[derive(Default)]
    struct Counter(AtomicUsize);

    impl BackgroundTask for Counter {
        fn run_pending(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_host_driven_task_runs_only_when_the_host_says_and_once_per_wake() {
        let woken = Arc::new(AtomicUsize::new(0));
        let runner = {
            let woken = Arc::clone(&woken);
            Arc::new(HostDriven::new(move || {
                woken.fetch_add(1, Ordering::SeqCst);
            }))
        };
        let counter = Arc::new(Counter::default());
        let handle = runner.start("t", counter.clone()).unwrap();
        assert_eq!(runner.run_pending(), 0, "nothing was asked for");
        handle.wake();
        handle.wake();
        assert_eq!(woken.load(Ordering::SeqCst), 1, "one turn asked for");
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            0,
            "not run before the turn"
        );
        assert_eq!(runner.run_pending(), 1);
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        handle.stop();
        handle.wake();
        assert_eq!(runner.run_pending(), 0, "a stopped task never runs");
    }

    #[test]
    fn a_thread_task_runs_after_a_wake_and_not_after_stop() {
        let counter = Arc::new(Counter::default());
        let handle = Threads.start("tandem-test", counter.clone()).unwrap();
        handle.wake();
        let deadline = Instant::now() + Duration::from_secs(30);
        while counter.0.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "the task never ran");
            std::thread::sleep(Duration::from_millis(1));
        }
        handle.stop();
        let ran = counter.0.load(Ordering::SeqCst);
        handle.wake();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(counter.0.load(Ordering::SeqCst), ran);
    }
}
