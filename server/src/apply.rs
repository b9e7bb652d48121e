//! What one mutation does to the committed document: the part of a push that
//! does not depend on the database, shared by every store implementation.
//!
//! A store looks up the mutation's idempotency record, the author's
//! membership and the role its fence names (if any), then asks [`decide`] what to do with the current document, then
//! assigns the next revision to a [`Decision::Write`].

use tandem_protocol::merge::{MergeOutcome, Rejection, apply_mutation};
use tandem_protocol::wire::Outcome;
use tandem_protocol::{DocState, Document, Mutation, Policy, RejectCode, RoleFence};

use crate::store::{DeviceIdentity, PushRules};

/// The fate of one mutation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Write this state under the next revision; the answer is `applied`.
    Write(DocState),
    /// Write nothing; answer this.
    Answer(Outcome),
}

/// Checks what the author may claim: a mutation must name the author's own
/// device (the device of the access token).
pub fn check_author(author: &DeviceIdentity, m: &Mutation) -> Result<(), Outcome> {
    if m.device_id != author.device {
        return Err(rejected(Rejection::new(
            RejectCode::Forbidden,
            format!(
                "device_id {} is not the device of the access token",
                m.device_id
            ),
        )));
    }
    Ok(())
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

fn rejected(r: Rejection) -> Outcome {
    Outcome::Rejected {
        code: r.code,
        reason: r.reason,
        field: r.field,
    }
}
