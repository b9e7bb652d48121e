//! Where the device's credentials come from.

use crate::error::TandemError;

/// Supplies the user token the device registers with: a token the app's
/// own backend signs for the signed-in user (with a `--dev-auth` server,
/// `dev:<user>`). The sync engine calls it when the device first registers
/// and again whenever the server refuses the credentials it has, so the app
/// can refresh its session first.
///
/// Implemented by the app (Swift `async throws`, Kotlin `suspend`); the call
/// runs on the bindings' runtime and may take as long as a sign-in does.
#[uniffi::export(with_foreign)]
#[async_trait::async_trait]
pub trait TokenProvider: Send + Sync {
    /// A current user token. Fail with [`TandemError::Unauthorized`] when
    /// the user is signed out (the engine then stays offline and reports
    /// it), or [`TandemError::Network`] when the app's backend cannot be
    /// reached (the engine retries with backoff).
    async fn user_token(&self) -> Result<String, TandemError>;
}
