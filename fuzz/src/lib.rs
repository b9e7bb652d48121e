//! The checks behind the fuzz targets, one function per target, so that the
//! same code runs under libFuzzer (`fuzz_targets/*.rs`, nightly and
//! cargo-fuzz) and in a plain replay of the kept corpus on stable Rust
//! (`cargo test --lib`, what `scripts/fuzz.sh --replay` runs). Each
//! function panics when the property it checks does not hold.

use std::sync::LazyLock;

use tandem_protocol::merge::apply_change;
use tandem_protocol::{Change, ClientMessage, CollectionPolicy, Document, Policy, ServerMessage};
use tandem_server::auth::UserTokenVerifier;

/// A target's check of one input: panics if a property does not hold.
pub type Check = fn(&[u8]);

/// Every target: its name (as cargo-fuzz knows it, and its corpus
/// directory) and its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("wire_decode", wire_decode),
    ("change_apply", change_apply),
    ("user_token", user_token),
];

/// Any frame text: decoding never panics, and whatever decodes encodes back
/// to a message that decodes to the same value.
pub fn wire_decode(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(message) = ClientMessage::decode(text) {
        let again = ClientMessage::decode(&message.encode()).expect("re-decode a client message");
        assert_eq!(again, message);
    }
    if let Ok(message) = ServerMessage::decode(text) {
        let again = ServerMessage::decode(&message.encode()).expect("re-decode a server message");
        assert_eq!(again, message);
    }
}

fn apply_all<'a>(
    changes: impl Iterator<Item = &'a Change>,
    policy: &CollectionPolicy,
) -> Option<Document> {
    let mut doc: Option<Document> = None;
    for change in changes {
        if let Some(next) = apply_change(doc.as_ref(), change, policy) {
            let again = apply_change(Some(&next), change, policy);
            assert!(
                again.is_none(),
                "applying a change twice changed the document"
            );
            doc = Some(next);
        }
    }
    doc
}

/// The change-apply path with arbitrary input: a JSON array of changes (as
/// a device receives them) applied to nothing, under every policy. Applying
/// never panics, applying a change twice changes nothing the second time,
/// and the result does not depend on the delivery order.
pub fn change_apply(data: &[u8]) {
    let Ok(changes) = serde_json::from_slice::<Vec<Change>>(data) else {
        return;
    };
    // Changes of one document only: the feed never mixes states of different
    // documents under one id.
    let Some(first) = changes.first() else { return };
    let same_doc: Vec<Change> = changes
        .iter()
        .filter(|c| {
            c.space == first.space && c.collection == first.collection && c.doc_id == first.doc_id
        })
        .cloned()
        .collect();
    for policy in [
        Policy::Lww,
        Policy::ServerWins,
        Policy::AppendOnly,
        Policy::Manual,
    ] {
        let policy = CollectionPolicy::of(policy);
        let forward = apply_all(same_doc.iter(), &policy);
        if policy.policy == Policy::Lww {
            // Arbitrary states are not all states a server could produce, so
            // only the join's order independence is checked, not equality
            // with a server-side fold.
            let backward = apply_all(same_doc.iter().rev(), &policy);
            assert_eq!(
                forward.as_ref().map(|d| (&d.state, d.version)),
                backward.as_ref().map(|d| (&d.state, d.version)),
                "lww result depends on delivery order"
            );
        }
        if let Some(doc) = forward {
            let _ = doc.fields();
        }
    }
}

static VERIFIER: LazyLock<UserTokenVerifier> = LazyLock::new(|| {
    UserTokenVerifier::jwt("tandem-fuzz", "https://issuer.example")
        .with_hs256_secret(b"a secret the fuzzer cannot guess, 32+ bytes long!!")
        .with_dev_tokens()
});

/// The user token parser: any bearer text is refused or accepted without a
/// panic, and nothing but a `dev:` token is accepted by a verifier whose
/// secret the input cannot know.
pub fn user_token(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(user) = VERIFIER.verify(token) {
        assert!(
            token.starts_with("dev:"),
            "accepted a token without the secret: {token:?} as {user}"
        );
    }
}

#[cfg(test)]
mod replay {
    //! Every kept corpus input through its target once, on any toolchain.

    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::path::Path;

    use super::TARGETS;

    #[test]
    fn the_kept_corpus_passes_every_check() {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        let mut failures = Vec::new();
        for (name, check) in TARGETS {
            let mut inputs: Vec<_> = std::fs::read_dir(corpus.join(name))
                .unwrap_or_else(|e| panic!("the corpus of {name}: {e}"))
                .map(|entry| entry.expect("a corpus entry").path())
                .collect();
            inputs.sort();
            let mut crashes = 0;
            for input in &inputs {
                let data = std::fs::read(input).expect("a corpus input");
                if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
                    crashes += 1;
                    failures.push(input.display().to_string());
                }
            }
            // Read by scripts/fuzz.sh --replay.
            println!(
                "replay {name}: {} executions, crashes: {crashes}",
                inputs.len()
            );
            assert!(!inputs.is_empty(), "the corpus of {name} is empty");
        }
        assert!(failures.is_empty(), "inputs that fail: {failures:#?}");
    }
}
