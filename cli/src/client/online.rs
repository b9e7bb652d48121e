//! Client commands with the sync engine running.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tandem_core::{
    Client, DocKey, LocalDocument, Query, QueryObserver, StaticToken, SyncConfig, SyncOutcome,
};
use tokio::sync::mpsc;

use super::{
    ClientArgs, ClientCommand, SpaceCommand, StatusLine, core_failure, print_json, run_command,
    sync_timeout, write_json,
};
use crate::failure::Failure;

/// Exit status of `sync` when mutations are left pending.
pub const EXIT_PENDING: u8 = 4;

/// Runs `args.command` with syncing started against `server`.
pub fn run(client: &Client, server: &str, args: &ClientArgs) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::new("io", e))?;
    runtime.block_on(async {
        let token = args
            .token
            .clone()
            .unwrap_or_else(|| format!("dev:{}", args.user));
        let mut config = SyncConfig::new(server);
        config.platform = "cli".into();
        for path in &args.ca_certs {
            let pem = std::fs::read_to_string(path).map_err(|e| {
                Failure::new(
                    "invalid_argument",
                    format!("--ca-cert {}: {e}", path.display()),
                )
            })?;
            config.tls.trusted_roots_pem.push(pem);
        }
        config.tls.pinned_spki_sha256 = args.pins.clone();
        client
            .start_sync(config, Arc::new(StaticToken::new(token)))
            .await
            .map_err(core_failure)?;
        let result = command(client, args).await;
        client.stop_sync().await;
        result
    })
}

/// A bounded sync whose outcome only matters to the person watching: the
/// local write or read has happened either way.
async fn bounded_sync(client: &Client, timeout: Duration) {
    match client.sync_once(timeout).await {
        Ok(SyncOutcome::CaughtUp) => {}
        Ok(SyncOutcome::PendingLeft { pending, failed }) => {
            eprintln!("warning: not fully synced: {pending} pending, {failed} failed");
        }
        Err(e) => eprintln!("warning: not synced: {e}"),
    }
}

async fn command(client: &Client, args: &ClientArgs) -> Result<(), Failure> {
    let timeout = sync_timeout(args);
    let space = args.space.clone();
    let key = |collection: &str, id: &str| DocKey {
        space: space.clone(),
        collection: collection.to_owned(),
        id: id.to_owned(),
    };
    match &args.command {
        ClientCommand::Put {
            collection,
            id,
            json,
        }
        | ClientCommand::Patch {
            collection,
            id,
            json,
        } => {
            let op = if matches!(args.command, ClientCommand::Put { .. }) {
                "put"
            } else {
                "patch"
            };
            client
                .mutate(key(collection, id), op, json)
                .map_err(core_failure)?;
            bounded_sync(client, timeout).await;
            print_current(client, key(collection, id))
        }
        ClientCommand::Delete { collection, id } => {
            client
                .mutate(key(collection, id), "delete", "")
                .map_err(core_failure)?;
            bounded_sync(client, timeout).await;
            print_current(client, key(collection, id))
        }
        ClientCommand::Get { .. } | ClientCommand::Query { .. } | ClientCommand::Index { .. } => {
            bounded_sync(client, timeout).await;
            run_command(client, space.clone(), args.command.clone_local())
        }
        ClientCommand::Conflicts { .. } => {
            run_command(client, space.clone(), args.command.clone_local())
        }
        ClientCommand::Status => {
            bounded_sync(client, timeout.min(Duration::from_secs(5))).await;
            let status = client.sync_status().map_err(core_failure)?;
            print_json(&StatusLine {
                status,
                device: client.device_id(),
            })
        }
        ClientCommand::Sync { timeout } => {
            let outcome = client
                .sync_once(Duration::from_secs_f64(timeout.max(0.0)))
                .await
                .map_err(core_failure)?;
            let status = client.sync_status().map_err(core_failure)?;
            print_json(&serde_json::json!({
                "outcome": outcome,
                "status": StatusLine { status, device: client.device_id() },
            }))?;
            match outcome {
                SyncOutcome::CaughtUp => Ok(()),
                SyncOutcome::PendingLeft { pending, failed } => Err(Failure::new(
                    "pending",
                    format!("{pending} mutations pending, {failed} failed"),
                )
                .with_status(EXIT_PENDING)),
            }
        }
        ClientCommand::Watch { collection } => watch(client, space.clone(), collection).await,
        ClientCommand::Space(SpaceCommand::Create { name }) => {
            let info = client.create_space(name).await.map_err(core_failure)?;
            print_json(&info)
        }
        ClientCommand::Space(SpaceCommand::Add { name, user }) => {
            let info = client.add_member(name, user).await.map_err(core_failure)?;
            print_json(&info)
        }
        ClientCommand::Space(SpaceCommand::Remove { name, user }) => {
            let info = client
                .remove_member(name, user)
                .await
                .map_err(core_failure)?;
            print_json(&info)
        }
        ClientCommand::Devices
        | ClientCommand::Rename { .. }
        | ClientCommand::Revoke { .. }
        | ClientCommand::Claim { .. }
        | ClientCommand::Release { .. }
        | ClientCommand::Handoff { .. }
        | ClientCommand::Role { .. }
        | ClientCommand::Guard { .. } => {
            super::coordination::run(client, &args.command, timeout).await
        }
        ClientCommand::Spaces => {
            let spaces = client.spaces().await.map_err(core_failure)?;
            let mut out = std::io::stdout().lock();
            for space in spaces {
                write_json(&mut out, &space)?;
            }
            Ok(())
        }
    }
}

/// Prints the document's view after a write.
fn print_current(client: &Client, key: DocKey) -> Result<(), Failure> {
    match client.get(key).map_err(core_failure)? {
        Some(doc) => print_json(&doc),
        None => Ok(()),
    }
}

/// Forwards query results to the printing loop.
struct Forward(mpsc::UnboundedSender<Vec<LocalDocument>>);

impl QueryObserver for Forward {
    fn on_result(&self, documents: Vec<LocalDocument>) {
        let _ = self.0.send(documents);
    }
}

/// `watch`: the collection's documents, then each document that changes,
/// until Ctrl-C (or SIGTERM).
async fn watch(client: &Client, space: Option<String>, collection: &str) -> Result<(), Failure> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut query = Query::new(collection);
    query.space = space.clone();
    let _subscription = client
        .observe_query(query, Arc::new(Forward(tx)))
        .map_err(core_failure)?;
    let mut shown: HashMap<String, LocalDocument> = HashMap::new();
    let stop = stop_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return Ok(()),
            result = rx.recv() => {
                let Some(documents) = result else { return Ok(()) };
                let mut out = std::io::stdout().lock();
                let mut now: HashMap<String, LocalDocument> = HashMap::new();
                for doc in documents {
                    if shown.get(&doc.id) != Some(&doc) {
                        write_json(&mut out, &doc)?;
                    }
                    now.insert(doc.id.clone(), doc);
                }
                for id in shown.keys().filter(|id| !now.contains_key(*id)) {
                    // Gone from the result: deleted.
                    let key = DocKey {
                        space: space.clone(),
                        collection: collection.to_owned(),
                        id: id.clone(),
                    };
                    if let Some(doc) = client.get(key).map_err(core_failure)? {
                        write_json(&mut out, &doc)?;
                    }
                }
                shown = now;
            }
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub(super) async fn stop_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
