//! The one error the app sees, and every mapping into it.
//!
//! The core's errors are precise (one variant per thing that went wrong);
//! an app acts on a few cases only: show "offline", sign in again, resolve a
//! conflict, fix its input, report storage trouble, stop using a closed
//! client. [`TandemError`] has one variant per such case and keeps the
//! core's stable code and message in it, so nothing is lost for logs.
//!
//! All mapping lives in this file: from core errors, from failed foreign
//! callbacks, and from panics.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};

use tandem_core::{Error as CoreError, TokenError};
use tandem_protocol::ErrorCode;

/// What went wrong in a Tandem call. In Kotlin this is `TandemException`
/// (a sealed class); in Swift, `TandemError` (an `Error` enum).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
pub enum TandemError {
    /// The sync server could not be reached, the connection broke, a
    /// bounded sync ran out of time, or syncing is not started. The outbox
    /// keeps every write; it is sent when the link is back.
    #[error("network: {reason}")]
    Network {
        /// What failed, for logs.
        reason: String,
    },

    /// The TLS connection to the server failed: its certificate is not
    /// trusted (unknown authority: add a private CA to
    /// `SyncConfig.trusted_roots_pem`; wrong host name; expired; no pinned
    /// key), or the server does not speak TLS. Syncing retries with
    /// backoff; the reason says what to fix.
    #[error("tls: {reason}")]
    Tls {
        /// What failed, for people and logs.
        reason: String,
    },

    /// The server refused the credentials: the token provider's token was
    /// rejected or the device was revoked. Sign the user in again.
    #[error("unauthorized: {reason}")]
    Unauthorized {
        /// Why, for logs.
        reason: String,
    },

    /// The write conflicts with the server's version of the document. No
    /// call returns it today: the engine resolves conflicts by the
    /// collection's policy or the app's `ConflictHandler` and records them
    /// in the conflict log; it is here for calls that will wait for the
    /// server's verdict.
    #[error("conflict: {reason}")]
    Conflict {
        /// What conflicted, for logs.
        reason: String,
    },

    /// The caller's input is not acceptable: invalid JSON, a fields value
    /// that is not an object, a bad id, a query on a field without an
    /// index, a write the collection's policy forbids. Nothing was written.
    #[error("invalid input ({code}): {reason}")]
    InvalidInput {
        /// A stable machine-readable code (`invalid_json`, `not_an_object`,
        /// `not_indexed`, `invalid_id`, …), the same the CLI prints.
        code: String,
        /// A sentence for people.
        reason: String,
    },

    /// The device's database or data directory failed (disk full, damaged
    /// or newer database, permissions).
    #[error("storage ({code}): {reason}")]
    Storage {
        /// A stable machine-readable code (`storage`, `io`,
        /// `corrupt_store`, `incompatible_database`).
        code: String,
        /// What failed, for logs.
        reason: String,
    },

    /// This device does not hold the role (any more) at the epoch it acted
    /// under: another device took it over. Nothing was done; stop acting
    /// for the role until it comes back (`observe_role`).
    #[error("role lost: {reason}")]
    RoleLost {
        /// Which role and why, for logs.
        reason: String,
    },

    /// The client was closed; open a new one.
    #[error("the client is closed")]
    Closed,

    /// A bug: Rust panicked, or a foreign callback failed in a way it
    /// should not. The client stays usable.
    #[error("internal error: {reason}")]
    Internal {
        /// What happened, for the bug report.
        reason: String,
    },
}

impl From<CoreError> for TandemError {
    fn from(error: CoreError) -> TandemError {
        let code = error.code().to_owned();
        // The variant (and `code`) already say what kind of error it is.
        let reason = error.reason();
        match error {
            CoreError::InvalidJson(_)
            | CoreError::NotAnObject { .. }
            | CoreError::NotAnArray { .. }
            | CoreError::DocumentTooLarge { .. }
            | CoreError::InvalidId(_)
            | CoreError::NotIndexed { .. }
            | CoreError::InvalidIndex(_)
            | CoreError::CursorNotFound { .. }
            | CoreError::UnknownOperation(_)
            | CoreError::InvalidPayload(_)
            | CoreError::Rejected { .. }
            | CoreError::NotForThisDevice(_)
            | CoreError::InvalidConfig(_)
            // The app's key does not open the database: the key it passed
            // is the thing to fix.
            | CoreError::WrongKey(_)
            // The app opened a data directory with another user's id: the
            // pair it passed is wrong, and choosing another directory fixes it.
            | CoreError::UserMismatch { .. } => TandemError::InvalidInput { code, reason },
            CoreError::IncompatibleDatabase { .. }
            | CoreError::CorruptStore(_)
            | CoreError::Storage(_)
            | CoreError::Io(_)
            | CoreError::CredentialStore(_) => TandemError::Storage { code, reason },
            CoreError::Closed => TandemError::Closed,
            CoreError::Unauthorized(_) => TandemError::Unauthorized { reason },
            CoreError::Tls(_) => TandemError::Tls { reason },
            CoreError::StaleEpoch { .. } => TandemError::RoleLost { reason },
            // Not reaching the server, not syncing with one, a bounded sync
            // that ran out of time, a document only the server has: all
            // mean "try again when online".
            CoreError::Network(_)
            | CoreError::NotSyncing
            | CoreError::Timeout
            | CoreError::NotLocal { .. } => TandemError::Network { reason },
            CoreError::Token(TokenError::SignedOut(_)) => TandemError::Unauthorized { reason },
            CoreError::Token(TokenError::Unavailable(_)) => TandemError::Network { reason },
            CoreError::Server { code, .. } => from_server(code, reason),
        }
    }
}

/// An error the server answered an HTTP call with.
fn from_server(code: ErrorCode, reason: String) -> TandemError {
    match code {
        ErrorCode::Unauthorized | ErrorCode::Revoked | ErrorCode::Forbidden => {
            TandemError::Unauthorized { reason }
        }
        // `too_many_devices`: the user must revoke a device first; the
        // code says so to the app.
        ErrorCode::NotFound
        | ErrorCode::AlreadyExists
        | ErrorCode::InvalidRequest
        | ErrorCode::FrameTooLarge
        | ErrorCode::BatchTooLarge
        | ErrorCode::TooManyDevices => TandemError::InvalidInput {
            code: code.as_str().to_owned(),
            reason,
        },
        // Transient: the engine, or a later call, tries again.
        ErrorCode::RateLimited
        | ErrorCode::HandshakeTimeout
        | ErrorCode::SlowConsumer
        | ErrorCode::ShuttingDown
        | ErrorCode::Internal
        // A newer server's code this version does not know: treated as
        // something that may pass, its message kept for the logs.
        | ErrorCode::Other => TandemError::Network { reason },
        ErrorCode::StaleEpoch => TandemError::RoleLost { reason },
        // The device spoke the protocol wrongly: a bug on this side.
        ErrorCode::BadFrame | ErrorCode::HelloRequired | ErrorCode::UnsupportedProtocol => {
            TandemError::Internal { reason }
        }
    }
}

/// A foreign callback that returns a `TandemError` threw something else
/// (in Kotlin, any exception that is not a `TandemException`).
impl From<uniffi::UnexpectedUniFFICallbackError> for TandemError {
    fn from(error: uniffi::UnexpectedUniFFICallbackError) -> TandemError {
        TandemError::Internal {
            reason: format!("a callback failed: {}", error.reason),
        }
    }
}

/// Runs an exported call's body, turning a panic into
/// [`TandemError::Internal`] so the host gets a typed error it can report,
/// not an abort. (UniFFI would catch the panic too, but as an untyped
/// exception outside `TandemError`.) Relies on `panic = "unwind"`, which the
/// workspace's release profile keeps.
pub(crate) fn guard<T, E: Into<TandemError>>(
    call: impl FnOnce() -> Result<T, E>,
) -> Result<T, TandemError> {
    match catch_unwind(AssertUnwindSafe(call)) {
        Ok(result) => result.map_err(Into::into),
        Err(panic) => Err(panicked(panic.as_ref())),
    }
}

/// Calls into the app (an observer, the conflict handler, the logger) from
/// a Rust thread. Callbacks return `Result`, so an exception the app's code
/// throws comes back as an error (Kotlin: any exception; Swift: any error)
/// rather than as a panic; it is logged, and it does not take down the
/// thread that serves every other observer. A panic is caught too.
pub(crate) fn call_foreign(what: &str, call: impl FnOnce() -> Result<(), TandemError>) {
    call_foreign_or(what, (), call);
}

/// [`call_foreign`] for a callback that answers: `fallback` stands in for
/// the answer of a callback that failed.
pub(crate) fn call_foreign_or<T>(
    what: &str,
    fallback: T,
    call: impl FnOnce() -> Result<T, TandemError>,
) -> T {
    let error = match catch_unwind(AssertUnwindSafe(call)) {
        Ok(Ok(answer)) => return answer,
        Ok(Err(error)) => error,
        Err(panic) => panicked(panic.as_ref()),
    };
    tracing::warn!(target: "tandem_ffi", "{what} failed: {error}");
    fallback
}

/// A panic, caught, as the error the host receives.
pub(crate) fn panicked(payload: &(dyn Any + Send)) -> TandemError {
    TandemError::Internal {
        reason: format!("panic: {}", panic_message(payload)),
    }
}

/// The message a panic was raised with.
fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid_input_code(error: CoreError) -> String {
        match TandemError::from(error) {
            TandemError::InvalidInput { code, .. } => code,
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    }

    #[test]
    fn input_errors_keep_the_core_code_and_message() {
        let error = TandemError::from(CoreError::InvalidJson("expected value".into()));
        assert_eq!(
            error,
            TandemError::InvalidInput {
                code: "invalid_json".into(),
                reason: "invalid JSON: expected value".into(),
            }
        );
        assert_eq!(
            invalid_input_code(CoreError::NotAnObject { found: "array" }),
            "not_an_object"
        );
        assert_eq!(
            invalid_input_code(CoreError::NotIndexed {
                collection: "tasks".into(),
                field: "done".into(),
            }),
            "not_indexed"
        );
        assert_eq!(
            invalid_input_code(CoreError::UserMismatch {
                stored: "alice".into(),
                requested: "bob".into(),
            }),
            "user_mismatch"
        );
    }

    #[test]
    fn device_state_errors_are_storage_or_closed() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
        assert!(matches!(
            TandemError::from(CoreError::Io(io)),
            TandemError::Storage { code, .. } if code == "io"
        ));
        assert!(matches!(
            TandemError::from(CoreError::CorruptStore("fields of t1".into())),
            TandemError::Storage { code, .. } if code == "corrupt_store"
        ));
        assert!(matches!(
            TandemError::from(CoreError::IncompatibleDatabase {
                found: 9,
                supported: 1
            }),
            TandemError::Storage { code, .. } if code == "incompatible_database"
        ));
        assert_eq!(TandemError::from(CoreError::Closed), TandemError::Closed);
    }

    #[test]
    fn sync_errors_are_what_the_app_acts_on() {
        assert!(matches!(
            TandemError::from(CoreError::Network("connection refused".into())),
            TandemError::Network { reason } if reason.contains("connection refused")
        ));
        assert!(matches!(
            TandemError::from(CoreError::NotSyncing),
            TandemError::Network { .. }
        ));
        // A refused token in a bounded sync is Unauthorized, not Network.
        assert!(matches!(
            TandemError::from(CoreError::Unauthorized("the server refused the token".into())),
            TandemError::Unauthorized { reason } if reason.contains("refused")
        ));
        assert!(matches!(
            TandemError::from(CoreError::StaleEpoch {
                role: "auto-responder".into(),
                epoch: 3,
                reason: "epoch moved".into(),
            }),
            TandemError::RoleLost { reason } if reason.contains("auto-responder")
        ));
        assert!(matches!(
            TandemError::from(CoreError::Token(TokenError::SignedOut("no session".into()))),
            TandemError::Unauthorized { reason } if reason.contains("no session")
        ));
        assert!(matches!(
            TandemError::from(CoreError::Token(TokenError::Unavailable("offline".into()))),
            TandemError::Network { .. }
        ));
        let server = |code| CoreError::Server {
            code,
            message: "m".into(),
        };
        assert!(matches!(
            TandemError::from(server(ErrorCode::Revoked)),
            TandemError::Unauthorized { .. }
        ));
        assert!(matches!(
            TandemError::from(server(ErrorCode::AlreadyExists)),
            TandemError::InvalidInput { code, .. } if code == "already_exists"
        ));
        assert!(matches!(
            TandemError::from(server(ErrorCode::TooManyDevices)),
            TandemError::InvalidInput { code, .. } if code == "too_many_devices"
        ));
        assert!(matches!(
            TandemError::from(server(ErrorCode::ShuttingDown)),
            TandemError::Network { .. }
        ));
        assert!(matches!(
            TandemError::from(server(ErrorCode::UnsupportedProtocol)),
            TandemError::Internal { .. }
        ));
    }

    #[test]
    fn a_failed_callback_is_internal() {
        let error = TandemError::from(uniffi::UnexpectedUniFFICallbackError::new(
            "IllegalStateException",
        ));
        assert!(matches!(
            error,
            TandemError::Internal { reason } if reason.contains("IllegalStateException")
        ));
    }

    #[test]
    fn a_panic_becomes_an_internal_error() {
        let result: Result<(), TandemError> = guard(|| -> Result<(), CoreError> {
            panic!("index out of bounds");
        });
        assert!(matches!(
            result,
            Err(TandemError::Internal { reason }) if reason.contains("index out of bounds")
        ));
        let formatted: Result<(), TandemError> = guard(|| -> Result<(), CoreError> {
            panic!("{} is broken", "the store");
        });
        assert!(matches!(
            formatted,
            Err(TandemError::Internal { reason }) if reason.contains("the store is broken")
        ));
    }

    #[test]
    fn a_failing_or_panicking_foreign_call_is_contained() {
        let mut after = false;
        call_foreign("an observer", || {
            Err(TandemError::Internal {
                reason: "IllegalStateException".into(),
            })
        });
        call_foreign("an observer", || panic!("a bug"));
        call_foreign("an observer", || {
            after = true;
            Ok(())
        });
        assert!(after);
        assert_eq!(
            call_foreign_or("the conflict handler", 0, || Err(TandemError::Closed)),
            0
        );
    }
}
