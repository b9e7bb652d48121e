//! An auto-responding device, as a process of its own: the end-to-end
//! scenario runs three of them for one user and kills one with SIGKILL.
//!
//! It claims a role and, while it holds it, answers every message of a
//! shared space that has no answer yet: for each, it asks the duplicate
//! guard (scoped by the epoch, so a successor can redo what a lost holder
//! did not finish) and writes the answer fenced with the epoch. Non-holders
//! only watch. It prints one JSON line per change of the role's holder.
//!
//! `tandem-responder SERVER_URL DATA_DIR USER DEVICE SPACE ROLE`

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tandem_core::{
    Client, ClientConfig, DocKey, Error, GuardOutcome, Query, RoleInfo, RoleObserver, StaticToken,
    SyncConfig,
};
use tokio::sync::mpsc;

struct Forward(mpsc::UnboundedSender<RoleInfo>);

impl RoleObserver for Forward {
    fn on_role(&self, role: RoleInfo) {
        let _ = self.0.send(role);
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [server, data, user, device, space, role] = args.as_slice() else {
        eprintln!("usage: tandem-responder SERVER_URL DATA_DIR USER DEVICE SPACE ROLE");
        return ExitCode::from(2);
    };
    let runtime = match tandem_e2e::process_runtime() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(respond(server, data, user, device, space, role)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}: {e}", e.code());
            ExitCode::FAILURE
        }
    }
}

async fn respond(
    server: &str,
    data: &str,
    user: &str,
    device: &str,
    space: &str,
    role: &str,
) -> Result<(), Error> {
    let client = Client::open(ClientConfig::new(data, user, device))?;
    let mut config = SyncConfig::new(server);
    config.tuning = tandem_e2e::test_tuning();
    config.platform = "responder".into();
    client
        .start_sync(config, Arc::new(StaticToken::new(format!("dev:{user}"))))
        .await?;
    let (tx, mut roles) = mpsc::unbounded_channel();
    let _subscription = client.observe_role(role, Arc::new(Forward(tx)))?;
    let claimed = client.claim_role(role, 0).await?;
    print_role(&claimed);
    let mut shown = (claimed.holder.clone(), claimed.epoch);
    // Messages already answered in this epoch by this process.
    let mut tried: HashSet<String> = HashSet::new();
    let mut tried_epoch = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            changed = roles.recv() => {
                let Some(info) = changed else { return Ok(()) };
                if (info.holder.clone(), info.epoch) != shown && info.epoch >= shown.1 {
                    shown = (info.holder.clone(), info.epoch);
                    print_role(&info);
                }
            }
            _ = tick.tick() => {}
        }
        let Some(fence) = client.current_fence(role) else {
            continue;
        };
        if fence.epoch != tried_epoch {
            // A new epoch: catch up first, so every answer committed before
            // the change of holder is known here.
            let _ = client.sync_once(Duration::from_secs(5)).await;
            tried.clear();
            tried_epoch = fence.epoch;
        }
        let mut messages = Query::new("messages");
        messages.space = Some(space.to_owned());
        let mut answers = Query::new("answers");
        answers.space = Some(space.to_owned());
        let answered: HashSet<String> = client
            .query(answers)?
            .into_iter()
            .filter_map(|d| {
                serde_json::from_str::<serde_json::Value>(&d.fields_json)
                    .ok()
                    .and_then(|v| v["reply_to"].as_str().map(str::to_owned))
            })
            .collect();
        for message in client.query(messages)? {
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
                Err(Error::StaleEpoch { .. }) => break,
                Err(e) => {
                    // Not answered: try again at the next tick.
                    tried.remove(&message.id);
                    eprintln!("warning: guard: {e}");
                    break;
                }
            }
            let key = DocKey {
                space: Some(space.to_owned()),
                collection: "answers".into(),
                id: tandem_protocol::DocId::generate().to_string(),
            };
            let body =
                serde_json::json!({"reply_to": message.id, "by": device, "epoch": fence.epoch});
            client.put_fenced(key, &body.to_string(), fence.clone())?;
        }
    }
}

fn print_role(info: &RoleInfo) {
    let line = serde_json::json!({
        "role": info.role,
        "holder": info.holder_name,
        "epoch": info.epoch,
        "is_self": info.is_self,
    });
    println!("{line}");
}
