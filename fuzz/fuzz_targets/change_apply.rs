//! The change-apply path with arbitrary input: a JSON array of changes (as a
//! device receives them) applied to nothing, under every policy. Applying
//! never panics, applying a change twice changes nothing the second time, and
//! the result does not depend on the delivery order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_protocol::merge::apply_change;
use tandem_protocol::{Change, CollectionPolicy, Document, Policy};

fn apply_all<'a>(changes: impl Iterator<Item = &'a Change>, policy: &CollectionPolicy) -> Option<Document> {
    let mut doc: Option<Document> = None;
    for change in changes {
        if let Some(next) = apply_change(doc.as_ref(), change, policy) {
            let again = apply_change(Some(&next), change, policy);
            assert!(again.is_none(), "applying a change twice changed the document");
            doc = Some(next);
        }
    }
    doc
}

fuzz_target!(|data: &[u8]| {
    let Ok(changes) = serde_json::from_slice::<Vec<Change>>(data) else {
        return;
    };
    // Changes of one document only: the feed never mixes states of different
    // documents under one id.
    let Some(first) = changes.first() else { return };
    let same_doc: Vec<Change> = changes
        .iter()
        .filter(|c| c.space == first.space && c.collection == first.collection && c.doc_id == first.doc_id)
        .cloned()
        .collect();
    for policy in [Policy::Lww, Policy::ServerWins, Policy::AppendOnly, Policy::Manual] {
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
});
