//! Processes for the CLI tests: a `tandem serve --dev-auth` on a free
//! port, `tandem client` runs against it, and deadlines on processes.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long anything that should happen may take before a test gives up.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A `tandem serve --dev-auth` process on a free port; killed on drop.
pub struct Serve {
    child: Child,
    pub addr: String,
    /// The line the server printed once it was listening.
    pub ready: Value,
    _dir: tempfile::TempDir,
}

impl Serve {
    /// A server with the defaults.
    pub fn start() -> Serve {
        Serve::start_with(None, &[])
    }

    /// A server with the schema `schema` (JSON).
    pub fn with_schema(schema: &Value) -> Serve {
        Serve::start_with(Some(schema), &[])
    }

    /// A server with `args` added to its command line.
    pub fn with_args(args: &[&str]) -> Serve {
        Serve::start_with(None, args)
    }

    fn start_with(schema: Option<&Value>, args: &[&str]) -> Serve {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_tandem"));
        command
            .args(["serve", "--dev-auth", "--listen", "127.0.0.1:0", "--db"])
            .arg(dir.path().join("server.db"))
            .args(args);
        if let Some(schema) = schema {
            let path = dir.path().join("schema.json");
            std::fs::write(&path, schema.to_string()).unwrap();
            command.arg("--schema").arg(path);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ready: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the server did not start ({e}): {line:?}"));
        Serve {
            child,
            addr: ready["listening"].as_str().unwrap().to_owned(),
            ready,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A metric's value from `GET /metrics` (0 if absent).
    pub fn metric(&self, name: &str) -> u64 {
        let mut stream = TcpStream::connect(&self.addr).unwrap();
        write!(stream, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0)
    }

    /// Kills the server (SIGKILL) and waits until it is gone.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tandem client --data DIR --server URL --user alice --device DEVICE`.
pub fn client(url: &str, dir: &Path, device: &str) -> Command {
    client_of("alice", url, dir, device)
}

/// `tandem client --data DIR --server URL --user USER --device DEVICE`.
pub fn client_of(user: &str, url: &str, dir: &Path, device: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tandem"));
    cmd.arg("client")
        .arg("--data")
        .arg(dir)
        .args(["--server", url, "--user", user, "--device", device]);
    cmd
}

/// A finished client run.
pub struct Run {
    pub status: i32,
    /// stdout, one JSON value per line.
    pub lines: Vec<Value>,
    pub stderr: String,
}

impl Run {
    /// Runs `cmd` to its end, within [`PATIENCE`].
    pub fn of(cmd: &mut Command) -> Run {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Run::from_output(output_within(child, PATIENCE))
    }

    pub fn from_output(out: Output) -> Run {
        Run {
            status: out.status.code().unwrap(),
            lines: String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect(),
            stderr: String::from_utf8(out.stderr).unwrap(),
        }
    }

    /// Asserts exit status 0 and nothing on stderr.
    pub fn ok(self, what: &str) -> Run {
        assert_eq!(self.status, 0, "{what}: {}", self.stderr);
        assert_eq!(self.stderr, "", "{what}: nothing on stderr");
        self
    }

    /// Asserts `status` and exactly one stderr line, `error: <code>: ...`;
    /// returns the line.
    pub fn error(&self, status: i32, code: &str) -> &str {
        assert_eq!(self.status, status, "{}", self.stderr);
        let mut lines = self.stderr.lines();
        let line = lines.next().unwrap_or_default();
        assert!(lines.next().is_none(), "one line: {}", self.stderr);
        assert!(
            line.starts_with(&format!("error: {code}: ")),
            "error: {code}: ..., got {line}"
        );
        line
    }
}

/// Waits for `child` to exit and collects its output; kills it and fails
/// the test after `deadline`.
pub fn output_within(mut child: Child, deadline: Duration) -> Output {
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = read(stdout.map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = read(stderr.map(|p| Box::new(p) as Box<dyn Read + Send>));
    let status = exit_within(&mut child, deadline);
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// Waits for `child` to exit; kills it and fails the test after `deadline`.
pub fn exit_within(child: &mut Child, deadline: Duration) -> ExitStatus {
    let until = Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the process did not exit within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends `signal` (`TERM`, `INT`) to `child`.
pub fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// A background process whose stdout lines arrive on a channel; killed on
/// drop.
pub struct Background {
    pub child: Child,
    lines: mpsc::Receiver<Value>,
}

impl Background {
    pub fn spawn(mut cmd: Command) -> Background {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Ok(value) = serde_json::from_str(&line)
                    && tx.send(value).is_err()
                {
                    return;
                }
            }
        });
        Background { child, lines: rx }
    }

    /// The next line that satisfies `wanted`.
    pub fn until(&self, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if wanted(&line) => return line,
                Ok(_) => {}
                Err(_) => panic!("no line with {what}"),
            }
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP server that answers every request `404 Not Found`: it
/// speaks HTTP, not Tandem. Runs until the test process ends.
pub fn not_tandem_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                // Read the request head, then answer.
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let body = "<html><body>Not Found</body></html>";
                let _ = write!(
                    stream,
                    "HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    format!("http://{addr}")
}
