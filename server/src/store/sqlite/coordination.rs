//! Device coordination on SQLite: the primitives of the coordination seam
//! ([`crate::store::coordination::seam`]) in SQLite's SQL. What each
//! request does is written once, in
//! [`crate::store::coordination::transactions`].
//!
//! Writes run on the writer thread ([`SqliteTx`], so each request is atomic
//! and ordered with pushes); reads run on the read connections
//! ([`SqliteReads`]). With one writer, every row lock the seam asks for is
//! held already. The store's clock is this process's ([`super::clock`]).
//!
//! Each primitive is a plain call on the connection: the seam's futures
//! are ready when first polled, and [`ready`] runs a step to its end
//! without a runtime, so a SQLite transaction never spans a real await.

use std::future::Future;

use futures::FutureExt;
use rusqlite::{Connection, OptionalExtension, params};
use tandem_protocol::api::PushToken;
use tandem_protocol::wire::{DeviceInfo, RoleState};
use tandem_protocol::{DeviceId, SpaceId, UserId};

use super::writer::{WriteCtx, backend};
use crate::roles::{CandidacyChange, Candidate, RoleRow};
use crate::store::coordination::seam::{
    CoordinationReads, CoordinationTx, HintCandidate, RowLock, role_state,
};
use crate::store::{DeviceIdentity, PresenceStamp, StoreError, StoreEvent};

/// Runs a coordination step over SQLite's side of the seam to its end.
pub(crate) fn ready<T>(step: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    step.now_or_never().unwrap_or_else(|| {
        Err(StoreError::Backend(
            "a SQLite coordination step waited, which its primitives never do".into(),
        ))
    })
}

/// Coordination reads on a read connection (or the writer's transaction).
pub(crate) struct SqliteReads<'c> {
    conn: &'c Connection,
}

impl<'c> SqliteReads<'c> {
    /// Reads on `conn`.
    pub(crate) fn new(conn: &'c Connection) -> SqliteReads<'c> {
        SqliteReads { conn }
    }
}

/// One coordination request in the writer's transaction.
pub(crate) struct SqliteTx<'a, 't> {
    ctx: &'a mut WriteCtx<'t>,
}

impl<'a, 't> SqliteTx<'a, 't> {
    /// The request's side of the seam, in `ctx`'s transaction.
    pub(crate) fn new(ctx: &'a mut WriteCtx<'t>) -> SqliteTx<'a, 't> {
        SqliteTx { ctx }
    }

    fn conn(&self) -> &Connection {
        self.ctx.tx
    }

    fn reads(&self) -> SqliteReads<'_> {
        SqliteReads::new(self.conn())
    }
}

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("stored {what} is unreadable: {e}"))
}

fn device_id(text: String) -> Result<DeviceId, StoreError> {
    DeviceId::new(text).map_err(|e| corrupt("device id", e))
}

fn user_id(text: String) -> Result<UserId, StoreError> {
    UserId::new(text).map_err(|e| corrupt("user id", e))
}

/// Forgets every presence row: at start, every row belongs to a process
/// that is gone.
pub fn clear_presence(conn: &Connection) -> Result<(), StoreError> {
    conn.execute("DELETE FROM presence", []).map_err(backend)?;
    Ok(())
}

impl CoordinationReads for SqliteReads<'_> {
    type Error = StoreError;

    async fn now(&self) -> Result<u64, StoreError> {
        Ok(super::clock())
    }

    async fn devices(&self, user: &UserId, now: u64) -> Result<Vec<DeviceInfo>, StoreError> {
        devices(self.conn, user, now)
    }

    async fn role(&self, user: &UserId, role: &str) -> Result<Option<RoleState>, StoreError> {
        let row: Option<RawRoleRow> = self
            .conn
            .prepare_cached(
                "SELECT r.holder, r.epoch, r.lease_expires_at, d.name FROM roles r
                 LEFT JOIN devices d ON d.user = r.user AND d.device_id = r.holder
                 WHERE r.user = ?1 AND r.role = ?2",
            )
            .map_err(backend)?
            .query_row(params![user.as_str(), role], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()
            .map_err(backend)?;
        row.map(|(holder, epoch, lease, name)| {
            Ok(role_state(role, role_row(holder, epoch, lease)?, name))
        })
        .transpose()
    }

    async fn roles(&self, user: &UserId) -> Result<Vec<RoleState>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT r.role, r.holder, r.epoch, r.lease_expires_at, d.name FROM roles r
                 LEFT JOIN devices d ON d.user = r.user AND d.device_id = r.holder
                 WHERE r.user = ?1 ORDER BY r.role",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map([user.as_str()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?),
                ))
            })
            .map_err(backend)?;
        let mut out = Vec::new();
        for row in rows {
            let (role, (holder, epoch, lease, name)): (String, RawRoleRow) =
                row.map_err(backend)?;
            out.push(role_state(&role, role_row(holder, epoch, lease)?, name));
        }
        Ok(out)
    }

    async fn roles_to_check(&self, now: u64) -> Result<Vec<(UserId, String)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT r.user, r.role FROM roles r
                 WHERE (r.holder IS NOT NULL AND (r.lease_expires_at <= ?1 OR NOT EXISTS (
                            SELECT 1 FROM presence p WHERE p.user = r.user
                            AND p.device_id = r.holder AND p.expires_at > ?1)))
                    OR (r.holder IS NULL AND EXISTS (
                            SELECT 1 FROM role_candidates c JOIN presence p
                            ON p.user = c.user AND p.device_id = c.device_id AND p.expires_at > ?1
                            WHERE c.user = r.user AND c.role = r.role))",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map([ms(now)], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(backend)?;
        let mut out = Vec::new();
        for row in rows {
            let (user, role) = row.map_err(backend)?;
            out.push((user_id(user)?, role));
        }
        Ok(out)
    }
}

/// A `roles` row as read: holder, epoch, lease expiry, the holder's name.
type RawRoleRow = (Option<String>, i64, Option<i64>, Option<String>);

fn role_row(holder: Option<String>, epoch: i64, lease: Option<i64>) -> Result<RoleRow, StoreError> {
    Ok(RoleRow {
        holder: holder.map(device_id).transpose()?,
        epoch: uint(epoch),
        lease_expires_at: lease.map(uint),
    })
}

fn devices(conn: &Connection, user: &UserId, now: u64) -> Result<Vec<DeviceInfo>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT d.device_id, d.name, d.platform, d.app_version, d.registered_at, d.last_seen,
                    (SELECT MAX(p.last_active) FROM presence p
                     WHERE p.user = d.user AND p.device_id = d.device_id AND p.expires_at > ?2)
             FROM devices d WHERE d.user = ?1 AND d.revoked_at IS NULL
             ORDER BY d.name, d.device_id",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map(params![user.as_str(), ms(now)], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, Option<i64>>(5)?,
                r.get::<_, Option<i64>>(6)?,
            ))
        })
        .map_err(backend)?;
    let mut out = Vec::new();
    for row in rows {
        let (device, name, platform, app_version, registered_at, last_seen, active) =
            row.map_err(backend)?;
        out.push(DeviceInfo {
            device_id: device_id(device)?,
            name,
            platform,
            app_version,
            registered_at: uint(registered_at),
            last_seen: active.or(last_seen).map(uint),
            online: active.is_some(),
        });
    }
    Ok(out)
}

impl CoordinationReads for SqliteTx<'_, '_> {
    type Error = StoreError;

    async fn now(&self) -> Result<u64, StoreError> {
        self.reads().now().await
    }

    async fn devices(&self, user: &UserId, now: u64) -> Result<Vec<DeviceInfo>, StoreError> {
        self.reads().devices(user, now).await
    }

    async fn role(&self, user: &UserId, role: &str) -> Result<Option<RoleState>, StoreError> {
        self.reads().role(user, role).await
    }

    async fn roles(&self, user: &UserId) -> Result<Vec<RoleState>, StoreError> {
        self.reads().roles(user).await
    }

    async fn roles_to_check(&self, now: u64) -> Result<Vec<(UserId, String)>, StoreError> {
        self.reads().roles_to_check(now).await
    }
}

impl CoordinationTx for SqliteTx<'_, '_> {
    fn announce(&mut self, event: StoreEvent) {
        self.ctx.events.push(event);
    }

    async fn rename_device(&self, device: &DeviceIdentity, name: &str) -> Result<bool, StoreError> {
        let renamed = self
            .conn()
            .execute(
                "UPDATE devices SET name = ?3 WHERE user = ?1 AND device_id = ?2
                 AND revoked_at IS NULL",
                params![device.user.as_str(), device.device.as_str(), name],
            )
            .map_err(backend)?;
        Ok(renamed > 0)
    }

    async fn set_push_token(
        &self,
        device: &DeviceIdentity,
        token: Option<&PushToken>,
    ) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "UPDATE devices SET push_token = ?3, push_provider = ?4, last_hint_at = NULL
                 WHERE user = ?1 AND device_id = ?2",
                params![
                    device.user.as_str(),
                    device.device.as_str(),
                    token.map(|t| t.token.as_str()),
                    token.map(|t| t.provider.as_str())
                ],
            )
            .map_err(backend)?;
        Ok(())
    }

    async fn retire_device(&self, device: &DeviceIdentity, now: u64) -> Result<(), StoreError> {
        let (user, id) = (device.user.as_str(), device.device.as_str());
        let conn = self.conn();
        conn.execute(
            "UPDATE devices SET revoked_at = ?3, push_token = NULL, push_provider = NULL
             WHERE user = ?1 AND device_id = ?2",
            params![user, id, ms(now)],
        )
        .map_err(backend)?;
        conn.execute(
            "DELETE FROM presence WHERE user = ?1 AND device_id = ?2",
            params![user, id],
        )
        .map_err(backend)?;
        conn.execute(
            "DELETE FROM role_candidates WHERE user = ?1 AND device_id = ?2",
            params![user, id],
        )
        .map_err(backend)?;
        Ok(())
    }

    async fn is_online(&self, device: &DeviceIdentity, now: u64) -> Result<bool, StoreError> {
        self.conn()
            .prepare_cached(
                "SELECT 1 FROM presence p JOIN devices d
                   ON d.user = p.user AND d.device_id = p.device_id
                 WHERE p.user = ?1 AND p.device_id = ?2 AND p.expires_at > ?3
                   AND d.revoked_at IS NULL",
            )
            .map_err(backend)?
            .exists(params![
                device.user.as_str(),
                device.device.as_str(),
                ms(now)
            ])
            .map_err(backend)
    }

    async fn stamp_presence(
        &self,
        instance: &str,
        stamp: &PresenceStamp,
        expires_at: u64,
    ) -> Result<(), StoreError> {
        self.conn()
            .prepare_cached(
                "INSERT INTO presence (user, device_id, instance, last_active, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (user, device_id, instance) DO UPDATE SET
                     last_active = MAX(last_active, excluded.last_active),
                     expires_at = excluded.expires_at",
            )
            .map_err(backend)?
            .execute(params![
                stamp.device.user.as_str(),
                stamp.device.device.as_str(),
                instance,
                ms(stamp.last_active),
                ms(expires_at)
            ])
            .map_err(backend)?;
        Ok(())
    }

    async fn remove_presence(
        &self,
        instance: &str,
        device: &DeviceIdentity,
    ) -> Result<bool, StoreError> {
        let removed = self
            .conn()
            .execute(
                "DELETE FROM presence WHERE user = ?1 AND device_id = ?2 AND instance = ?3",
                params![device.user.as_str(), device.device.as_str(), instance],
            )
            .map_err(backend)?;
        Ok(removed > 0)
    }

    async fn set_last_seen(&self, device: &DeviceIdentity, at: u64) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "UPDATE devices SET last_seen = ?3 WHERE user = ?1 AND device_id = ?2",
                params![device.user.as_str(), device.device.as_str(), ms(at)],
            )
            .map_err(backend)?;
        Ok(())
    }

    async fn expire_presence(&self, now: u64) -> Result<Vec<UserId>, StoreError> {
        let conn = self.conn();
        let expired: Vec<(String, String, i64)> = {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT user, device_id, last_active FROM presence WHERE expires_at <= ?1",
                )
                .map_err(backend)?;
            stmt.query_map([ms(now)], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(backend)?
                .collect::<Result<_, _>>()
                .map_err(backend)?
        };
        let mut users = Vec::with_capacity(expired.len());
        for (user, device, last_active) in expired {
            conn.execute(
                "DELETE FROM presence WHERE user = ?1 AND device_id = ?2 AND expires_at <= ?3",
                params![user, device, ms(now)],
            )
            .map_err(backend)?;
            conn.execute(
                "UPDATE devices SET last_seen = MAX(COALESCE(last_seen, 0), ?3)
                 WHERE user = ?1 AND device_id = ?2",
                params![user, device, last_active],
            )
            .map_err(backend)?;
            users.push(user_id(user)?);
        }
        Ok(users)
    }

    async fn create_role(&self, user: &UserId, role: &str) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "INSERT INTO roles (user, role) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                params![user.as_str(), role],
            )
            .map_err(backend)?;
        Ok(())
    }

    async fn lock_role(
        &self,
        user: &UserId,
        role: &str,
        // The writer thread is the only writer: the row cannot change
        // before this transaction ends, whatever the lock asked for.
        _lock: RowLock,
    ) -> Result<Option<RoleRow>, StoreError> {
        let row: Option<(Option<String>, i64, Option<i64>)> = self
            .conn()
            .prepare_cached(
                "SELECT holder, epoch, lease_expires_at FROM roles WHERE user = ?1 AND role = ?2",
            )
            .map_err(backend)?
            .query_row(params![user.as_str(), role], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()
            .map_err(backend)?;
        row.map(|(holder, epoch, lease)| role_row(holder, epoch, lease))
            .transpose()
    }

    async fn candidates(
        &self,
        user: &UserId,
        role: &str,
        now: u64,
    ) -> Result<Vec<Candidate>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT c.device_id, c.priority,
                        (SELECT MAX(p.last_active) FROM presence p
                         WHERE p.user = c.user AND p.device_id = c.device_id AND p.expires_at > ?3)
                 FROM role_candidates c WHERE c.user = ?1 AND c.role = ?2",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![user.as_str(), role, ms(now)], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                ))
            })
            .map_err(backend)?;
        let mut out = Vec::new();
        for row in rows {
            let (device, priority, active) = row.map_err(backend)?;
            out.push(Candidate {
                device: device_id(device)?,
                priority: i32::try_from(priority).unwrap_or(0),
                present: active.is_some(),
                last_active: active.map_or(0, uint),
            });
        }
        Ok(out)
    }

    async fn write_candidacy(
        &self,
        user: &UserId,
        role: &str,
        change: &CandidacyChange,
        now: u64,
    ) -> Result<(), StoreError> {
        match change {
            CandidacyChange::Keep => {}
            CandidacyChange::Upsert(device, priority) => {
                self.conn()
                    .execute(
                        "INSERT INTO role_candidates (user, role, device_id, priority, claimed_at)
                         VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT (user, role, device_id)
                         DO UPDATE SET priority = excluded.priority",
                        params![user.as_str(), role, device.as_str(), priority, ms(now)],
                    )
                    .map_err(backend)?;
            }
            CandidacyChange::Remove(device) => {
                self.conn()
                    .execute(
                        "DELETE FROM role_candidates
                         WHERE user = ?1 AND role = ?2 AND device_id = ?3",
                        params![user.as_str(), role, device.as_str()],
                    )
                    .map_err(backend)?;
            }
        }
        Ok(())
    }

    async fn write_role(&self, user: &UserId, role: &str, row: &RoleRow) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "UPDATE roles SET holder = ?3, epoch = ?4, lease_expires_at = ?5
                 WHERE user = ?1 AND role = ?2",
                params![
                    user.as_str(),
                    role,
                    row.holder.as_ref().map(DeviceId::as_str),
                    ms(row.epoch),
                    row.lease_expires_at.map(ms)
                ],
            )
            .map_err(backend)?;
        Ok(())
    }

    async fn insert_guard(
        &self,
        author: &DeviceIdentity,
        hash: &[u8; 32],
        expires_at: u64,
        now: u64,
    ) -> Result<bool, StoreError> {
        // A row comes back only for an insert or a takeover.
        let first = self
            .conn()
            .prepare_cached(
                "INSERT INTO guards (user, hash, device_id, expires_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (user, hash) DO UPDATE SET device_id = excluded.device_id,
                     expires_at = excluded.expires_at
                 WHERE guards.expires_at <= ?5
                 RETURNING 1",
            )
            .map_err(backend)?
            .query_row(
                params![
                    author.user.as_str(),
                    &hash[..],
                    author.device.as_str(),
                    ms(expires_at),
                    ms(now)
                ],
                |_| Ok(()),
            )
            .optional()
            .map_err(backend)?
            .is_some();
        Ok(first)
    }

    async fn sweep_guards(&self, now: u64) -> Result<u64, StoreError> {
        let swept = self
            .conn()
            .execute("DELETE FROM guards WHERE expires_at <= ?1", [ms(now)])
            .map_err(backend)?;
        Ok(swept as u64)
    }

    async fn hint_candidates(
        &self,
        spaces: &[SpaceId],
        now: u64,
    ) -> Result<Vec<HintCandidate>, StoreError> {
        let mut stmt = self
            .conn()
            .prepare_cached(
                "SELECT d.user, d.device_id, d.push_token, d.push_provider, d.last_hint_at
                 FROM members m JOIN devices d ON d.user = m.user
                 WHERE m.space = ?1 AND d.push_token IS NOT NULL AND d.revoked_at IS NULL
                   AND NOT EXISTS (SELECT 1 FROM presence p WHERE p.user = d.user
                                   AND p.device_id = d.device_id AND p.expires_at > ?2)",
            )
            .map_err(backend)?;
        let mut out = Vec::new();
        for space in spaces {
            let rows = stmt
                .query_map(params![space.as_str(), ms(now)], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, Option<i64>>(4)?,
                    ))
                })
                .map_err(backend)?;
            for row in rows {
                let (user, device, token, provider, last) = row.map_err(backend)?;
                out.push(HintCandidate {
                    space: space.clone(),
                    device: DeviceIdentity {
                        user: user_id(user)?,
                        device: device_id(device)?,
                    },
                    token: PushToken { token, provider },
                    last_hint_at: last.map(uint),
                });
            }
        }
        Ok(out)
    }

    async fn set_last_hint(&self, device: &DeviceIdentity, at: u64) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "UPDATE devices SET last_hint_at = ?3 WHERE user = ?1 AND device_id = ?2",
                params![device.user.as_str(), device.device.as_str(), ms(at)],
            )
            .map_err(backend)?;
        Ok(())
    }
}
