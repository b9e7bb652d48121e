//! Failed mutations: the outbox entries the server refused for good (or
//! whose attempts ran out). They stay, rolled back from the local view,
//! until `retry` queues one again or `discard` drops it; `failed` lists
//! them. These work on the local database only.

use serde::Serialize;
use tandem_core::{Client, DocKey, OutboxState, PendingMutation};

use super::{core_failure, write_json};
use crate::failure::{EXIT_NOT_FOUND, Failure};

/// A line of `failed` (and of `discard`).
#[derive(Serialize)]
pub(super) struct FailedLine<'a> {
    mutation_id: &'a str,
    space: &'a str,
    collection: &'a str,
    doc_id: &'a str,
    op: &'a str,
    code: &'a str,
    reason: &'a str,
    attempts: u32,
    created_at_ms: u64,
}

impl<'a> FailedLine<'a> {
    /// The line of a failed entry; `None` for an entry that is not failed.
    pub(super) fn of(entry: &'a PendingMutation) -> Option<FailedLine<'a>> {
        let OutboxState::Failed { reason } = &entry.state else {
            return None;
        };
        let (code, reason) = split_reason(reason);
        Some(FailedLine {
            mutation_id: &entry.mutation_id,
            space: &entry.space,
            collection: &entry.collection,
            doc_id: &entry.doc_id,
            op: &entry.operation,
            code,
            reason,
            attempts: entry.attempts,
            created_at_ms: entry.created_at_ms,
        })
    }

    /// The failure to report for it: its code, its reason and which
    /// mutation it is, with `status`.
    pub(super) fn failure(&self, status: u8) -> Failure {
        Failure::new(
            self.code.to_owned(),
            format!(
                "{} ({} {}/{}, mutation {}; kept as failed: see `tandem client failed`, then retry or discard it)",
                self.reason, self.op, self.collection, self.doc_id, self.mutation_id
            ),
        )
        .with_status(status)
    }
}

/// Splits a failed entry's reason into its code and the rest: the engine
/// records a refusal as `<code>: <reason>` (the server's code) and running
/// out of attempts as `gave up after N attempts: <last error>`.
fn split_reason(stored: &str) -> (&str, &str) {
    match stored.split_once(": ") {
        Some((code, reason))
            if !code.is_empty() && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') =>
        {
            (code, reason)
        }
        _ if stored.starts_with("gave up after ") => ("attempts_exhausted", stored),
        _ => ("failed", stored),
    }
}

/// `failed`: one line per failed entry, in outbox order.
pub(super) fn print_failed(client: &Client) -> Result<(), Failure> {
    let failed = client.failed_mutations().map_err(core_failure)?;
    let mut out = std::io::stdout().lock();
    for entry in &failed {
        if let Some(line) = FailedLine::of(entry) {
            write_json(&mut out, &line)?;
        }
    }
    Ok(())
}

/// The failed entry `mutation_id`, or `not_found` (exit 3).
fn failed_entry(client: &Client, mutation_id: &str) -> Result<PendingMutation, Failure> {
    client
        .failed_mutations()
        .map_err(core_failure)?
        .into_iter()
        .find(|m| m.mutation_id == mutation_id)
        .ok_or_else(|| {
            Failure::new(
                "not_found",
                format!("no failed mutation {mutation_id} (see `tandem client failed`)"),
            )
            .with_status(EXIT_NOT_FOUND)
        })
}

/// `discard`: drops the failed entry and prints it.
pub(super) fn discard(client: &Client, mutation_id: &str) -> Result<(), Failure> {
    let entry = failed_entry(client, mutation_id)?;
    if !client.discard_mutation(mutation_id).map_err(core_failure)? {
        return Err(gone(mutation_id));
    }
    match FailedLine::of(&entry) {
        Some(line) => write_json(&mut std::io::stdout().lock(), &line),
        None => Ok(()),
    }
}

/// `retry`: queues the failed entry again; returns it.
pub(super) fn retry(client: &Client, mutation_id: &str) -> Result<PendingMutation, Failure> {
    let entry = failed_entry(client, mutation_id)?;
    if !client.retry_mutation(mutation_id).map_err(core_failure)? {
        return Err(gone(mutation_id));
    }
    Ok(entry)
}

/// The entry went between looking it up and acting on it (another process
/// on the same directory).
fn gone(mutation_id: &str) -> Failure {
    Failure::new(
        "not_found",
        format!("the failed mutation {mutation_id} is gone"),
    )
    .with_status(EXIT_NOT_FOUND)
}

/// The key of an entry's document.
pub(super) fn key_of(entry: &PendingMutation) -> DocKey {
    DocKey {
        space: Some(entry.space.clone()),
        collection: entry.collection.clone(),
        id: entry.doc_id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::split_reason;

    #[test]
    fn a_reason_splits_into_the_code_and_the_rest() {
        assert_eq!(
            split_reason("validation_failed: title: required"),
            ("validation_failed", "title: required")
        );
        assert_eq!(
            split_reason("gave up after 10 attempts: internal: busy"),
            (
                "attempts_exhausted",
                "gave up after 10 attempts: internal: busy"
            )
        );
        assert_eq!(split_reason("something else"), ("failed", "something else"));
    }
}
