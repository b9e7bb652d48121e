//! What a browser page needs from the server, and that it gives nothing
//! more: the sync socket's access token as a subprotocol (a browser's
//! WebSocket cannot send `Authorization`), and CORS only for configured
//! origins.

#![allow(clippy::unwrap_used)]

use futures::{SinkExt, StreamExt};
use tandem_e2e::{Http, TestServer, TestServerOptions};
use tandem_protocol::{ClientMessage, PROTOCOL_VERSION, ServerMessage};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

/// Opens the sync socket as a browser does: no `Authorization`, the
/// offered subprotocols in `Sec-WebSocket-Protocol`.
async fn open_as_browser(
    server: &TestServer,
    offered: &str,
) -> Result<
    (
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        Option<String>,
    ),
    tungstenite::Error,
> {
    let mut request = server.sync_url().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", offered.parse().unwrap());
    let (socket, response) = tokio_tungstenite::connect_async(request).await?;
    let chosen = response
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().unwrap().to_owned());
    Ok((socket, chosen))
}

fn status_of(e: &tungstenite::Error) -> Option<u16> {
    match e {
        tungstenite::Error::Http(response) => Some(response.status().as_u16()),
        _ => None,
    }
}

#[tokio::test]
async fn a_browser_opens_the_socket_with_its_token_as_a_subprotocol() {
    let server = TestServer::dev().await;
    let credentials = Http::new(server.http_url())
        .register("dev:alice", "browser")
        .await;
    let offered = format!("tandem.v1, tandem.bearer.{}", credentials.access_token);
    let (mut socket, chosen) = open_as_browser(&server, &offered).await.unwrap();
    assert_eq!(chosen.as_deref(), Some("tandem.v1"), "the server names it");

    let hello = ClientMessage::Hello(tandem_protocol::wire::Hello {
        protocol: PROTOCOL_VERSION,
        device_id: tandem_protocol::DeviceId::new("browser").unwrap(),
        cursors: Default::default(),
    });
    socket.send(Message::text(hello.encode())).await.unwrap();
    let welcome = loop {
        match socket.next().await.unwrap().unwrap() {
            Message::Text(text) => break ServerMessage::decode(text.as_str()).unwrap(),
            _ => continue,
        }
    };
    assert!(
        matches!(welcome, ServerMessage::Welcome(ref w) if w.user.as_str() == "alice"),
        "{welcome:?}"
    );
}

#[tokio::test]
async fn a_subprotocol_token_is_checked_like_a_header_token() {
    let server = TestServer::dev().await;
    // Unknown token.
    let e = open_as_browser(&server, "tandem.v1, tandem.bearer.not-a-token")
        .await
        .unwrap_err();
    assert_eq!(status_of(&e), Some(401), "{e}");
    // A real token without the protocol it belongs to is not read.
    let credentials = Http::new(server.http_url())
        .register("dev:alice", "browser")
        .await;
    let e = open_as_browser(
        &server,
        &format!("tandem.bearer.{}", credentials.access_token),
    )
    .await
    .unwrap_err();
    assert_eq!(status_of(&e), Some(401), "{e}");
    // A revoked device's token is refused here too.
    Http::new(server.http_url())
        .call(
            "DELETE",
            "/v1/devices/browser",
            Some(&credentials.access_token),
            None,
        )
        .await;
    let e = open_as_browser(
        &server,
        &format!("tandem.v1, tandem.bearer.{}", credentials.access_token),
    )
    .await
    .unwrap_err();
    assert_eq!(status_of(&e), Some(401), "{e}");
}

async fn preflight(server: &TestServer, origin: &str) -> reqwest::Response {
    reqwest::Client::new()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/spaces", server.http_url()),
        )
        .header("origin", origin)
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn cors_answers_only_the_configured_origins() {
    let server = TestServer::start(
        TestServerOptions::dev().with(|c| c.cors_origins = vec!["https://app.example".into()]),
    )
    .await;
    let allowed = preflight(&server, "https://app.example").await;
    assert!(allowed.status().is_success(), "{}", allowed.status());
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let methods = allowed.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        methods.contains("GET") && methods.contains("POST"),
        "{methods}"
    );

    let foreign = preflight(&server, "https://evil.example").await;
    assert!(
        foreign
            .headers()
            .get("access-control-allow-origin")
            .is_none(),
        "a foreign origin gets no CORS headers"
    );

    // CORS does not replace authorization: a page of the allowed origin
    // still needs a token.
    let unauthenticated = reqwest::Client::new()
        .get(format!("{}/v1/spaces", server.http_url()))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status().as_u16(), 401);
}

#[tokio::test]
async fn without_configured_origins_no_origin_gets_cors_headers() {
    let server = TestServer::dev().await;
    let answer = preflight(&server, "https://app.example").await;
    assert!(
        answer
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

#[tokio::test]
async fn a_malformed_origin_stops_the_server_from_starting() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("t.db");
    for origin in ["app.example", "https://app.example/", "https://", "ftp://x"] {
        let mut config = tandem_server::ServerConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            database.clone(),
            tandem_server::auth::UserTokenVerifier::dev(),
        );
        config.cors_origins = vec![origin.to_owned()];
        let started = tandem_server::Server::start(config).await;
        assert!(
            matches!(started, Err(tandem_server::StartError::CorsOrigin(ref o)) if o == origin),
            "{origin}: {:?}",
            started.err()
        );
    }
    assert!(!database.exists(), "nothing was opened");
}
