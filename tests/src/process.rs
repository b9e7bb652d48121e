//! Servers and devices as OS processes, for tests that kill them with
//! SIGKILL and start them again on the same databases, and what such tests
//! read back: the devices' logs of what they promised and SQLite's own
//! integrity check.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};

use serde_json::Value;

/// A server process (`tandem-e2e-server serve` or `tandem serve`) on a free
/// port of 127.0.0.1, with development auth and a SQLite database.
pub struct ServerProcess {
    program: PathBuf,
    database: PathBuf,
    stderr: PathBuf,
    child: Option<(Child, BufReader<ChildStdout>)>,
    addr: SocketAddr,
}

impl ServerProcess {
    /// Starts `program serve --db DATABASE --dev-auth --listen 127.0.0.1:0`;
    /// its log is appended to `stderr`.
    pub fn start(program: &Path, database: &Path, stderr: &Path) -> ServerProcess {
        let mut server = ServerProcess {
            program: program.to_owned(),
            database: database.to_owned(),
            stderr: stderr.to_owned(),
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        server.restart();
        server
    }

    /// Starts the process again on the same database (on a new port) if it
    /// is not running.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            return;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr)
            .unwrap_or_else(|e| panic!("server log: {e}"));
        let mut child = Command::new(&self.program)
            .arg("serve")
            .arg("--db")
            .arg(&self.database)
            .args(["--dev-auth", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.program.display()));
        let stdout = child
            .stdout
            .take()
            .unwrap_or_else(|| panic!("server stdout"));
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        let read = stdout.read_line(&mut line);
        let started: Option<SocketAddr> = serde_json::from_str::<Value>(&line)
            .ok()
            .and_then(|v| v["listening"].as_str().and_then(|a| a.parse().ok()));
        let Some(addr) = started else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the server did not start ({read:?}, {line:?}); see {}",
                self.stderr.display()
            );
        };
        self.addr = addr;
        self.child = Some((child, stdout));
    }

    /// Kills the process with SIGKILL and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some((mut child, _)) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the process with SIGTERM (a graceful shutdown) and waits.
    pub fn terminate(&mut self) {
        if let Some((mut child, _)) = self.child.take() {
            let pid = child.id().to_string();
            let sent = Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .is_ok_and(|s| s.success());
            if !sent {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }

    /// Whether the process is running (as far as this handle knows).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// How the process ended, if it ended by itself (it should not: only a
    /// test stops it).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|(child, _)| child.try_wait().ok().flatten())
    }

    /// The address it listens on (the last one, if stopped).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The database file.
    pub fn database(&self) -> &Path {
        &self.database
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How to run one device process (`tandem-soak-device`).
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    /// The binary.
    pub program: PathBuf,
    /// The server (or its proxy), `http://...`.
    pub server_url: String,
    /// The data directory (its database stays there across restarts).
    pub data_dir: PathBuf,
    /// The log of promised writes, guard answers and role states.
    pub log: PathBuf,
    /// Where its stderr is appended.
    pub stderr: PathBuf,
    /// The user.
    pub user: String,
    /// The device's name (and the prefix of its entries' ids).
    pub device: String,
    /// Shared spaces it writes entries to.
    pub spaces: Vec<String>,
    /// The shared space of contended documents, if any.
    pub board: Option<String>,
}

impl DeviceSpec {
    fn command(&self, mode: &str, seed: u64) -> Command {
        let list = |items: &[String]| {
            if items.is_empty() {
                "-".to_owned()
            } else {
                items.join(",")
            }
        };
        let mut command = Command::new(&self.program);
        command
            .arg(mode)
            .arg(&self.server_url)
            .arg(&self.data_dir)
            .arg(&self.log)
            .arg(&self.user)
            .arg(&self.device)
            .arg(seed.to_string())
            .arg(list(&self.spaces))
            .arg(self.board.clone().unwrap_or_else(|| "-".into()));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr)
            .unwrap_or_else(|e| panic!("device log: {e}"));
        command.stderr(stderr);
        command
    }

    /// Starts the device in `mode` (`soak` or `write`); it runs until
    /// killed, or, in `write` mode, until its stdin closes.
    pub fn spawn(&self, mode: &str, seed: u64) -> Child {
        self.command(mode, seed)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.program.display()))
    }

    /// Runs the device in `settle` mode: it syncs until nothing is pending
    /// and returns what it then holds, as the binary prints it.
    pub fn settle(&self) -> Value {
        let out = self
            .command("settle", 0)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.program.display()));
        assert!(
            out.status.success(),
            "{} did not settle ({}); see {}",
            self.device,
            out.status,
            self.stderr.display()
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{} printed no JSON: {e}", self.device))
    }

    /// The device's log: one JSON value per complete line. A line cut
    /// short by a kill was never promised and is skipped.
    pub fn read_log(&self) -> Vec<Value> {
        read_log(&self.log)
    }

    /// The device's database file.
    pub fn database(&self) -> PathBuf {
        self.data_dir.join(tandem_core::DATABASE_FILE)
    }
}

/// The JSON lines of a log; lines that do not parse (cut short by a kill)
/// are skipped.
pub fn read_log(path: &Path) -> Vec<Value> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// Kills `child` with SIGKILL and waits for it.
pub fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// SQLite's `PRAGMA integrity_check` on the database at `path`, opened
/// read-only: `"ok"` when it is sound.
pub fn integrity_check(path: &Path) -> String {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let rows: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .and_then(|mut s| {
            s.query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<_, _>>()
        })
        .unwrap_or_else(|e| panic!("integrity_check {}: {e}", path.display()));
    rows.join("; ")
}
