//! The bounded syncs of the client commands, and what their end means for
//! a command.
//!
//! A bounded sync ([`bounded_sync`]) waits for [`Client::sync_once`], but
//! gives up as soon as the first connection attempt of the run fails: the
//! engine would keep retrying with backoff until the timeout, and a person
//! at a terminal (or a script) is better served by a prompt "not synced"
//! than by the same answer ten seconds later. A dropped connection after
//! the first success is left to the engine's reconnects within the
//! timeout. The failure is then diagnosed from the URL itself (a TCP
//! connection, and for `http://` a `GET /healthz`), so that a server that
//! is down and one that is not Tandem read differently.
//!
//! A write is then judged by what became of its own outbox entry
//! ([`judge_write`]): confirmed (exit 0), still in the outbox (4), failed
//! (5), or dropped by a conflict the server won (6). Other entries that
//! failed while the command ran are reported once, as warnings; entries
//! that had failed before it are left to `sync` and `failed`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_core::{
    Client, ConnectionState, PendingMutation, StatusObserver, SyncError, SyncErrorKind,
    SyncOutcome, SyncStatus,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::core_failure;
use super::outbox::FailedLine;
use crate::failure::{EXIT_CONFLICT, EXIT_FAILED, EXIT_NOT_SYNCED, Failure};

/// How long the diagnosis of a failed connection may take, per step.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How a bounded sync ended.
pub(super) enum SyncEnd {
    /// Caught up with nothing pending; `failed` entries may remain.
    CaughtUp {
        /// Failed entries in the outbox.
        failed: u64,
    },
    /// Connected, but the time ran out with entries unconfirmed or spaces
    /// not caught up.
    TimedOut {
        /// Entries not yet confirmed.
        pending: u64,
        /// Failed entries.
        failed: u64,
    },
    /// No usable server: why, as a failure with exit status 4.
    NoServer(Failure),
}

/// The server a command syncs with, and the entries that were failed
/// before the command started (those are old news: `failed` and `sync`
/// report them, not every command).
pub(super) struct Target {
    /// The server's URL.
    pub url: String,
    failed_at_start: HashSet<String>,
}

impl Target {
    /// Notes the failed entries now: call it before the command writes or
    /// syncs.
    pub(super) fn new(client: &Client, url: &str) -> Result<Target, Failure> {
        Ok(Target {
            url: url.to_owned(),
            failed_at_start: client
                .failed_mutations()
                .map_err(core_failure)?
                .into_iter()
                .map(|m| m.mutation_id)
                .collect(),
        })
    }
}

/// Hands the statuses to the sync's waiter.
struct Watcher(mpsc::UnboundedSender<SyncStatus>);

impl StatusObserver for Watcher {
    fn on_status(&self, status: SyncStatus) {
        let _ = self.0.send(status);
    }
}

/// Syncs for up to `timeout`, or until the first connection attempt
/// fails (syncing must be started).
pub(super) async fn bounded_sync(
    client: &Client,
    target: &Target,
    timeout: Duration,
) -> Result<SyncEnd, Failure> {
    let server = target.url.as_str();
    let (statuses, mut updates) = mpsc::unbounded_channel();
    let _subscription = client
        .observe_status(Arc::new(Watcher(statuses)))
        .map_err(core_failure)?;
    let started = Instant::now();
    Ok(tokio::select! {
        outcome = client.sync_once(timeout) => match outcome {
            // `sync_once` returns before the timeout only when settled:
            // connected, caught up, nothing it could send.
            Ok(SyncOutcome::PendingLeft { pending: 0, failed }) if started.elapsed() < timeout => {
                SyncEnd::CaughtUp { failed }
            }
            Ok(SyncOutcome::CaughtUp) => SyncEnd::CaughtUp { failed: 0 },
            Ok(SyncOutcome::PendingLeft { pending, failed }) => SyncEnd::TimedOut { pending, failed },
            // Connected once, then lost within the time.
            Err(tandem_core::Error::Network(error)) => SyncEnd::NoServer(
                diagnose(server, &SyncError::new(SyncErrorKind::Network, error)).await,
            ),
            Err(tandem_core::Error::Unauthorized(error)) => SyncEnd::NoServer(
                unauthorized(&error).with_status(EXIT_NOT_SYNCED),
            ),
            Err(e) => SyncEnd::NoServer(core_failure(e).with_status(EXIT_NOT_SYNCED)),
        },
        error = first_connection_failure(&mut updates) => {
            SyncEnd::NoServer(diagnose(server, &error).await)
        }
    })
}

/// A request to the server that failed: a network or credential failure
/// is diagnosed as a sync's would be (exit 4); the server's refusals keep
/// their codes (exit 1).
pub(super) async fn request_failure(target: &Target, error: tandem_core::Error) -> Failure {
    match error {
        tandem_core::Error::Network(error) => {
            diagnose(&target.url, &SyncError::new(SyncErrorKind::Network, error)).await
        }
        tandem_core::Error::Unauthorized(error) => {
            unauthorized(&error).with_status(EXIT_NOT_SYNCED)
        }
        other => core_failure(other),
    }
}

/// Resolves with the error of the first failed connection attempt, unless
/// a connection succeeds first (then never).
async fn first_connection_failure(updates: &mut mpsc::UnboundedReceiver<SyncStatus>) -> SyncError {
    while let Some(status) = updates.recv().await {
        if status.connection == ConnectionState::Online {
            break;
        }
        if let Some(error) = status.last_error {
            return error;
        }
    }
    std::future::pending().await
}

/// Why the server could not be used, from the URL itself and the engine's
/// last error; exit status 4.
async fn diagnose(server: &str, last_error: &SyncError) -> Failure {
    let message = one_line(&last_error.message);
    let failure = match probe(server).await {
        Probe::Unreachable(why) => {
            Failure::new("unreachable", format!("cannot connect to {server}: {why}"))
        }
        Probe::NotTandem(answer) => Failure::new(
            "not_a_tandem_server",
            format!(
                "{server} is not a Tandem server: GET /healthz answered `{answer}` (check --server)"
            ),
        ),
        Probe::Answers => match last_error.kind {
            SyncErrorKind::Unauthorized => unauthorized(&message),
            SyncErrorKind::Tls => Failure::new("tls", message),
            SyncErrorKind::Clock => Failure::new("clock_skew", message),
            _ => Failure::new("network", message),
        },
    };
    failure.with_status(EXIT_NOT_SYNCED)
}

fn unauthorized(error: &str) -> Failure {
    Failure::new(
        "unauthorized",
        format!(
            "the server refused the user token (--token): {}",
            one_line(error)
        ),
    )
}

/// What the URL's host says.
enum Probe {
    /// No TCP connection: why.
    Unreachable(String),
    /// Something answers HTTP, but not as Tandem does: its status line.
    NotTandem(String),
    /// It answers like Tandem (or it is `https://`, not probed further).
    Answers,
}

/// Connects to the URL's host and, for `http://`, asks `GET /healthz`
/// (a Tandem server answers 200 `{"status":"ok"}`).
async fn probe(server: &str) -> Probe {
    let Some(url) = SplitUrl::of(server) else {
        return Probe::Unreachable("not an http:// or https:// URL".into());
    };
    let mut stream =
        match tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(&url.authority)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Probe::Unreachable(e.to_string()),
            Err(_) => {
                return Probe::Unreachable(format!(
                    "no connection within {} s",
                    PROBE_TIMEOUT.as_secs()
                ));
            }
        };
    if url.tls {
        return Probe::Answers;
    }
    let request = format!(
        "GET {}/healthz HTTP/1.0\r\nHost: {}\r\nConnection: close\r\n\r\n",
        url.path, url.authority
    );
    let answer = tokio::time::timeout(PROBE_TIMEOUT, async {
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.take(64 * 1024).read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    })
    .await;
    let Ok(Ok(answer)) = answer else {
        // No answer to judge by: let the engine's error speak.
        return Probe::Answers;
    };
    let answer = String::from_utf8_lossy(&answer);
    let status_line = answer.lines().next().unwrap_or("").trim().to_owned();
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    let healthy = status_line.split_whitespace().nth(1) == Some("200")
        && serde_json::from_str::<serde_json::Value>(body)
            .is_ok_and(|v| v["status"] == serde_json::json!("ok"));
    if healthy {
        Probe::Answers
    } else if status_line.is_empty() {
        Probe::NotTandem("nothing".into())
    } else {
        Probe::NotTandem(status_line)
    }
}

/// The parts of a server URL the probe needs.
struct SplitUrl {
    tls: bool,
    /// `host:port`, the default port filled in.
    authority: String,
    /// The base path, without a trailing `/`.
    path: String,
}

impl SplitUrl {
    fn of(url: &str) -> Option<SplitUrl> {
        let (tls, rest) = if let Some(rest) = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("ws://"))
        {
            (false, rest)
        } else {
            let rest = url
                .strip_prefix("https://")
                .or_else(|| url.strip_prefix("wss://"))?;
            (true, rest)
        };
        let (host_port, path) = rest.split_once('/').unwrap_or((rest, ""));
        if host_port.is_empty() {
            return None;
        }
        // A port follows the last `:` unless that is inside `[v6]`.
        let has_port = host_port
            .rsplit_once(':')
            .is_some_and(|(_, port)| !port.contains(']'));
        let authority = if has_port {
            host_port.to_owned()
        } else {
            format!("{host_port}:{}", if tls { 443 } else { 80 })
        };
        let path = path.trim_end_matches('/');
        // The socket's own URL names the same server.
        let path = path
            .strip_suffix("v1/sync")
            .unwrap_or(path)
            .trim_end_matches('/');
        Some(SplitUrl {
            tls,
            authority,
            path: if path.is_empty() {
                String::new()
            } else {
                format!("/{path}")
            },
        })
    }
}

/// An error text on one line, not too long (an HTML error page arrives
/// whole).
fn one_line(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(300) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

/// Prints one warning per entry that failed since the command started,
/// except `own` (the command's own write, reported as its error).
pub(super) fn warn_newly_failed(client: &Client, target: &Target, own: Option<&str>) {
    let Ok(failed) = client.failed_mutations() else {
        return;
    };
    let news = failed.iter().filter(|m| {
        !target.failed_at_start.contains(&m.mutation_id) && Some(m.mutation_id.as_str()) != own
    });
    for entry in news {
        if let Some(line) = FailedLine::of(entry) {
            let failure = line.failure(EXIT_FAILED);
            eprintln!("warning: {}: {}", failure.code, failure.message);
        }
    }
}

/// For a read: one warning line when the sync did not finish (the local
/// copy is shown either way), and the entries that failed meanwhile.
pub(super) fn warn_unsynced_read(
    client: &Client,
    target: &Target,
    end: &SyncEnd,
    timeout: Duration,
) {
    warn_newly_failed(client, target, None);
    match end {
        SyncEnd::CaughtUp { .. } => {}
        SyncEnd::TimedOut { .. } => eprintln!(
            "warning: pending: not caught up with the server within {} s: showing the local copy",
            timeout.as_secs_f64()
        ),
        SyncEnd::NoServer(failure) => eprintln!(
            "warning: {}: {}: showing the local copy",
            failure.code, failure.message
        ),
    }
}

/// The newest conflict record's id (0 without any), to tell the conflicts
/// of a write from older ones.
pub(super) fn newest_conflict(client: &Client) -> Result<u64, Failure> {
    Ok(client
        .conflicts(1)
        .map_err(core_failure)?
        .first()
        .map_or(0, |c| c.id))
}

/// The outbox entry a write just made: the newest of its document.
pub(super) fn entry_of_write(
    client: &Client,
    doc: &tandem_core::LocalDocument,
) -> Result<PendingMutation, Failure> {
    client
        .pending_mutations()
        .map_err(core_failure)?
        .into_iter()
        .filter(|m| m.space == doc.space && m.collection == doc.collection && m.doc_id == doc.id)
        .max_by_key(|m| m.seq)
        .ok_or_else(|| {
            Failure::new(
                "internal",
                format!(
                    "the write of {}/{} left no outbox entry",
                    doc.collection, doc.id
                ),
            )
        })
}

/// What became of the write `entry` in the sync: `Ok` if the server has
/// it; else the failure to report (see the module documentation).
pub(super) fn judge_write(
    client: &Client,
    target: &Target,
    entry: &PendingMutation,
    end: SyncEnd,
    conflicts_before: u64,
) -> Result<(), Failure> {
    warn_newly_failed(client, target, Some(&entry.mutation_id));
    let now = client
        .pending_mutations()
        .map_err(core_failure)?
        .into_iter()
        .find(|m| m.mutation_id == entry.mutation_id);
    let kept = "the write is saved in the outbox and goes out with the next sync \
                (`tandem client sync`)";
    match now {
        Some(failed) if matches!(failed.state, tandem_core::OutboxState::Failed { .. }) => {
            match FailedLine::of(&failed) {
                Some(line) => Err(line.failure(EXIT_FAILED)),
                None => Ok(()),
            }
        }
        Some(_) => Err(match end {
            SyncEnd::NoServer(failure) => Failure {
                message: format!("{}; {kept}", failure.message),
                ..failure
            },
            SyncEnd::TimedOut { .. } | SyncEnd::CaughtUp { .. } => Failure::new(
                "pending",
                format!(
                    "{} {}/{} not confirmed by the server in time; {kept}",
                    entry.operation, entry.collection, entry.doc_id
                ),
            )
            .with_status(EXIT_NOT_SYNCED),
        }),
        None => lost_conflict(client, entry, conflicts_before),
    }
}

/// One warning per conflict since `conflicts_before` in which the
/// server's version won over a write of this device.
pub(super) fn warn_lost_conflicts(client: &Client, conflicts_before: u64) -> Result<(), Failure> {
    let conflicts = client.conflicts(100).map_err(core_failure)?;
    for conflict in conflicts
        .iter()
        .rev()
        .filter(|c| c.id > conflicts_before && c.winner == "remote")
    {
        eprintln!(
            "warning: conflict: {}/{} lost a conflict ({}): the server's version was kept and \
             this device's write dropped (see `tandem client conflicts`)",
            conflict.collection, conflict.doc_id, conflict.rule
        );
    }
    Ok(())
}

/// A write that left the outbox without failing was applied, unless a
/// conflict the server won dropped it.
fn lost_conflict(
    client: &Client,
    entry: &PendingMutation,
    conflicts_before: u64,
) -> Result<(), Failure> {
    let conflicts = client.conflicts(100).map_err(core_failure)?;
    let lost = conflicts.iter().find(|c| {
        c.id > conflicts_before
            && c.space == entry.space
            && c.collection == entry.collection
            && c.doc_id == entry.doc_id
            && c.winner == "remote"
    });
    match lost {
        None => Ok(()),
        Some(conflict) => Err(Failure::new(
            "conflict",
            format!(
                "{} {}/{} lost a conflict ({}): the server's version was kept and this write \
                 dropped (see `tandem client conflicts`)",
                entry.operation, entry.collection, entry.doc_id, conflict.rule
            ),
        )
        .with_status(EXIT_CONFLICT)),
    }
}

#[cfg(test)]
mod tests {
    use super::{SplitUrl, one_line};

    #[test]
    fn urls_split_into_authority_and_path() {
        let url = SplitUrl::of("http://127.0.0.1:7700").unwrap();
        assert_eq!(
            (url.tls, url.authority.as_str(), url.path.as_str()),
            (false, "127.0.0.1:7700", "")
        );
        let url = SplitUrl::of("https://sync.example/tandem/").unwrap();
        assert_eq!(
            (url.tls, url.authority.as_str(), url.path.as_str()),
            (true, "sync.example:443", "/tandem")
        );
        let url = SplitUrl::of("http://[::1]").unwrap();
        assert_eq!(url.authority, "[::1]:80");
        assert_eq!(
            SplitUrl::of("http://[::1]:9/").unwrap().authority,
            "[::1]:9"
        );
        assert!(SplitUrl::of("ftp://x").is_none());
        assert!(SplitUrl::of("http://").is_none());
    }

    #[test]
    fn errors_are_squeezed_onto_one_line() {
        assert_eq!(
            one_line("HTTP 404:\n<html>\n  <p>no</p>"),
            "HTTP 404: <html> <p>no</p>"
        );
        assert_eq!(one_line(&"x ".repeat(400)).chars().count(), 301);
    }
}
