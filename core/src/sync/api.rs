//! The server's HTTP endpoints, as the device calls them (reqwest).

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tandem_protocol::api::{
    AddMember, ApiError, CreateSpace, DeviceCredentials, DeviceList, PushToken, RefreshCredentials,
    RegisterDevice, RenameDevice, SpaceList, SpaceMembers,
};
use tandem_protocol::{DeviceId, ErrorCode};

use crate::error::Error;
use crate::sync::endpoint::Endpoint;
use crate::sync::tls;

/// How long one HTTP call may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An HTTP client for one server.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    http: reqwest::Client,
    base: String,
}

/// What an HTTP call can end in.
#[derive(Debug)]
pub(crate) enum ApiFailure {
    /// The server answered with an error body.
    Server { code: ErrorCode, message: String },
    /// No answer (network, timeout) or an answer that is not the protocol.
    Transport(String),
    /// The TLS connection failed (see [`tls::describe`]).
    Tls(String),
}

impl ApiFailure {
    /// Whether the server refused the credentials.
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            ApiFailure::Server {
                code: ErrorCode::Unauthorized | ErrorCode::Revoked,
                ..
            }
        )
    }
}

impl From<ApiFailure> for Error {
    fn from(f: ApiFailure) -> Error {
        match f {
            ApiFailure::Server { code, message, .. } => Error::Server { code, message },
            ApiFailure::Transport(message) => Error::Network(message),
            ApiFailure::Tls(message) => Error::Tls(message),
        }
    }
}

impl Api {
    /// A client of the server at `endpoint` with `tls`, the device's one
    /// TLS configuration (the socket uses the same).
    pub fn new(endpoint: &Endpoint, tls: rustls::ClientConfig) -> Result<Api, Error> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .tcp_nodelay(true)
            .tls_backend_preconfigured(tls)
            .build()
            .map_err(|e| Error::InvalidConfig(format!("the HTTP client: {}", chain(&e))))?;
        Ok(Api {
            http,
            base: endpoint.http_base().to_owned(),
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ApiFailure> {
        let response = request.send().await.map_err(failure)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(failure)?;
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .map_err(|e| ApiFailure::Transport(format!("unexpected answer: {e}")));
        }
        match serde_json::from_slice::<ApiError>(&bytes) {
            Ok(error) => Err(ApiFailure::Server {
                code: error.code,
                message: error.message,
            }),
            Err(_) => Err(ApiFailure::Transport(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&bytes)
                    .chars()
                    .take(200)
                    .collect::<String>()
            ))),
        }
    }

    fn post<B: Serialize>(
        &self,
        path: &str,
        bearer: Option<&str>,
        body: &B,
    ) -> reqwest::RequestBuilder {
        let mut request = self.http.post(format!("{}{path}", self.base)).json(body);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        request
    }

    fn get(&self, path: &str, bearer: &str) -> reqwest::RequestBuilder {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(bearer)
    }

    /// `POST /v1/devices/register` with a user token.
    pub async fn register(
        &self,
        user_token: &str,
        device_id: &DeviceId,
        name: &str,
        platform: &str,
        app_version: &str,
    ) -> Result<DeviceCredentials, ApiFailure> {
        let body = RegisterDevice {
            device_id: device_id.clone(),
            name: name.to_owned(),
            platform: platform.to_owned(),
            app_version: app_version.to_owned(),
        };
        self.call(self.post("/v1/devices/register", Some(user_token), &body))
            .await
    }

    /// `POST /v1/devices/refresh`.
    pub async fn refresh(&self, refresh_token: &str) -> Result<DeviceCredentials, ApiFailure> {
        let body = RefreshCredentials {
            refresh_token: refresh_token.to_owned(),
        };
        self.call(self.post("/v1/devices/refresh", None, &body))
            .await
    }

    /// `GET /v1/spaces/{space}/changes?cursor=..&limit=..`: one page of the
    /// feed.
    pub async fn pull(
        &self,
        access: &str,
        space: &str,
        cursor: u64,
        limit: u32,
    ) -> Result<tandem_protocol::wire::Changes, ApiFailure> {
        let path = format!(
            "/v1/spaces/{}/changes?cursor={cursor}&limit={limit}",
            encode(space)
        );
        match self.call(self.get(&path, access)).await? {
            tandem_protocol::ServerMessage::Changes(changes) => Ok(changes),
            _ => Err(ApiFailure::Transport("expected a changes page".into())),
        }
    }

    /// `GET /v1/spaces`.
    pub async fn spaces(&self, access: &str) -> Result<SpaceList, ApiFailure> {
        self.call(self.get("/v1/spaces", access)).await
    }

    /// `POST /v1/spaces`.
    pub async fn create_space(&self, access: &str, name: &str) -> Result<SpaceMembers, ApiFailure> {
        let body = CreateSpace {
            name: name.to_owned(),
        };
        self.call(self.post("/v1/spaces", Some(access), &body))
            .await
    }

    /// `POST /v1/spaces/{space}/members`.
    pub async fn add_member(
        &self,
        access: &str,
        space: &str,
        user: &str,
    ) -> Result<SpaceMembers, ApiFailure> {
        let user = tandem_protocol::UserId::new(user)
            .map_err(|e| ApiFailure::Transport(format!("invalid user: {e}")))?;
        let body = AddMember { user };
        self.call(self.post(
            &format!("/v1/spaces/{}/members", encode(space)),
            Some(access),
            &body,
        ))
        .await
    }

    /// `DELETE /v1/spaces/{space}/members/{user}`.
    pub async fn remove_member(
        &self,
        access: &str,
        space: &str,
        user: &str,
    ) -> Result<SpaceMembers, ApiFailure> {
        let request = self
            .http
            .delete(format!(
                "{}/v1/spaces/{}/members/{}",
                self.base,
                encode(space),
                encode(user)
            ))
            .bearer_auth(access);
        self.call(request).await
    }
}

impl Api {
    /// `GET /v1/devices`.
    pub async fn devices(&self, access: &str) -> Result<DeviceList, ApiFailure> {
        self.call(self.get("/v1/devices", access)).await
    }

    /// `PATCH /v1/devices/{device}`.
    pub async fn rename_device(
        &self,
        access: &str,
        device: &str,
        name: &str,
    ) -> Result<DeviceList, ApiFailure> {
        let body = RenameDevice {
            name: name.to_owned(),
        };
        let request = self
            .http
            .patch(format!("{}/v1/devices/{}", self.base, encode(device)))
            .bearer_auth(access)
            .json(&body);
        self.call(request).await
    }

    /// `DELETE /v1/devices/{device}`.
    pub async fn revoke_device(
        &self,
        access: &str,
        device: &str,
    ) -> Result<DeviceList, ApiFailure> {
        let request = self
            .http
            .delete(format!("{}/v1/devices/{}", self.base, encode(device)))
            .bearer_auth(access);
        self.call(request).await
    }

    /// `PUT /v1/push-token`, or `DELETE` with `None`.
    pub async fn set_push_token(
        &self,
        access: &str,
        token: Option<&PushToken>,
    ) -> Result<(), ApiFailure> {
        let url = format!("{}/v1/push-token", self.base);
        let request = match token {
            Some(token) => self.http.put(url).json(token),
            None => self.http.delete(url),
        }
        .bearer_auth(access);
        let _: serde_json::Value = self.call(request).await?;
        Ok(())
    }
}

/// A transport error as a failure: TLS trouble said plainly, anything else
/// with its causes (reqwest's own message names only the URL).
fn failure(error: reqwest::Error) -> ApiFailure {
    match tls::describe(&error) {
        Some(sentence) => ApiFailure::Tls(sentence),
        None if error.is_timeout() => {
            ApiFailure::Transport(format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()))
        }
        None => ApiFailure::Transport(chain(&error)),
    }
}

/// An error and its sources, each said once: `a: b: c`.
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        // Wrappers often repeat their source's message in their own.
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.retain(|p| !text.contains(p.as_str()));
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// Percent-encodes a path segment (ids may hold `:` and other characters
/// a path gives meaning to).
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
