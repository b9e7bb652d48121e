//! User tokens: the app's backend signs a JWT naming the user (`sub`); the
//! server checks it at device registration.
//!
//! Algorithms are pinned by the configured keys: an HS256 secret accepts only
//! HS256, an RSA public key only RS256, an Ed25519 public key only EdDSA. A
//! token whose header names any other algorithm (including `none`) is refused
//! before its signature is looked at. `exp`, `aud` and `iss` are required and
//! checked, and `nbf` when present. In development mode (`--dev-auth`) the
//! token `dev:<user>` is accepted for any user, without a signature.

use std::fmt;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tandem_protocol::UserId;

/// Why a user token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token, or not a bearer token.
    #[error("missing bearer token")]
    Missing,
    /// The token is not acceptable (bad signature, expired, wrong audience or
    /// issuer, wrong algorithm, malformed).
    #[error("invalid user token: {0}")]
    Invalid(String),
}

/// A key that verifies user tokens, pinned to one algorithm.
#[derive(Clone)]
struct PinnedKey {
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Checks user tokens.
#[derive(Clone)]
pub struct UserTokenVerifier {
    dev: bool,
    keys: Vec<PinnedKey>,
    audience: String,
    issuer: String,
}

impl fmt::Debug for UserTokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserTokenVerifier")
            .field("dev", &self.dev)
            .field(
                "algorithms",
                &self.keys.iter().map(|k| k.algorithm).collect::<Vec<_>>(),
            )
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .finish()
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

/// The prefix of development tokens.
pub const DEV_TOKEN_PREFIX: &str = "dev:";

impl UserTokenVerifier {
    /// Accepts `dev:<user>` for any user. For local development only.
    pub fn dev() -> UserTokenVerifier {
        UserTokenVerifier {
            dev: true,
            keys: Vec::new(),
            audience: String::new(),
            issuer: String::new(),
        }
    }

    /// Accepts JWTs for `audience` from `issuer`; add keys with
    /// [`with_hs256_secret`](Self::with_hs256_secret) and
    /// [`with_public_key_pem`](Self::with_public_key_pem).
    pub fn jwt(audience: impl Into<String>, issuer: impl Into<String>) -> UserTokenVerifier {
        UserTokenVerifier {
            dev: false,
            keys: Vec::new(),
            audience: audience.into(),
            issuer: issuer.into(),
        }
    }

    /// Also accepts `dev:<user>` tokens.
    pub fn with_dev_tokens(mut self) -> UserTokenVerifier {
        self.dev = true;
        self
    }

    /// Accepts HS256 tokens signed with `secret`.
    pub fn with_hs256_secret(mut self, secret: &[u8]) -> UserTokenVerifier {
        self.keys.push(PinnedKey {
            algorithm: Algorithm::HS256,
            key: DecodingKey::from_secret(secret),
        });
        self
    }

    /// Accepts tokens signed by the private half of `pem`: an Ed25519 public
    /// key pins EdDSA, an RSA public key pins RS256.
    pub fn with_public_key_pem(mut self, pem: &[u8]) -> Result<UserTokenVerifier, AuthError> {
        let pinned = if let Ok(key) = DecodingKey::from_ed_pem(pem) {
            PinnedKey {
                algorithm: Algorithm::EdDSA,
                key,
            }
        } else if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            PinnedKey {
                algorithm: Algorithm::RS256,
                key,
            }
        } else {
            return Err(AuthError::Invalid(
                "the public key is neither an Ed25519 nor an RSA public key in PEM".into(),
            ));
        };
        self.keys.push(pinned);
        Ok(self)
    }

    /// Whether `dev:<user>` tokens are accepted.
    pub fn accepts_dev_tokens(&self) -> bool {
        self.dev
    }

    /// Whether any JWT key is configured.
    pub fn has_keys(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The user a token names, if the token is acceptable.
    pub fn verify(&self, token: &str) -> Result<UserId, AuthError> {
        if let Some(user) = token.strip_prefix(DEV_TOKEN_PREFIX) {
            if !self.dev {
                return Err(AuthError::Invalid(
                    "development tokens are not accepted by this server".into(),
                ));
            }
            return UserId::new(user).map_err(|e| AuthError::Invalid(e.to_string()));
        }
        if self.keys.is_empty() {
            return Err(AuthError::Invalid(
                "this server accepts only development tokens (dev:<user>)".into(),
            ));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::Invalid(format!("malformed token: {e}")))?;
        let Some(pinned) = self.keys.iter().find(|k| k.algorithm == header.alg) else {
            return Err(AuthError::Invalid(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        };
        let mut validation = Validation::new(pinned.algorithm);
        validation.leeway = 30;
        // A token that says it is not valid yet (`nbf`) is refused like an
        // expired one; jsonwebtoken ignores `nbf` unless asked.
        validation.validate_nbf = true;
        validation.set_audience(&[&self.audience]);
        validation.set_issuer(&[&self.issuer]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &pinned.key, &validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        UserId::new(data.claims.sub).map_err(|e| AuthError::Invalid(format!("sub: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn hs(claims: serde_json::Value, secret: &[u8]) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    #[test]
    fn hs256_tokens_are_checked() {
        let v =
            UserTokenVerifier::jwt("tandem", "https://auth.example").with_hs256_secret(b"s3cret");
        let good = json!({"sub": "alice", "exp": now() + 60, "aud": "tandem", "iss": "https://auth.example"});
        assert_eq!(
            v.verify(&hs(good.clone(), b"s3cret")).unwrap().as_str(),
            "alice"
        );
        assert!(v.verify(&hs(good.clone(), b"other")).is_err());
        let mut expired = good.clone();
        expired["exp"] = json!(now() - 3600);
        assert!(v.verify(&hs(expired, b"s3cret")).is_err());
        let mut aud = good.clone();
        aud["aud"] = json!("someone-else");
        assert!(v.verify(&hs(aud, b"s3cret")).is_err());
        let mut iss = good.clone();
        iss["iss"] = json!("https://evil.example");
        assert!(v.verify(&hs(iss, b"s3cret")).is_err());
        let mut not_yet = good.clone();
        not_yet["nbf"] = json!(now() + 3600);
        assert!(v.verify(&hs(not_yet, b"s3cret")).is_err());
        let mut valid_already = good.clone();
        valid_already["nbf"] = json!(now() - 60);
        assert!(v.verify(&hs(valid_already, b"s3cret")).is_ok());
        let mut no_exp = good;
        no_exp.as_object_mut().unwrap().remove("exp");
        assert!(v.verify(&hs(no_exp, b"s3cret")).is_err());
        assert!(v.verify("dev:alice").is_err());
        assert!(v.verify("garbage").is_err());
    }

    #[test]
    fn dev_tokens_only_in_dev_mode() {
        let v = UserTokenVerifier::dev();
        assert_eq!(v.verify("dev:bob").unwrap().as_str(), "bob");
        assert!(v.verify("dev:").is_err());
        assert!(v.verify("eyJhbGciOiJub25lIn0.e30.").is_err());
    }
}
