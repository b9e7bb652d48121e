//! The device's access to the server: credentials and the HTTP calls.
//!
//! The access and refresh tokens live in the database or the app's
//! credential store (`crate::credentials`). [`Access`] registers with a
//! user token from the app's [`TokenProvider`] when there are none,
//! refreshes when the access token is about to expire or the server
//! refused it, and registers again when a refresh is refused. One lock
//! serializes all of it, because a refresh token is single-use: two
//! refreshes with the same token would revoke the device.

use std::sync::Arc;

use crate::credentials::CredentialVault;
use crate::error::Error;
use crate::store::{Store, StoredCredentials};
use crate::sync::api::{Api, ApiFailure};
use crate::sync::endpoint::Endpoint;
use crate::sync::tls::{self, CheckedTls};
use crate::sync::tokens::TokenProvider;

/// Refresh an access token that has less than this left before using it.
const REFRESH_MARGIN_MS: u64 = 30_000;

/// How this device presents itself to the server.
#[derive(Debug, Clone)]
pub(crate) struct DeviceLabel {
    pub name: String,
    pub platform: String,
    pub app_version: String,
}

/// The device's access to one server: its credentials (registered,
/// refreshed, kept in the vault) and the HTTP API called with them.
pub(crate) struct Access {
    store: Arc<Store>,
    vault: CredentialVault,
    api: Api,
    /// The server's normalized base URL, which stored credentials are for.
    server_url: String,
    /// The sync socket's URL.
    pub(super) sync_url: String,
    /// The TLS configuration the HTTP calls use too; `None` for a plain
    /// server.
    pub(super) tls: Option<Arc<rustls::ClientConfig>>,
    tokens: Arc<dyn TokenProvider>,
    label: DeviceLabel,
    lock: tokio::sync::Mutex<()>,
}

/// Why credentials could not be had.
#[derive(Debug)]
pub(crate) enum CredentialFailure {
    /// The server refused them (even a fresh registration).
    Refused(String),
    /// Anything else: network, token provider, storage.
    Other(Error),
}

impl From<CredentialFailure> for Error {
    fn from(f: CredentialFailure) -> Error {
        match f {
            CredentialFailure::Refused(message) => Error::Server {
                code: tandem_protocol::ErrorCode::Unauthorized,
                message,
            },
            CredentialFailure::Other(e) => e,
        }
    }
}

impl From<Error> for CredentialFailure {
    fn from(e: Error) -> Self {
        CredentialFailure::Other(e)
    }
}

impl From<ApiFailure> for CredentialFailure {
    fn from(f: ApiFailure) -> Self {
        if f.is_auth() {
            match f {
                ApiFailure::Server { message, .. } => CredentialFailure::Refused(message),
                ApiFailure::Transport(m) | ApiFailure::Tls(m) => CredentialFailure::Refused(m),
            }
        } else {
            CredentialFailure::Other(f.into())
        }
    }
}

impl Access {
    /// Credentials for the server at `endpoint`, reached with `tls` (the
    /// device's one TLS configuration, for every connection to a secure
    /// server).
    pub fn new(
        store: Arc<Store>,
        vault: CredentialVault,
        endpoint: &Endpoint,
        tls: &CheckedTls,
        tokens: Arc<dyn TokenProvider>,
        label: DeviceLabel,
    ) -> Result<Access, Error> {
        let (api, tls) = if endpoint.is_secure() {
            let config = tls.client_config()?;
            (Api::new(endpoint, config.clone())?, Some(Arc::new(config)))
        } else {
            (Api::new(endpoint, tls::plain_config()?)?, None)
        };
        Ok(Access {
            store,
            vault,
            api,
            server_url: endpoint.http_base().to_owned(),
            sync_url: endpoint.sync_url(),
            tls,
            tokens,
            label,
            lock: tokio::sync::Mutex::new(()),
        })
    }

    fn stored(&self) -> Result<Option<StoredCredentials>, Error> {
        Ok(self
            .vault
            .load()?
            .filter(|c| c.server_url == self.server_url))
    }

    /// A current access token (registering or refreshing first if needed),
    /// and when it expires.
    pub async fn access_token(&self) -> Result<(String, u64), CredentialFailure> {
        let _guard = self.lock.lock().await;
        let now = crate::clock::now_millis();
        if let Some(c) = self.stored()?
            && c.access_expires_at > now + REFRESH_MARGIN_MS
        {
            return Ok((c.access_token, c.access_expires_at));
        }
        let c = self.renew_locked().await?;
        Ok((c.access_token, c.access_expires_at))
    }

    /// Gets new credentials whatever the stored ones say (the server
    /// refused the access token, or it is time to refresh).
    pub async fn renew(&self) -> Result<StoredCredentials, CredentialFailure> {
        let _guard = self.lock.lock().await;
        self.renew_locked().await
    }

    /// Refresh if possible, register otherwise. Holds `lock`.
    async fn renew_locked(&self) -> Result<StoredCredentials, CredentialFailure> {
        if let Some(c) = self.stored()?
            && c.refresh_expires_at > crate::clock::now_millis()
        {
            match self.api.refresh(&c.refresh_token).await {
                Ok(fresh) => return self.save(fresh),
                Err(f) if f.is_auth() => {
                    // Spent, expired or revoked: register again below.
                }
                Err(f) => return Err(f.into()),
            }
        }
        let user_token = self
            .tokens
            .user_token()
            .await
            .map_err(|e| CredentialFailure::Other(e.into()))?;
        let identity = self.store.identity();
        let fresh = self
            .api
            .register(
                &user_token,
                &identity.device_id,
                &self.label.name,
                &self.label.platform,
                &self.label.app_version,
            )
            .await?;
        if fresh.user != identity.user_id {
            return Err(CredentialFailure::Other(Error::UserMismatch {
                stored: identity.user_id.to_string(),
                requested: fresh.user.to_string(),
            }));
        }
        self.save(fresh)
    }

    fn save(
        &self,
        fresh: tandem_protocol::api::DeviceCredentials,
    ) -> Result<StoredCredentials, CredentialFailure> {
        let stored = StoredCredentials {
            server_url: self.server_url.clone(),
            user_id: fresh.user.to_string(),
            access_token: fresh.access_token,
            access_expires_at: fresh.access_expires_at,
            refresh_token: fresh.refresh_token,
            refresh_expires_at: fresh.refresh_expires_at,
        };
        // Stored before use: a spent refresh token that was not stored
        // would mean registering again.
        self.vault.save(&stored)?;
        Ok(stored)
    }

    /// Runs an HTTP call with the access token, renewing the credentials
    /// once if the server refuses it.
    pub async fn with_access<T, F, Fut>(&self, call: F) -> Result<T, Error>
    where
        F: Fn(Api, String) -> Fut,
        Fut: std::future::Future<Output = Result<T, ApiFailure>>,
    {
        let (token, _) = self.access_token().await?;
        match call(self.api.clone(), token).await {
            Err(f) if f.is_auth() => {
                let fresh = self.renew().await?;
                Ok(call(self.api.clone(), fresh.access_token).await?)
            }
            other => Ok(other?),
        }
    }
}
