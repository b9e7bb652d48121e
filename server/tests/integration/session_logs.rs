//! The server's log lines name their connection and session: a line a
//! session logs carries the connection's id and remote address, and the
//! session's user and device, although the line itself names neither.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex, Once};

use tandem_e2e::{Http, TestServer, WsClient, eventually};

/// What the server logged on one thread, as text.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Starts capturing what this thread logs. The subscriber is the
    /// process's global one, installed once, which writes each line to the
    /// capture of the thread that logs it (other tests' lines go nowhere):
    /// tracing caches whether a call site is on for the whole process, so a
    /// subscriber scoped to one thread misses lines while other threads log
    /// through the same call sites.
    fn this_thread() -> Captured {
        static INSTALLED: Once = Once::new();
        INSTALLED.call_once(|| {
            tracing_subscriber::fmt()
                .with_ansi(false)
                .with_writer(|| ThreadCapture)
                .init();
        });
        let captured = Captured::default();
        CAPTURE.with(|c| *c.borrow_mut() = Some(captured.clone()));
        captured
    }

    fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn line_with(&self, words: &[&str]) -> Option<String> {
        self.lines()
            .into_iter()
            .find(|line| words.iter().all(|w| line.contains(w)))
    }
}

thread_local! {
    static CAPTURE: RefCell<Option<Captured>> = const { RefCell::new(None) };
}

/// Appends to the capture of the thread that writes, if it has one.
struct ThreadCapture;

impl Write for ThreadCapture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with(|c| {
            if let Some(captured) = c.borrow().as_ref() {
                captured.0.lock().unwrap().extend_from_slice(bytes);
            }
        });
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The `id` of the `connection` span a line was logged in.
fn connection_id(line: &str) -> &str {
    let start = line.find("connection{id=").unwrap() + "connection{id=".len();
    let rest = &line[start..];
    &rest[..rest.find(' ').unwrap()]
}

// One thread: the server's tasks run on the test's thread, whose lines
// are captured.
#[tokio::test(flavor = "current_thread")]
async fn a_session_logs_in_the_span_of_its_connection_and_device() {
    let captured = Captured::this_thread();

    let mut server = TestServer::dev().await;
    let http = Http::new(server.http_url());
    let mut sessions = Vec::new();
    for device in ["phone", "tablet"] {
        let credentials = http.register("dev:alice", device).await;
        let mut client = WsClient::connect_ok(&server.sync_url(), &credentials.access_token).await;
        client.hello(device, BTreeMap::new()).await;
        sessions.push(client);
    }
    let connected = |captured: &Captured| {
        captured
            .lines()
            .into_iter()
            .filter(|line| line.contains("device connected"))
            .collect::<Vec<_>>()
    };
    eventually("both sessions to log their connection", || {
        connected(&captured).len() == 2
    })
    .await;

    let lines = connected(&captured);
    let phone = captured
        .line_with(&["device connected", "device=phone"])
        .unwrap_or_else(|| panic!("no line names the phone: {lines:#?}"));
    let tablet = captured
        .line_with(&["device connected", "device=tablet"])
        .unwrap_or_else(|| panic!("no line names the tablet: {lines:#?}"));
    for (line, device) in [(&phone, "phone"), (&tablet, "tablet")] {
        assert!(
            line.contains(&format!("session{{user=alice device={device}}}")),
            "{line}"
        );
        assert!(line.contains("remote=127.0.0.1:"), "{line}");
    }
    assert_ne!(connection_id(&phone), connection_id(&tablet));
    for session in sessions {
        session.close().await;
    }
    server.stop().await;
}
