//! Coordination between the user's devices (see [`crate::coordination`]):
//! roles, the duplicate guard, fenced writes, the user's devices.

use std::sync::Arc;

use tandem_protocol::RoleFence;

use super::{Client, Operation, parse_object};
use crate::coordination::{DevicesObserver, RoleInfo, RoleObserver};
use crate::document::{DocKey, LocalDocument, WriteText};
use crate::error::Error;
use crate::observe::Subscription;
use crate::store::Write;

impl Client {
    /// The role's state as this device last heard it (`None` before the
    /// first connection, or if the role was never claimed).
    pub fn role(&self, role: &str) -> Option<RoleInfo> {
        self.live.role(role)
    }

    /// The fence to tag writes and guards made on behalf of `role` with:
    /// `Some` while this device holds it (as last heard).
    pub fn current_fence(&self, role: &str) -> Option<RoleFence> {
        self.live.role(role).and_then(|r| r.fence())
    }

    /// Calls `observer` with the role's state (now if known, then on each
    /// change of holder or epoch) until the subscription is cancelled or
    /// dropped.
    pub fn observe_role(
        &self,
        role: &str,
        observer: Arc<dyn RoleObserver>,
    ) -> Result<Subscription, Error> {
        self.ensure_open()?;
        let id = self.live.add_role_observer(role, observer);
        let live = Arc::downgrade(&self.live);
        Ok(Subscription::from_cancel(move || {
            if let Some(live) = live.upgrade() {
                live.remove_observer(id);
            }
        }))
    }

    /// Calls `observer` with the user's devices (now if known, then after
    /// every change the server announces: a device connects, disconnects,
    /// registers, is renamed or revoked) until the subscription is
    /// cancelled or dropped.
    pub fn observe_devices(
        &self,
        observer: Arc<dyn DevicesObserver>,
    ) -> Result<Subscription, Error> {
        self.ensure_open()?;
        let id = self.live.add_devices_observer(observer);
        let live = Arc::downgrade(&self.live);
        Ok(Subscription::from_cancel(move || {
            if let Some(live) = live.upgrade() {
                live.remove_observer(id);
            }
        }))
    }

    /// [`Client::mutate`] on behalf of a role: the write carries `fence`,
    /// and the server refuses it (`stale_epoch`: the write fails and is
    /// rolled back from the view) unless this device still holds the role
    /// at that epoch when it arrives.
    pub fn mutate_fenced(
        &self,
        key: DocKey,
        operation: &str,
        payload_json: &str,
        fence: RoleFence,
    ) -> Result<LocalDocument, Error> {
        let doc = self.resolve(&key)?;
        let write = match Operation::parse(operation)? {
            Operation::Put => Write::Put(parse_object(payload_json, WriteText::Fields)?),
            Operation::Patch => Write::Patch(parse_object(payload_json, WriteText::Fields)?),
            Operation::Delete => Write::Delete,
            Operation::SetAdd | Operation::SetRemove => {
                return Err(Error::InvalidPayload(
                    "fenced writes are put, patch or delete".into(),
                ));
            }
        };
        let local = self.store.write_fenced(&doc, write, Some(fence))?;
        self.store.touch(&doc);
        self.notify_local_write();
        Ok(local)
    }

    /// [`Client::put`] on behalf of a role (see [`Client::mutate_fenced`]).
    pub fn put_fenced(
        &self,
        key: DocKey,
        fields_json: &str,
        fence: RoleFence,
    ) -> Result<LocalDocument, Error> {
        self.mutate_fenced(key, "put", fields_json, fence)
    }
}

/// What needs the connection: asking the server for a role or a guard
/// verdict.
#[cfg(feature = "native")]
mod requests {
    use std::time::Duration;

    use tandem_protocol::wire::{Claim, Guard, GuardVerdict, Handoff, Release};
    use tandem_protocol::{ClientMessage, ErrorCode, RoleFence, ServerMessage};

    use crate::Client;
    use crate::coordination::{GuardOutcome, RoleInfo};
    use crate::error::Error;

    /// How long a coordination request (claim, release, handoff, guard) waits
    /// for the server, a connection included.
    const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

    impl Client {
        async fn role_request(
            &self,
            role: &str,
            message: impl FnOnce(u64) -> ClientMessage,
        ) -> Result<RoleInfo, Error> {
            let handle = self.sync_handle()?;
            let me = self.store.identity().device_id.clone();
            match handle.request(message, REQUEST_TIMEOUT).await? {
                ServerMessage::Role(state) => Ok(RoleInfo::from_state(state, &me)),
                ServerMessage::Error(e) => {
                    // A refusal names the role and the epoch this device last
                    // heard of.
                    let known = RoleFence {
                        role: role.to_owned(),
                        epoch: self.role(role).map_or(0, |r| r.epoch),
                    };
                    Err(request_error(e, Some(&known)))
                }
                other => Err(Error::Network(format!("unexpected answer {other:?}"))),
            }
        }

        /// Makes this device a candidate for `role` (until
        /// [`Client::release_role`], across reconnects and restarts) and its
        /// holder if the role has no live holder. `priority` orders candidates
        /// when the holder is lost (higher first; then the most recently active
        /// device). Returns the role's state.
        pub async fn claim_role(&self, role: &str, priority: i32) -> Result<RoleInfo, Error> {
            let name = role.to_owned();
            self.role_request(role, move |request_id| {
                ClientMessage::Claim(Claim {
                    request_id,
                    role: name,
                    priority,
                })
            })
            .await
        }

        /// This device is no longer a candidate for `role`; if it held it, the
        /// next eligible device takes it. Returns the role's state.
        pub async fn release_role(&self, role: &str) -> Result<RoleInfo, Error> {
            let name = role.to_owned();
            self.role_request(role, move |request_id| {
                ClientMessage::Release(Release {
                    request_id,
                    role: name,
                })
            })
            .await
        }

        /// Gives `role`, which this device holds, to the connected device
        /// `to` (a device id). Fails with [`Error::StaleEpoch`] if this device
        /// does not hold it.
        pub async fn handoff_role(&self, role: &str, to: &str) -> Result<RoleInfo, Error> {
            let to = tandem_protocol::DeviceId::new(to)?;
            let name = role.to_owned();
            self.role_request(role, move |request_id| {
                ClientMessage::Handoff(Handoff {
                    request_id,
                    role: name,
                    to,
                })
            })
            .await
        }

        /// Asks the duplicate guard whether `content` (normalized: trimmed,
        /// Unicode NFC, runs of whitespace as one space) was already seen in
        /// `scope` by any device of the user within `window_ms` (default 5 s):
        /// exactly one caller gets [`GuardOutcome::First`].
        pub async fn guard(
            &self,
            scope: &str,
            content: &str,
            window_ms: Option<u64>,
        ) -> Result<GuardOutcome, Error> {
            self.guard_request(scope, content, window_ms, None).await
        }

        /// [`Client::guard`] on behalf of a role: refused with
        /// [`Error::StaleEpoch`] (recording nothing) unless this device holds
        /// the role at the fence's epoch.
        pub async fn guard_fenced(
            &self,
            scope: &str,
            content: &str,
            window_ms: Option<u64>,
            fence: RoleFence,
        ) -> Result<GuardOutcome, Error> {
            self.guard_request(scope, content, window_ms, Some(fence))
                .await
        }

        async fn guard_request(
            &self,
            scope: &str,
            content: &str,
            window_ms: Option<u64>,
            fence: Option<RoleFence>,
        ) -> Result<GuardOutcome, Error> {
            let handle = self.sync_handle()?;
            let (scope, content, asked) = (scope.to_owned(), content.to_owned(), fence.clone());
            let answer = handle
                .request(
                    move |request_id| {
                        ClientMessage::Guard(Guard {
                            request_id,
                            scope,
                            content,
                            window_ms,
                            fence: asked,
                        })
                    },
                    REQUEST_TIMEOUT,
                )
                .await?;
            match answer {
                ServerMessage::GuardResult(result) => Ok(match result.result {
                    GuardVerdict::First => GuardOutcome::First,
                    GuardVerdict::Duplicate => GuardOutcome::Duplicate,
                }),
                ServerMessage::Error(e) => Err(request_error(e, fence.as_ref())),
                other => Err(Error::Network(format!("unexpected answer {other:?}"))),
            }
        }
    }

    /// An `error` answering a request, as the app sees it.
    fn request_error(e: tandem_protocol::wire::ErrorMessage, fence: Option<&RoleFence>) -> Error {
        match e.code {
            ErrorCode::StaleEpoch => Error::StaleEpoch {
                role: fence.map(|f| f.role.clone()).unwrap_or_default(),
                epoch: fence.map_or(0, |f| f.epoch),
                reason: e.message,
            },
            code => Error::Server {
                code,
                message: e.message,
            },
        }
    }
}
