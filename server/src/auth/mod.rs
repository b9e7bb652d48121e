//! Authentication: user tokens (checked once, at device registration) and
//! device credentials (checked on every request and before every WebSocket
//! upgrade).

mod credentials;
mod user_token;

pub use credentials::{
    AccessToken, RefreshToken, TokenHash, hash_token, new_access_token, new_refresh_token,
};
pub use user_token::{AuthError, UserTokenVerifier};
