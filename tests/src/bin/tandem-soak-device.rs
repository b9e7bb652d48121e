//! A device as a process of its own, for the fault soak and the kill -9
//! loop: a real `tandem_core::Client` on its own SQLite database that the
//! tests kill with SIGKILL at any moment and start again on the same
//! database.
//!
//! `tandem-soak-device MODE SERVER_URL DATA_DIR LOG USER DEVICE SEED SPACES BOARD`
//!
//! - `SPACES`: comma-separated shared spaces it writes entries to (`-`:
//!   none; the personal space is always one of them).
//! - `BOARD`: a shared space whose few documents every device patches, so
//!   that concurrent writes to the same fields meet (`-`: none).
//!
//! Modes:
//!
//! - `soak`: writes at random and, beside the writes, asks the duplicate
//!   guard about random content and claims, releases and claims again a
//!   role. Runs until killed.
//! - `write`: writes entries to the personal space as fast as it can.
//!   Runs until killed.
//! - `settle`: syncs until nothing is pending, then prints what it holds
//!   (one JSON object: device id, and per space and collection the
//!   documents' fields and versions) and exits.
//!
//! Every entry is a new document `<DEVICE>-<seq>` written once, so the
//! checker can tell a lost write (missing) from a duplicated one (a space
//! whose revision count exceeds its entries). After a write returns Ok —
//! committed to the local database — it is appended to `LOG` as a JSON
//! line and the log is synced: what the log holds was promised. Guard
//! answers and every role state the device hears go to the log too.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{Value, json};
use tandem_core::{
    Client, ClientConfig, DocKey, Error, GuardOutcome, Query, RoleInfo, RoleObserver, StaticToken,
    SyncConfig, SyncOutcome,
};
use tandem_e2e::Rng;

/// The role every soak device is a candidate for.
const ROLE: &str = "soak-lead";
/// The guard's scope.
const GUARD_SCOPE: &str = "soak";
/// Long enough that no guard record runs out during a run: content that was
/// answered `first` must never be answered `first` again.
const GUARD_WINDOW_MS: u64 = 3_600_000;
/// The documents of the board space.
const BOARD_DOCS: u64 = 4;
/// How many distinct contents the guard is asked about, per user.
const GUARD_CONTENTS: u64 = 3_000;

/// An append-only log, synced after every line.
struct Log(Mutex<File>);

impl Log {
    fn line(&self, value: &Value) {
        self.raw(&format!("{value}\n"));
    }

    fn raw(&self, text: &str) {
        let mut file = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        // A log that cannot be written makes the run meaningless: stop.
        if file
            .write_all(text.as_bytes())
            .and_then(|()| file.sync_data())
            .is_err()
        {
            eprintln!("error: cannot write the log");
            std::process::exit(3);
        }
    }
}

struct RoleLog(Arc<Log>);

impl RoleObserver for RoleLog {
    fn on_role(&self, role: RoleInfo) {
        log_role(&self.0, &role);
    }
}

fn log_role(log: &Log, role: &RoleInfo) {
    log.line(&json!({
        "kind": "role",
        "role": role.role,
        "holder": role.holder,
        "epoch": role.epoch,
    }));
}

struct Args {
    mode: String,
    server: String,
    data: String,
    log: String,
    user: String,
    device: String,
    seed: u64,
    spaces: Vec<String>,
    board: Option<String>,
}

fn parse() -> Option<Args> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, server, data, log, user, device, seed, spaces, board] = args.as_slice() else {
        return None;
    };
    let list = |s: &str| -> Vec<String> {
        s.split(',')
            .filter(|s| !s.is_empty() && *s != "-")
            .map(str::to_owned)
            .collect()
    };
    Some(Args {
        mode: mode.clone(),
        server: server.clone(),
        data: data.clone(),
        log: log.clone(),
        user: user.clone(),
        device: device.clone(),
        seed: seed.parse().ok()?,
        spaces: list(spaces),
        board: list(board).into_iter().next(),
    })
}

fn main() -> ExitCode {
    let Some(args) = parse() else {
        eprintln!(
            "usage: tandem-soak-device soak|write|settle SERVER_URL DATA_DIR LOG USER DEVICE SEED SPACES BOARD"
        );
        return ExitCode::from(2);
    };
    let runtime = match tandem_e2e::process_runtime() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}: {e}", e.code());
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Error> {
    let client = Arc::new(Client::open(ClientConfig::new(
        &args.data,
        &args.user,
        &args.device,
    ))?);
    let mut config = SyncConfig::new(&args.server);
    config.tuning = tandem_e2e::test_tuning();
    config.platform = "soak".into();
    client
        .start_sync(
            config,
            Arc::new(StaticToken::new(format!("dev:{}", args.user))),
        )
        .await?;
    if args.mode == "settle" {
        return settle(&client, &args).await;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.log)?;
    let log = Arc::new(Log(Mutex::new(file)));
    // A line a kill cut short must not swallow the first line of this run.
    log.raw("\n");
    let mut spaces = vec![client.personal_space()];
    spaces.extend(args.spaces.iter().cloned());
    let rng = Rng::new(args.seed);
    match args.mode.as_str() {
        "write" => {
            // Stops writing when stdin closes: the graceful end of a run.
            let stdin_closed = tokio::task::spawn_blocking(|| {
                let mut sink = Vec::new();
                let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
            });
            let written = tokio::select! {
                written = write_loop(&client, &log, &args, &spaces, rng, false) => written,
                _ = stdin_closed => Ok(()),
            };
            client.close();
            written
        }
        "soak" => {
            let coordination = tokio::spawn(coordinate(
                Arc::clone(&client),
                Arc::clone(&log),
                args.user.clone(),
                Rng::new(!args.seed),
            ));
            let written = write_loop(&client, &log, &args, &spaces, rng, true).await;
            coordination.abort();
            written
        }
        other => Err(Error::InvalidPayload(format!("unknown mode {other}"))),
    }
}

/// The next entry number: one past the highest this device ever wrote (the
/// local database holds every committed write, logged or not).
fn next_seq(client: &Client, device: &str, spaces: &[String]) -> Result<u64, Error> {
    let mut next = 0;
    for space in spaces {
        let mut query = Query::new("entries");
        query.space = Some(space.clone());
        for doc in client.query(query)? {
            let fields: Value = serde_json::from_str(&doc.fields_json).unwrap_or_default();
            if fields["device"] == device
                && let Some(seq) = fields["seq"].as_u64()
            {
                next = next.max(seq + 1);
            }
        }
    }
    Ok(next)
}

async fn write_loop(
    client: &Client,
    log: &Log,
    args: &Args,
    spaces: &[String],
    mut rng: Rng,
    soak: bool,
) -> Result<(), Error> {
    let mut seq = next_seq(client, &args.device, spaces)?;
    loop {
        if soak
            && let Some(board) = &args.board
            && rng.chance(25)
        {
            let doc = format!("board-{}", rng.below(BOARD_DOCS));
            let field = format!("f{}", rng.below(6));
            let value = format!("{}:{}", args.device, rng.below(1_000_000));
            let key = DocKey {
                space: Some(board.clone()),
                collection: "board".into(),
                id: doc.clone(),
            };
            client.patch(key, &json!({ field.clone(): value }).to_string())?;
            log.line(&json!({"kind": "board", "space": board, "id": doc, "field": field, "value": value}));
        } else {
            let space = if soak {
                spaces[rng.index(spaces.len())].clone()
            } else {
                spaces[0].clone()
            };
            let id = format!("{}-{seq}", args.device);
            let value = rng.below(1 << 40);
            let key = DocKey {
                space: Some(space.clone()),
                collection: "entries".into(),
                id: id.clone(),
            };
            let fields = json!({"device": args.device, "seq": seq, "value": value});
            client.put(key, &fields.to_string())?;
            log.line(&json!({"kind": "write", "space": space, "id": id, "value": value}));
            seq += 1;
        }
        let pause = if soak {
            rng.between(20, 120)
        } else {
            rng.below(4)
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// Asks the guard about random content and moves the role around, logging
/// every answer; runs beside the writes so a slow answer never holds them.
async fn coordinate(client: Arc<Client>, log: Arc<Log>, user: String, mut rng: Rng) {
    let _subscription = client.observe_role(ROLE, Arc::new(RoleLog(Arc::clone(&log))));
    let mut claimed = false;
    loop {
        if !claimed || rng.chance(3) {
            let answer = if claimed && rng.chance(50) {
                client.release_role(ROLE).await.map(|r| (r, false))
            } else {
                client.claim_role(ROLE, 0).await.map(|r| (r, true))
            };
            if let Ok((role, now_claimed)) = answer {
                log_role(&log, &role);
                claimed = now_claimed;
            }
        } else {
            let content = format!("{user} message {}", rng.below(GUARD_CONTENTS));
            match client
                .guard(GUARD_SCOPE, &content, Some(GUARD_WINDOW_MS))
                .await
            {
                Ok(outcome) => log.line(&json!({
                    "kind": "guard",
                    "scope": GUARD_SCOPE,
                    "content": content,
                    "first": outcome == GuardOutcome::First,
                })),
                Err(e) => eprintln!("warning: guard: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.between(30, 150))).await;
    }
}

/// Syncs until caught up, then prints every document of the spaces named
/// (and the personal space).
async fn settle(client: &Client, args: &Args) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        match client.sync_once(Duration::from_secs(20)).await {
            Ok(SyncOutcome::CaughtUp) => break,
            Ok(SyncOutcome::PendingLeft { pending, failed }) => {
                eprintln!("settle: pending {pending}, failed {failed}");
                if failed > 0 {
                    return Err(Error::InvalidPayload(format!(
                        "{failed} writes failed: {:?}",
                        client.failed_mutations()?
                    )));
                }
            }
            Err(e) => eprintln!("settle: {e}"),
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Error::Network("did not catch up in 180 s".into()));
        }
    }
    let mut spaces = vec![client.personal_space()];
    spaces.extend(args.spaces.iter().cloned());
    spaces.extend(args.board.iter().cloned());
    let mut dump = BTreeMap::new();
    for space in spaces {
        let mut collections = BTreeMap::new();
        for collection in ["entries", "board"] {
            let mut query = Query::new(collection);
            query.space = Some(space.clone());
            let docs: BTreeMap<String, Value> = client
                .query(query)?
                .into_iter()
                .map(|d| {
                    let fields: Value = serde_json::from_str(&d.fields_json).unwrap_or_default();
                    (d.id, json!({"fields": fields, "version": d.version}))
                })
                .collect();
            collections.insert(collection, docs);
        }
        dump.insert(space, collections);
    }
    let out = json!({"device_id": client.device_id(), "spaces": dump});
    println!("{out}");
    client.close();
    Ok(())
}
