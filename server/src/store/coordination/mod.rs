//! Device coordination: the registry, presence, roles, the duplicate guard
//! and push hints.

use tandem_protocol::api::PushToken;
use tandem_protocol::wire::RoleState;
use tandem_protocol::{DeviceId, SpaceId};

use super::DeviceIdentity;

/// What a device asks of a role ([`Store::change_role`](crate::store::Store::change_role)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleRequest {
    /// Become a candidate (with this priority), and the holder if the role
    /// has no live holder.
    Claim {
        /// Higher is preferred.
        priority: i32,
    },
    /// Stop being a candidate; a holder hands the role on.
    Release,
    /// The holder gives the role to `to`, which must be connected.
    Handoff {
        /// The device that takes the role.
        to: DeviceId,
    },
    /// The holder extends its lease at `epoch`.
    Renew {
        /// The epoch the device holds the role at.
        epoch: u64,
    },
    /// Look again: if the holder's lease ran out or it is not connected,
    /// the next eligible candidate takes the role (or nobody does); a role
    /// without holder goes to the best connected candidate.
    Check,
}

/// The result of [`Store::change_role`](crate::store::Store::change_role).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleChange {
    /// The role's state after the request.
    pub state: RoleState,
    /// Whether the holder (and so the epoch) changed.
    pub changed: bool,
}

/// A device's presence on this instance, as the instance stamps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceStamp {
    /// The device.
    pub device: DeviceIdentity,
    /// When it last sent something, Unix milliseconds.
    pub last_active: u64,
}

/// Coordination timings the store needs to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leases {
    /// How long a role's lease lasts after a claim, handoff or renewal.
    pub role_ms: u64,
    /// How long a presence row lasts after its last stamp.
    pub presence_ms: u64,
}

/// A push hint to send: an offline device with a push token, and the spaces
/// that changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HintTarget {
    /// The device.
    pub device: DeviceIdentity,
    /// Its token.
    pub token: PushToken,
    /// The changed spaces it belongs to, sorted.
    pub spaces: Vec<SpaceId>,
}

/// A space whose changes wait for push hints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HintedSpace {
    /// The space.
    pub space: SpaceId,
    /// A device whose last hint is at or after this time (Unix
    /// milliseconds) was hinted after these changes committed: it is not
    /// hinted again for them.
    pub told_after_ms: u64,
}

/// What [`Store::claim_push_hints`](crate::store::Store::claim_push_hints) found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HintClaim {
    /// Hints to send now (their devices' last hint time is now set).
    pub ready: Vec<HintTarget>,
    /// The earliest time a device left out by its rate limit may get a hint,
    /// Unix milliseconds.
    pub retry_at: Option<u64>,
}
