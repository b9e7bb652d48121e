//! How the CLI reports a failure: one line on stderr,
//! `error: <code>: <message>`, and a non-zero exit status.

use std::borrow::Cow;
use std::fmt;
use std::process::ExitCode;

/// A failed command.
#[derive(Debug)]
pub struct Failure {
    /// A stable, machine-readable code (`not_found`, `invalid_input`, ...;
    /// a refused write carries the server's code, `validation_failed`,
    /// `update_not_allowed`, ...).
    pub code: Cow<'static, str>,
    /// What went wrong, for people.
    pub message: String,
    /// The process exit status.
    pub status: u8,
}

/// Exit status for "no such thing": a document (`get`), a failed mutation
/// (`retry`, `discard`), a device.
pub const EXIT_NOT_FOUND: u8 = 3;

/// Exit status for "not synced": the server could not be reached, is not a
/// Tandem server, refused the credentials, or did not confirm in time. A
/// write is kept in the outbox and goes out with a later sync.
pub const EXIT_NOT_SYNCED: u8 = 4;

/// Exit status for "refused": the server refused this command's write for
/// good (it stays in the outbox as failed), or, for `sync`, failed
/// mutations remain.
pub const EXIT_FAILED: u8 = 5;

/// Exit status for "lost a conflict": in a `server_wins` or `manual`
/// collection the server's version was kept and this command's write
/// dropped.
pub const EXIT_CONFLICT: u8 = 6;

impl Failure {
    /// A failure with exit status 1.
    pub fn new(code: impl Into<Cow<'static, str>>, message: impl fmt::Display) -> Failure {
        Failure {
            code: code.into(),
            message: message.to_string(),
            status: 1,
        }
    }

    /// The same failure with another exit status.
    pub fn with_status(mut self, status: u8) -> Failure {
        self.status = status;
        self
    }

    /// Prints the failure and returns its exit status.
    pub fn report(&self) -> ExitCode {
        eprintln!("error: {}: {}", self.code, self.message);
        ExitCode::from(self.status)
    }
}
