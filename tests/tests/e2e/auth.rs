//! Authentication: access tokens before the WebSocket upgrade, user tokens
//! at registration (JWT with pinned algorithms, dev tokens), refresh rotation
//! and the revocation that follows a reused refresh token.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use tandem_e2e::tokens::{self, AUDIENCE, ISSUER};
use tandem_e2e::{Http, TestServer, TestServerOptions, WsClient, WsError};
use tandem_protocol::ErrorCode;
use tandem_server::auth::UserTokenVerifier;

fn rejected(result: Result<WsClient, WsError>) -> (u16, serde_json::Value) {
    match result {
        Err(WsError::Rejected { status, body }) => (status, body),
        Err(other) => panic!("expected an HTTP rejection, got {other:?}"),
        Ok(_) => panic!("the upgrade was accepted"),
    }
}

#[tokio::test]
async fn the_socket_requires_a_valid_access_token_before_the_upgrade() {
    let server = TestServer::dev().await;
    let url = server.sync_url();
    for token in [None, Some("garbage"), Some("tat_0000"), Some("dev:alice")] {
        let (status, body) = rejected(WsClient::connect(&url, token).await);
        assert_eq!(status, 401, "token {token:?}");
        assert_eq!(
            body["code"],
            json!("unauthorized"),
            "token {token:?}: {body}"
        );
        assert!(body["message"].as_str().is_some());
    }
    let http = Http::new(server.http_url());
    let creds = http.register("dev:alice", "phone").await;
    let mut ok = WsClient::connect_ok(&url, &creds.access_token).await;
    ok.hello("phone", BTreeMap::new()).await;
    // HTTP endpoints answer the same way.
    let answer = http.call("GET", "/v1/spaces", Some("garbage"), None).await;
    assert_eq!((answer.status, answer.code()), (401, "unauthorized"));
    let answer = http.call("GET", "/v1/spaces", None, None).await;
    assert_eq!((answer.status, answer.code()), (401, "unauthorized"));
}

#[tokio::test]
async fn an_expired_access_token_is_refused() {
    let server =
        TestServer::start(TestServerOptions::dev().with(|c| c.credentials.access = Duration::ZERO))
            .await;
    let http = Http::new(server.http_url());
    let creds = http.register("dev:alice", "phone").await;
    let (status, body) =
        rejected(WsClient::connect(&server.sync_url(), Some(&creds.access_token)).await);
    assert_eq!((status, body["code"].clone()), (401, json!("unauthorized")));
    // The refresh token still works and gives a new (equally short) pair.
    let refreshed = http.refresh(&creds.refresh_token).await;
    assert_eq!(refreshed.status, 200, "{:?}", refreshed.body);
}

#[tokio::test]
async fn hello_must_name_the_device_of_the_token() {
    let server = TestServer::dev().await;
    let http = Http::new(server.http_url());
    let creds = http.register("dev:alice", "phone").await;
    let mut client = WsClient::connect_ok(&server.sync_url(), &creds.access_token).await;
    client
        .send_text(r#"{"type":"hello","protocol":1,"device_id":"laptop","cursors":{}}"#)
        .await;
    let error = client.error(ErrorCode::Unauthorized).await;
    assert!(error.fatal);
    assert!(client.until_closed().await.is_empty());
}

fn jwt_server_options(verifier: UserTokenVerifier) -> TestServerOptions {
    TestServerOptions::dev().with(|c| c.user_tokens = verifier)
}

#[tokio::test]
async fn hs256_user_tokens_are_checked_for_signature_expiry_audience_and_issuer() {
    let server = TestServer::start(jwt_server_options(
        UserTokenVerifier::jwt(AUDIENCE, ISSUER).with_hs256_secret(tokens::HS256_SECRET),
    ))
    .await;
    let http = Http::new(server.http_url());
    let good = tokens::hs256(&tokens::claims("alice", 300));
    let creds = http.register(&good, "phone").await;
    assert_eq!(creds.user.as_str(), "alice");

    let mut wrong_audience = tokens::claims("alice", 300);
    wrong_audience["aud"] = json!("another-app");
    let mut wrong_issuer = tokens::claims("alice", 300);
    wrong_issuer["iss"] = json!("https://evil.test");
    let mut no_exp = tokens::claims("alice", 300);
    no_exp.as_object_mut().unwrap().remove("exp");
    let refused = [
        ("expired", tokens::hs256(&tokens::claims("alice", -3600))),
        ("wrong audience", tokens::hs256(&wrong_audience)),
        ("wrong issuer", tokens::hs256(&wrong_issuer)),
        ("no exp", tokens::hs256(&no_exp)),
        (
            "wrong secret",
            tokens::hs256_with(
                b"not the secret at all, no no no",
                &tokens::claims("alice", 300),
            ),
        ),
        ("alg none", tokens::unsigned(&tokens::claims("alice", 300))),
        ("garbage", "garbage".to_owned()),
        ("dev token", "dev:alice".to_owned()),
        (
            "RS256 when HS256 is pinned",
            tokens::rs256(&tokens::claims("alice", 300)),
        ),
    ];
    for (what, token) in refused {
        let answer = http.try_register(&token, "phone").await;
        assert_eq!(
            (answer.status, answer.code()),
            (401, "unauthorized"),
            "{what}: {:?}",
            answer.body
        );
    }
    let answer = http.try_register("", "phone").await;
    assert_eq!(answer.status, 401);
}

#[tokio::test]
async fn public_keys_pin_their_algorithm() {
    let rsa = TestServer::start(jwt_server_options(
        UserTokenVerifier::jwt(AUDIENCE, ISSUER)
            .with_public_key_pem(tokens::RSA_PUBLIC_PEM)
            .unwrap(),
    ))
    .await;
    let http = Http::new(rsa.http_url());
    let claims = tokens::claims("alice", 300);
    http.register(&tokens::rs256(&claims), "phone").await;
    // The classic confusion: an HS256 token "signed" with the public key.
    for token in [
        tokens::hs256_with(tokens::RSA_PUBLIC_PEM, &claims),
        tokens::hs256(&claims),
        tokens::unsigned(&claims),
        tokens::eddsa(&claims),
    ] {
        let answer = http.try_register(&token, "phone").await;
        assert_eq!(
            (answer.status, answer.code()),
            (401, "unauthorized"),
            "{:?}",
            answer.body
        );
    }

    let ed = TestServer::start(jwt_server_options(
        UserTokenVerifier::jwt(AUDIENCE, ISSUER)
            .with_public_key_pem(tokens::ED25519_PUBLIC_PEM)
            .unwrap(),
    ))
    .await;
    let http = Http::new(ed.http_url());
    http.register(&tokens::eddsa(&claims), "phone").await;
    let answer = http.try_register(&tokens::rs256(&claims), "phone").await;
    assert_eq!(answer.status, 401);
    let mut wrong_audience = claims.clone();
    wrong_audience["aud"] = json!("another-app");
    let answer = http
        .try_register(&tokens::eddsa(&wrong_audience), "phone")
        .await;
    assert_eq!(answer.status, 401);
}

#[tokio::test]
async fn refresh_rotates_and_a_reused_refresh_token_revokes_the_device() {
    let server = TestServer::dev().await;
    let http = Http::new(server.http_url());
    let first = http.register("dev:alice", "phone").await;
    let other_device = http.register("dev:alice", "laptop").await;

    let second = http.refresh(&first.refresh_token).await;
    assert_eq!(second.status, 200, "{:?}", second.body);
    let second: tandem_protocol::api::DeviceCredentials =
        serde_json::from_value(second.body).unwrap();
    assert_eq!(second.user.as_str(), "alice");
    assert_eq!(second.device_id.as_str(), "phone");
    assert_ne!(second.refresh_token, first.refresh_token);

    // A connected socket with the new access token...
    let mut phone = WsClient::connect_ok(&server.sync_url(), &second.access_token).await;
    phone.hello("phone", BTreeMap::new()).await;
    let mut laptop = WsClient::connect_ok(&server.sync_url(), &other_device.access_token).await;
    laptop.hello("laptop", BTreeMap::new()).await;

    // ...and then someone presents the old refresh token again.
    let reuse = http.refresh(&first.refresh_token).await;
    assert_eq!((reuse.status, reuse.code()), (401, "revoked"));
    let error = phone.error(ErrorCode::Revoked).await;
    assert!(error.fatal);
    phone.until_closed().await;

    // Every credential of the phone is gone; the laptop is untouched.
    let answer = http.refresh(&second.refresh_token).await;
    assert_eq!((answer.status, answer.code()), (401, "unauthorized"));
    let (status, _) =
        rejected(WsClient::connect(&server.sync_url(), Some(&second.access_token)).await);
    assert_eq!(status, 401);
    laptop.send_text(r#"{"type":"ping","nonce":1}"#).await;
    laptop
        .recv_matching("pong", |m| {
            matches!(m, tandem_protocol::ServerMessage::Pong(_))
        })
        .await;
    // Registering again brings the phone back.
    let again = http.register("dev:alice", "phone").await;
    WsClient::connect_ok(&server.sync_url(), &again.access_token).await;
    let unknown = http.refresh("trt_nonsense").await;
    assert_eq!((unknown.status, unknown.code()), (401, "unauthorized"));
}
