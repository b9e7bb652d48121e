//! Device coordination on PostgreSQL: the primitives of the coordination
//! seam ([`crate::store::coordination::seam`]) in PostgreSQL's SQL, shared
//! by every instance. What each request does is written once, in
//! [`crate::store::coordination::transactions`].
//!
//! What keeps several instances right:
//!
//! - **One clock.** Leases, presence and guard windows are decided against
//!   the database's clock ([`db_now`]), never an instance's own, so two
//!   instances agree on whether a lease has run out.
//! - **Roles under a row lock.** A change reads the role's row `FOR
//!   UPDATE`, decides ([`crate::roles::decide`]) and writes it back in the
//!   same transaction: two instances racing on a role take turns and the
//!   second sees the first's epoch. A fenced push or guard reads the row
//!   `FOR SHARE`, so it commits entirely before or after a change of holder.
//! - **Guards are a primary key.** Insert, or take over a row whose window
//!   ran out, is one statement: of two instances inserting the same key,
//!   the second waits for the first and then finds its row.
//! - **Presence expires.** Every instance stamps its devices' rows every
//!   second; a crashed instance stops stamping and its rows run out, which
//!   any instance's heartbeat notices.
//! - **Hints are claimed under the devices' row locks**, so two instances
//!   do not both send a device's hint.

use std::collections::BTreeMap;

use deadpool_postgres::GenericClient;
use tandem_protocol::api::PushToken;
use tandem_protocol::wire::{DeviceInfo, RoleState};
use tandem_protocol::{DeviceId, SpaceId, UserId};

use super::reads::{corrupt, int, space, uint, user};
use super::{TxError, WriteTx, pg_error};
use crate::roles::{CandidacyChange, Candidate, RoleRow};
use crate::store::coordination::seam::{
    CoordinationReads, CoordinationTx, HintCandidate, RowLock, role_state,
};
use crate::store::coordination::transactions;
use crate::store::{DeviceIdentity, PresenceStamp, StoreError, StoreEvent};

/// The database's clock, Unix milliseconds.
pub(crate) async fn db_now(c: &impl GenericClient) -> Result<u64, StoreError> {
    let row = c
        .query_one(
            "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
            &[],
        )
        .await
        .map_err(pg_error)?;
    Ok(uint(row.get(0)))
}

fn device_id(text: String) -> Result<DeviceId, StoreError> {
    DeviceId::new(text).map_err(|e| corrupt("device id", e))
}

fn role_row(holder: Option<String>, epoch: i64, lease: Option<i64>) -> Result<RoleRow, StoreError> {
    Ok(RoleRow {
        holder: holder.map(device_id).transpose()?,
        epoch: uint(epoch),
        lease_expires_at: lease.map(uint),
    })
}

/// Coordination reads on any client: a pooled connection, or a transaction.
pub(crate) struct PgReads<'c, C> {
    client: &'c C,
}

impl<'c, C: GenericClient> PgReads<'c, C> {
    /// Reads on `client`.
    pub(crate) fn new(client: &'c C) -> PgReads<'c, C> {
        PgReads { client }
    }
}

/// One coordination request in a write transaction.
pub(crate) struct PgTx<'a, 't> {
    w: &'a mut WriteTx<'t>,
}

impl<'a, 't> PgTx<'a, 't> {
    /// The request's side of the seam, in `w`'s transaction.
    pub(crate) fn new(w: &'a mut WriteTx<'t>) -> PgTx<'a, 't> {
        PgTx { w }
    }

    fn reads(&self) -> PgReads<'_, deadpool_postgres::Transaction<'t>> {
        PgReads::new(&self.w.tx)
    }
}

/// The user's devices now, on `client` (for an announcement another
/// instance made).
pub(crate) async fn devices_of(
    client: &impl GenericClient,
    user_id: &UserId,
) -> Result<Vec<DeviceInfo>, StoreError> {
    Ok(transactions::devices_of(&PgReads::new(client), user_id).await?)
}

/// The role's state now, on `client` (for an announcement another
/// instance made).
pub(crate) async fn role_state_now(
    client: &impl GenericClient,
    user_id: &UserId,
    role: &str,
) -> Result<RoleState, StoreError> {
    Ok(transactions::role_state(&PgReads::new(client), user_id, role).await?)
}

impl<C: GenericClient> CoordinationReads for PgReads<'_, C> {
    type Error = TxError;

    async fn now(&self) -> Result<u64, TxError> {
        Ok(db_now(self.client).await?)
    }

    async fn devices(&self, user_id: &UserId, now: u64) -> Result<Vec<DeviceInfo>, TxError> {
        let rows = self
            .client
            .query(
                "SELECT d.device_id, d.name, d.platform, d.app_version, d.registered_at,
                        d.last_seen,
                        (SELECT MAX(p.last_active) FROM presence p
                         WHERE p.user_id = d.user_id AND p.device_id = d.device_id
                           AND p.expires_at > $2)
                 FROM devices d WHERE d.user_id = $1 AND d.revoked_at IS NULL
                 ORDER BY d.name, d.device_id",
                &[&user_id.as_str(), &int(now)],
            )
            .await?;
        let mut out = Vec::new();
        for row in rows {
            let last_seen: Option<i64> = row.get(5);
            let active: Option<i64> = row.get(6);
            out.push(DeviceInfo {
                device_id: device_id(row.get(0))?,
                name: row.get(1),
                platform: row.get(2),
                app_version: row.get(3),
                registered_at: uint(row.get(4)),
                last_seen: active.or(last_seen).map(uint),
                online: active.is_some(),
            });
        }
        Ok(out)
    }

    async fn role(&self, user_id: &UserId, role: &str) -> Result<Option<RoleState>, TxError> {
        let row = self
            .client
            .query_opt(
                "SELECT r.holder, r.epoch, r.lease_expires_at,
                        (SELECT d.name FROM devices d
                         WHERE d.user_id = r.user_id AND d.device_id = r.holder)
                 FROM roles r WHERE r.user_id = $1 AND r.role = $2",
                &[&user_id.as_str(), &role],
            )
            .await?;
        Ok(row
            .map(|row| {
                let holder = role_row(row.get(0), row.get(1), row.get(2))?;
                Ok::<_, StoreError>(role_state(role, holder, row.get(3)))
            })
            .transpose()?)
    }

    async fn roles(&self, user_id: &UserId) -> Result<Vec<RoleState>, TxError> {
        let rows = self
            .client
            .query(
                "SELECT r.role, r.holder, r.epoch, r.lease_expires_at,
                        (SELECT d.name FROM devices d
                         WHERE d.user_id = r.user_id AND d.device_id = r.holder)
                 FROM roles r WHERE r.user_id = $1 ORDER BY r.role",
                &[&user_id.as_str()],
            )
            .await?;
        let mut out = Vec::new();
        for row in rows {
            let name: String = row.get(0);
            let held = role_row(row.get(1), row.get(2), row.get(3))?;
            out.push(role_state(&name, held, row.get(4)));
        }
        Ok(out)
    }

    async fn roles_to_check(&self, now: u64) -> Result<Vec<(UserId, String)>, TxError> {
        let rows = self
            .client
            .query(
                "SELECT r.user_id, r.role FROM roles r
                 WHERE (r.holder IS NOT NULL AND (r.lease_expires_at <= $1 OR NOT EXISTS (
                            SELECT 1 FROM presence p WHERE p.user_id = r.user_id
                            AND p.device_id = r.holder AND p.expires_at > $1)))
                    OR (r.holder IS NULL AND EXISTS (
                            SELECT 1 FROM role_candidates c JOIN presence p
                            ON p.user_id = c.user_id AND p.device_id = c.device_id
                               AND p.expires_at > $1
                            WHERE c.user_id = r.user_id AND c.role = r.role))",
                &[&int(now)],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push((user(row.get(0))?, row.get(1)));
        }
        Ok(out)
    }
}

impl CoordinationReads for PgTx<'_, '_> {
    type Error = TxError;

    async fn now(&self) -> Result<u64, TxError> {
        self.reads().now().await
    }

    async fn devices(&self, user_id: &UserId, now: u64) -> Result<Vec<DeviceInfo>, TxError> {
        self.reads().devices(user_id, now).await
    }

    async fn role(&self, user_id: &UserId, role: &str) -> Result<Option<RoleState>, TxError> {
        self.reads().role(user_id, role).await
    }

    async fn roles(&self, user_id: &UserId) -> Result<Vec<RoleState>, TxError> {
        self.reads().roles(user_id).await
    }

    async fn roles_to_check(&self, now: u64) -> Result<Vec<(UserId, String)>, TxError> {
        self.reads().roles_to_check(now).await
    }
}

impl CoordinationTx for PgTx<'_, '_> {
    fn announce(&mut self, event: StoreEvent) {
        self.w.announce(event);
    }

    async fn rename_device(&self, device: &DeviceIdentity, name: &str) -> Result<bool, TxError> {
        let renamed = self
            .w
            .tx
            .execute(
                "UPDATE devices SET name = $3 WHERE user_id = $1 AND device_id = $2
                 AND revoked_at IS NULL",
                &[&device.user.as_str(), &device.device.as_str(), &name],
            )
            .await?;
        Ok(renamed > 0)
    }

    async fn set_push_token(
        &self,
        device: &DeviceIdentity,
        token: Option<&PushToken>,
    ) -> Result<(), TxError> {
        self.w
            .tx
            .execute(
                "UPDATE devices SET push_token = $3, push_provider = $4, last_hint_at = NULL
                 WHERE user_id = $1 AND device_id = $2",
                &[
                    &device.user.as_str(),
                    &device.device.as_str(),
                    &token.map(|t| t.token.as_str()),
                    &token.map(|t| t.provider.as_str()),
                ],
            )
            .await?;
        Ok(())
    }

    async fn retire_device(&self, device: &DeviceIdentity, now: u64) -> Result<(), TxError> {
        let (u, d) = (device.user.as_str(), device.device.as_str());
        let tx = &self.w.tx;
        tx.execute(
            "UPDATE devices SET revoked_at = $3, push_token = NULL, push_provider = NULL
             WHERE user_id = $1 AND device_id = $2",
            &[&u, &d, &int(now)],
        )
        .await?;
        tx.execute(
            "DELETE FROM presence WHERE user_id = $1 AND device_id = $2",
            &[&u, &d],
        )
        .await?;
        tx.execute(
            "DELETE FROM role_candidates WHERE user_id = $1 AND device_id = $2",
            &[&u, &d],
        )
        .await?;
        Ok(())
    }

    async fn is_online(&self, device: &DeviceIdentity, now: u64) -> Result<bool, TxError> {
        Ok(self
            .w
            .tx
            .query_opt(
                "SELECT 1 FROM presence p JOIN devices d
                   ON d.user_id = p.user_id AND d.device_id = p.device_id
                 WHERE p.user_id = $1 AND p.device_id = $2 AND p.expires_at > $3
                   AND d.revoked_at IS NULL LIMIT 1",
                &[&device.user.as_str(), &device.device.as_str(), &int(now)],
            )
            .await?
            .is_some())
    }

    async fn stamp_presence(
        &self,
        instance: &str,
        stamp: &PresenceStamp,
        expires_at: u64,
    ) -> Result<(), TxError> {
        self.w
            .tx
            .execute(
                "INSERT INTO presence (user_id, device_id, instance, last_active, expires_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (user_id, device_id, instance) DO UPDATE SET
                     last_active = GREATEST(presence.last_active, excluded.last_active),
                     expires_at = excluded.expires_at",
                &[
                    &stamp.device.user.as_str(),
                    &stamp.device.device.as_str(),
                    &instance,
                    &int(stamp.last_active),
                    &int(expires_at),
                ],
            )
            .await?;
        Ok(())
    }

    async fn remove_presence(
        &self,
        instance: &str,
        device: &DeviceIdentity,
    ) -> Result<bool, TxError> {
        let removed = self
            .w
            .tx
            .execute(
                "DELETE FROM presence WHERE user_id = $1 AND device_id = $2 AND instance = $3",
                &[&device.user.as_str(), &device.device.as_str(), &instance],
            )
            .await?;
        Ok(removed > 0)
    }

    async fn set_last_seen(&self, device: &DeviceIdentity, at: u64) -> Result<(), TxError> {
        self.w
            .tx
            .execute(
                "UPDATE devices SET last_seen = $3 WHERE user_id = $1 AND device_id = $2",
                &[&device.user.as_str(), &device.device.as_str(), &int(at)],
            )
            .await?;
        Ok(())
    }

    async fn expire_presence(&self, now: u64) -> Result<Vec<UserId>, TxError> {
        let tx = &self.w.tx;
        let expired = tx
            .query(
                "DELETE FROM presence WHERE expires_at <= $1
                 RETURNING user_id, device_id, last_active",
                &[&int(now)],
            )
            .await?;
        let mut users = Vec::with_capacity(expired.len());
        for row in expired {
            let (u, d, last): (String, String, i64) = (row.get(0), row.get(1), row.get(2));
            tx.execute(
                "UPDATE devices SET last_seen = GREATEST(COALESCE(last_seen, 0), $3)
                 WHERE user_id = $1 AND device_id = $2",
                &[&u, &d, &last],
            )
            .await?;
            users.push(user(u)?);
        }
        Ok(users)
    }

    async fn create_role(&self, user_id: &UserId, role: &str) -> Result<(), TxError> {
        self.w
            .tx
            .execute(
                "INSERT INTO roles (user_id, role) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&user_id.as_str(), &role],
            )
            .await?;
        Ok(())
    }

    async fn lock_role(
        &self,
        user_id: &UserId,
        role: &str,
        lock: RowLock,
    ) -> Result<Option<RoleRow>, TxError> {
        let sql = match lock {
            RowLock::Update => {
                "SELECT holder, epoch, lease_expires_at FROM roles
                 WHERE user_id = $1 AND role = $2 FOR UPDATE"
            }
            RowLock::Share => {
                "SELECT holder, epoch, lease_expires_at FROM roles
                 WHERE user_id = $1 AND role = $2 FOR SHARE"
            }
        };
        let row = self
            .w
            .tx
            .query_opt(sql, &[&user_id.as_str(), &role])
            .await?;
        Ok(row
            .map(|row| role_row(row.get(0), row.get(1), row.get(2)))
            .transpose()?)
    }

    async fn candidates(
        &self,
        user_id: &UserId,
        role: &str,
        now: u64,
    ) -> Result<Vec<Candidate>, TxError> {
        let rows = self
            .w
            .tx
            .query(
                "SELECT c.device_id, c.priority,
                        (SELECT MAX(p.last_active) FROM presence p
                         WHERE p.user_id = c.user_id AND p.device_id = c.device_id
                           AND p.expires_at > $3)
                 FROM role_candidates c WHERE c.user_id = $1 AND c.role = $2",
                &[&user_id.as_str(), &role, &int(now)],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let active: Option<i64> = row.get(2);
            out.push(Candidate {
                device: device_id(row.get(0))?,
                priority: row.get(1),
                present: active.is_some(),
                last_active: active.map_or(0, uint),
            });
        }
        Ok(out)
    }

    async fn write_candidacy(
        &self,
        user_id: &UserId,
        role: &str,
        change: &CandidacyChange,
        now: u64,
    ) -> Result<(), TxError> {
        match change {
            CandidacyChange::Keep => {}
            CandidacyChange::Upsert(device, priority) => {
                self.w
                    .tx
                    .execute(
                        "INSERT INTO role_candidates
                             (user_id, role, device_id, priority, claimed_at)
                         VALUES ($1, $2, $3, $4, $5)
                         ON CONFLICT (user_id, role, device_id)
                         DO UPDATE SET priority = excluded.priority",
                        &[
                            &user_id.as_str(),
                            &role,
                            &device.as_str(),
                            priority,
                            &int(now),
                        ],
                    )
                    .await?;
            }
            CandidacyChange::Remove(device) => {
                self.w
                    .tx
                    .execute(
                        "DELETE FROM role_candidates
                         WHERE user_id = $1 AND role = $2 AND device_id = $3",
                        &[&user_id.as_str(), &role, &device.as_str()],
                    )
                    .await?;
            }
        }
        Ok(())
    }

    async fn write_role(&self, user_id: &UserId, role: &str, row: &RoleRow) -> Result<(), TxError> {
        self.w
            .tx
            .execute(
                "UPDATE roles SET holder = $3, epoch = $4, lease_expires_at = $5
                 WHERE user_id = $1 AND role = $2",
                &[
                    &user_id.as_str(),
                    &role,
                    &row.holder.as_ref().map(DeviceId::as_str),
                    &int(row.epoch),
                    &row.lease_expires_at.map(int),
                ],
            )
            .await?;
        Ok(())
    }

    async fn insert_guard(
        &self,
        author: &DeviceIdentity,
        hash: &[u8; 32],
        expires_at: u64,
        now: u64,
    ) -> Result<bool, TxError> {
        // A row comes back only for an insert or a takeover.
        Ok(self
            .w
            .tx
            .query_opt(
                "INSERT INTO guards (user_id, hash, device_id, expires_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (user_id, hash) DO UPDATE SET device_id = excluded.device_id,
                     expires_at = excluded.expires_at
                 WHERE guards.expires_at <= $5
                 RETURNING 1",
                &[
                    &author.user.as_str(),
                    &&hash[..],
                    &author.device.as_str(),
                    &int(expires_at),
                    &int(now),
                ],
            )
            .await?
            .is_some())
    }

    async fn sweep_guards(&self, now: u64) -> Result<u64, TxError> {
        Ok(self
            .w
            .tx
            .execute("DELETE FROM guards WHERE expires_at <= $1", &[&int(now)])
            .await?)
    }

    async fn hint_candidates(
        &self,
        spaces: &[SpaceId],
        now: u64,
    ) -> Result<Vec<HintCandidate>, TxError> {
        let names: Vec<&str> = spaces.iter().map(SpaceId::as_str).collect();
        // The devices' rows are locked in one order on every instance.
        let rows = self
            .w
            .tx
            .query(
                "SELECT m.space, d.user_id, d.device_id, d.push_token, d.push_provider,
                        d.last_hint_at
                 FROM members m JOIN devices d ON d.user_id = m.user_id
                 WHERE m.space = ANY($1) AND d.push_token IS NOT NULL AND d.revoked_at IS NULL
                   AND NOT EXISTS (SELECT 1 FROM presence p WHERE p.user_id = d.user_id
                                   AND p.device_id = d.device_id AND p.expires_at > $2)
                 ORDER BY d.user_id, d.device_id
                 FOR UPDATE OF d",
                &[&names, &int(now)],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let last: Option<i64> = row.get(5);
            out.push(HintCandidate {
                space: space(row.get(0))?,
                device: DeviceIdentity {
                    user: user(row.get(1))?,
                    device: device_id(row.get(2))?,
                },
                token: PushToken {
                    token: row.get(3),
                    provider: row.get(4),
                },
                last_hint_at: last.map(uint),
            });
        }
        Ok(out)
    }

    async fn set_last_hint(&self, device: &DeviceIdentity, at: u64) -> Result<(), TxError> {
        self.w
            .tx
            .execute(
                "UPDATE devices SET last_hint_at = $3 WHERE user_id = $1 AND device_id = $2",
                &[&device.user.as_str(), &device.device.as_str(), &int(at)],
            )
            .await?;
        Ok(())
    }
}

/// Reads the roles named by `keys` (user, role) `FOR SHARE` (a change of
/// holder waits for this transaction), with the database's clock after the
/// locks: the fence checks of a group of pushes in one statement.
pub(crate) async fn fenced_roles(
    c: &impl GenericClient,
    keys: &[(String, String)],
) -> Result<(BTreeMap<(String, String), RoleRow>, u64), StoreError> {
    let now = db_now(c).await?;
    if keys.is_empty() {
        return Ok((BTreeMap::new(), now));
    }
    let users: Vec<&str> = keys.iter().map(|(u, _)| u.as_str()).collect();
    let names: Vec<&str> = keys.iter().map(|(_, r)| r.as_str()).collect();
    let rows = c
        .query(
            "SELECT r.user_id, r.role, r.holder, r.epoch, r.lease_expires_at
             FROM roles r JOIN unnest($1::text[], $2::text[]) AS k(user_id, role)
               ON r.user_id = k.user_id AND r.role = k.role
             ORDER BY r.user_id, r.role
             FOR SHARE OF r",
            &[&users, &names],
        )
        .await
        .map_err(pg_error)?;
    let mut out = BTreeMap::new();
    for row in rows {
        out.insert(
            (row.get(0), row.get(1)),
            role_row(row.get(2), row.get(3), row.get(4))?,
        );
    }
    // The clock after the locks: a lease that ran out while this waited is
    // seen as run out.
    let now = db_now(c).await?.max(now);
    Ok((out, now))
}
