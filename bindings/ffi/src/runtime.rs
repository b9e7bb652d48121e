//! The one tokio runtime of the bindings.
//!
//! The host calls in from its own threads (the main thread, Kotlin
//! dispatchers, Swift's cooperative pool) and polls async exports with its
//! own executor. Work that needs tokio runs on this runtime, and the async
//! export awaits the task's `JoinHandle`, which any executor can poll. The
//! sync engine's tasks (the WebSocket link, timers, token refresh) run here
//! too. Blocking work (SQLite) goes to the runtime's blocking pool, so a
//! slow open never stalls the host's executor threads.

use std::sync::LazyLock;

use tokio::runtime::{Builder, Runtime};
use tokio::task::JoinError;

use crate::error::TandemError;

/// Built on first use: two worker threads suffice for one link per client;
/// SQLite work runs on the blocking pool.
static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| {
    Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("tandem-runtime")
        .enable_all()
        .build()
        // Creating a runtime fails only if the OS refuses threads or an
        // I/O driver; nothing in the bindings can work without one.
        .unwrap_or_else(|e| panic!("cannot start the Tandem runtime: {e}"))
});

/// The bindings' runtime.
pub(crate) fn runtime() -> &'static Runtime {
    &RUNTIME
}

/// Runs blocking work (a call into the store) on the runtime's blocking
/// pool and awaits it from whatever executor polls the export. A panic in
/// `work` comes back as [`TandemError::Internal`].
pub(crate) async fn blocking<T, E>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, TandemError>
where
    T: Send + 'static,
    E: Into<TandemError> + Send + 'static,
{
    runtime()
        .spawn_blocking(work)
        .await
        .map_err(joined)?
        .map_err(Into::into)
}

/// Runs `work` (a call into the sync engine, which spawns its tasks on the
/// current runtime) as a task of the runtime and awaits it from whatever
/// executor polls the export. A panic comes back as
/// [`TandemError::Internal`].
pub(crate) async fn spawn<T, E>(
    work: impl Future<Output = Result<T, E>> + Send + 'static,
) -> Result<T, TandemError>
where
    T: Send + 'static,
    E: Into<TandemError> + Send + 'static,
{
    runtime()
        .spawn(work)
        .await
        .map_err(joined)?
        .map_err(Into::into)
}

/// A task that did not finish: it panicked, or the runtime shut down.
fn joined(error: JoinError) -> TandemError {
    match error.try_into_panic() {
        Ok(panic) => crate::error::panicked(panic.as_ref()),
        Err(error) => TandemError::Internal {
            reason: format!("the task did not finish: {error}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        // A current-thread runtime of the test's own stands in for the
        // host's executor: awaiting works from outside the bindings' runtime.
        Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    #[test]
    fn blocking_work_runs_on_the_bindings_runtime() {
        let name = block_on(blocking(|| {
            Ok::<_, TandemError>(std::thread::current().name().map(str::to_owned))
        }))
        .unwrap();
        assert_eq!(name.as_deref(), Some("tandem-runtime"));
    }

    #[test]
    fn a_panic_in_blocking_work_is_an_internal_error() {
        let result = block_on(blocking(|| -> Result<(), TandemError> {
            panic!("the store is broken")
        }));
        assert!(matches!(
            result,
            Err(TandemError::Internal { reason }) if reason.contains("the store is broken")
        ));
    }
}
