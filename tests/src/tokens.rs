//! User tokens for servers that check JWTs, signed with the test-only keys
//! in `tests/fixtures`.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// The audience test servers expect.
pub const AUDIENCE: &str = "tandem-tests";
/// The issuer test servers expect.
pub const ISSUER: &str = "https://auth.tandem.test";
/// The HS256 secret test servers share with the tests.
pub const HS256_SECRET: &[u8] = b"a test secret of at least thirty-two bytes";

/// The RSA public key (RS256).
pub const RSA_PUBLIC_PEM: &[u8] = include_bytes!("../fixtures/rsa-public.pem");
const RSA_PRIVATE_PEM: &[u8] = include_bytes!("../fixtures/rsa-private.pem");
/// The Ed25519 public key (EdDSA).
pub const ED25519_PUBLIC_PEM: &[u8] = include_bytes!("../fixtures/ed25519-public.pem");
const ED25519_PRIVATE_PEM: &[u8] = include_bytes!("../fixtures/ed25519-private.pem");
/// Keys no test server is configured with: what a forger would sign with.
const RSA_UNKNOWN_PRIVATE_PEM: &[u8] = include_bytes!("../fixtures/rsa-unknown-private.pem");
const ED25519_UNKNOWN_PRIVATE_PEM: &[u8] =
    include_bytes!("../fixtures/ed25519-unknown-private.pem");

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

/// Claims for `user` with the test audience and issuer, expiring in
/// `expires_in` seconds (negative: already expired).
pub fn claims(user: &str, expires_in: i64) -> Value {
    json!({"sub": user, "aud": AUDIENCE, "iss": ISSUER, "exp": now() + expires_in, "iat": now()})
}

fn sign(algorithm: Algorithm, claims: &Value, key: &EncodingKey) -> String {
    jsonwebtoken::encode(&Header::new(algorithm), claims, key)
        .unwrap_or_else(|e| panic!("signing failed: {e}"))
}

/// An HS256 token with the shared test secret.
pub fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        claims,
        &EncodingKey::from_secret(HS256_SECRET),
    )
}

/// An HS256 token whose secret is `secret`: what an attacker who knows the
/// server's public key would forge for a server that mixed up algorithms.
pub fn hs256_with(secret: &[u8], claims: &Value) -> String {
    sign(Algorithm::HS256, claims, &EncodingKey::from_secret(secret))
}

/// An RS256 token signed with the test RSA key.
pub fn rs256(claims: &Value) -> String {
    let key = EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM).unwrap_or_else(|e| panic!("{e}"));
    sign(Algorithm::RS256, claims, &key)
}

/// An EdDSA token signed with the test Ed25519 key.
pub fn eddsa(claims: &Value) -> String {
    let key = EncodingKey::from_ed_pem(ED25519_PRIVATE_PEM).unwrap_or_else(|e| panic!("{e}"));
    sign(Algorithm::EdDSA, claims, &key)
}

/// An RS256 token signed by an RSA key no test server knows.
pub fn rs256_unknown_key(claims: &Value) -> String {
    sign(Algorithm::RS256, claims, &rsa_unknown_key())
}

/// An EdDSA token signed by an Ed25519 key no test server knows.
pub fn eddsa_unknown_key(claims: &Value) -> String {
    let key =
        EncodingKey::from_ed_pem(ED25519_UNKNOWN_PRIVATE_PEM).unwrap_or_else(|e| panic!("{e}"));
    sign(Algorithm::EdDSA, claims, &key)
}

fn rsa_unknown_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_UNKNOWN_PRIVATE_PEM).unwrap_or_else(|e| panic!("{e}"))
}

/// An RS256 token signed by an unknown RSA key whose header vouches for
/// that key every way a JWT header can: the key itself (`jwk`), a URL to
/// fetch it from (`jku`, `x5u`) and a key id (`kid`). A verifier that took
/// its key from the token instead of its configuration would accept it.
pub fn rs256_self_certified(claims: &Value) -> String {
    let key = rsa_unknown_key();
    let mut header = Header::new(Algorithm::RS256);
    header.jwk = Some(
        jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::RS256)
            .unwrap_or_else(|e| panic!("{e}")),
    );
    header.jku = Some("http://127.0.0.1:9/keys.json".into());
    header.x5u = Some("http://127.0.0.1:9/cert.pem".into());
    header.kid = Some("the-app-key".into());
    jsonwebtoken::encode(&header, claims, &key).unwrap_or_else(|e| panic!("signing failed: {e}"))
}

/// An unsigned token (`"alg": "none"`).
pub fn unsigned(claims: &Value) -> String {
    use std::fmt::Write as _;
    let b64 = |v: &Value| {
        let bytes = v.to_string().into_bytes();
        base64url(&bytes)
    };
    let mut token = String::new();
    let _ = write!(
        token,
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(claims)
    );
    token
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}
