//! Where the device's credentials come from, and where they are kept.

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

/// Keeps the device's access and refresh tokens outside its database, in
/// the platform's secret store: the Swift package's
/// `KeychainCredentialStore`, the Android library's
/// `KeystoreCredentialStore`, or the app's own. Given to
/// [`Client::open`](crate::Client::open), the tokens are never written to
/// the database file.
///
/// The value is opaque bytes: store them as they are, one value per
/// device. `save` must have stored the value when it returns (the refresh
/// token in it is single-use). Called from the sync driver's tasks that
/// open connections and renew credentials, and from the client's HTTP
/// calls (never from the engine's loop): keep each call short.
#[uniffi::export(with_foreign)]
pub trait CredentialStore: Send + Sync {
    /// The value last saved, or none.
    fn load(&self) -> Result<Option<Vec<u8>>, TandemError>;
    /// Replaces the value.
    fn save(&self, credentials: Vec<u8>) -> Result<(), TandemError>;
    /// Removes the value; removing nothing is not an error.
    fn delete(&self) -> Result<(), TandemError>;
}

/// Adapts the app's credential store to the core's.
pub(crate) struct CredentialStoreBridge(pub(crate) Arc<dyn CredentialStore>);

impl tandem_core::CredentialStore for CredentialStoreBridge {
    fn load(&self) -> Result<Option<Vec<u8>>, tandem_core::CredentialStoreError> {
        self.0.load().map_err(store_error)
    }

    fn save(&self, credentials: &[u8]) -> Result<(), tandem_core::CredentialStoreError> {
        self.0.save(credentials.to_vec()).map_err(store_error)
    }

    fn delete(&self) -> Result<(), tandem_core::CredentialStoreError> {
        self.0.delete().map_err(store_error)
    }
}

fn store_error(error: TandemError) -> tandem_core::CredentialStoreError {
    tandem_core::CredentialStoreError(error.to_string())
}
