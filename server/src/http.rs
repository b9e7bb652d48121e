//! HTTP routes: device registration and refresh, spaces and members, push
//! and pull for background use, the WebSocket upgrade, health and metrics.
//!
//! Every error answer has a JSON body `{"code", "message"}` with the same
//! codes as the WebSocket `error` message, and a status that goes with the
//! code (see [`status_of`]).

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tandem_protocol::DeviceId;
use tandem_protocol::api::{
    AddMember, ApiError, CreateSpace, DeviceCredentials, DeviceList, MAX_DEVICE_LABEL_BYTES,
    PushToken, RefreshCredentials, RegisterDevice, RenameDevice, SpaceList,
};
use tandem_protocol::wire::Ack;
use tandem_protocol::{ClientMessage, ErrorCode, ServerMessage, SpaceId, UserId};
use tracing::{Instrument, warn};

use crate::auth::{hash_token, new_access_token, new_refresh_token};
use crate::feed;
use crate::session;
use crate::state::{ServerState, now_ms};
use crate::store::{
    DeviceIdentity, DeviceRegistration, NewCredentials, RefreshOutcome, StoreError,
};

type AppState = Arc<ServerState>;

/// The WebSocket read buffer of each connection.
const READ_BUFFER_BYTES: usize = 8 * 1024;

/// The server's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/devices/register", post(register_device))
        .route("/v1/devices/refresh", post(refresh_credentials))
        .route("/v1/devices", get(list_devices))
        .route(
            "/v1/devices/{device}",
            axum::routing::patch(rename_device).delete(revoke_device),
        )
        .route(
            "/v1/push-token",
            axum::routing::put(set_push_token).delete(clear_push_token),
        )
        .route("/v1/spaces", get(list_spaces).post(create_space))
        .route("/v1/spaces/{space}", get(space_members))
        .route("/v1/spaces/{space}/members", post(add_member))
        .route("/v1/spaces/{space}/members/{user}", delete(remove_member))
        .route("/v1/spaces/{space}/changes", get(pull))
        .route("/v1/push", post(push))
        .route("/v1/sync", get(sync))
        .fallback(not_found)
        .with_state(state)
}

/// The CORS layer that lets pages of `origins` call the HTTP routes from
/// a browser: the methods and headers the routes use, answers readable by
/// the page. `None` with no origins: no origin gets CORS headers.
/// Authorization is not loosened: every route still checks its token.
pub fn cors_layer(
    origins: &[String],
) -> Result<Option<tower_http::cors::CorsLayer>, crate::StartError> {
    if origins.is_empty() {
        return Ok(None);
    }
    let mut allowed = Vec::with_capacity(origins.len());
    for origin in origins {
        // scheme://host[:port], exactly as a browser sends it in `Origin`.
        let well_formed = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"))
            .is_some_and(|authority| {
                !authority.is_empty()
                    && !authority.starts_with(':')
                    && authority.chars().all(|c| {
                        c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']')
                    })
            });
        let value = header::HeaderValue::from_str(origin)
            .ok()
            .filter(|_| well_formed)
            .ok_or_else(|| crate::StartError::CorsOrigin(origin.clone()))?;
        allowed.push(value);
    }
    let cors = tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::AllowOrigin::list(allowed))
        .allow_methods([
            axum::http::Method::GET,
            axum::http::Method::POST,
            axum::http::Method::PUT,
            axum::http::Method::PATCH,
            axum::http::Method::DELETE,
        ])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(std::time::Duration::from_secs(600));
    Ok(Some(cors))
}

/// The subprotocol a browser offers on the sync socket, with its access
/// token in a second one (`tandem.bearer.<token>`): a browser's WebSocket
/// cannot send an `Authorization` header, and a token in the URL would end
/// up in logs. The server answers with this one.
pub const SYNC_SUBPROTOCOL: &str = "tandem.v1";

/// The prefix of the subprotocol that carries the access token.
const BEARER_SUBPROTOCOL: &str = "tandem.bearer.";

/// The access token offered as a subprotocol, if the request offers
/// `tandem.v1` with it.
fn subprotocol_token(headers: &HeaderMap) -> Option<&str> {
    let offered: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    if !offered.contains(&SYNC_SUBPROTOCOL) {
        return None;
    }
    offered
        .iter()
        .find_map(|p| p.strip_prefix(BEARER_SUBPROTOCOL))
        .filter(|t| !t.is_empty())
}

/// An error answer.
#[derive(Debug)]
pub struct HttpError {
    code: ErrorCode,
    message: String,
}

impl HttpError {
    fn new(code: ErrorCode, message: impl Into<String>) -> HttpError {
        HttpError {
            code,
            message: message.into(),
        }
    }
}

impl From<StoreError> for HttpError {
    fn from(e: StoreError) -> HttpError {
        HttpError::new(e.code(), e.to_string())
    }
}

/// The HTTP status of an error code.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadFrame | ErrorCode::InvalidRequest | ErrorCode::HelloRequired => {
            StatusCode::BAD_REQUEST
        }
        ErrorCode::UnsupportedProtocol => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthorized | ErrorCode::Revoked => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::AlreadyExists => StatusCode::CONFLICT,
        ErrorCode::FrameTooLarge | ErrorCode::BatchTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::HandshakeTimeout => StatusCode::REQUEST_TIMEOUT,
        ErrorCode::SlowConsumer | ErrorCode::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        // The server never sends a code it does not know.
        ErrorCode::Internal | ErrorCode::Other => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::StaleEpoch => StatusCode::CONFLICT,
        ErrorCode::TooManyDevices => StatusCode::CONFLICT,
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = ApiError {
            code: self.code,
            message: self.message,
        };
        let mut response = (status_of(self.code), json_body(&body)).into_response();
        if self.code == ErrorCode::Unauthorized || self.code == ErrorCode::Revoked {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// Counts every error answer in the metrics.
fn fail(state: &ServerState, error: HttpError) -> HttpError {
    state.metrics.error(error.code);
    error
}

fn json_body<T: serde::Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// A JSON body, read up to the frame limit and decoded strictly (unknown
/// fields are refused).
struct JsonBody<T>(T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = HttpError;

    async fn from_request(req: Request<Body>, state: &AppState) -> Result<Self, HttpError> {
        let bytes = body_bytes(req, state).await?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| fail(state, HttpError::new(ErrorCode::BadFrame, e.to_string())))
    }
}

/// A JSON body decoded like [`JsonBody`], with its text kept (a push's
/// text says what its decoded numbers cannot, see [`crate::screen`]).
struct JsonText<T>(T, String);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonText<T> {
    type Rejection = HttpError;

    async fn from_request(req: Request<Body>, state: &AppState) -> Result<Self, HttpError> {
        let bytes = body_bytes(req, state).await?;
        let text = String::from_utf8(bytes.to_vec()).map_err(|e| {
            fail(
                state,
                HttpError::new(ErrorCode::BadFrame, format!("the body is not UTF-8: {e}")),
            )
        })?;
        serde_json::from_str(&text)
            .map(|value| JsonText(value, text))
            .map_err(|e| fail(state, HttpError::new(ErrorCode::BadFrame, e.to_string())))
    }
}

/// The request's body, up to the frame limit.
async fn body_bytes(req: Request<Body>, state: &AppState) -> Result<Bytes, HttpError> {
    let limit = state.config.limits.max_frame_bytes;
    axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| {
            fail(
                state,
                HttpError::new(
                    ErrorCode::FrameTooLarge,
                    format!("the body is larger than {limit} bytes"),
                ),
            )
        })
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

/// The device of the request's access token.
struct Device(DeviceIdentity);

impl FromRequestParts<AppState> for Device {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, HttpError> {
        authenticate(&parts.headers, state)
            .await
            .map(Device)
            .map_err(|e| fail(state, e))
    }
}

async fn authenticate(
    headers: &HeaderMap,
    state: &ServerState,
) -> Result<DeviceIdentity, HttpError> {
    let Some(token) = bearer(headers) else {
        return Err(HttpError::new(
            ErrorCode::Unauthorized,
            "missing Authorization: Bearer <access token>",
        ));
    };
    authenticate_token(token, state).await
}

async fn authenticate_token(token: &str, state: &ServerState) -> Result<DeviceIdentity, HttpError> {
    match state
        .store
        .device_for_access_token(hash_token(token), now_ms())
        .await?
    {
        Some(identity) => Ok(identity),
        None => Err(HttpError::new(
            ErrorCode::Unauthorized,
            "unknown, expired or revoked access token",
        )),
    }
}

async fn healthz() -> Response {
    json_body(&serde_json::json!({"status": "ok"}))
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn not_found(State(state): State<AppState>) -> HttpError {
    fail(&state, HttpError::new(ErrorCode::NotFound, "no such route"))
}

fn check_label(what: &str, value: &str) -> Result<(), HttpError> {
    if value.len() > MAX_DEVICE_LABEL_BYTES || value.chars().any(char::is_control) {
        return Err(HttpError::new(
            ErrorCode::InvalidRequest,
            format!(
                "{what} must be at most {MAX_DEVICE_LABEL_BYTES} bytes without control characters"
            ),
        ));
    }
    Ok(())
}

/// A fresh token pair: what the store keeps and what the device gets.
struct Minted {
    stored: NewCredentials,
    access_token: String,
    refresh_token: String,
}

impl Minted {
    fn new(state: &ServerState) -> Minted {
        let now = now_ms();
        let lifetimes = state.config.credentials;
        let access = new_access_token();
        let refresh = new_refresh_token();
        Minted {
            stored: NewCredentials {
                access: access.hash,
                access_expires_at: now.saturating_add(lifetimes.access.as_millis() as u64),
                refresh: refresh.hash,
                refresh_expires_at: now.saturating_add(lifetimes.refresh.as_millis() as u64),
            },
            access_token: access.token,
            refresh_token: refresh.token,
        }
    }

    fn for_device(self, identity: DeviceIdentity) -> DeviceCredentials {
        DeviceCredentials {
            user: identity.user,
            device_id: identity.device,
            access_token: self.access_token,
            access_expires_at: self.stored.access_expires_at,
            refresh_token: self.refresh_token,
            refresh_expires_at: self.stored.refresh_expires_at,
        }
    }
}

async fn register_device(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<JsonBody<RegisterDevice>, HttpError>,
) -> Result<Response, HttpError> {
    let result = async {
        let Some(token) = bearer(&headers) else {
            return Err(HttpError::new(
                ErrorCode::Unauthorized,
                "missing Authorization: Bearer <user token>",
            ));
        };
        let user = state
            .config
            .user_tokens
            .verify(token)
            .map_err(|e| HttpError::new(ErrorCode::Unauthorized, e.to_string()))?;
        let JsonBody(body) = body?;
        check_label("name", &body.name)?;
        check_label("platform", &body.platform)?;
        check_label("app_version", &body.app_version)?;
        let identity = DeviceIdentity {
            user,
            device: body.device_id,
        };
        let minted = Minted::new(&state);
        state
            .store
            .register_device(
                DeviceRegistration {
                    identity: identity.clone(),
                    name: body.name,
                    platform: body.platform,
                    app_version: body.app_version,
                },
                minted.stored,
                state.config.limits.max_devices_per_user,
                now_ms(),
            )
            .await?;
        Ok(json_body(&minted.for_device(identity)))
    }
    .await;
    result.map_err(|e| fail(&state, e))
}

async fn refresh_credentials(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<RefreshCredentials>,
) -> Result<Response, HttpError> {
    let presented = hash_token(&body.refresh_token);
    let minted = Minted::new(&state);
    let outcome = state
        .store
        .refresh_credentials(presented, minted.stored, now_ms())
        .await
        .map_err(|e| fail(&state, e.into()))?;
    match outcome {
        RefreshOutcome::Rotated(identity) => Ok(json_body(&minted.for_device(identity))),
        RefreshOutcome::Reused(identity) => {
            warn!(user = %identity.user, device = %identity.device, "a rotated refresh token was presented again; the device's credentials are revoked");
            Err(fail(
                &state,
                HttpError::new(
                    ErrorCode::Revoked,
                    "this refresh token was already used; every credential of the device is revoked, register again",
                ),
            ))
        }
        RefreshOutcome::Expired => Err(fail(
            &state,
            HttpError::new(
                ErrorCode::Unauthorized,
                "the refresh token has expired; register again",
            ),
        )),
        RefreshOutcome::Unknown => Err(fail(
            &state,
            HttpError::new(ErrorCode::Unauthorized, "unknown refresh token"),
        )),
    }
}

fn space_id(state: &ServerState, raw: String) -> Result<SpaceId, HttpError> {
    SpaceId::new(raw).map_err(|e| {
        fail(
            state,
            HttpError::new(ErrorCode::InvalidRequest, e.to_string()),
        )
    })
}

async fn list_spaces(
    State(state): State<AppState>,
    Device(device): Device,
) -> Result<Response, HttpError> {
    let spaces = state
        .store
        .spaces_of(device.user)
        .await
        .map_err(|e| fail(&state, e.into()))?;
    Ok(json_body(&SpaceList { spaces }))
}

async fn create_space(
    State(state): State<AppState>,
    Device(device): Device,
    JsonBody(body): JsonBody<CreateSpace>,
) -> Result<Response, HttpError> {
    let space = SpaceId::shared(&body.name).map_err(|e| {
        fail(
            &state,
            HttpError::new(ErrorCode::InvalidRequest, e.to_string()),
        )
    })?;
    let members = state
        .store
        .create_space(device.user, space)
        .await
        .map_err(|e| fail(&state, e.into()))?;
    Ok((StatusCode::CREATED, json_body(&members)).into_response())
}

async fn space_members(
    State(state): State<AppState>,
    Device(device): Device,
    Path(space): Path<String>,
) -> Result<Response, HttpError> {
    let space = space_id(&state, space)?;
    let members = state
        .store
        .space_members(device.user, space)
        .await
        .map_err(|e| fail(&state, e.into()))?;
    Ok(json_body(&members))
}

async fn add_member(
    State(state): State<AppState>,
    Device(device): Device,
    Path(space): Path<String>,
    JsonBody(body): JsonBody<AddMember>,
) -> Result<Response, HttpError> {
    let space = space_id(&state, space)?;
    let members = state
        .store
        .add_member(device.user, space, body.user)
        .await
        .map_err(|e| fail(&state, e.into()))?;
    Ok(json_body(&members))
}

async fn remove_member(
    State(state): State<AppState>,
    Device(device): Device,
    Path((space, user)): Path<(String, String)>,
) -> Result<Response, HttpError> {
    let space = space_id(&state, space)?;
    let user = UserId::new(user).map_err(|e| {
        fail(
            &state,
            HttpError::new(ErrorCode::InvalidRequest, e.to_string()),
        )
    })?;
    let members = state
        .store
        .remove_member(device.user, space, user)
        .await
        .map_err(|e| fail(&state, e.into()))?;
    Ok(json_body(&members))
}

/// Query of the pull endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PullQuery {
    #[serde(default)]
    cursor: u64,
    #[serde(default)]
    limit: Option<usize>,
}

async fn pull(
    State(state): State<AppState>,
    Device(device): Device,
    Path(space): Path<String>,
    query: Result<Query<PullQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, HttpError> {
    let space = space_id(&state, space)?;
    let Query(query) = query.map_err(|e| {
        fail(
            &state,
            HttpError::new(ErrorCode::InvalidRequest, e.body_text()),
        )
    })?;
    let page_size = state.config.feed.page_size;
    let changes = query.limit.unwrap_or(page_size).clamp(1, page_size);
    let limit = feed::page_limit(&space, changes, state.config.limits.max_frame_bytes);
    let page = feed::read_page(
        state.store.as_ref(),
        &device.user,
        &space,
        query.cursor,
        false,
        limit,
    )
    .await
    .map_err(|e| fail(&state, e.into()))?;
    state.metrics.changes_sent(page.message.changes.len());
    Ok(json_body(&ServerMessage::Changes(page.message)))
}

async fn push(
    State(state): State<AppState>,
    Device(device): Device,
    JsonText(message, text): JsonText<ClientMessage>,
) -> Result<Response, HttpError> {
    let ClientMessage::Push(push) = message else {
        return Err(fail(
            &state,
            HttpError::new(ErrorCode::BadFrame, "the body must be a push message"),
        ));
    };
    let limits = &state.config.limits;
    if push.mutations.len() > limits.max_batch_mutations {
        return Err(fail(
            &state,
            HttpError::new(
                ErrorCode::BatchTooLarge,
                format!(
                    "{} mutations in one push; the limit is {}",
                    push.mutations.len(),
                    limits.max_batch_mutations
                ),
            ),
        ));
    }
    if !state.rate_limit.allow(&device, push.mutations.len()) {
        return Err(fail(
            &state,
            HttpError::new(
                ErrorCode::RateLimited,
                "too many mutations from this device; send this batch again later",
            ),
        ));
    }
    let (mutations, refusals) = crate::screen::screen(&text, push.mutations);
    let stored = if mutations.is_empty() {
        Vec::new()
    } else {
        state
            .store
            .push(device, mutations, now_ms())
            .await
            .map_err(|e| fail(&state, e.into()))?
    };
    let results = refusals.merge(stored);
    state.metrics.pushed(results.iter().map(|r| &r.outcome));
    Ok(json_body(&ServerMessage::Ack(Ack {
        batch_id: push.batch_id,
        results,
    })))
}

/// The WebSocket endpoint. The access token is checked before the upgrade:
/// an unauthenticated request never becomes a socket. It comes in the
/// `Authorization` header, or from a browser as a subprotocol (see
/// [`SYNC_SUBPROTOCOL`]).
async fn sync(
    State(state): State<AppState>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, HttpError> {
    let from_browser = bearer(&headers).is_none();
    let identity = match subprotocol_token(&headers).filter(|_| from_browser) {
        Some(token) => authenticate_token(token, &state).await,
        None => authenticate(&headers, &state).await,
    }
    .map_err(|e| fail(&state, e))?;
    let upgrade = upgrade.map_err(|e| {
        fail(
            &state,
            HttpError::new(
                ErrorCode::InvalidRequest,
                format!("expected a WebSocket upgrade: {e}"),
            ),
        )
    })?;
    if state.shutdown.is_cancelled() {
        return Err(fail(
            &state,
            HttpError::new(ErrorCode::ShuttingDown, "the server is shutting down"),
        ));
    }
    // Counted from here: the slot goes with the session and is freed when
    // it ends, or now if the upgrade never completes.
    let Some(slot) = state.connections.try_open(&identity) else {
        return Err(fail(
            &state,
            HttpError::new(
                ErrorCode::RateLimited,
                format!(
                    "this device has {} connections open already; close one first",
                    state.connections.max_per_device()
                ),
            ),
        ));
    };
    let limit = state.config.limits.max_frame_bytes;
    let sessions = state.sessions.clone();
    // The session runs on a task of its own after the upgrade: it keeps the
    // connection's span, so its lines still name the connection.
    let connection = tracing::Span::current();
    // A browser's socket fails unless the server names one of the
    // subprotocols it offered.
    let upgrade = upgrade.protocols([SYNC_SUBPROTOCOL]);
    Ok(upgrade
        // tungstenite zeroes its whole read buffer before every read; the
        // 128 KiB default made that memset the hottest function under load.
        // Frames are small; the buffer grows when one is not.
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_frame_size(limit)
        .max_message_size(limit)
        .on_upgrade(move |socket| {
            sessions.track_future(
                async move {
                    session::run(state, identity, socket).await;
                    drop(slot);
                }
                .instrument(connection),
            )
        }))
}

/// The longest push token, in bytes.
const MAX_PUSH_TOKEN_BYTES: usize = 4_096;

async fn device_list(state: &ServerState, user: UserId) -> Result<Response, HttpError> {
    let devices = state
        .store
        .devices_of(user)
        .await
        .map_err(|e| fail(state, e.into()))?;
    Ok(json_body(&DeviceList { devices }))
}

async fn list_devices(
    State(state): State<AppState>,
    Device(device): Device,
) -> Result<Response, HttpError> {
    device_list(&state, device.user).await
}

fn device_path(state: &ServerState, raw: String) -> Result<DeviceId, HttpError> {
    DeviceId::new(raw).map_err(|e| {
        fail(
            state,
            HttpError::new(ErrorCode::InvalidRequest, e.to_string()),
        )
    })
}

/// `PATCH /v1/devices/{device}`: renames a device of the caller's user.
async fn rename_device(
    State(state): State<AppState>,
    Device(caller): Device,
    Path(device): Path<String>,
    JsonBody(body): JsonBody<RenameDevice>,
) -> Result<Response, HttpError> {
    let device = device_path(&state, device)?;
    check_label("name", &body.name).map_err(|e| fail(&state, e))?;
    if body.name.trim().is_empty() {
        return Err(fail(
            &state,
            HttpError::new(ErrorCode::InvalidRequest, "a device name cannot be empty"),
        ));
    }
    let identity = DeviceIdentity {
        user: caller.user.clone(),
        device,
    };
    state
        .store
        .rename_device(identity, body.name)
        .await
        .map_err(|e| fail(&state, e.into()))?;
    device_list(&state, caller.user).await
}

/// `DELETE /v1/devices/{device}`: revokes a device of the caller's user (a
/// device may revoke itself). Its sockets close, its tokens stop working and
/// it cannot register again.
async fn revoke_device(
    State(state): State<AppState>,
    Device(caller): Device,
    Path(device): Path<String>,
) -> Result<Response, HttpError> {
    let device = device_path(&state, device)?;
    let identity = DeviceIdentity {
        user: caller.user.clone(),
        device,
    };
    let known = state
        .store
        .devices_of(caller.user.clone())
        .await
        .map_err(|e| fail(&state, e.into()))?
        .iter()
        .any(|d| d.device_id == identity.device);
    if !known {
        return Err(fail(
            &state,
            HttpError::new(
                ErrorCode::NotFound,
                format!("{} has no device {}", caller.user, identity.device),
            ),
        ));
    }
    warn!(user = %identity.user, device = %identity.device, by = %caller.device, "device revoked");
    state
        .store
        .revoke_device(identity)
        .await
        .map_err(|e| fail(&state, e.into()))?;
    device_list(&state, caller.user).await
}

/// `PUT /v1/push-token`: the calling device's push token.
async fn set_push_token(
    State(state): State<AppState>,
    Device(caller): Device,
    JsonBody(body): JsonBody<PushToken>,
) -> Result<Response, HttpError> {
    if body.token.is_empty()
        || body.token.len() > MAX_PUSH_TOKEN_BYTES
        || body.token.chars().any(char::is_control)
    {
        return Err(fail(
            &state,
            HttpError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "a push token is 1 to {MAX_PUSH_TOKEN_BYTES} bytes without control characters"
                ),
            ),
        ));
    }
    check_label("provider", &body.provider).map_err(|e| fail(&state, e))?;
    state
        .store
        .set_push_token(caller, Some(body))
        .await
        .map_err(|e| fail(&state, e.into()))?;
    Ok(json_body(&serde_json::json!({})))
}

/// `DELETE /v1/push-token`: the calling device gets no more hints.
async fn clear_push_token(
    State(state): State<AppState>,
    Device(caller): Device,
) -> Result<Response, HttpError> {
    state
        .store
        .set_push_token(caller, None)
        .await
        .map_err(|e| fail(&state, e.into()))?;
    Ok(json_body(&serde_json::json!({})))
}
