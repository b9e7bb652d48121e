//! Client commands with the sync engine running.
//!
//! A write (`put`, `patch`, `delete`, `retry`) is made before syncing
//! starts, on the device's state when the command was given (as offline),
//! then judged by its bounded sync (`settle.rs`).
//!
//! `claim` and `watch` run until SIGINT or SIGTERM. Their signal handlers
//! are installed before syncing starts and every wait of theirs races
//! them, so they stop within a fraction of a second in any state, the
//! server gone included: `claim` releases its role only if it is
//! connected, within [`RELEASE_GRACE`], and the engine's own shutdown
//! (closing the socket politely) gets [`STOP_GRACE`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tandem_core::{
    Client, DocKey, LocalDocument, PendingMutation, Query, QueryObserver, StaticToken, SyncConfig,
};
use tokio::sync::mpsc;

use super::settle::{
    SyncEnd, Target, bounded_sync, entry_of_write, judge_write, newest_conflict, request_failure,
    warn_lost_conflicts, warn_newly_failed, warn_unsynced_read,
};
use super::{
    ClientArgs, ClientCommand, SpaceCommand, StatusLine, core_failure, outbox, print_document,
    print_json, run_command, sync_timeout, write_json,
};
use crate::failure::{EXIT_FAILED, EXIT_NOT_SYNCED, Failure};

/// How long `claim` waits for its role's release when stopped.
pub(super) const RELEASE_GRACE: Duration = Duration::from_millis(500);

/// How long stopping waits for the sync engine (and the runtime's tasks)
/// to end before leaving them.
const STOP_GRACE: Duration = Duration::from_millis(200);

/// How long `status` waits for its sync at most.
const STATUS_SYNC_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `args.command` with syncing started against `server`.
pub fn run(client: &Client, server: &str, args: &ClientArgs) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::new("io", e))?;
    let result = runtime.block_on(async {
        // Before anything can wait: a signal in any state stops the
        // command (and not the process, half-way).
        let mut stop = match args.command {
            ClientCommand::Claim { .. } | ClientCommand::Watch { .. } => {
                Some(StopSignals::install()?)
            }
            _ => None,
        };
        // A write rests on what the device had when the command was given,
        // as offline, not on whatever a sync racing it brought in first.
        let target = Target::new(client, server)?;
        let written = write_locally(client, args)?;
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
        let result = match written {
            Some(written) => sync_write(client, &target, written, sync_timeout(args)).await,
            None => command(client, &target, args, stop.as_mut()).await,
        };
        // A server that is gone must not hold up the exit.
        let _ = tokio::time::timeout(STOP_GRACE, client.stop_sync()).await;
        result
    });
    runtime.shutdown_timeout(STOP_GRACE);
    result
}

/// Runs a command other than a write ([`write_locally`] and [`sync_write`]
/// run those).
async fn command(
    client: &Client,
    target: &Target,
    args: &ClientArgs,
    stop: Option<&mut StopSignals>,
) -> Result<(), Failure> {
    let timeout = sync_timeout(args);
    let space = args.space.clone();
    match &args.command {
        ClientCommand::Put { .. }
        | ClientCommand::Patch { .. }
        | ClientCommand::Delete { .. }
        | ClientCommand::Retry { .. } => Err(Failure::new(
            "internal",
            "a write reached the commands that follow syncing",
        )),
        ClientCommand::Get { .. } | ClientCommand::Query { .. } => {
            let end = bounded_sync(client, target, timeout).await?;
            warn_unsynced_read(client, target, &end, timeout);
            run_command(client, space.clone(), args.command.clone_local())
        }
        // Local: what the device knows, at once, with or without a server.
        ClientCommand::Conflicts { .. }
        | ClientCommand::Index { .. }
        | ClientCommand::Failed
        | ClientCommand::Discard { .. } => {
            run_command(client, space.clone(), args.command.clone_local())
        }
        ClientCommand::Status => {
            // The status says how the sync went (connection, last_error,
            // pending, failed): no warning besides it.
            bounded_sync(client, target, timeout.min(STATUS_SYNC_TIMEOUT)).await?;
            warn_newly_failed(client, target, None);
            let status = client.status().map_err(core_failure)?;
            print_json(&StatusLine {
                status,
                device: client.device_id(),
            })
        }
        ClientCommand::Sync { timeout } => {
            sync(client, target, Duration::from_secs_f64(timeout.max(0.0))).await
        }
        ClientCommand::Watch { collection } => {
            let stop = stop.ok_or_else(|| Failure::new("internal", "watch without signals"))?;
            watch(client, space.clone(), collection, stop).await
        }
        ClientCommand::Space(space) => {
            let info = match space {
                SpaceCommand::Create { name } => client.create_space(name).await,
                SpaceCommand::Add { name, user } => client.add_member(name, user).await,
                SpaceCommand::Remove { name, user } => client.remove_member(name, user).await,
            };
            match info {
                Ok(info) => print_json(&info),
                Err(e) => Err(request_failure(target, e).await),
            }
        }
        ClientCommand::Devices
        | ClientCommand::Rename { .. }
        | ClientCommand::Revoke { .. }
        | ClientCommand::Claim { .. }
        | ClientCommand::Release { .. }
        | ClientCommand::Handoff { .. }
        | ClientCommand::Role { .. }
        | ClientCommand::Guard { .. } => {
            super::coordination::run(client, target, &args.command, timeout, stop).await
        }
        ClientCommand::Spaces => {
            let spaces = match client.spaces().await {
                Ok(spaces) => spaces,
                Err(e) => return Err(request_failure(target, e).await),
            };
            let mut out = std::io::stdout().lock();
            for space in spaces {
                write_json(&mut out, &space)?;
            }
            Ok(())
        }
    }
}

/// A write made, whose fate the sync decides.
struct Written {
    /// Its outbox entry.
    entry: PendingMutation,
    /// The newest conflict record before it.
    conflicts_before: u64,
    /// Its document.
    key: DocKey,
}

/// Makes the command's write, if it is one (`put`, `patch`, `delete`,
/// `retry`).
fn write_locally(client: &Client, args: &ClientArgs) -> Result<Option<Written>, Failure> {
    let key = |collection: &str, id: &str| DocKey {
        space: args.space.clone(),
        collection: collection.to_owned(),
        id: id.to_owned(),
    };
    let (key, op, json) = match &args.command {
        ClientCommand::Put {
            collection,
            id,
            json,
        } => (key(collection, id), "put", json.as_str()),
        ClientCommand::Patch {
            collection,
            id,
            json,
        } => (key(collection, id), "patch", json.as_str()),
        ClientCommand::Delete { collection, id } => (key(collection, id), "delete", ""),
        ClientCommand::Retry { mutation_id } => {
            let conflicts_before = newest_conflict(client)?;
            let entry = outbox::retry(client, mutation_id)?;
            let key = outbox::key_of(&entry);
            return Ok(Some(Written {
                entry,
                conflicts_before,
                key,
            }));
        }
        _ => return Ok(None),
    };
    let conflicts_before = newest_conflict(client)?;
    let written = client.mutate(key.clone(), op, json).map_err(core_failure)?;
    Ok(Some(Written {
        entry: entry_of_write(client, &written)?,
        conflicts_before,
        key,
    }))
}

/// The bounded sync after a write: prints the document as the device then
/// has it, and fails unless the server took the write.
async fn sync_write(
    client: &Client,
    target: &Target,
    written: Written,
    timeout: Duration,
) -> Result<(), Failure> {
    let end = bounded_sync(client, target, timeout).await?;
    print_document(client, written.key)?;
    judge_write(
        client,
        target,
        &written.entry,
        end,
        written.conflicts_before,
    )
}

/// `sync`: prints `{"outcome", "status"}`; exit 0 when nothing is pending
/// or failed, 4 when entries are pending (or the server unusable), 5 when
/// failed entries remain.
async fn sync(client: &Client, target: &Target, timeout: Duration) -> Result<(), Failure> {
    let conflicts_before = newest_conflict(client)?;
    let end = bounded_sync(client, target, timeout).await?;
    warn_newly_failed(client, target, None);
    warn_lost_conflicts(client, conflicts_before)?;
    let outcome = match &end {
        SyncEnd::NoServer(_) => None,
        SyncEnd::CaughtUp { failed: 0 } => Some(serde_json::json!({"result": "caught_up"})),
        SyncEnd::CaughtUp { failed } => {
            Some(serde_json::json!({"result": "failed_left", "failed": failed}))
        }
        SyncEnd::TimedOut { pending, failed } => Some(
            serde_json::json!({"result": "pending_left", "pending": pending, "failed": failed}),
        ),
    };
    if let Some(outcome) = outcome {
        let status = client.status().map_err(core_failure)?;
        print_json(&serde_json::json!({
            "outcome": outcome,
            "status": StatusLine { status, device: client.device_id() },
        }))?;
    }
    match end {
        SyncEnd::CaughtUp { failed: 0 } => Ok(()),
        SyncEnd::CaughtUp { failed } => Err(Failure::new(
            "failed",
            format!("{failed} failed mutations remain: see `tandem client failed`"),
        )
        .with_status(EXIT_FAILED)),
        SyncEnd::TimedOut { pending, failed } => Err(Failure::new(
            "pending",
            format!(
                "{pending} mutations pending: not confirmed by the server, or spaces not \
                 caught up, within {} s{}",
                timeout.as_secs_f64(),
                if failed > 0 {
                    format!(", {failed} failed (see `tandem client failed`)")
                } else {
                    String::new()
                }
            ),
        )
        .with_status(EXIT_NOT_SYNCED)),
        SyncEnd::NoServer(failure) => Err(failure),
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
/// until SIGINT or SIGTERM. Offline it shows the local copy and keeps
/// reconnecting.
async fn watch(
    client: &Client,
    space: Option<String>,
    collection: &str,
    stop: &mut StopSignals,
) -> Result<(), Failure> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut query = Query::new(collection);
    query.space = space.clone();
    let _subscription = client
        .observe_query(query, Arc::new(Forward(tx)))
        .map_err(core_failure)?;
    let mut shown: HashMap<String, LocalDocument> = HashMap::new();
    loop {
        tokio::select! {
            () = stop.recv() => return Ok(()),
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

/// SIGINT (Ctrl-C) and SIGTERM, caught from when they are installed.
pub(super) struct StopSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl StopSignals {
    /// Installs the handlers (on the current runtime).
    pub(super) fn install() -> Result<StopSignals, Failure> {
        use tokio::signal::unix::{SignalKind, signal};
        let failed = |e| Failure::new("io", format!("cannot catch signals: {e}"));
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt()).map_err(failed)?,
            terminate: signal(SignalKind::terminate()).map_err(failed)?,
        })
    }

    /// Resolves when either signal arrives (or has arrived).
    pub(super) async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

#[cfg(not(unix))]
impl StopSignals {
    /// Nothing to install: Ctrl-C is awaited when it matters.
    pub(super) fn install() -> Result<StopSignals, Failure> {
        Ok(StopSignals {})
    }

    /// Resolves on Ctrl-C.
    pub(super) async fn recv(&mut self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}
