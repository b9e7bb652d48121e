//! `tandem client`: act as a device from a terminal.
//!
//! Each run opens the device in `--data DIR` (creating it on first use),
//! runs one command and closes it. Documents print as one JSON object per
//! line, in the document shape of the CLI contract.
//!
//! With `--server` and without `--offline` the device syncs: writes are
//! followed by a bounded sync, reads by a bounded sync first, and `sync`,
//! `watch`, `status` and the space commands talk to the server. The user
//! token is `--token`, or `dev:USER` (what a `--dev-auth` server accepts).
//!
//! The exit statuses ([`EXIT_STATUS_HELP`], `tandem client --help`) tell
//! apart what a script must handle differently: a write that is only in
//! the outbox (4), one the server refused for good (5), one that lost a
//! conflict (6). A write the server refused stays in the outbox as failed
//! until `retry` or `discard`; it is reported by the command whose sync
//! saw it fail and by `sync` and `failed`, never again by unrelated
//! commands.

mod coordination;
mod online;
mod outbox;
mod settle;

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use serde::Serialize;
use serde_json::Value;
use tandem_core::{Client, ClientConfig, DocKey, FilterOp, FilterValue, Query, SyncStatus};

use crate::failure::{EXIT_NOT_FOUND, Failure};

/// `tandem client --help` after the options: how the commands sync, where
/// JSON comes from, and the exit statuses.
pub const EXIT_STATUS_HELP: &str = "\
Every command works on the local database in DIR. With --server (and
without --offline) writes are then pushed and reads pulled with a bounded
sync (--sync-timeout); it gives up at once when the first connection
attempt fails. A read that could not sync prints the local copy and one
warning line on stderr.
JSON arguments of put and patch: a JSON object, @FILE (read FILE) or -
(read stdin).

Exit status:
  0  success
  1  error: invalid argument or JSON, local storage, a request the server
     refused (errors are one line on stderr: `error: <code>: <message>`)
  2  usage error
  3  not found: no such document (get), failed mutation (retry, discard)
     or device
  4  not synced: the server is unreachable, is not a Tandem server,
     refused the user token, or did not confirm in time; a write stays in
     the outbox and goes out with a later sync
  5  refused: the server refused this write for good; it is kept as failed
     (see `failed`, `retry`, `discard`). For sync: failed mutations remain
  6  conflict: in a server_wins or manual collection the server's version
     was kept and this write dropped (see `conflicts`)
claim and watch run until SIGINT or SIGTERM, then exit 0.";

/// `--help` of the writes: their exit statuses.
const WRITE_EXIT_STATUS_HELP: &str = "\
Exit status: 0 done (with a server: the server has the write); 4 not synced
(the write stays in the outbox); 5 refused by the server (kept as failed:
see `failed`); 6 lost a conflict to the server's version. More in
`tandem client --help`.";

/// Options of `tandem client`.
#[derive(clap::Args)]
#[command(after_help = EXIT_STATUS_HELP)]
pub struct ClientArgs {
    /// The device's directory: its database and identity. The same DIR is
    /// the same device across runs.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// The sync server, `http://host:port`.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// A CA certificate (PEM) to trust for an https:// server, besides the
    /// system's: a private or test CA. Repeatable.
    #[arg(long = "ca-cert", value_name = "FILE")]
    pub ca_certs: Vec<PathBuf>,
    /// Trust the https:// server only if its chain holds this public key:
    /// the SHA-256 of a certificate's SubjectPublicKeyInfo, base64
    /// (`sha256/…`) or hex. Repeatable.
    #[arg(long = "pin", value_name = "SHA256")]
    pub pins: Vec<String>,
    /// The user token to register with (default: `dev:USER`, for a
    /// `--dev-auth` server).
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// How long a write or read waits for its bounded sync, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub sync_timeout: f64,
    /// The user this device belongs to.
    #[arg(long, value_name = "USER")]
    pub user: String,
    /// A name for this device.
    #[arg(long, value_name = "DEVICE")]
    pub device: String,
    /// Work locally only, without contacting the server.
    #[arg(long)]
    pub offline: bool,
    /// The space of the documents; default: the user's personal space.
    #[arg(long, value_name = "NAME")]
    pub space: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: ClientCommand,
}

/// The client commands.
#[derive(Subcommand, Clone)]
pub enum ClientCommand {
    /// Write a whole document (replacing it); prints it as the device has
    /// it after the sync (without the write if the server refused it).
    #[command(after_help = WRITE_EXIT_STATUS_HELP)]
    Put {
        /// The collection.
        collection: String,
        /// The document id.
        id: String,
        /// The fields: a JSON object, `@FILE` (read from FILE) or `-`
        /// (read from stdin).
        #[arg(value_name = "JSON|@FILE|-")]
        json: String,
    },
    /// Change some fields of a document (`null` removes one); prints it
    /// as the device has it after the sync.
    #[command(after_help = WRITE_EXIT_STATUS_HELP)]
    Patch {
        /// The collection.
        collection: String,
        /// The document id.
        id: String,
        /// The changed fields: a JSON object, `@FILE` (read from FILE) or
        /// `-` (read from stdin).
        #[arg(value_name = "JSON|@FILE|-")]
        json: String,
    },
    /// Delete a document; prints its tombstone.
    #[command(after_help = WRITE_EXIT_STATUS_HELP)]
    Delete {
        /// The collection.
        collection: String,
        /// The document id.
        id: String,
    },
    /// Print a document; exit status 3 if there is none (or it is deleted).
    Get {
        /// The collection.
        collection: String,
        /// The document id.
        id: String,
    },
    /// Print the live documents of a collection, one per line.
    Query {
        /// The collection.
        collection: String,
        /// A condition FIELD=VALUE on an indexed field; VALUE is read as
        /// JSON if it parses (42, true, "x"), else as a string. Repeatable.
        #[arg(long = "where", value_name = "FIELD=VALUE")]
        filters: Vec<String>,
        /// An indexed field to order by (default: the document id).
        #[arg(long, value_name = "FIELD")]
        order: Option<String>,
        /// Largest first.
        #[arg(long)]
        desc: bool,
        /// At most N documents.
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        /// Continue after the document with this id (paging).
        #[arg(long, value_name = "ID")]
        after: Option<String>,
    },
    /// Print the device's sync status as one JSON object.
    Status,
    /// Push the outbox and pull until caught up; prints the outcome and
    /// the status. Exit 0 when nothing is pending or failed, 4 when
    /// mutations are left pending (or the server cannot be used), 5 when
    /// failed mutations remain.
    Sync {
        /// Give up after this many seconds.
        #[arg(long, value_name = "SECS", default_value_t = 30.0)]
        timeout: f64,
    },
    /// Print the collection's documents, then one line per document that
    /// changes, live, until interrupted.
    Watch {
        /// The collection.
        collection: String,
    },
    /// Print the conflict log, newest first, one JSON object per line.
    Conflicts {
        /// At most N entries.
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: u32,
    },
    /// Print the mutations the server refused for good (or whose attempts
    /// ran out), one JSON object per line: `mutation_id`, `space`,
    /// `collection`, `doc_id`, `op`, `code`, `reason`, `attempts`,
    /// `created_at_ms`. Local: does not sync.
    Failed,
    /// Send a failed mutation again (its change returns to the local view);
    /// prints its document like a write.
    #[command(after_help = WRITE_EXIT_STATUS_HELP)]
    Retry {
        /// The mutation id, as `failed` prints it.
        mutation_id: String,
    },
    /// Drop a failed mutation for good (the local view is rebuilt without
    /// it); prints the dropped entry as `failed` does. Local: does not
    /// sync.
    Discard {
        /// The mutation id, as `failed` prints it.
        mutation_id: String,
    },
    /// Shared spaces: create one, add or remove a member.
    #[command(subcommand)]
    Space(SpaceCommand),
    /// Print the user's spaces, one per line.
    Spaces,
    /// Print the user's devices, one per line.
    Devices,
    /// Rename a device of the user (named by its current name or id).
    Rename {
        /// The device.
        device: String,
        /// Its new name.
        name: String,
    },
    /// Revoke a device of the user (named by its name or id): its
    /// connections close, its credentials stop working.
    Revoke {
        /// The device.
        device: String,
    },
    /// Claim ROLE and stay in the foreground, heartbeating; print one line
    /// per change of the role's holder. Ctrl-C releases the role.
    Claim {
        /// The role.
        role: String,
        /// Preference among candidates when the holder is lost (higher
        /// first).
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i32,
    },
    /// Stop being a candidate for ROLE (handing it on if held).
    Release {
        /// The role.
        role: String,
    },
    /// Give ROLE, held by this device, to DEVICE (a name or id).
    Handoff {
        /// The role.
        role: String,
        /// The device that takes it.
        device: String,
    },
    /// Print ROLE's holder and epoch.
    Role {
        /// The role.
        role: String,
    },
    /// Ask the duplicate guard: prints `first` or `duplicate`.
    Guard {
        /// What the content is unique within.
        scope: String,
        /// The content.
        content: String,
        /// How long the first occurrence holds, in milliseconds (default
        /// 5000).
        #[arg(long, value_name = "N")]
        window_ms: Option<u64>,
    },
    /// Declare an index on fields of a collection, so queries can filter and
    /// order on them (kept in DIR).
    Index {
        /// The collection.
        collection: String,
        /// The fields, in index order: equality fields first, the order
        /// field last.
        #[arg(required = true)]
        fields: Vec<String>,
    },
}

/// `tandem client space ...`.
#[derive(Subcommand, Clone)]
pub enum SpaceCommand {
    /// Create a shared space owned by this user.
    Create {
        /// Its name.
        name: String,
    },
    /// Add a member (the owner only).
    Add {
        /// The space.
        name: String,
        /// The user to add.
        user: String,
    },
    /// Remove a member.
    Remove {
        /// The space.
        name: String,
        /// The user to remove.
        user: String,
    },
}

/// `status` output: the sync status plus this device's id.
#[derive(Serialize)]
struct StatusLine {
    #[serde(flatten)]
    status: SyncStatus,
    device: String,
}

/// Runs one client command.
pub fn run(mut args: ClientArgs) -> Result<(), Failure> {
    // Before the device is opened: an unreadable input leaves nothing
    // behind, not even a new data directory.
    args.command.read_json_input()?;
    let data = args
        .data
        .to_str()
        .ok_or_else(|| Failure::new("invalid_argument", "--data must be valid UTF-8"))?;
    let config = ClientConfig::new(data, &args.user, &args.device);
    let client = Client::open(config).map_err(core_failure)?;
    let result = match (&args.server, args.offline) {
        (Some(server), false) => online::run(&client, server, &args),
        _ => run_command(&client, args.space.clone(), args.command),
    };
    client.close();
    result
}

impl ClientCommand {
    /// A copy of the command, to run its local part.
    fn clone_local(&self) -> ClientCommand {
        self.clone()
    }

    /// Replaces a `@FILE` or `-` JSON argument of `put` and `patch` by
    /// what it names.
    fn read_json_input(&mut self) -> Result<(), Failure> {
        if let ClientCommand::Put { json, .. } | ClientCommand::Patch { json, .. } = self {
            *json = read_json_argument(json)?;
        }
        Ok(())
    }
}

/// A JSON argument: the JSON itself, `@FILE` (the file's contents) or `-`
/// (standard input). No JSON text starts with `@` or is `-`, so the forms
/// cannot be mistaken for one another.
fn read_json_argument(argument: &str) -> Result<String, Failure> {
    if argument == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut text).map_err(|e| {
            Failure::new(
                "invalid_argument",
                format!("cannot read the JSON from standard input: {e}"),
            )
        })?;
        return Ok(text);
    }
    let Some(path) = argument.strip_prefix('@') else {
        return Ok(argument.to_owned());
    };
    if path.is_empty() {
        return Err(Failure::new(
            "invalid_argument",
            "@ needs a file name: @FILE reads the JSON from FILE",
        ));
    }
    std::fs::read_to_string(path)
        .map_err(|e| Failure::new("invalid_argument", format!("cannot read {path}: {e}")))
}

/// How long the bounded syncs of reads and writes wait.
fn sync_timeout(args: &ClientArgs) -> Duration {
    Duration::from_secs_f64(args.sync_timeout.max(0.0))
}

fn run_command(
    client: &Client,
    space: Option<String>,
    command: ClientCommand,
) -> Result<(), Failure> {
    let key = |collection: String, id: String| DocKey {
        space: space.clone(),
        collection,
        id,
    };
    match command {
        ClientCommand::Put {
            collection,
            id,
            json,
        } => {
            let doc = client
                .mutate(key(collection, id), "put", &json)
                .map_err(core_failure)?;
            print_json(&doc)
        }
        ClientCommand::Patch {
            collection,
            id,
            json,
        } => {
            let doc = client
                .mutate(key(collection, id), "patch", &json)
                .map_err(core_failure)?;
            print_json(&doc)
        }
        ClientCommand::Delete { collection, id } => {
            let doc = client
                .mutate(key(collection, id), "delete", "")
                .map_err(core_failure)?;
            print_json(&doc)
        }
        ClientCommand::Get { collection, id } => {
            let where_ = format!("{collection}/{id}");
            match client.get(key(collection, id)).map_err(core_failure)? {
                Some(doc) if !doc.deleted => print_json(&doc),
                Some(_) => Err(Failure::new("not_found", format!("{where_} is deleted"))
                    .with_status(EXIT_NOT_FOUND)),
                None => Err(Failure::new("not_found", format!("no document {where_}"))
                    .with_status(EXIT_NOT_FOUND)),
            }
        }
        ClientCommand::Query {
            collection,
            filters,
            order,
            desc,
            limit,
            after,
        } => {
            let mut query = Query::new(&collection);
            query.space = space;
            for filter in &filters {
                let (field, value) = parse_filter(filter)?;
                query = query.filter(field, FilterOp::Eq, value);
            }
            query.order_by = order;
            query.descending = desc;
            query.limit = limit;
            query.after = after;
            let docs = client.query(query).map_err(core_failure)?;
            let mut out = std::io::stdout().lock();
            for doc in docs {
                write_json(&mut out, &doc)?;
            }
            Ok(())
        }
        ClientCommand::Status => {
            let status = client.status().map_err(core_failure)?;
            print_json(&StatusLine {
                status,
                device: client.device_id(),
            })
        }
        ClientCommand::Index { collection, fields } => client
            .declare_index(&collection, fields)
            .map_err(core_failure),
        ClientCommand::Conflicts { limit } => {
            let mut out = std::io::stdout().lock();
            for record in client.conflicts(limit).map_err(core_failure)? {
                write_json(&mut out, &record)?;
            }
            Ok(())
        }
        ClientCommand::Failed => outbox::print_failed(client),
        ClientCommand::Discard { mutation_id } => outbox::discard(client, &mutation_id),
        ClientCommand::Retry { mutation_id } => {
            let entry = outbox::retry(client, &mutation_id)?;
            print_document(client, outbox::key_of(&entry))
        }
        ClientCommand::Sync { .. }
        | ClientCommand::Watch { .. }
        | ClientCommand::Space(_)
        | ClientCommand::Spaces
        | ClientCommand::Devices
        | ClientCommand::Rename { .. }
        | ClientCommand::Revoke { .. }
        | ClientCommand::Claim { .. }
        | ClientCommand::Release { .. }
        | ClientCommand::Handoff { .. }
        | ClientCommand::Role { .. }
        | ClientCommand::Guard { .. } => Err(Failure::new(
            "offline",
            "this command needs the server: give --server URL and leave out --offline",
        )),
    }
}

/// `FIELD=VALUE`: VALUE is JSON if it parses as a JSON scalar, else text.
fn parse_filter(text: &str) -> Result<(&str, FilterValue), Failure> {
    let (field, raw) = text.split_once('=').ok_or_else(|| {
        Failure::new(
            "invalid_argument",
            format!("--where takes FIELD=VALUE, got {text:?}"),
        )
    })?;
    let value = match serde_json::from_str::<Value>(raw) {
        Ok(json) => FilterValue::from_json(&json).ok_or_else(|| {
            Failure::new(
                "invalid_argument",
                format!("--where {field}: compare with a string, number, boolean or null"),
            )
        })?,
        Err(_) => FilterValue::Text(raw.to_owned()),
    };
    Ok((field, value))
}

fn core_failure(e: tandem_core::Error) -> Failure {
    Failure::new(e.code(), e.reason())
}

/// Prints a document as the device has it now (nothing if it has none).
fn print_document(client: &Client, key: DocKey) -> Result<(), Failure> {
    match client.get(key).map_err(core_failure)? {
        Some(doc) => print_json(&doc),
        None => Ok(()),
    }
}

fn print_json(value: &impl Serialize) -> Result<(), Failure> {
    write_json(&mut std::io::stdout().lock(), value)
}

fn write_json(out: &mut impl std::io::Write, value: &impl Serialize) -> Result<(), Failure> {
    let line = serde_json::to_string(value).map_err(|e| Failure::new("internal", e))?;
    writeln!(out, "{line}").map_err(|e| Failure::new("io", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_values_are_json_when_they_parse() {
        assert_eq!(
            parse_filter("n=42").unwrap(),
            ("n", FilterValue::Integer(42))
        );
        assert_eq!(
            parse_filter("done=true").unwrap(),
            ("done", FilterValue::Bool(true))
        );
        assert_eq!(
            parse_filter(r#"c="42""#).unwrap(),
            ("c", FilterValue::Text("42".into()))
        );
        assert_eq!(
            parse_filter("c=c1").unwrap(),
            ("c", FilterValue::Text("c1".into()))
        );
        assert_eq!(
            parse_filter("c=a=b").unwrap(),
            ("c", FilterValue::Text("a=b".into()))
        );
        assert!(parse_filter("nofield").is_err());
        assert!(parse_filter("c=[1]").is_err());
    }
}
