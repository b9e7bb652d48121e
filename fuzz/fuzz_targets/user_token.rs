//! The user token parser: any bearer text is refused or accepted without a
//! panic, and nothing but a `dev:` token is accepted by a verifier whose
//! secret the input cannot know.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use tandem_server::auth::UserTokenVerifier;

static VERIFIER: LazyLock<UserTokenVerifier> = LazyLock::new(|| {
    UserTokenVerifier::jwt("tandem-fuzz", "https://issuer.example")
        .with_hs256_secret(b"a secret the fuzzer cannot guess, 32+ bytes long!!")
        .with_dev_tokens()
});

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(user) = VERIFIER.verify(token) {
        assert!(token.starts_with("dev:"), "accepted a token without the secret: {token:?} as {user}");
    }
});
