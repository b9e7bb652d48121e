//! What a push's text says that its decoded mutations no longer can.
//!
//! Decoding a push turns an integer literal outside the 64-bit range into
//! the nearest double (see [`tandem_protocol::numbers`]): once decoded, the
//! document would hold a number other than the one written. So the session
//! and `POST /v1/push` look at the text first: each mutation whose operation
//! holds such a number is answered `rejected invalid_mutation` (naming the
//! field) without reaching the store, and the others are applied as usual.
//! The answers keep the push's order. (Nothing is recorded for a refused
//! mutation; sending it again gets the same answer.)

use tandem_protocol::numbers::{InexactNumber, PathStep, inexact_numbers};
use tandem_protocol::wire::{MutationResult, Outcome};
use tandem_protocol::{Mutation, Op, RejectCode};

/// The answers decided from the text, to be merged with the store's.
#[derive(Debug, Default)]
pub struct Refusals {
    /// Per mutation of the push, in order: its answer if it was refused
    /// here. Empty when nothing was.
    answers: Vec<Option<MutationResult>>,
}

impl Refusals {
    /// Whether any mutation was refused.
    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }

    /// The push's answers in order: the refusals, and `stored` (the
    /// store's answers to the mutations that were not refused, in order)
    /// in the places between them.
    pub fn merge(self, stored: Vec<MutationResult>) -> Vec<MutationResult> {
        if self.answers.is_empty() {
            return stored;
        }
        let mut stored = stored.into_iter();
        self.answers
            .into_iter()
            .filter_map(|answer| answer.or_else(|| stored.next()))
            .collect()
    }
}

/// Splits the mutations of a push whose frame text is `text` into those for
/// the store and the refusals of those that hold a number no 64-bit parser
/// keeps as written.
pub fn screen(text: &str, mutations: Vec<Mutation>) -> (Vec<Mutation>, Refusals) {
    let found = inexact_numbers(text);
    if found.is_empty() {
        return (mutations, Refusals::default());
    }
    let mut answers: Vec<Option<MutationResult>> = vec![None; mutations.len()];
    for number in &found {
        let Some(index) = mutation_index(number) else {
            continue;
        };
        let Some(m) = mutations.get(index) else {
            continue;
        };
        if answers[index].is_none() {
            answers[index] = Some(refusal(m, number));
        }
    }
    if answers.iter().all(Option::is_none) {
        return (mutations, Refusals::default());
    }
    let to_store = mutations
        .into_iter()
        .zip(&answers)
        .filter(|(_, answer)| answer.is_none())
        .map(|(m, _)| m)
        .collect();
    (to_store, Refusals { answers })
}

/// The index of the mutation a number is in, if it is in a mutation's
/// operation (`mutations[i].op…`): a number anywhere else would not have
/// decoded.
fn mutation_index(number: &InexactNumber) -> Option<usize> {
    match number.path.as_slice() {
        [PathStep::Key(m), PathStep::Index(i), PathStep::Key(op), ..]
            if m == "mutations" && op == "op" =>
        {
            Some(*i)
        }
        _ => None,
    }
}

fn refusal(m: &Mutation, number: &InexactNumber) -> MutationResult {
    // Below `op`: `fields.<field>…` for put and patch, `values[j]…` for the
    // set operations (whose field is the operation's own).
    let field = match (&m.op, number.path.get(3), number.path.get(4)) {
        (Op::SetAdd { field, .. } | Op::SetRemove { field, .. }, _, _) => Some(field.clone()),
        (_, Some(PathStep::Key(fields)), Some(PathStep::Key(field))) if fields == "fields" => {
            Some(field.clone())
        }
        _ => None,
    };
    let place = match (&field, &m.op) {
        (Some(field), Op::SetAdd { .. } | Op::SetRemove { .. }) => {
            format!("{field}{}", number.path_text(4))
        }
        (Some(_), _) => number.path_text(4),
        (None, _) => number.path_text(3),
    };
    MutationResult {
        mutation_id: m.mutation_id,
        outcome: Outcome::Rejected {
            code: RejectCode::InvalidMutation,
            reason: format!("{place}: {}", number.explain()),
            field,
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tandem_protocol::wire::Push;
    use tandem_protocol::{ClientMessage, Collection, DeviceId, DocId, Hlc, MutationId, SpaceId};

    fn mutation(n: u8, op: Op) -> Mutation {
        let device = DeviceId::new("d").unwrap();
        Mutation {
            mutation_id: format!("0193a1b2-0000-7000-8000-0000000000{n:02x}")
                .parse::<MutationId>()
                .unwrap(),
            space: SpaceId::new("personal:u").unwrap(),
            collection: Collection::new("c").unwrap(),
            doc_id: DocId::new(format!("doc{n}")).unwrap(),
            op,
            base_version: None,
            hlc: Hlc::new(1, 0, device.clone()),
            device_id: device,
            fence: None,
        }
    }

    fn put(n: u8, fields: &str) -> Mutation {
        let Ok(serde_json::Value::Object(fields)) = serde_json::from_str(fields) else {
            panic!("fields")
        };
        mutation(n, Op::Put { fields })
    }

    /// The push's text with `big` written in place of the placeholder
    /// number 7777 (which serde_json writes as is).
    fn text(mutations: &[Mutation], big: &str) -> String {
        ClientMessage::Push(Push {
            batch_id: 1,
            mutations: mutations.to_vec(),
        })
        .encode()
        .replace("7777", big)
    }

    #[test]
    fn only_the_mutations_holding_such_a_number_are_refused_in_place() {
        let big = "123456789012345678901234567890";
        let mutations = vec![
            put(1, r#"{"n": 1}"#),
            put(2, r#"{"deep": {"list": [1, 7777]}}"#),
            put(3, r#"{"n": 2.5}"#),
            mutation(
                4,
                Op::SetAdd {
                    field: "tags".into(),
                    values: vec![serde_json::json!(7777)],
                },
            ),
        ];
        let text = text(&mutations, big);
        let (to_store, refusals) = screen(&text, mutations.clone());
        assert_eq!(
            to_store.iter().map(|m| m.mutation_id).collect::<Vec<_>>(),
            vec![mutations[0].mutation_id, mutations[2].mutation_id]
        );
        let stored: Vec<_> = to_store
            .iter()
            .map(|m| MutationResult {
                mutation_id: m.mutation_id,
                outcome: Outcome::Applied { rev: 1 },
            })
            .collect();
        let answers = refusals.merge(stored);
        let ids: Vec<_> = answers.iter().map(|a| a.mutation_id).collect();
        assert_eq!(
            ids,
            mutations.iter().map(|m| m.mutation_id).collect::<Vec<_>>()
        );
        let Outcome::Rejected {
            code,
            reason,
            field,
        } = &answers[1].outcome
        else {
            panic!("{:?}", answers[1])
        };
        assert_eq!(*code, RejectCode::InvalidMutation);
        assert_eq!(field.as_deref(), Some("deep"));
        assert!(
            reason.starts_with("deep.list[1]: the integer 1234"),
            "{reason}"
        );
        let Outcome::Rejected { field, reason, .. } = &answers[3].outcome else {
            panic!("{:?}", answers[3])
        };
        assert_eq!(field.as_deref(), Some("tags"));
        assert!(reason.starts_with("tags[0]: "), "{reason}");
    }

    #[test]
    fn a_push_without_such_numbers_goes_to_the_store_whole() {
        let mutations = vec![put(1, r#"{"n": 18446744073709551615, "m": -1.5e300}"#)];
        let (to_store, refusals) = screen(&text(&mutations, "1"), mutations.clone());
        assert_eq!(to_store, mutations);
        assert!(refusals.is_empty());
    }
}
