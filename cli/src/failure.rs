//! How the CLI reports a failure: one line on stderr,
//! `error: <code>: <message>`, and a non-zero exit status.

use std::fmt;
use std::process::ExitCode;

/// A failed command.
#[derive(Debug)]
pub struct Failure {
    /// A stable, machine-readable code (`not_found`, `invalid_input`, ...).
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
    /// The process exit status.
    pub status: u8,
}

/// Exit status for "the document does not exist" (`get`).
pub const EXIT_NOT_FOUND: u8 = 3;

impl Failure {
    /// A failure with exit status 1.
    pub fn new(code: &'static str, message: impl fmt::Display) -> Failure {
        Failure {
            code,
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
