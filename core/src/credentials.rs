//! Where the device's credentials live: its access token and its
//! single-use refresh token, which together let anyone holding them act as
//! the device.
//!
//! By default they are kept in the device's database, next to its
//! documents (readable by anyone who can read the app's files). An app
//! that gives [`ClientConfig::credential_store`](crate::ClientConfig) a
//! [`CredentialStore`] keeps them where the platform keeps secrets (the
//! iOS Keychain, the Android Keystore); then they are never written to the
//! database file, and credentials an earlier version left there are moved
//! to the store and erased from the file when the client opens.
//!
//! The store holds one opaque value per device: bytes the engine encodes
//! and decodes itself. A refresh token is single-use and rotates on every
//! refresh, so [`CredentialStore::save`] must have stored the value when it
//! returns: the engine uses a new token only after it is saved, and a
//! device whose saved token is older than the server's must register
//! again.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::store::{Store, StoredCredentials};

/// A place outside the database for the device's credentials, given by
/// the app (see the module doc). Called from the sync driver's tasks that
/// open connections and renew credentials, and from the client's HTTP
/// calls (never from the engine's loop): keep each call short.
pub trait CredentialStore: Send + Sync {
    /// The value last saved, or `None` if there is none.
    fn load(&self) -> Result<Option<Vec<u8>>, CredentialStoreError>;
    /// Replaces the value. It must be stored (durably, for this device and
    /// user) when this returns.
    fn save(&self, credentials: &[u8]) -> Result<(), CredentialStoreError>;
    /// Removes the value (signing out); removing nothing is not an error.
    fn delete(&self) -> Result<(), CredentialStoreError>;
}

/// A [`CredentialStore`] call failed (the Keychain is locked, the Keystore
/// key was invalidated, ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CredentialStoreError(pub String);

/// Credentials as the engine writes them into a [`CredentialStore`]:
/// versioned JSON, so a later version can read what an earlier one saved.
#[derive(Serialize, Deserialize)]
struct Saved {
    v: u32,
    server_url: String,
    user_id: String,
    access_token: String,
    access_expires_at: u64,
    refresh_token: String,
    refresh_expires_at: u64,
}

const SAVED_VERSION: u32 = 1;

/// The device's credentials, in the database or in the app's store.
#[derive(Clone)]
pub(crate) struct CredentialVault {
    store: Arc<Store>,
    external: Option<Arc<dyn CredentialStore>>,
}

impl CredentialVault {
    /// The vault of the device in `store`, using `external` if given.
    pub fn new(store: Arc<Store>, external: Option<Arc<dyn CredentialStore>>) -> CredentialVault {
        CredentialVault { store, external }
    }

    /// With an external store: moves credentials the database still holds
    /// (saved before the app gave a store) into it, then erases them from
    /// the file.
    pub fn adopt_database_credentials(&self) -> Result<(), Error> {
        let Some(external) = &self.external else {
            return Ok(());
        };
        let Some(found) = self.store.credentials()? else {
            return Ok(());
        };
        external.save(&encode(&found)?).map_err(failed)?;
        self.store.erase_credentials()
    }

    /// The stored credentials, if the device has registered.
    pub fn load(&self) -> Result<Option<StoredCredentials>, Error> {
        match &self.external {
            None => self.store.credentials(),
            Some(external) => match external.load().map_err(failed)? {
                None => Ok(None),
                Some(bytes) => decode(&bytes).map(Some),
            },
        }
    }

    /// Stores new credentials.
    pub fn save(&self, credentials: &StoredCredentials) -> Result<(), Error> {
        match &self.external {
            None => self.store.save_credentials(credentials),
            Some(external) => external.save(&encode(credentials)?).map_err(failed),
        }
    }

    /// Removes the credentials from wherever they are (signing out).
    pub fn delete(&self) -> Result<(), Error> {
        if let Some(external) = &self.external {
            external.delete().map_err(failed)?;
        }
        self.store.erase_credentials()
    }
}

fn failed(e: CredentialStoreError) -> Error {
    Error::CredentialStore(e.0)
}

fn encode(c: &StoredCredentials) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(&Saved {
        v: SAVED_VERSION,
        server_url: c.server_url.clone(),
        user_id: c.user_id.clone(),
        access_token: c.access_token.clone(),
        access_expires_at: c.access_expires_at,
        refresh_token: c.refresh_token.clone(),
        refresh_expires_at: c.refresh_expires_at,
    })
    .map_err(|e| Error::CredentialStore(format!("encoding the credentials: {e}")))
}

fn decode(bytes: &[u8]) -> Result<StoredCredentials, Error> {
    let saved: Saved = serde_json::from_slice(bytes).map_err(|e| {
        Error::CredentialStore(format!(
            "the credential store holds something this device did not save: {e}"
        ))
    })?;
    if saved.v != SAVED_VERSION {
        return Err(Error::CredentialStore(format!(
            "the credentials were saved by a newer version (format {})",
            saved.v
        )));
    }
    Ok(StoredCredentials {
        server_url: saved.server_url,
        user_id: saved.user_id,
        access_token: saved.access_token,
        access_expires_at: saved.access_expires_at,
        refresh_token: saved.refresh_token,
        refresh_expires_at: saved.refresh_expires_at,
    })
}

/// A [`CredentialStore`] in memory: for tests, and for apps that would
/// rather register again at every launch than keep tokens anywhere.
#[derive(Debug, Default)]
pub struct MemoryCredentialStore {
    value: std::sync::Mutex<Option<Vec<u8>>>,
}

impl MemoryCredentialStore {
    /// An empty store.
    pub fn new() -> MemoryCredentialStore {
        MemoryCredentialStore::default()
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Vec<u8>>> {
        self.value
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl CredentialStore for MemoryCredentialStore {
    fn load(&self) -> Result<Option<Vec<u8>>, CredentialStoreError> {
        Ok(self.slot().clone())
    }

    fn save(&self, credentials: &[u8]) -> Result<(), CredentialStoreError> {
        *self.slot() = Some(credentials.to_vec());
        Ok(())
    }

    fn delete(&self) -> Result<(), CredentialStoreError> {
        *self.slot() = None;
        Ok(())
    }
}
