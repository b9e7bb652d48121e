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

mod coordination;
mod online;

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use serde::Serialize;
use serde_json::Value;
use tandem_core::{Client, ClientConfig, DocKey, FilterOp, FilterValue, Query, SyncStatus};

use crate::failure::{EXIT_NOT_FOUND, Failure};

/// Options of `tandem client`.
#[derive(clap::Args)]
#[command(after_help = "\
Every command works on the local database in DIR. With --server (and \
without --offline) writes are then pushed and reads pulled with a bounded \
sync; `sync` exits 0 only when nothing is left to send. Exit status 3: \
no such document; 4: sync left mutations pending.")]
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
    /// Write a whole document (replacing it); prints it.
    Put {
        /// The collection.
        collection: String,
        /// The document id.
        id: String,
        /// The fields, a JSON object.
        json: String,
    },
    /// Change some fields of a document (`null` removes one); prints it.
    Patch {
        /// The collection.
        collection: String,
        /// The document id.
        id: String,
        /// The changed fields, a JSON object.
        json: String,
    },
    /// Delete a document; prints its tombstone.
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
    /// Push the outbox and pull until caught up; exit 0 only when nothing is
    /// pending.
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
pub fn run(args: ClientArgs) -> Result<(), Failure> {
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
            let status = client.sync_status().map_err(core_failure)?;
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
