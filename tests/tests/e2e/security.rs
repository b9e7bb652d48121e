//! Attacks on a real server over real sockets, each checked for what it
//! must not achieve: forged user tokens (keys named or carried by the token
//! itself, a tampered payload, an unknown signer, the public key used as an
//! HMAC secret), device credentials that are unknown, expired, revoked or
//! of the other kind, slow request heads that would hold sockets forever
//! (slowloris), a flood from one device while another user's device keeps
//! working, and one user reaching for another's devices, roles and guards.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tandem_e2e::tokens::{self, AUDIENCE, ISSUER};
use tandem_e2e::{
    Http, PATIENCE, TestServer, TestServerOptions, Writer, WsClient, WsError, personal,
};
use tandem_protocol::wire::{Claim, Guard, GuardVerdict, Handoff, Outcome, Push, Release};
use tandem_protocol::{ClientMessage, DeviceId, ErrorCode, RoleFence, ServerMessage};
use tandem_server::auth::UserTokenVerifier;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn jwt_server(verifier: UserTokenVerifier) -> TestServerOptions {
    TestServerOptions::dev().with(|c| c.user_tokens = verifier)
}

/// Every token in `tokens` is refused at registration with 401
/// `unauthorized`.
async fn all_refused(http: &Http, what: &str, tokens: Vec<(&str, String)>) {
    for (name, token) in tokens {
        let answer = http.try_register(&token, "phone").await;
        assert_eq!(
            (answer.status, answer.code()),
            (401, "unauthorized"),
            "{what}, {name}: {:?}",
            answer.body
        );
    }
}

/// `token` with its payload replaced by `claims` and its signature kept.
fn with_payload(token: &str, claims: &serde_json::Value) -> String {
    let signed_as_other = tokens::unsigned(claims);
    let payload = signed_as_other.split('.').nth(1).unwrap();
    let mut parts: Vec<&str> = token.split('.').collect();
    parts[1] = payload;
    parts.join(".")
}

#[tokio::test]
async fn forged_user_tokens_are_refused_whatever_key_they_name_or_carry() {
    let claims = tokens::claims("alice", 300);
    let mut wrong_audience = claims.clone();
    wrong_audience["aud"] = json!("another-app");
    let mut wrong_issuer = claims.clone();
    wrong_issuer["iss"] = json!("https://evil.test");
    let mallory = tokens::claims("mallory", 300);
    let mut not_yet_valid = claims.clone();
    not_yet_valid["nbf"] = json!(jsonwebtoken::get_current_timestamp() + 3600);

    // RS256: an unknown signer, a token that vouches for its own key, a
    // genuine signature over another payload, the right key with the wrong
    // audience or issuer, and the public key used as an HMAC secret.
    let rsa = TestServer::start(jwt_server(
        UserTokenVerifier::jwt(AUDIENCE, ISSUER)
            .with_public_key_pem(tokens::RSA_PUBLIC_PEM)
            .unwrap(),
    ))
    .await;
    let http = Http::new(rsa.http_url());
    let genuine = tokens::rs256(&claims);
    assert_eq!(
        http.register(&genuine, "phone").await.user.as_str(),
        "alice"
    );
    all_refused(
        &http,
        "RS256 server",
        vec![
            ("unknown RSA key", tokens::rs256_unknown_key(&claims)),
            (
                "jwk/jku/x5u/kid header",
                tokens::rs256_self_certified(&claims),
            ),
            ("tampered payload", with_payload(&genuine, &mallory)),
            ("wrong audience", tokens::rs256(&wrong_audience)),
            ("wrong issuer", tokens::rs256(&wrong_issuer)),
            (
                "not valid before an hour from now",
                tokens::rs256(&not_yet_valid),
            ),
            (
                "HS256 keyed with the public key",
                tokens::hs256_with(tokens::RSA_PUBLIC_PEM, &claims),
            ),
            ("alg none", tokens::unsigned(&claims)),
        ],
    )
    .await;

    // EdDSA: the same, with the Ed25519 public key as the HMAC secret.
    let ed = TestServer::start(jwt_server(
        UserTokenVerifier::jwt(AUDIENCE, ISSUER)
            .with_public_key_pem(tokens::ED25519_PUBLIC_PEM)
            .unwrap(),
    ))
    .await;
    let http = Http::new(ed.http_url());
    let genuine = tokens::eddsa(&claims);
    http.register(&genuine, "phone").await;
    all_refused(
        &http,
        "EdDSA server",
        vec![
            ("unknown Ed25519 key", tokens::eddsa_unknown_key(&claims)),
            ("tampered payload", with_payload(&genuine, &mallory)),
            ("wrong issuer", tokens::eddsa(&wrong_issuer)),
            (
                "HS256 keyed with the public key",
                tokens::hs256_with(tokens::ED25519_PUBLIC_PEM, &claims),
            ),
            (
                "RS256 with a jwk header",
                tokens::rs256_self_certified(&claims),
            ),
            ("alg none", tokens::unsigned(&claims)),
        ],
    )
    .await;

    // A server with an HMAC secret and an RSA key: each algorithm is
    // checked with its own key only, so the public key is no HMAC secret
    // here either.
    let both = TestServer::start(jwt_server(
        UserTokenVerifier::jwt(AUDIENCE, ISSUER)
            .with_hs256_secret(tokens::HS256_SECRET)
            .with_public_key_pem(tokens::RSA_PUBLIC_PEM)
            .unwrap(),
    ))
    .await;
    let http = Http::new(both.http_url());
    http.register(&tokens::hs256(&claims), "phone").await;
    http.register(&tokens::rs256(&claims), "laptop").await;
    all_refused(
        &http,
        "HS256 and RS256 server",
        vec![
            (
                "HS256 keyed with the public key",
                tokens::hs256_with(tokens::RSA_PUBLIC_PEM, &claims),
            ),
            ("unknown RSA key", tokens::rs256_unknown_key(&claims)),
            (
                "jwk/jku/x5u/kid header",
                tokens::rs256_self_certified(&claims),
            ),
            ("EdDSA", tokens::eddsa(&claims)),
            (
                "tampered HS256 payload",
                with_payload(&tokens::hs256(&claims), &mallory),
            ),
        ],
    )
    .await;
}

/// A token of the right shape that the server never issued.
fn never_issued(prefix: &str) -> String {
    format!("{prefix}{}", "5a".repeat(32))
}

async fn socket_refused(server: &TestServer, token: &str) -> (u16, String, String) {
    match WsClient::connect(&server.sync_url(), Some(token)).await {
        Err(WsError::Rejected { status, body }) => (
            status,
            body["code"].as_str().unwrap_or_default().to_owned(),
            body["message"].as_str().unwrap_or_default().to_owned(),
        ),
        Err(other) => panic!("expected an HTTP rejection, got {other:?}"),
        Ok(_) => panic!("the upgrade was accepted with {token}"),
    }
}

#[tokio::test]
async fn device_credentials_that_are_unknown_revoked_expired_or_of_the_other_kind_are_refused() {
    let server = TestServer::dev().await;
    let http = Http::new(server.http_url());
    let phone = http.register("dev:alice", "phone").await;
    let laptop = http.register("dev:alice", "laptop").await;

    // Access tokens: never issued, or a refresh token in its place.
    for (what, token) in [
        ("never issued", never_issued("tat_")),
        ("a refresh token", phone.refresh_token.clone()),
    ] {
        let (status, code, message) = socket_refused(&server, &token).await;
        assert_eq!((status, code.as_str()), (401, "unauthorized"), "{what}");
        assert!(message.contains("access token"), "{what}: {message}");
        let answer = http.call("GET", "/v1/spaces", Some(&token), None).await;
        assert_eq!(
            (answer.status, answer.code()),
            (401, "unauthorized"),
            "{what}"
        );
    }
    // Refresh tokens: never issued, or an access token in its place.
    for (what, token) in [
        ("never issued", never_issued("trt_")),
        ("an access token", phone.access_token.clone()),
    ] {
        let answer = http.refresh(&token).await;
        assert_eq!(
            (answer.status, answer.code()),
            (401, "unauthorized"),
            "{what}"
        );
        assert!(
            answer.body["message"].as_str().unwrap().contains("unknown"),
            "{what}: {:?}",
            answer.body
        );
    }
    // Neither was spent by being presented in the wrong place.
    assert_eq!(http.refresh(&phone.refresh_token).await.status, 200);

    // Revoked through the devices API by another device of the user.
    let revoked = http
        .call(
            "DELETE",
            "/v1/devices/laptop",
            Some(&phone.access_token),
            None,
        )
        .await;
    assert_eq!(revoked.status, 200, "{:?}", revoked.body);
    let (status, code, _) = socket_refused(&server, &laptop.access_token).await;
    assert_eq!((status, code.as_str()), (401, "unauthorized"));
    let answer = http
        .call("GET", "/v1/devices", Some(&laptop.access_token), None)
        .await;
    assert_eq!((answer.status, answer.code()), (401, "unauthorized"));
    let answer = http.refresh(&laptop.refresh_token).await;
    assert_eq!((answer.status, answer.code()), (401, "unauthorized"));
    let answer = http.try_register("dev:alice", "laptop").await;
    assert_eq!((answer.status, answer.code()), (401, "revoked"));

    // Expired refresh tokens say so. (Long enough to outlive the
    // compaction at startup, which deletes expired credentials: then the
    // token would be merely unknown.)
    let lifetime = Duration::from_millis(300);
    let short =
        TestServer::start(TestServerOptions::dev().with(|c| c.credentials.refresh = lifetime))
            .await;
    let http = Http::new(short.http_url());
    let creds = http.register("dev:alice", "phone").await;
    tokio::time::sleep(lifetime * 2).await;
    let answer = http.refresh(&creds.refresh_token).await;
    assert_eq!((answer.status, answer.code()), (401, "unauthorized"));
    assert!(
        answer.body["message"].as_str().unwrap().contains("expired"),
        "{:?}",
        answer.body
    );
}

/// A server that gives request heads `timeout`.
async fn server_with_header_timeout(timeout: Duration) -> TestServer {
    TestServer::start(TestServerOptions::dev().with(|c| c.limits.request_header_timeout = timeout))
        .await
}

/// Reads until the server closes `tcp` (end of stream or a reset) and
/// returns what it sent; panics if it is still open after [`PATIENCE`].
async fn read_until_closed(tcp: &mut tokio::net::tcp::OwnedReadHalf) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(PATIENCE, tcp.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("the server kept the connection open for {PATIENCE:?}"));
        match read {
            Ok(0) | Err(_) => return received,
            Ok(n) => received.extend_from_slice(&buf[..n]),
        }
    }
}

/// A connected, greeted device of carol that must keep working while
/// others misbehave; returns the round trip of one push.
struct Bystander {
    client: WsClient,
    writer: Writer,
    batch: u64,
}

impl Bystander {
    async fn connect(server: &TestServer) -> Bystander {
        let http = Http::new(server.http_url());
        let creds = http.register("dev:carol", "carol-phone").await;
        let mut client = WsClient::connect_ok(&server.sync_url(), &creds.access_token).await;
        client.hello("carol-phone", BTreeMap::new()).await;
        Bystander {
            client,
            writer: Writer::new("carol-phone"),
            batch: 0,
        }
    }

    async fn round_trip(&mut self) -> Duration {
        self.batch += 1;
        let mutation = self.writer.put(
            &personal("carol"),
            "notes",
            &format!("n{}", self.batch),
            json!({"n": self.batch}),
        );
        let started = Instant::now();
        let ack = self.client.push(self.batch, vec![mutation]).await;
        let took = started.elapsed();
        assert!(
            matches!(ack.results[0].outcome, Outcome::Applied { .. }),
            "{ack:?}"
        );
        took
    }
}

const TRICKLED_UPGRADE: &str = "GET /v1/sync HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nUser-Agent: a client that takes its time over every byte\r\n";

#[tokio::test]
async fn an_upgrade_request_trickled_byte_by_byte_is_cut_off() {
    let timeout = Duration::from_millis(500);
    let server = server_with_header_timeout(timeout).await;
    let mut carol = Bystander::connect(&server).await;
    let token = Http::new(server.http_url())
        .register("dev:mallory", "slow")
        .await
        .access_token;
    // One byte every 50 ms: the whole head would take about 14 s, and its
    // final blank line never comes.
    let head = format!("{TRICKLED_UPGRADE}Authorization: Bearer {token}\r\n");
    let (mut read, mut write) = TcpStream::connect(server.addr())
        .await
        .unwrap()
        .into_split();
    let sent = Arc::new(AtomicU64::new(0));
    let trickle = tokio::spawn({
        let sent = sent.clone();
        let head = head.clone().into_bytes();
        async move {
            for byte in head {
                if write.write_all(&[byte]).await.is_err() {
                    return;
                }
                sent.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let started = Instant::now();
    let answer = read_until_closed(&mut read).await;
    let closed_after = started.elapsed();
    trickle.abort();
    let sent = sent.load(Ordering::Relaxed);
    println!(
        "trickled upgrade request closed after {closed_after:?}, {sent} of {} bytes sent (timeout {timeout:?})",
        head.len()
    );
    // Cut off by the timeout, not by the end of the head: the server
    // closed while the trickle was still going (it needs about 14 s, and
    // `read_until_closed` gives up after PATIENCE). No bound on the time
    // beyond that: a loaded machine may take longer than the timeout.
    assert!(answer.is_empty(), "the server answered: {answer:?}");
    assert!(
        (sent as usize) < head.len(),
        "the whole head was sent before the server closed"
    );
    carol.round_trip().await;
}

#[tokio::test]
async fn silent_and_idle_connections_are_closed_and_prompt_ones_are_served() {
    let timeout = Duration::from_millis(500);
    let server = server_with_header_timeout(timeout).await;
    let mut carol = Bystander::connect(&server).await;

    // A hundred connections that never send a byte.
    let started = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..100 {
        let (read, write) = TcpStream::connect(server.addr())
            .await
            .unwrap()
            .into_split();
        silent.push((read, write));
    }
    carol.round_trip().await;
    let mut latest = Duration::ZERO;
    for (read, _write) in &mut silent {
        let answer = read_until_closed(read).await;
        assert!(answer.is_empty(), "the server answered: {answer:?}");
        latest = started.elapsed();
    }
    // Each was closed within PATIENCE (`read_until_closed`), far sooner
    // than anything but the header timeout would close it (hyper's own
    // default is 30 s); how much sooner depends on the machine's load.
    println!(
        "100 silent connections all closed {latest:?} after they opened (timeout {timeout:?})"
    );

    // A head that arrives in pieces but in time is served; the kept-alive
    // connection is closed once it idles for the timeout.
    let (mut read, mut write) = TcpStream::connect(server.addr())
        .await
        .unwrap()
        .into_split();
    let request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: prompt\r\n\r\n";
    for piece in request.chunks(8) {
        write.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let idle_from = Instant::now();
    let answer = String::from_utf8(read_until_closed(&mut read).await).unwrap();
    let idle_closed = idle_from.elapsed();
    println!("idle kept-alive connection closed after {idle_closed:?}");
    // Closed within PATIENCE (`read_until_closed`): by the idle timeout,
    // not held open.
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#"{"status":"ok"}"#), "{answer}");
    carol.round_trip().await;
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn summary(round_trips: &mut [Duration]) -> String {
    round_trips.sort();
    format!(
        "{} round trips, p50 {:?}, p99 {:?}, max {:?}",
        round_trips.len(),
        percentile(round_trips, 0.50),
        percentile(round_trips, 0.99),
        round_trips[round_trips.len() - 1]
    )
}

/// What one flooding connection achieved.
#[derive(Default, Debug)]
struct Flooded {
    batches: u64,
    applied: u64,
    rate_limited: u64,
}

/// The flood as it goes, shared by its connections and the test.
#[derive(Default)]
struct FloodProgress {
    /// Set by the test: the connections stop after their current push.
    stop: AtomicBool,
    /// Pushes answered so far (applied or refused), on every connection.
    answered: AtomicU64,
    /// Pushes refused with `rate_limited` so far.
    refused: AtomicU64,
}

/// Pushes full batches on `client` as fast as the server answers until
/// `progress` says stop.
async fn flood(
    mut client: WsClient,
    device: String,
    connection: u64,
    progress: Arc<FloodProgress>,
) -> Flooded {
    let space = personal("mallory");
    let mut writer = Writer::new(&device);
    let mut flooded = Flooded::default();
    while !progress.stop.load(Ordering::SeqCst) {
        flooded.batches += 1;
        let batch_id = flooded.batches;
        let mutations = (0..FLOOD_BATCH)
            .map(|i| {
                writer.put(
                    &space,
                    "flood",
                    &format!("c{connection}-b{batch_id}-{i}"),
                    json!({"i": i}),
                )
            })
            .collect();
        client
            .send(&ClientMessage::Push(Push {
                batch_id,
                mutations,
            }))
            .await;
        let answer = client
            .recv_matching("an ack or an error", |m| match m {
                ServerMessage::Ack(a) => a.batch_id == batch_id,
                ServerMessage::Error(e) => e.batch_id == Some(batch_id) || e.fatal,
                _ => false,
            })
            .await;
        match answer {
            ServerMessage::Ack(ack) => {
                flooded.applied += ack
                    .results
                    .iter()
                    .filter(|r| matches!(r.outcome, Outcome::Applied { .. }))
                    .count() as u64;
            }
            ServerMessage::Error(e) if e.code == ErrorCode::RateLimited && !e.fatal => {
                flooded.rate_limited += 1;
                progress.refused.fetch_add(1, Ordering::SeqCst);
            }
            other => panic!("the flooder got {other:?}"),
        }
        progress.answered.fetch_add(1, Ordering::SeqCst);
    }
    flooded
}

/// Mutations in each flooding push: the most one push may carry.
const FLOOD_BATCH: usize = 500;
/// Connections the flooding device opens at once.
const FLOOD_CONNECTIONS: u64 = 4;
/// Round trips the bystander makes while the flood is being refused.
const BYSTANDER_TRIPS: usize = 10;

/// A device that floods the server is held to its budget, and another
/// user's device keeps having its pushes applied meanwhile.
///
/// The bystander's round trips are measured and printed, without and
/// during the flood, but not bounded: the flood's own work (four
/// connections building, sending and decoding pushes of 500 mutations on
/// two cores) slows everything on a loaded machine, by an amount that
/// depends on the machine and not on the server. What must hold whatever
/// the speed is progress: the flood lasts until the bystander has made its
/// round trips, each of them is applied (not refused with the flooder, not
/// starved past `PATIENCE`), and the flooder is being refused, and is still
/// being answered, while they happen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_device_is_rate_limited_and_a_bystander_keeps_round_tripping() {
    // The default limits: 1,000 mutations per second per device, bursts of
    // 2,000.
    let server = TestServer::dev().await;
    let limits = tandem_server::Limits::default();
    let mut carol = Bystander::connect(&server).await;

    let mut quiet: Vec<Duration> = Vec::new();
    for _ in 0..50 {
        quiet.push(carol.round_trip().await);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Mallory's one device floods over several connections at once.
    let http = Http::new(server.http_url());
    let creds = http.register("dev:mallory", "flood").await;
    let progress = Arc::new(FloodProgress::default());
    let started = Instant::now();
    let mut flooders = Vec::new();
    for connection in 0..FLOOD_CONNECTIONS {
        let mut client = WsClient::connect_ok(&server.sync_url(), &creds.access_token).await;
        client.hello("flood", BTreeMap::new()).await;
        flooders.push(tokio::spawn(flood(
            client,
            "flood".to_owned(),
            connection,
            Arc::clone(&progress),
        )));
    }
    // The bystander starts once the flooder has spent its burst and is
    // being refused.
    tandem_e2e::eventually("the flood to be refused with rate_limited", || {
        progress.refused.load(Ordering::SeqCst) > 0
    })
    .await;
    let answered_before = progress.answered.load(Ordering::SeqCst);
    let mut flooded_trips: Vec<Duration> = Vec::new();
    for _ in 0..BYSTANDER_TRIPS {
        flooded_trips.push(carol.round_trip().await);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let answered_during = progress.answered.load(Ordering::SeqCst) - answered_before;
    progress.stop.store(true, Ordering::SeqCst);
    let mut total = Flooded::default();
    for flooder in flooders {
        let flooded = flooder.await.unwrap();
        total.batches += flooded.batches;
        total.applied += flooded.applied;
        total.rate_limited += flooded.rate_limited;
    }
    let elapsed = started.elapsed();

    println!("bystander without the flood: {}", summary(&mut quiet));
    println!(
        "bystander during the flood:  {}",
        summary(&mut flooded_trips)
    );
    println!(
        "flooder: {} pushes of {FLOOD_BATCH} over {FLOOD_CONNECTIONS} connections in {elapsed:?}: {} mutations applied, {} pushes refused with rate_limited, {answered_during} answered during the bystander's round trips",
        total.batches, total.applied, total.rate_limited
    );
    assert!(
        total.rate_limited > 0,
        "the flood was never slowed: {total:?}"
    );
    // The budget is the device's, whatever number of connections it uses:
    // the burst, the sustained rate for the time it ran, and one push of
    // slack for the refill granularity.
    let budget = u64::from(limits.device_mutation_burst)
        + (u64::from(limits.device_mutations_per_sec) as f64 * elapsed.as_secs_f64()) as u64
        + FLOOD_BATCH as u64;
    assert!(
        total.applied <= budget,
        "{} mutations applied, over the budget of {budget}",
        total.applied
    );
    // The bystander's pushes went through while the flood did: the
    // flooder's pushes were being answered during them too.
    assert!(
        answered_during > 0,
        "the flood stood still while the bystander made its round trips"
    );
}

/// Sends `message` on `client` and returns the answer to request `id`: a
/// `role`, a `guard_result` or an `error`.
async fn request(client: &mut WsClient, id: u64, message: ClientMessage) -> ServerMessage {
    client.send(&message).await;
    client
        .recv_matching("an answer", |m| match m {
            ServerMessage::Role(r) => r.request_id == Some(id),
            ServerMessage::GuardResult(g) => g.request_id == id,
            ServerMessage::Error(e) => e.request_id == Some(id) || e.fatal,
            _ => false,
        })
        .await
}

fn claim(id: u64, role: &str) -> ClientMessage {
    ClientMessage::Claim(Claim {
        request_id: id,
        role: role.to_owned(),
        priority: 0,
    })
}

fn guard(id: u64, content: &str, fence: Option<RoleFence>) -> ClientMessage {
    ClientMessage::Guard(Guard {
        request_id: id,
        scope: "chat:42".to_owned(),
        content: content.to_owned(),
        window_ms: Some(60_000),
        fence,
    })
}

fn device_ids(answer: &tandem_e2e::Response) -> Vec<String> {
    let mut ids: Vec<String> = answer.body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_a_cannot_touch_user_b_devices_roles_or_guards() {
    let server = TestServer::dev().await;
    let http = Http::new(server.http_url());
    // Both users have a device called "tablet"; only bob has "phone" and
    // "laptop".
    let alice = http.register("dev:alice", "a-phone").await;
    http.register("dev:alice", "tablet").await;
    let bob = http.register("dev:bob", "phone").await;
    let bob_tablet = http.register("dev:bob", "tablet").await;
    http.register("dev:bob", "laptop").await;
    let mut alice_ws = WsClient::connect_ok(&server.sync_url(), &alice.access_token).await;
    alice_ws.hello("a-phone", BTreeMap::new()).await;
    let mut bob_ws = WsClient::connect_ok(&server.sync_url(), &bob.access_token).await;
    bob_ws.hello("phone", BTreeMap::new()).await;
    let mut bob_tablet_ws =
        WsClient::connect_ok(&server.sync_url(), &bob_tablet.access_token).await;
    bob_tablet_ws.hello("tablet", BTreeMap::new()).await;

    // Devices: bob's are not alice's to list, rename or revoke. Revoking
    // "tablet" revokes alice's own tablet, never bob's.
    let list = http
        .call("GET", "/v1/devices", Some(&alice.access_token), None)
        .await;
    assert_eq!(device_ids(&list), ["a-phone", "tablet"]);
    for (method, body) in [("DELETE", None), ("PATCH", Some(json!({"name": "pwned"})))] {
        let answer = http
            .call(
                method,
                "/v1/devices/laptop",
                Some(&alice.access_token),
                body.as_ref(),
            )
            .await;
        assert_eq!(
            (answer.status, answer.code()),
            (404, "not_found"),
            "{method}"
        );
    }
    let renamed = http
        .call(
            "PATCH",
            "/v1/devices/tablet",
            Some(&alice.access_token),
            Some(&json!({"name": "alice's tablet"})),
        )
        .await;
    assert_eq!(renamed.status, 200, "{:?}", renamed.body);
    let revoked = http
        .call(
            "DELETE",
            "/v1/devices/tablet",
            Some(&alice.access_token),
            None,
        )
        .await;
    assert_eq!(device_ids(&revoked), ["a-phone"]);
    let bobs = http
        .call("GET", "/v1/devices", Some(&bob.access_token), None)
        .await;
    assert_eq!(device_ids(&bobs), ["laptop", "phone", "tablet"]);
    assert!(
        bobs.body["devices"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["name"].as_str().unwrap().ends_with("(test)")),
        "a name of bob's changed: {:?}",
        bobs.body
    );
    bob_tablet_ws
        .send_text(r#"{"type":"ping","nonce":7}"#)
        .await;
    bob_tablet_ws
        .recv_matching("pong", |m| matches!(m, ServerMessage::Pong(_)))
        .await;

    // Roles: bob's phone holds "responder". Alice's claim, release and
    // handoff of that name concern alice's own role, and a fence with
    // bob's epoch does not let her act under it.
    let held = match request(&mut bob_ws, 1, claim(1, "responder")).await {
        ServerMessage::Role(state) => state,
        other => panic!("{other:?}"),
    };
    assert_eq!(held.holder.as_ref().map(DeviceId::as_str), Some("phone"));
    let bobs_fence = RoleFence {
        role: "responder".to_owned(),
        epoch: held.epoch,
    };
    match request(&mut alice_ws, 1, guard(1, "as bob", Some(bobs_fence))).await {
        ServerMessage::Error(e) => assert_eq!(e.code, ErrorCode::StaleEpoch, "{e:?}"),
        other => panic!("alice acted under bob's role: {other:?}"),
    }
    let handoff = ClientMessage::Handoff(Handoff {
        request_id: 2,
        role: "responder".to_owned(),
        to: DeviceId::new("phone").unwrap(),
    });
    match request(&mut alice_ws, 2, handoff).await {
        ServerMessage::Error(e) => assert!(!e.fatal, "{e:?}"),
        other => panic!("alice handed off bob's role: {other:?}"),
    }
    match request(&mut alice_ws, 3, claim(3, "responder")).await {
        ServerMessage::Role(state) => {
            assert_eq!(state.holder.as_ref().map(DeviceId::as_str), Some("a-phone"));
        }
        other => panic!("{other:?}"),
    }
    let release = ClientMessage::Release(Release {
        request_id: 4,
        role: "responder".to_owned(),
    });
    request(&mut alice_ws, 4, release).await;

    // Guards: alice's answers are hers alone; bob's content is first for
    // her, and hers does not mark bob's.
    let verdict = |m: ServerMessage| match m {
        ServerMessage::GuardResult(g) => g.result,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        verdict(request(&mut bob_ws, 2, guard(2, "hello", None)).await),
        GuardVerdict::First
    );
    assert_eq!(
        verdict(request(&mut alice_ws, 5, guard(5, "hello", None)).await),
        GuardVerdict::First
    );
    assert_eq!(
        verdict(request(&mut alice_ws, 6, guard(6, "only alice", None)).await),
        GuardVerdict::First
    );
    assert_eq!(
        verdict(request(&mut bob_ws, 3, guard(3, "only alice", None)).await),
        GuardVerdict::First
    );
    assert_eq!(
        verdict(request(&mut bob_ws, 4, guard(4, "hello", None)).await),
        GuardVerdict::Duplicate
    );

    // Bob's role is untouched: a fresh connection of bob's is told its
    // holder and epoch as they were.
    let mut bob_again = WsClient::connect_ok(&server.sync_url(), &bob_tablet.access_token).await;
    bob_again.hello("tablet", BTreeMap::new()).await;
    let role = bob_again
        .recv_matching(
            "the responder role",
            |m| matches!(m, ServerMessage::Role(r) if r.role == "responder"),
        )
        .await;
    match role {
        ServerMessage::Role(state) => {
            assert_eq!(state.holder.as_ref().map(DeviceId::as_str), Some("phone"));
            assert_eq!(state.epoch, held.epoch);
        }
        _ => unreachable!(),
    }

    // Nothing alice's socket was told names a device of bob's.
    alice_ws.send_text(r#"{"type":"ping","nonce":9}"#).await;
    alice_ws
        .recv_matching("pong", |m| matches!(m, ServerMessage::Pong(_)))
        .await;
    let told = alice_ws.take_unclaimed();
    for message in told {
        match &message {
            ServerMessage::Devices(d) => assert!(
                d.devices
                    .iter()
                    .all(|d| ["a-phone", "tablet"].contains(&d.device_id.as_str())),
                "{message:?}"
            ),
            ServerMessage::Role(r) => assert_ne!(
                r.holder.as_ref().map(DeviceId::as_str),
                Some("phone"),
                "{message:?}"
            ),
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_device_cannot_open_more_connections_than_its_cap() {
    let server = TestServer::start(
        TestServerOptions::dev().with(|c| c.limits.max_connections_per_device = 3),
    )
    .await;
    let http = Http::new(server.http_url());
    let phone = http.register("dev:alice", "phone").await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut client = WsClient::connect_ok(&server.sync_url(), &phone.access_token).await;
        client.hello("phone", BTreeMap::new()).await;
        open.push(client);
    }
    // Over the cap, with or without hello on the others.
    for _ in 0..2 {
        let (status, code, message) = socket_refused(&server, &phone.access_token).await;
        assert_eq!((status, code.as_str()), (429, "rate_limited"), "{message}");
    }
    // Other devices, of this user or another one with the same device id,
    // have their own count.
    let laptop = http.register("dev:alice", "laptop").await;
    WsClient::connect_ok(&server.sync_url(), &laptop.access_token)
        .await
        .hello("laptop", BTreeMap::new())
        .await;
    let bobs_phone = http.register("dev:bob", "phone").await;
    WsClient::connect_ok(&server.sync_url(), &bobs_phone.access_token)
        .await
        .hello("phone", BTreeMap::new())
        .await;
    // A closed connection frees its place.
    open.pop().unwrap().close().await;
    let deadline = Instant::now() + PATIENCE;
    let _in_the_freed_place = loop {
        match WsClient::connect(&server.sync_url(), Some(&phone.access_token)).await {
            Ok(mut client) => {
                client.hello("phone", BTreeMap::new()).await;
                break client;
            }
            Err(WsError::Rejected { status: 429, .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(other) => panic!("no place after a close: {other:?}"),
        }
    };
    // The cap holds again, and the connections it let in still work.
    let (status, _, _) = socket_refused(&server, &phone.access_token).await;
    assert_eq!(status, 429);
    open[0].send_text(r#"{"type":"ping","nonce":1}"#).await;
    open[0]
        .recv_matching("pong", |m| matches!(m, ServerMessage::Pong(_)))
        .await;
}
