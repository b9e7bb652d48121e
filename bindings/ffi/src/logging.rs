//! Tandem's logs, delivered to the app's logger.
//!
//! The engine and the bindings log through `tracing` (and crates that use
//! the `log` facade are bridged into it). [`set_logger`] installs, once per
//! process, a `tracing` subscriber whose only job is to hand each event at
//! or above the chosen level to the app's [`Logger`] (which forwards to
//! `os_log`, Logcat or the app's own logging). Calling it again replaces
//! the logger and the level.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use tracing::field::{Field, Visit};
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::error::TandemError;

/// How severe a log record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, uniffi::Enum)]
pub enum LogLevel {
    /// Something failed and was not recovered.
    Error = 1,
    /// Something failed and was recovered (a retry, a dropped callback).
    Warn = 2,
    /// Lifecycle: opened, connected, closed.
    Info = 3,
    /// What the engine is doing, for debugging.
    Debug = 4,
    /// Everything.
    Trace = 5,
}

impl LogLevel {
    fn of(level: tracing::Level) -> LogLevel {
        match level {
            tracing::Level::ERROR => LogLevel::Error,
            tracing::Level::WARN => LogLevel::Warn,
            tracing::Level::INFO => LogLevel::Info,
            tracing::Level::DEBUG => LogLevel::Debug,
            tracing::Level::TRACE => LogLevel::Trace,
        }
    }
}

/// Receives Tandem's log records; implemented by the app.
#[uniffi::export(callback_interface)]
pub trait Logger: Send + Sync {
    /// One record. `target` is the Rust module it comes from (for example
    /// `tandem_ffi` or `tandem_core::sync`). Called on whatever thread
    /// logged; must not block. An error it returns is dropped (there is
    /// nowhere left to log it).
    fn log(&self, level: LogLevel, target: String, message: String) -> Result<(), TandemError>;
}

/// The app's logger; none until [`set_logger`] is called.
static LOGGER: RwLock<Option<Arc<dyn Logger>>> = RwLock::new(None);

/// The most verbose level delivered, as a [`LogLevel`] discriminant.
static MAX_LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Info as u8);

/// Whether this crate's subscriber is the process's global one.
static INSTALLED: OnceLock<bool> = OnceLock::new();

/// Sends Tandem's log records at `max_level` and above to `logger`,
/// replacing any logger set before.
///
/// If the process already has a global `tracing` subscriber (another Rust
/// library installed one first), Tandem's records go there instead, and
/// `logger` is told so once.
#[uniffi::export]
pub fn set_logger(logger: Box<dyn Logger>, max_level: LogLevel) {
    let logger: Arc<dyn Logger> = Arc::from(logger);
    *LOGGER
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::clone(&logger));
    MAX_LEVEL.store(max_level as u8, Ordering::SeqCst);
    let installed = *INSTALLED.get_or_init(|| {
        tracing_subscriber::registry()
            .with(ForeignLogLayer)
            .try_init()
            .is_ok()
    });
    if !installed {
        deliver(
            logger.as_ref(),
            LogLevel::Warn,
            "tandem_ffi".to_owned(),
            "another tracing subscriber is installed in this process; \
             Tandem's log records go to it"
                .to_owned(),
        );
    }
}

/// The `tracing` layer that forwards events to the app's logger.
struct ForeignLogLayer;

impl<S: Subscriber> Layer<S> for ForeignLogLayer {
    fn enabled(&self, metadata: &Metadata<'_>, _: Context<'_, S>) -> bool {
        LogLevel::of(*metadata.level()) as u8 <= MAX_LEVEL.load(Ordering::Relaxed)
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let logger = LOGGER
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let Some(logger) = logger else {
            return;
        };
        let metadata = event.metadata();
        let mut message = MessageText::default();
        event.record(&mut message);
        // The lock is released: a logger may call `set_logger` itself.
        deliver(
            logger.as_ref(),
            LogLevel::of(*metadata.level()),
            metadata.target().to_owned(),
            message.0,
        );
    }
}

/// Hands one record to the app's logger. Its failures are dropped, not
/// logged: logging them would call the failing logger again.
fn deliver(logger: &dyn Logger, level: LogLevel, target: String, message: String) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        logger.log(level, target, message)
    }));
}

/// An event's message followed by its other fields as `name=value`.
#[derive(Default)]
struct MessageText(String);

impl Visit for MessageText {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let fields = std::mem::take(&mut self.0);
            let _ = write!(self.0, "{value:?}");
            if !fields.is_empty() {
                self.0.push_str(&fields);
            }
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.insert_str(0, value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Recorded(Mutex<Vec<(LogLevel, String, String)>>);

    struct RecordingLogger(Arc<Recorded>);

    impl Logger for RecordingLogger {
        fn log(&self, level: LogLevel, target: String, message: String) -> Result<(), TandemError> {
            self.0.0.lock().unwrap().push((level, target, message));
            Ok(())
        }
    }

    #[test]
    fn events_at_or_above_the_level_reach_the_logger() {
        let recorded = Arc::new(Recorded::default());
        set_logger(
            Box::new(RecordingLogger(Arc::clone(&recorded))),
            LogLevel::Info,
        );
        tracing::info!(target: "tandem_ffi::test", device = "d1", "opened");
        tracing::debug!(target: "tandem_ffi::test", "too verbose");
        let records = recorded.0.lock().unwrap().clone();
        let ours: Vec<_> = records
            .iter()
            .filter(|(_, target, _)| target == "tandem_ffi::test")
            .collect();
        assert_eq!(
            ours,
            vec![&(
                LogLevel::Info,
                "tandem_ffi::test".to_owned(),
                "opened device=d1".to_owned()
            )]
        );
    }
}
