//! Where the device's credentials come from.

use std::sync::Arc;

use tandem_core::TokenError;
use tandem_core::sync::tokens::TokenFuture;

use crate::error::TandemError;

/// Supplies the user token the device registers with: a token the app's
/// own backend signs for the signed-in user (with a `--dev-auth` server,
/// `dev:<user>`). The sync engine calls it when the device first registers
/// and whenever the server has revoked the device's credentials.
///
/// Implemented by the app (Swift `async throws`, Kotlin `suspend`); the
/// engine awaits it on the bindings' runtime, so it may take as long as a
/// sign-in does.
#[uniffi::export(with_foreign)]
#[async_trait::async_trait]
pub trait TokenProvider: Send + Sync {
    /// A current user token. Throw [`TandemError::Unauthorized`] when the
    /// user is signed out (syncing waits for a token and reports it); any
    /// other error counts as "unavailable, try again later".
    async fn user_token(&self) -> Result<String, TandemError>;
}

/// Adapts the app's token provider to the core's.
pub(crate) struct TokenProviderBridge(pub(crate) Arc<dyn TokenProvider>);

impl tandem_core::TokenProvider for TokenProviderBridge {
    fn user_token(&self) -> TokenFuture<'_> {
        Box::pin(async move {
            self.0.user_token().await.map_err(|error| match error {
                TandemError::Unauthorized { reason } => TokenError::SignedOut(reason),
                other => TokenError::Unavailable(other.to_string()),
            })
        })
    }
}
