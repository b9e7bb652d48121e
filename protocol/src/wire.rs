//! Messages on the wire.
//!
//! Every WebSocket text frame holds one JSON object with a `"type"` field.
//! Unknown types and unknown fields are refused (the server answers with an
//! `error` whose code is `bad_frame` and closes), so a typo never silently
//! drops data. `docs/PROTOCOL.md` describes the whole exchange.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::change::Change;
use crate::checksum::SpaceChecksum;
use crate::document::Document;
use crate::ids::{Collection, DeviceId, MutationId, SpaceId, UserId};
use crate::mutation::{Mutation, RoleFence};
use crate::policy::CollectionPolicy;

/// The protocol version this crate speaks. A `hello` with another version is
/// refused with `unsupported_protocol`.
pub const PROTOCOL_VERSION: u32 = 1;

/// A message from a device to the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// The first message on every connection.
    Hello(Hello),
    /// A batch of mutations to apply.
    Push(Push),
    /// Start receiving a space the device did not name in `hello` (for
    /// example one the user was just added to).
    Subscribe(Subscribe),
    /// Heartbeat; the server answers `pong` with the same nonce.
    Ping(Heartbeat),
    /// Answer to the server's `ping`.
    Pong(Heartbeat),
    /// Become a candidate for a role, and its holder if it has none.
    Claim(Claim),
    /// Stop being a candidate for a role (and its holder, if it is).
    Release(Release),
    /// The holder gives the role to another connected device of the user.
    Handoff(Handoff),
    /// The holder's heartbeat: extends the leases of the roles it holds.
    Renew(Renew),
    /// Ask the duplicate guard whether this content was seen first here.
    Guard(Guard),
}

/// A message from the server to a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The answer to `hello`.
    Welcome(Welcome),
    /// Changes of one space: a catch-up page or live changes.
    Changes(Changes),
    /// The results of a `push`.
    Ack(Ack),
    /// The user's spaces changed (added to or removed from a space).
    Spaces(Spaces),
    /// Something went wrong; if `fatal`, the server closes the connection.
    Error(ErrorMessage),
    /// Heartbeat; the device answers `pong`.
    Ping(Heartbeat),
    /// Answer to the device's `ping`.
    Pong(Heartbeat),
    /// The state of one of the user's roles: sent to every connected device
    /// of the user when its holder changes, after the connection's first
    /// catch-up for every role the user has, and as the answer to `claim`, `release` and `handoff`
    /// (then with their `request_id`).
    Role(RoleState),
    /// The answer to `guard`.
    GuardResult(GuardResult),
    /// The user's devices: sent after the connection's first catch-up and
    /// whenever one of them
    /// connects, disconnects, is renamed, registers or is revoked.
    Devices(Devices),
}

/// `hello`: who the device is and where it left off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// Must be [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// The device's id; must match the device of the access token.
    pub device_id: DeviceId,
    /// The last revision the device applied, per space. Spaces the user
    /// belongs to that are missing here are sent from revision 0.
    #[serde(default)]
    pub cursors: BTreeMap<SpaceId, u64>,
}

/// `welcome`: what the server knows about this device's user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Welcome {
    /// The protocol version the server speaks.
    pub protocol: u32,
    /// The user the access token belongs to.
    pub user: UserId,
    /// The device.
    pub device_id: DeviceId,
    /// The spaces the user belongs to; their changes follow.
    pub spaces: Vec<SpaceId>,
    /// Declared collection policies; other collections are `lww`.
    pub policies: BTreeMap<Collection, CollectionPolicy>,
    /// Spaces whose cursor is older than the compaction horizon: the device
    /// must drop its copy of them; the server sends them again from 0.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reset_required: Vec<SpaceId>,
    /// The server's limits.
    pub limits: Limits,
}

/// Limits a device must respect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest frame the server accepts, in bytes.
    pub max_frame_bytes: u64,
    /// Most mutations in one `push`.
    pub max_batch_mutations: u32,
    /// Largest document state, in bytes of JSON.
    pub max_document_bytes: u64,
}

/// `push`: mutations to apply, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Push {
    /// Chosen by the device; echoed in the `ack`.
    pub batch_id: u64,
    /// The mutations.
    pub mutations: Vec<Mutation>,
}

/// `subscribe`: send this space from `cursor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscribe {
    /// The space.
    pub space: SpaceId,
    /// The last revision the device applied in it (0 for none).
    pub cursor: u64,
}

/// `ping` / `pong`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// Echoed back.
    pub nonce: u64,
}

/// `changes`: changes of one space in revision order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Changes {
    /// The space.
    pub space: SpaceId,
    /// The changes, in increasing `rev`.
    pub changes: Vec<Change>,
    /// During catch-up: more pages follow. `false` on the last page (the
    /// device is caught up with the space) and on live changes.
    pub more: bool,
    /// The space's checksum at the revision of the last change here (or at
    /// the device's cursor if `changes` is empty). Present on the last
    /// catch-up page and on live changes; absent from pages in the middle of a
    /// catch-up, where the device's copy is between two states of the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<SpaceChecksum>,
    /// The space's latest revision when the page was read (catch-up progress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<u64>,
    /// The device's cursor for this space was older than the compaction
    /// horizon (or newer than the space's head): the device must drop its
    /// copy of the space before applying this page, which starts a catch-up
    /// from revision 0. Only ever set on the first page of a catch-up.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reset: bool,
}

impl Changes {
    /// The most bytes a `changes` message of `space` takes besides its
    /// changes: every other member at its longest (a checksum, the largest
    /// `head`, `reset`). The whole message is at most this plus, for each
    /// change, its [`Change::encoded_len`] and one byte for the comma.
    pub fn envelope_len(space: &SpaceId) -> usize {
        ServerMessage::Changes(Changes {
            space: space.clone(),
            changes: Vec::new(),
            more: false,
            checksum: Some(SpaceChecksum(u64::MAX)),
            head: Some(u64::MAX),
            reset: true,
        })
        .encode()
        .len()
    }
}

/// `ack`: one result per mutation of a `push`, in the same order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    /// The `push`'s batch id.
    pub batch_id: u64,
    /// The results.
    pub results: Vec<MutationResult>,
}

/// What happened to one mutation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MutationResult {
    /// The mutation.
    pub mutation_id: MutationId,
    /// Its outcome.
    pub outcome: Outcome,
}

/// The outcome of a mutation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case", deny_unknown_fields)]
pub enum Outcome {
    /// Applied; the document is now at `rev`.
    Applied {
        /// The revision of the change (the document's version). If the
        /// mutation changed nothing (an older `lww` write), the document's
        /// current version.
        rev: u64,
    },
    /// Already applied: this mutation id was seen before, or an
    /// `append_only` document with this id exists. `rev` is the revision it
    /// was applied at (or the existing document's version).
    Duplicate {
        /// See above.
        rev: u64,
    },
    /// The `base_version` was not the current version; the server's document
    /// (`None` if it does not exist) wins.
    Conflict {
        /// The server's document.
        document: Option<Box<Document>>,
    },
    /// Refused; nothing was written.
    Rejected {
        /// Stable code.
        code: RejectCode,
        /// For people.
        reason: String,
        /// The field at fault, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        field: Option<String>,
    },
}

/// `spaces`: the user's spaces now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spaces {
    /// Every space the user belongs to.
    pub spaces: Vec<SpaceId>,
}

/// `error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorMessage {
    /// Stable code.
    pub code: ErrorCode,
    /// For people.
    pub message: String,
    /// The server closes the connection after a fatal error.
    #[serde(default)]
    pub fatal: bool,
    /// The `push` this error answers, if it answers one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<u64>,
    /// The space it concerns, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub space: Option<SpaceId>,
    /// The request (`claim`, `release`, `handoff`, `guard`) this error
    /// answers, if it answers one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<u64>,
}

/// The longest role name, in bytes.
pub const MAX_ROLE_BYTES: usize = 64;

/// The longest guard scope, in bytes.
pub const MAX_GUARD_SCOPE_BYTES: usize = 256;

/// The longest content a guard checks, in bytes (before normalization).
pub const MAX_GUARD_CONTENT_BYTES: usize = 64 * 1024;

/// The window of a guard that names none, in milliseconds.
pub const DEFAULT_GUARD_WINDOW_MS: u64 = 5_000;

/// The longest window a guard may ask for, in milliseconds (a day).
pub const MAX_GUARD_WINDOW_MS: u64 = 24 * 3600 * 1000;

/// Whether `name` is an acceptable role name: 1 to [`MAX_ROLE_BYTES`] ASCII
/// letters, digits, `_`, `-`, `.`, `:`.
pub fn valid_role_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_ROLE_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

/// `claim`: the device becomes a candidate for `role` (it stays one until it
/// releases the role, also across reconnects) and its holder if the role has
/// none. Answered with `role`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claim {
    /// Chosen by the device; echoed in the answer.
    pub request_id: u64,
    /// The role's name (see [`valid_role_name`]).
    pub role: String,
    /// The device's preference for the role: when the holder is lost, the
    /// connected candidate with the highest priority takes it, the most
    /// recently active one among equals. Default 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// `release`: the device is no longer a candidate; if it held the role, the
/// next eligible device takes it. Answered with `role`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// Chosen by the device; echoed in the answer.
    pub request_id: u64,
    /// The role.
    pub role: String,
}

/// `handoff`: the holder gives the role to `to`, a connected device of the
/// same user, which becomes a candidate if it was not. Answered with `role`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handoff {
    /// Chosen by the device; echoed in the answer.
    pub request_id: u64,
    /// The role.
    pub role: String,
    /// The device that takes it.
    pub to: DeviceId,
}

/// `renew`: the holder's heartbeat, every renew interval (0.5 s by
/// default). Each named role whose holder is this device at `epoch`, with
/// its lease still running, gets a fresh lease; for any other the server
/// sends the role's current state instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Renew {
    /// The roles and the epochs the device holds them at.
    pub leases: Vec<RoleFence>,
}

/// `role`: who holds a role of the user, at which epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleState {
    /// The request this answers, if it answers one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<u64>,
    /// The role.
    pub role: String,
    /// The holder, if any.
    pub holder: Option<DeviceId>,
    /// The holder's name, as registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder_name: Option<String>,
    /// The fencing token: it grows on every change of holder and never goes
    /// back.
    pub epoch: u64,
    /// When the holder's lease runs out unless renewed, Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<u64>,
}

/// `guard`: was `content` (normalized: trimmed, Unicode NFC, runs of
/// whitespace as one space) already seen in `scope` within the window?
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guard {
    /// Chosen by the device; echoed in the answer.
    pub request_id: u64,
    /// What the content is unique within (for example a conversation).
    pub scope: String,
    /// The content.
    pub content: String,
    /// How long the first occurrence holds, in milliseconds (default
    /// [`DEFAULT_GUARD_WINDOW_MS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
    /// The role epoch the device acts under; a stale one is refused with
    /// `stale_epoch` and records nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<RoleFence>,
}

/// The guard's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardVerdict {
    /// The first occurrence in the window: this device goes ahead.
    First,
    /// Seen already within the window: another device (or an earlier call)
    /// went ahead.
    Duplicate,
}

/// `guard_result`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardResult {
    /// The `guard`'s request id.
    pub request_id: u64,
    /// The verdict.
    pub result: GuardVerdict,
}

/// `devices`: the user's devices now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Devices {
    /// Every registered device of the user that is not revoked, by name.
    pub devices: Vec<DeviceInfo>,
}

/// One device of a user, as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceInfo {
    /// The device.
    pub device_id: DeviceId,
    /// Its name.
    pub name: String,
    /// Its platform.
    pub platform: String,
    /// Its app version.
    pub app_version: String,
    /// When it first registered, Unix milliseconds.
    pub registered_at: u64,
    /// When the server last heard from it (the last frame of a connection,
    /// stamped at most about once a second), Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<u64>,
    /// Whether it has a connection to the server now.
    pub online: bool,
}

/// Why a single mutation was refused (in an `ack`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectCode {
    /// The mutation is malformed (for example an empty field name).
    InvalidMutation,
    /// The document would exceed the server's size limit.
    DocumentTooLarge,
    /// A field rule of the schema failed; `field` names the field.
    ValidationFailed,
    /// The collection is `append_only`.
    UpdateNotAllowed,
    /// `put`/`patch` wrote a field declared as a set.
    SetFieldWrite,
    /// `set_add`/`set_remove` named a field not declared as a set.
    NotASetField,
    /// The mutation's role fence is stale: its epoch is not the role's
    /// current one, the author is not the holder, or the lease ran out.
    StaleEpoch,
    /// The user is not a member of the space.
    Forbidden,
    /// The mutation's clock reading is further ahead of the server's clock
    /// than the server allows (`--max-clock-skew-ms`, 5 minutes by
    /// default): the author's wall clock is wrong. Not recorded: once the
    /// server's clock is within the bound of the reading, the same mutation
    /// is accepted.
    ClockSkew,
    /// A code this side does not know: a newer peer's. Received only, never
    /// sent; the reason says what happened. (Without it, one new code from
    /// a newer server would make the whole `ack` undecodable.)
    #[serde(other)]
    Other,
}

/// Why a request or connection failed (in an `error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not a valid message: bad JSON, unknown type, unknown or
    /// missing fields, or a binary frame.
    BadFrame,
    /// The first message was not `hello`, or `hello` came twice.
    HelloRequired,
    /// The `hello` names a protocol version the server does not speak.
    UnsupportedProtocol,
    /// Missing, malformed, unknown or expired credentials.
    Unauthorized,
    /// The credentials were revoked (device revoked, or a refresh token
    /// reused).
    Revoked,
    /// The user may not do this (not a member of the space, not the owner).
    Forbidden,
    /// No such thing (space, device, member).
    NotFound,
    /// It exists already (a space name).
    AlreadyExists,
    /// The request is well-formed but invalid (a bad name, a bad argument).
    InvalidRequest,
    /// A frame larger than the limit.
    FrameTooLarge,
    /// A `push` with more mutations than the limit.
    BatchTooLarge,
    /// Too many requests from this device; slow down.
    RateLimited,
    /// `hello` did not arrive in time.
    HandshakeTimeout,
    /// The device did not read its changes fast enough; reconnect and resume
    /// from the cursor.
    SlowConsumer,
    /// The server is shutting down; reconnect later.
    ShuttingDown,
    /// The server failed; the request was not applied.
    Internal,
    /// A role fence (in a `guard`, `handoff` or `renew`) names an epoch that
    /// is not the role's current one, or a device that is not its holder,
    /// or a lease that ran out: the device lost the role.
    StaleEpoch,
    /// The user has as many registered devices as the server allows
    /// (`--max-devices-per-user`); revoking one frees a place.
    TooManyDevices,
    /// A code this side does not know: a newer peer's. Received only, never
    /// sent; the message says what happened.
    #[serde(other)]
    Other,
}

impl ErrorCode {
    /// The code as the protocol spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::HelloRequired => "hello_required",
            ErrorCode::UnsupportedProtocol => "unsupported_protocol",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Revoked => "revoked",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::BatchTooLarge => "batch_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::HandshakeTimeout => "handshake_timeout",
            ErrorCode::SlowConsumer => "slow_consumer",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Internal => "internal",
            ErrorCode::StaleEpoch => "stale_epoch",
            ErrorCode::TooManyDevices => "too_many_devices",
            ErrorCode::Other => "other",
        }
    }
}

impl RejectCode {
    /// The code as the protocol spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::InvalidMutation => "invalid_mutation",
            RejectCode::DocumentTooLarge => "document_too_large",
            RejectCode::ValidationFailed => "validation_failed",
            RejectCode::UpdateNotAllowed => "update_not_allowed",
            RejectCode::SetFieldWrite => "set_field_write",
            RejectCode::NotASetField => "not_a_set_field",
            RejectCode::StaleEpoch => "stale_epoch",
            RejectCode::Forbidden => "forbidden",
            RejectCode::ClockSkew => "clock_skew",
            RejectCode::Other => "other",
        }
    }
}

/// A `changes` frame, decoded without the tagged enum's detour (see
/// [`ServerMessage::decode`]); as strict as [`Changes`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangesFrame {
    #[serde(rename = "type")]
    _kind: serde::de::IgnoredAny,
    space: SpaceId,
    changes: Vec<Change>,
    more: bool,
    #[serde(default)]
    checksum: Option<SpaceChecksum>,
    #[serde(default)]
    head: Option<u64>,
    #[serde(default)]
    reset: bool,
}

impl ClientMessage {
    /// Decodes one frame's text.
    pub fn decode(text: &str) -> Result<ClientMessage, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Encodes as frame text.
    pub fn encode(&self) -> String {
        // Serializing these types cannot fail: every map key is a string.
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl ServerMessage {
    /// Decodes one frame's text. A `changes` frame written the way every
    /// encoder here writes it (`type` first) is decoded straight into its
    /// fields: the generic path (an internally tagged enum) first copies
    /// the whole frame into an intermediate tree, which for catch-up pages
    /// of a thousand documents costs more than the decoding itself.
    pub fn decode(text: &str) -> Result<ServerMessage, serde_json::Error> {
        if text.starts_with(r#"{"type":"changes""#) {
            let f: ChangesFrame = serde_json::from_str(text)?;
            return Ok(ServerMessage::Changes(Changes {
                space: f.space,
                changes: f.changes,
                more: f.more,
                checksum: f.checksum,
                head: f.head,
                reset: f.reset,
            }));
        }
        serde_json::from_str(text)
    }

    /// Encodes as frame text.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// An `error` message.
    pub fn error(code: ErrorCode, message: impl Into<String>, fatal: bool) -> ServerMessage {
        ServerMessage::Error(ErrorMessage {
            code,
            message: message.into(),
            fatal,
            batch_id: None,
            space: None,
            request_id: None,
        })
    }

    /// A non-fatal `error` answering the request `request_id`.
    pub fn request_error(
        request_id: u64,
        code: ErrorCode,
        message: impl Into<String>,
    ) -> ServerMessage {
        ServerMessage::Error(ErrorMessage {
            code,
            message: message.into(),
            fatal: false,
            batch_id: None,
            space: None,
            request_id: Some(request_id),
        })
    }
}
