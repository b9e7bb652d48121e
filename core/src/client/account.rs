//! The server's HTTP calls: spaces and members, the user's devices, push
//! tokens, and fetching a document evicted from this device.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tandem_protocol::api::{DeviceList, PushHint, PushToken};

use super::{Client, SyncOutcome};
use crate::coordination::DeviceInfo;
use crate::document::{DocKey, LocalDocument};
use crate::error::Error;

/// How long [`Client::handle_push_hint`] syncs.
pub const PUSH_HINT_SYNC_TIMEOUT: Duration = Duration::from_secs(25);

/// A space and its members, as the server lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpaceInfo {
    /// The space's id (`personal:<user>` or a shared space's name).
    pub space: String,
    /// Its owner.
    pub owner: String,
    /// Its members, sorted (empty in [`Client::spaces`], which lists spaces
    /// only).
    pub members: Vec<String>,
}

impl Client {
    /// Like [`Client::get`], but a document evicted from this device is
    /// fetched from the server again (and is local from then on). Offline,
    /// or without [`Client::start_sync`], an evicted document is
    /// [`Error::NotLocal`].
    pub async fn fetch(&self, key: DocKey) -> Result<Option<LocalDocument>, Error> {
        let doc = self.resolve(&key)?;
        if let Some(found) = self.store.get(&doc)? {
            self.store.touch(&doc);
            return Ok(Some(found));
        }
        let Some(version) = self.store.evicted_version(&doc)? else {
            return Ok(None);
        };
        let not_local = || Error::NotLocal {
            collection: doc.collection.to_string(),
            id: doc.id.to_string(),
        };
        let credentials = match self.sync_handle() {
            Ok(handle) => Arc::clone(&handle.access),
            Err(_) => return Err(not_local()),
        };
        let space = doc.space.to_string();
        // Versions are unique within a space, so the one change after
        // `version - 1` is this document at `version`.
        let page = credentials
            .with_access(|api, token| {
                let space = space.clone();
                async move { api.pull(&token, &space, version.saturating_sub(1), 1).await }
            })
            .await
            .map_err(|e| match e {
                Error::Network(_) => not_local(),
                other => other,
            })?;
        let change = page
            .changes
            .iter()
            .find(|c| c.collection == doc.collection && c.doc_id == doc.id)
            .ok_or_else(not_local)?;
        self.store.apply_conflict_document(&change.to_document())?;
        self.store.touch(&doc);
        self.store.get(&doc)
    }

    /// Creates a shared space owned by this user.
    pub async fn create_space(&self, name: &str) -> Result<SpaceInfo, Error> {
        let credentials = Arc::clone(&self.sync_handle()?.access);
        let members = credentials
            .with_access(|api, token| {
                let name = name.to_owned();
                async move { api.create_space(&token, &name).await }
            })
            .await?;
        self.sync_now();
        Ok(space_info(members))
    }

    /// Adds `user` to the shared space `space` (the owner only).
    pub async fn add_member(&self, space: &str, user: &str) -> Result<SpaceInfo, Error> {
        let credentials = Arc::clone(&self.sync_handle()?.access);
        let members = credentials
            .with_access(|api, token| {
                let (space, user) = (space.to_owned(), user.to_owned());
                async move { api.add_member(&token, &space, &user).await }
            })
            .await?;
        Ok(space_info(members))
    }

    /// Removes `user` from `space` (the owner removes anyone else; a member
    /// removes themself).
    pub async fn remove_member(&self, space: &str, user: &str) -> Result<SpaceInfo, Error> {
        let credentials = Arc::clone(&self.sync_handle()?.access);
        let members = credentials
            .with_access(|api, token| {
                let (space, user) = (space.to_owned(), user.to_owned());
                async move { api.remove_member(&token, &space, &user).await }
            })
            .await?;
        Ok(space_info(members))
    }

    /// The spaces this user belongs to, personal space first.
    pub async fn spaces(&self) -> Result<Vec<SpaceInfo>, Error> {
        let credentials = Arc::clone(&self.sync_handle()?.access);
        let list = credentials
            .with_access(|api, token| async move { api.spaces(&token).await })
            .await?;
        Ok(list
            .spaces
            .into_iter()
            .map(|s| SpaceInfo {
                space: s.space.to_string(),
                owner: s.owner.to_string(),
                members: Vec::new(),
            })
            .collect())
    }

    /// The user's devices (not revoked ones), by name, from the server.
    pub async fn devices(&self) -> Result<Vec<DeviceInfo>, Error> {
        let credentials = Arc::clone(&self.sync_handle()?.access);
        let list = credentials
            .with_access(|api, token| async move { api.devices(&token).await })
            .await?;
        Ok(self.device_infos(list))
    }

    fn device_infos(&self, list: DeviceList) -> Vec<DeviceInfo> {
        let me = &self.store.identity().device_id;
        list.devices
            .into_iter()
            .map(|d| DeviceInfo::from_wire(d, me))
            .collect()
    }

    /// Renames a device of the user (this one or another). Returns the
    /// devices.
    pub async fn rename_device(
        &self,
        device_id: &str,
        name: &str,
    ) -> Result<Vec<DeviceInfo>, Error> {
        let credentials = Arc::clone(&self.sync_handle()?.access);
        let list = credentials
            .with_access(|api, token| {
                let (device, name) = (device_id.to_owned(), name.to_owned());
                async move { api.rename_device(&token, &device, &name).await }
            })
            .await?;
        Ok(self.device_infos(list))
    }

    /// Revokes a device of the user: its connections close at once, its
    /// credentials stop working and it cannot register again (a lost or
    /// stolen phone). Returns the remaining devices.
    pub async fn revoke_device(&self, device_id: &str) -> Result<Vec<DeviceInfo>, Error> {
        let credentials = Arc::clone(&self.sync_handle()?.access);
        let list = credentials
            .with_access(|api, token| {
                let device = device_id.to_owned();
                async move { api.revoke_device(&token, &device).await }
            })
            .await?;
        Ok(self.device_infos(list))
    }

    /// Registers this device's push token (`provider`: `apns`, `fcm`, ...):
    /// while it is offline, the server's push webhook gets a hint when
    /// changes land in its spaces.
    pub async fn register_push_token(&self, token: &str, provider: &str) -> Result<(), Error> {
        let credentials = Arc::clone(&self.sync_handle()?.access);
        credentials
            .with_access(|api, access| {
                let body = PushToken {
                    token: token.to_owned(),
                    provider: provider.to_owned(),
                };
                async move { api.set_push_token(&access, Some(&body)).await }
            })
            .await
    }

    /// Removes this device's push token: no more hints.
    pub async fn unregister_push_token(&self) -> Result<(), Error> {
        let credentials = Arc::clone(&self.sync_handle()?.access);
        credentials
            .with_access(|api, access| async move { api.set_push_token(&access, None).await })
            .await
    }

    /// Handles a push hint the app received (the JSON the server sent its
    /// push webhook, relayed as the notification's payload): checks that it
    /// is meant for this device, then runs a bounded [`Client::sync_once`]
    /// of at most `timeout` (use [`PUSH_HINT_SYNC_TIMEOUT`] in a background
    /// push handler).
    pub async fn handle_push_hint(
        &self,
        payload_json: &str,
        timeout: Duration,
    ) -> Result<SyncOutcome, Error> {
        let hint: PushHint = serde_json::from_str(payload_json)
            .map_err(|e| Error::NotForThisDevice(format!("not a push hint: {e}")))?;
        let identity = self.store.identity();
        if hint.user != identity.user_id || hint.device_id != identity.device_id {
            return Err(Error::NotForThisDevice(format!(
                "the hint is for device {} of {}",
                hint.device_id, hint.user
            )));
        }
        tracing::info!(target: "tandem_core", spaces = hint.spaces.len(), "push hint: syncing");
        self.sync_once(timeout).await
    }
}

fn space_info(members: tandem_protocol::api::SpaceMembers) -> SpaceInfo {
    SpaceInfo {
        space: members.space.to_string(),
        owner: members.owner.to_string(),
        members: members.members.into_iter().map(|m| m.to_string()).collect(),
    }
}
