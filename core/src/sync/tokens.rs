//! Where user tokens come from: the app's own auth backend.
//!
//! The server exchanges a user token (a JWT the app's backend signed, or
//! `dev:<user>` on a development server) for device credentials. The
//! engine asks for one when the device first registers and whenever the
//! server has revoked the device's credentials. The provider is a host
//! callback: an object-safe trait whose method returns a boxed future, so
//! it can be implemented in Rust or, through the FFI layer, in Swift or
//! Kotlin.

use std::future::Future;
use std::pin::Pin;

/// A boxed future, as [`TokenProvider`] returns.
pub type TokenFuture<'a> = Pin<Box<dyn Future<Output = Result<String, TokenError>> + Send + 'a>>;

/// Why no user token could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The user is signed out; syncing waits until a token is available.
    #[error("no user is signed in: {0}")]
    SignedOut(String),
    /// The app's backend could not be reached or failed; try again later.
    #[error("could not get a user token: {0}")]
    Unavailable(String),
}

/// Gives the engine user tokens.
pub trait TokenProvider: Send + Sync {
    /// A current user token for this device's user.
    fn user_token(&self) -> TokenFuture<'_>;
}

/// A provider that always gives the same token (development servers, tests,
/// the CLI's `dev:<user>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticToken(pub String);

impl StaticToken {
    /// A provider of `token`.
    pub fn new(token: impl Into<String>) -> StaticToken {
        StaticToken(token.into())
    }
}

impl TokenProvider for StaticToken {
    fn user_token(&self) -> TokenFuture<'_> {
        let token = self.0.clone();
        Box::pin(async move { Ok(token) })
    }
}
