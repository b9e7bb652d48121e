//! The HTTP endpoints, as a test calls them.

use serde_json::Value;
use tandem_protocol::DeviceId;
use tandem_protocol::api::{DeviceCredentials, RegisterDevice};

/// An HTTP answer: status and body (JSON, or a string if it is not JSON).
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body.
    pub body: Value,
}

impl Response {
    /// The error code of an error body.
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }
}

/// Calls a server's HTTP endpoints.
#[derive(Debug, Clone)]
pub struct Http {
    base: String,
    client: reqwest::Client,
}

impl Http {
    /// A client for the server at `base` (`http://host:port`).
    pub fn new(base: impl Into<String>) -> Http {
        Http {
            base: base.into(),
            client: reqwest::Client::new(),
        }
    }

    /// Sends a request; `body` is JSON if given.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<&Value>,
    ) -> Response {
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .unwrap_or_else(|e| panic!("bad method: {e}"));
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        self.send(request).await
    }

    /// Sends a raw body.
    pub async fn call_raw(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: String,
    ) -> Response {
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .unwrap_or_else(|e| panic!("bad method: {e}"));
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .body(body);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        self.send(request).await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Response {
        let response = tokio::time::timeout(crate::PATIENCE, request.send())
            .await
            .unwrap_or_else(|_| panic!("HTTP request timed out"))
            .unwrap_or_else(|e| panic!("HTTP request failed: {e}"));
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .unwrap_or_else(|e| panic!("HTTP body: {e}"));
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Response { status, body }
    }

    /// Registers `device` with `user_token`; the raw answer.
    pub async fn try_register(&self, user_token: &str, device: &str) -> Response {
        let body = serde_json::to_value(RegisterDevice {
            device_id: DeviceId::new(device).unwrap_or_else(|e| panic!("{e}")),
            name: format!("{device} (test)"),
            platform: "test".into(),
            app_version: "0.0.0".into(),
        })
        .unwrap_or_else(|e| panic!("{e}"));
        self.call(
            "POST",
            "/v1/devices/register",
            Some(user_token),
            Some(&body),
        )
        .await
    }

    /// Registers `device` with `user_token` and returns its credentials.
    pub async fn register(&self, user_token: &str, device: &str) -> DeviceCredentials {
        let response = self.try_register(user_token, device).await;
        assert_eq!(
            response.status, 200,
            "registration failed: {:?}",
            response.body
        );
        serde_json::from_value(response.body).unwrap_or_else(|e| panic!("credentials: {e}"))
    }

    /// Presents a refresh token; the raw answer.
    pub async fn refresh(&self, refresh_token: &str) -> Response {
        let body = serde_json::json!({"refresh_token": refresh_token});
        self.call("POST", "/v1/devices/refresh", None, Some(&body))
            .await
    }
}
