//! The demo's auto-responder, one per device of Alice's: it claims the
//! role and, while this device holds it, answers each unanswered message
//! of the conversation. Each answer is guarded (scope: the conversation and
//! the epoch, content: the message id), so two devices that both believe
//! they hold the role cannot both answer, and fenced with the epoch, so a
//! device that lost the role cannot write an answer under it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tandem_core::{Client, DocKey, GuardOutcome, Query, RoleInfo};
use tokio::task::JoinHandle;

use super::failure;
use crate::failure::Failure;

/// How often a responder looks for messages to answer.
const TICK: Duration = Duration::from_millis(5);

/// A running responder.
pub struct Responder {
    /// The role's state when this device claimed it.
    pub claimed: RoleInfo,
    task: JoinHandle<()>,
}

impl Responder {
    /// Claims `role` with `priority` and starts answering in `space`.
    pub async fn start(
        client: Arc<Client>,
        device: &'static str,
        space: &str,
        role: &str,
        priority: i32,
    ) -> Result<Responder, Failure> {
        let claimed = client.claim_role(role, priority).await.map_err(failure)?;
        let (space, role) = (space.to_owned(), role.to_owned());
        let task = tokio::spawn(async move {
            // Ends when the client is closed.
            let _ = respond(&client, device, &space, &role).await;
        });
        Ok(Responder { claimed, task })
    }

    /// Stops answering (the role stays claimed).
    pub fn stop(&self) {
        self.task.abort();
    }
}

async fn respond(
    client: &Client,
    device: &str,
    space: &str,
    role: &str,
) -> Result<(), tandem_core::Error> {
    // Messages this device already tried in the current epoch.
    let mut tried: HashSet<String> = HashSet::new();
    let mut tried_epoch = 0;
    loop {
        tokio::time::sleep(TICK).await;
        let Some(fence) = client.current_fence(role) else {
            continue;
        };
        if fence.epoch != tried_epoch {
            // A new holder catches up first, so it knows every answer its
            // predecessor committed.
            client.sync_once(Duration::from_secs(5)).await?;
            tried.clear();
            tried_epoch = fence.epoch;
        }
        let answered: HashSet<String> = client
            .query(in_space(space, "answers"))?
            .iter()
            .filter_map(|d| {
                d.fields()
                    .ok()?
                    .get("reply_to")?
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        for message in client.query(in_space(space, "messages"))? {
            if answered.contains(&message.id) || !tried.insert(message.id.clone()) {
                continue;
            }
            let scope = format!("answer:{space}:{}", fence.epoch);
            match client
                .guard_fenced(&scope, &message.id, Some(60_000), fence.clone())
                .await
            {
                Ok(GuardOutcome::First) => {}
                Ok(GuardOutcome::Duplicate) => continue,
                // Lost the role, or the connection: the next tick decides.
                Err(_) => {
                    tried.remove(&message.id);
                    break;
                }
            }
            let text = message
                .fields()
                .ok()
                .and_then(|f| f.get("text").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_default();
            let answer = json!({
                "reply_to": message.id,
                "by": device,
                "epoch": fence.epoch,
                "text": format!("Auto-reply from Alice's {device}: got \"{text}\""),
            });
            let key = DocKey::in_space(
                space,
                "answers",
                tandem_protocol::DocId::generate().as_str(),
            );
            client.put_fenced(key, &answer.to_string(), fence.clone())?;
        }
    }
}

fn in_space(space: &str, collection: &str) -> Query {
    let mut query = Query::new(collection);
    query.space = Some(space.to_owned());
    query
}
