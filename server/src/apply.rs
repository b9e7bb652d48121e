//! What one mutation does to the committed document: the part of a push that
//! does not depend on the database, shared by every store implementation.
//!
//! A store looks up the mutation's idempotency record, checks what the
//! author claims ([`check_claims`]: its device, its clock reading), looks up
//! the author's membership and the role its fence names (if any), then asks
//! [`decide`] what to do with the current document, then assigns the next
//! revision to a [`Decision::Write`].

use tandem_protocol::merge::{MergeOutcome, Rejection, apply_mutation};
use tandem_protocol::wire::{Changes, Outcome};
use tandem_protocol::{Change, DocState, Document, Mutation, Policy, RejectCode, RoleFence};

use crate::store::{DeviceIdentity, PushRules};

/// The fate of one mutation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Write this state under the next revision; the answer is `applied`.
    Write(DocState),
    /// Write nothing; answer this.
    Answer(Outcome),
}

/// Checks what the author claims, before anything is read or written: a
/// mutation must name the author's own device (the device of the access
/// token), its clock reading must be that device's, and the reading may be
/// at most `max_clock_skew_ms` ahead of the server's clock (`now_ms`).
///
/// A reading from the future would win every later write to its fields,
/// and every device that applied it would move its own clock there; a
/// reading naming another device would let one device forge another's
/// stamps. These refusals are not recorded under the mutation id: they
/// depend on the moment (a device whose clock was wrong may send the same
/// mutation once it is right), not on the data.
pub fn check_claims(
    author: &DeviceIdentity,
    m: &Mutation,
    rules: &PushRules,
    now_ms: u64,
) -> Result<(), Outcome> {
    if m.device_id != author.device {
        return Err(rejected(Rejection::new(
            RejectCode::Forbidden,
            format!(
                "device_id {} is not the device of the access token",
                m.device_id
            ),
        )));
    }
    if m.hlc.node != m.device_id {
        return Err(rejected(Rejection::new(
            RejectCode::InvalidMutation,
            format!(
                "the clock reading {} names device {}, not the author {}",
                m.hlc, m.hlc.node, m.device_id
            ),
        )));
    }
    let ahead = m.hlc.millis.saturating_sub(now_ms);
    if ahead > rules.max_clock_skew_ms {
        return Err(rejected(Rejection::new(
            RejectCode::ClockSkew,
            format!(
                "the clock reading {} is {} ahead of the server's clock, more than the {} allowed: \
                 set this device's clock right (its writes are refused until it is within the bound)",
                m.hlc,
                span(ahead),
                span(rules.max_clock_skew_ms)
            ),
        )));
    }
    Ok(())
}

/// A duration in milliseconds, for people.
fn span(ms: u64) -> String {
    const MINUTE: u64 = 60_000;
    const DAY: u64 = 24 * 60 * MINUTE;
    if ms >= 2 * DAY {
        format!("{} days", (ms + DAY / 2) / DAY)
    } else if ms >= 2 * MINUTE {
        format!("{} min", (ms + MINUTE / 2) / MINUTE)
    } else {
        format!("{} s", ms.div_ceil(1_000))
    }
}

/// The answer to a mutation on a space the author does not belong to.
pub fn not_a_member(m: &Mutation) -> Outcome {
    rejected(Rejection::new(
        RejectCode::Forbidden,
        format!("not a member of space {}", m.space),
    ))
}

/// The answer to a mutation id already used by another device.
pub fn foreign_mutation_id(m: &Mutation) -> Outcome {
    rejected(Rejection::new(
        RejectCode::InvalidMutation,
        format!(
            "mutation id {} was already used by another device",
            m.mutation_id
        ),
    ))
}

/// A recorded outcome as a retry sees it: an `applied` becomes a `duplicate`
/// at the same revision; everything else is returned as recorded.
pub fn as_retry(recorded: Outcome) -> Outcome {
    match recorded {
        Outcome::Applied { rev } => Outcome::Duplicate { rev },
        other => other,
    }
}

/// The answer to a mutation whose role fence does not hold (the store
/// checks it against the role's row in the transaction that would commit
/// the mutation, see [`crate::roles::RoleRow::admits`]).
pub fn stale_fence(fence: &RoleFence) -> Outcome {
    rejected(Rejection::new(
        RejectCode::StaleEpoch,
        crate::roles::stale_reason(fence),
    ))
}

/// Decides what `m` does to `current` under the collection's policy, the
/// schema's field rules and the size limit.
pub fn decide(current: Option<&Document>, m: &Mutation, rules: &PushRules) -> Decision {
    let policy = rules.schema.policy(&m.collection);
    match apply_mutation(current, m, &policy) {
        MergeOutcome::Changed(state) => {
            let size = state.encoded_len();
            if size > rules.max_document_bytes {
                return Decision::Answer(rejected(Rejection::new(
                    RejectCode::DocumentTooLarge,
                    format!(
                        "the document would be {size} bytes, over the limit of {}",
                        rules.max_document_bytes
                    ),
                )));
            }
            if let Some(frame) = frame_len_if_over(m, &state, size, rules.max_frame_bytes) {
                return Decision::Answer(rejected(Rejection::new(
                    RejectCode::DocumentTooLarge,
                    format!(
                        "the document's change would be a {frame}-byte message, over the frame limit of {} bytes",
                        rules.max_frame_bytes
                    ),
                )));
            }
            if let Err(r) = rules.schema.validate(&m.collection, &state) {
                return Decision::Answer(rejected(r));
            }
            Decision::Write(state)
        }
        MergeOutcome::Unchanged => {
            let rev = current.and_then(|d| d.version).unwrap_or(0);
            if policy.policy == Policy::AppendOnly && !m.op.is_set_op() {
                Decision::Answer(Outcome::Duplicate { rev })
            } else {
                Decision::Answer(Outcome::Applied { rev })
            }
        }
        MergeOutcome::Conflict => Decision::Answer(Outcome::Conflict {
            document: current.cloned().map(Box::new),
        }),
        MergeOutcome::Rejected(r) => Decision::Answer(rejected(r)),
    }
}

/// The most a change adds around its document's state: its space,
/// collection, id, origin, mutation id, revision and member names (ids are
/// at most a few hundred bytes, escaped at most twice over).
const CHANGE_OVERHEAD_BOUND: usize = 4 * 1024;

/// The length of the `changes` message that would carry `m`'s change with
/// `state` alone (at its longest), if that is over `max_frame_bytes`: such a
/// change could never be delivered within the announced frame limit.
fn frame_len_if_over(
    m: &Mutation,
    state: &DocState,
    state_len: usize,
    max_frame_bytes: usize,
) -> Option<usize> {
    if state_len + CHANGE_OVERHEAD_BOUND <= max_frame_bytes {
        return None;
    }
    let change = Change {
        space: m.space.clone(),
        rev: u64::MAX,
        collection: m.collection.clone(),
        doc_id: m.doc_id.clone(),
        state: state.clone(),
        deleted: state.is_deleted(),
        origin: Some(m.device_id.clone()),
        mutation_id: Some(m.mutation_id),
    };
    let len = Changes::envelope_len(&m.space) + crate::store::PageLimit::bytes_of(&change);
    (len > max_frame_bytes).then_some(len)
}

fn rejected(r: Rejection) -> Outcome {
    Outcome::Rejected {
        code: r.code,
        reason: r.reason,
        field: r.field,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use serde_json::json;
    use tandem_protocol::{Collection, DeviceId, DocId, Hlc, MutationId, Op, SpaceId, UserId};

    use super::*;
    use crate::collection_rules::Schema;

    const NOW: u64 = 1_764_000_000_000;

    fn author() -> DeviceIdentity {
        DeviceIdentity {
            user: UserId::new("alice").unwrap(),
            device: DeviceId::new("phone").unwrap(),
        }
    }

    fn put(fields: serde_json::Value, millis: u64) -> Mutation {
        let device = author().device;
        let serde_json::Value::Object(fields) = fields else {
            panic!("fields")
        };
        Mutation {
            mutation_id: MutationId::generate(),
            space: SpaceId::new("personal:alice").unwrap(),
            collection: Collection::new("notes").unwrap(),
            doc_id: DocId::new("n").unwrap(),
            op: Op::Put { fields },
            base_version: None,
            hlc: Hlc::new(millis, 0, device.clone()),
            device_id: device,
            fence: None,
        }
    }

    fn rules() -> PushRules {
        PushRules::new(Arc::new(Schema::default()))
    }

    fn code(outcome: &Result<(), Outcome>) -> Option<RejectCode> {
        match outcome {
            Err(Outcome::Rejected { code, .. }) => Some(*code),
            _ => None,
        }
    }

    #[test]
    fn a_clock_reading_may_be_ahead_by_the_bound_and_no_more() {
        let rules = rules();
        let bound = rules.max_clock_skew_ms;
        assert_eq!(bound, 300_000, "5 minutes by default");
        for (millis, expected) in [
            (NOW - 86_400_000, None),
            (NOW, None),
            (NOW + bound, None),
            (NOW + bound + 1, Some(RejectCode::ClockSkew)),
            (32_503_680_000_000, Some(RejectCode::ClockSkew)),
        ] {
            let m = put(json!({}), millis);
            assert_eq!(
                code(&check_claims(&author(), &m, &rules, NOW)),
                expected,
                "{millis}"
            );
        }
        let Err(Outcome::Rejected { reason, .. }) =
            check_claims(&author(), &put(json!({}), 32_503_680_000_000), &rules, NOW)
        else {
            panic!("refused")
        };
        assert!(
            reason.contains("days ahead of the server's clock, more than the 5 min allowed"),
            "{reason}"
        );
    }

    #[test]
    fn a_clock_reading_must_be_the_authors() {
        let mut m = put(json!({}), NOW);
        m.hlc.node = DeviceId::new("laptop").unwrap();
        assert_eq!(
            code(&check_claims(&author(), &m, &rules(), NOW)),
            Some(RejectCode::InvalidMutation)
        );
        let mut m = put(json!({}), NOW);
        m.device_id = DeviceId::new("laptop").unwrap();
        m.hlc.node = m.device_id.clone();
        assert_eq!(
            code(&check_claims(&author(), &m, &rules(), NOW)),
            Some(RejectCode::Forbidden),
            "the device must be the token's first"
        );
    }

    #[test]
    fn a_change_that_could_not_be_sent_in_one_frame_is_refused() {
        let rules = PushRules {
            max_document_bytes: 64 * 1024,
            max_frame_bytes: 64 * 1024,
            ..rules()
        };
        let fits = put(json!({"blob": "x".repeat(60 * 1024)}), NOW);
        assert!(matches!(decide(None, &fits, &rules), Decision::Write(_)));
        // Within the document limit, but its change's message is not
        // within the frame limit.
        let m = put(json!({"blob": "x".repeat(64 * 1024 - 300)}), NOW);
        let Decision::Write(state) = decide(
            None,
            &m,
            &PushRules {
                max_frame_bytes: usize::MAX,
                ..rules.clone()
            },
        ) else {
            panic!("fits the document limit")
        };
        assert!(state.encoded_len() <= rules.max_document_bytes);
        let Decision::Answer(Outcome::Rejected { code, reason, .. }) = decide(None, &m, &rules)
        else {
            panic!("refused")
        };
        assert_eq!(code, RejectCode::DocumentTooLarge);
        assert!(
            reason.contains("over the frame limit of 65536 bytes"),
            "{reason}"
        );
    }
}
