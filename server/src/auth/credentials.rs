//! Opaque device credentials.
//!
//! Access and refresh tokens are 32 random bytes in hex behind a prefix that
//! says which kind they are (`tat_` access, `trt_` refresh). The store keeps
//! only their SHA-256, so a copy of the database does not hold usable tokens.

use sha2::{Digest, Sha256};

/// The SHA-256 of a token: what the store keeps and looks up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

/// A newly minted access token and its hash.
#[derive(Debug, Clone)]
pub struct AccessToken {
    /// The token, handed to the device once.
    pub token: String,
    /// Its hash, kept by the store.
    pub hash: TokenHash,
}

/// A newly minted refresh token and its hash.
#[derive(Debug, Clone)]
pub struct RefreshToken {
    /// The token, handed to the device once.
    pub token: String,
    /// Its hash, kept by the store.
    pub hash: TokenHash,
}

const ACCESS_PREFIX: &str = "tat_";
const REFRESH_PREFIX: &str = "trt_";

fn mint(prefix: &str) -> (String, TokenHash) {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    let token = format!("{prefix}{}", hex::encode(bytes));
    let hash = hash_token(&token);
    (token, hash)
}

/// A new random access token.
pub fn new_access_token() -> AccessToken {
    let (token, hash) = mint(ACCESS_PREFIX);
    AccessToken { token, hash }
}

/// A new random refresh token.
pub fn new_refresh_token() -> RefreshToken {
    let (token, hash) = mint(REFRESH_PREFIX);
    RefreshToken { token, hash }
}

/// The hash under which a token is stored.
pub fn hash_token(token: &str) -> TokenHash {
    let digest = Sha256::digest(token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(&digest);
    TokenHash(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashed() {
        let a = new_access_token();
        let b = new_access_token();
        assert_ne!(a.token, b.token);
        assert!(a.token.starts_with("tat_") && a.token.len() == 4 + 64);
        assert_eq!(hash_token(&a.token), a.hash);
        assert!(new_refresh_token().token.starts_with("trt_"));
    }
}
