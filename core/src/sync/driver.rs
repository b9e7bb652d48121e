//! Runs the engine on tokio: the socket, the timers, the credentials, the
//! conflict handler.
//!
//! One task owns the [`Engine`] and loops over a `select!` of: commands
//! from the [`Client`](crate::Client) (events such as a local write, and
//! waits for `sync_once`), frames from the socket (`socket.rs`), the
//! earliest armed timer, and the results of the helper tasks it spawns
//! (opening a connection, refreshing credentials through `access.rs`,
//! asking the app's conflict handler on a blocking thread). Every input
//! becomes an [`Event`]; every [`Action`] is carried out here and nowhere
//! else. The driver holds no sync rule of its own, and calls no app code
//! on its task: status, roles and devices go to the live hub
//! (`live.rs`), which delivers them on the client's observer task.
//!
//! Logs: the task runs in a `sync_session` span (this device, and a
//! number per `start_sync` in the process), and each connection adds a
//! `connection` span (its number within the session) around the engine's
//! steps while it is open, so every line of one connection of one device
//! can be followed in a soak's logs.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tandem_protocol::{ClientMessage, ServerMessage};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::coordination::{DeviceInfo, RoleInfo};
use crate::error::Error;
use crate::sync::access::Access;
use crate::sync::conflict::{ConflictSlot, Resolution};
use crate::sync::engine::Engine;
use crate::sync::interface::{Action, DisconnectReason, Event, Notice, Timer};
use crate::sync::live::LiveHub;
use crate::sync::socket::{self, Opened, Socket};
use crate::sync::status::SyncError;

/// How a wait for the engine to settle ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settling {
    /// Online, caught up, nothing left to send or hear about.
    Settled,
    /// Connecting failed in a way retrying alone will not mend (an
    /// untrusted certificate, refused credentials, another protocol
    /// version); the engine keeps retrying with backoff.
    Blocked,
    /// Neither, within the time given.
    TimedOut,
}

/// What the client sends to the driver.
pub(crate) enum Command {
    /// An engine event.
    Event(Event),
    /// A request to the server (its message carries `id`), answered on
    /// `reply`.
    Request {
        id: u64,
        message: ClientMessage,
        reply: oneshot::Sender<Result<ServerMessage, String>>,
    },
    /// Answer when the engine is settled (see [`Engine::is_settled`]), or
    /// when it cannot get there without the app (see
    /// [`Engine::is_blocked`]).
    WaitSettled(oneshot::Sender<Settling>),
    /// Stop: close the connection and end the task.
    Stop,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running driver.
pub(crate) struct SyncHandle {
    commands: mpsc::UnboundedSender<Command>,
    pub access: Arc<Access>,
    task: Mutex<Option<JoinHandle<()>>>,
    next_request: std::sync::atomic::AtomicU64,
}

impl SyncHandle {
    /// Starts the driver on the current tokio runtime.
    pub fn start(
        engine: Engine,
        access: Arc<Access>,
        live: Arc<LiveHub>,
        conflicts: ConflictSlot,
    ) -> SyncHandle {
        let (tx, rx) = mpsc::unbounded_channel();
        let (resolved_tx, resolved) = mpsc::unbounded_channel();
        let me = engine.device_id();
        let driver = Driver {
            me,
            replies: HashMap::new(),
            engine,
            access: Arc::clone(&access),
            live,
            conflicts,
            resolved_tx,
            connection_span: tracing::Span::none(),
            connections: 0,
            socket: None,
            connecting: None,
            refreshing: None,
            timers: BTreeMap::new(),
            waiters: Vec::new(),
            queue: Vec::new(),
            status_dirty: true,
        };
        static SESSIONS: AtomicU64 = AtomicU64::new(1);
        let span = tracing::info_span!(
            target: "tandem_core",
            "sync_session",
            device = %driver.me,
            session = SESSIONS.fetch_add(1, Ordering::Relaxed),
        );
        let task = tokio::spawn(driver.run(rx, resolved).instrument(span));
        SyncHandle {
            commands: tx,
            access,
            task: Mutex::new(Some(task)),
            next_request: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// Sends a request built by `message` (given its request id) once the
    /// connection is welcomed, and waits up to `timeout` for the answer.
    pub async fn request(
        &self,
        message: impl FnOnce(u64) -> ClientMessage,
        timeout: Duration,
    ) -> Result<ServerMessage, Error> {
        let id = self
            .next_request
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        let command = Command::Request {
            id,
            message: message(id),
            reply,
        };
        if self.commands.send(command).is_err() {
            return Err(Error::NotSyncing);
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(Ok(message))) => Ok(message),
            Ok(Ok(Err(reason))) => Err(Error::Network(reason)),
            Ok(Err(_)) => Err(Error::NotSyncing),
            Err(_) => {
                self.send(Event::CancelRequest(id));
                Err(Error::Network(format!(
                    "no answer from the server within {} s",
                    timeout.as_secs_f32()
                )))
            }
        }
    }

    /// Sends an event to the engine (ignored once stopped).
    pub fn send(&self, event: Event) {
        let _ = self.commands.send(Command::Event(event));
    }

    /// Waits until the engine is settled or blocked, or `timeout`.
    pub async fn wait_settled(&self, timeout: Duration) -> Settling {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::WaitSettled(tx)).is_err() {
            return Settling::TimedOut;
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(end)) => end,
            _ => Settling::TimedOut,
        }
    }

    /// Stops the driver and waits for it to end.
    pub async fn stop(&self) {
        let _ = self.commands.send(Command::Stop);
        let task = lock(&self.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Stops the driver without waiting.
    pub fn stop_now(&self) {
        let _ = self.commands.send(Command::Stop);
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
    }
}

/// A conflict the app decided: its id and the decision.
type Resolved = (u64, Resolution);

struct Driver {
    /// This device.
    me: tandem_protocol::DeviceId,
    /// Waiting requests.
    replies: HashMap<u64, oneshot::Sender<Result<ServerMessage, String>>>,
    engine: Engine,
    access: Arc<Access>,
    live: Arc<LiveHub>,
    conflicts: ConflictSlot,
    /// Where conflict handlers' decisions come back.
    resolved_tx: mpsc::UnboundedSender<Resolved>,
    socket: Option<Socket>,
    /// The open connection's span, and how many the session has opened.
    connection_span: tracing::Span,
    connections: u64,
    connecting: Option<JoinHandle<Opened>>,
    refreshing: Option<JoinHandle<Result<u64, SyncError>>>,
    timers: BTreeMap<Timer, Instant>,
    waiters: Vec<oneshot::Sender<Settling>>,
    /// Events produced while carrying out actions, handled next.
    queue: Vec<Event>,
    status_dirty: bool,
}

impl Driver {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut resolved: mpsc::UnboundedReceiver<Resolved>,
    ) {
        self.feed(Event::Start).await;
        loop {
            let next_timer = self.timers.values().min().copied();
            tokio::select! {
                command = commands.recv() => match command {
                    None | Some(Command::Stop) => break,
                    Some(Command::Event(event)) => self.feed(event).await,
                    Some(Command::Request { id, message, reply }) => {
                        self.replies.retain(|_, waiting| !waiting.is_closed());
                        self.replies.insert(id, reply);
                        self.feed(Event::Request { id, message }).await;
                    }
                    Some(Command::WaitSettled(tx)) => self.waiters.push(tx),
                },
                Some((id, resolution)) = resolved.recv() => {
                    self.feed(Event::ConflictResolved { id, resolution }).await;
                }
                incoming = socket::next_frame(&mut self.socket), if self.socket.is_some() => {
                    match incoming {
                        Ok(message) => self.feed(Event::FrameReceived(message)).await,
                        Err(reason) => {
                            self.socket = None;
                            self.feed(Event::Disconnected { reason }).await;
                        }
                    }
                }
                () = sleep_until(next_timer), if next_timer.is_some() => {
                    let now = Instant::now();
                    let due: Vec<Timer> = self
                        .timers
                        .iter()
                        .filter(|(_, at)| **at <= now)
                        .map(|(t, _)| *t)
                        .collect();
                    for timer in due {
                        self.timers.remove(&timer);
                        self.feed(Event::TimerFired(timer)).await;
                    }
                }
                opened = join(&mut self.connecting), if self.connecting.is_some() => {
                    self.connecting = None;
                    match opened {
                        Ok((socket, expires)) => {
                            self.socket = Some(socket);
                            self.connections += 1;
                            self.connection_span = tracing::info_span!(
                                target: "tandem_core",
                                "connection",
                                n = self.connections,
                            );
                            self.feed(Event::Connected).await;
                            self.feed(Event::CredentialsUpdated { access_expires_at: expires }).await;
                        }
                        Err(reason) => self.feed(Event::Disconnected { reason }).await,
                    }
                }
                renewed = join(&mut self.refreshing), if self.refreshing.is_some() => {
                    self.refreshing = None;
                    match renewed {
                        Ok(expires) => self.feed(Event::CredentialsUpdated { access_expires_at: expires }).await,
                        Err(reason) => self.feed(Event::CredentialsFailed { reason }).await,
                    }
                }
            }
            self.after_step();
        }
        if let Some(link) = self.socket.take() {
            link.close().await;
        }
        if let Some(task) = self.connecting.take() {
            task.abort();
        }
        if let Some(task) = self.refreshing.take() {
            task.abort();
        }
    }

    /// Publishes the status and answers waiters, once per loop turn.
    fn after_step(&mut self) {
        if self.status_dirty {
            self.status_dirty = false;
            if let Ok(status) = self.engine.status() {
                self.live.publish_status(status);
            }
        }
        if self.waiters.is_empty() {
            return;
        }
        let end = if self.engine.is_settled().unwrap_or(false) {
            Settling::Settled
        } else if self.engine.is_blocked() {
            Settling::Blocked
        } else {
            return;
        };
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(end);
        }
    }

    /// Hands `event` to the engine and carries out its actions (and those
    /// of any events the actions produce).
    async fn feed(&mut self, event: Event) {
        self.queue.push(event);
        while !self.queue.is_empty() {
            let event = self.queue.remove(0);
            let actions = match self.connection_span.in_scope(|| self.engine.handle(event)) {
                Ok(actions) => actions,
                Err(e) => {
                    // Storage trouble: the state in the store is still
                    // consistent (each step is a transaction); drop the
                    // connection and try again later.
                    tracing::warn!(target: "tandem_core", error = %e, "the sync engine failed a step; reconnecting");
                    if self.socket.take().is_some() {
                        self.queue.push(Event::Disconnected {
                            reason: DisconnectReason::Transport(format!("local storage: {e}")),
                        });
                    }
                    continue;
                }
            };
            for action in actions {
                self.act(action).await;
            }
        }
    }

    async fn act(&mut self, action: Action) {
        match action {
            Action::Connect => {
                // A new attempt: what follows belongs to no connection yet.
                self.connection_span = tracing::Span::none();
                if self.connecting.is_none() && self.socket.is_none() {
                    tracing::debug!(target: "tandem_core", "connecting to the sync server");
                    let access = Arc::clone(&self.access);
                    self.connecting = Some(tokio::spawn(socket::open(access)));
                }
            }
            Action::Disconnect => {
                if let Some(task) = self.connecting.take() {
                    task.abort();
                }
                if let Some(link) = self.socket.take() {
                    // Best effort: the engine has moved on either way.
                    tokio::spawn(link.close());
                }
            }
            Action::Send(message) => {
                // A crash between a write's commit and its push on the
                // socket: the outbox entries are durable and marked in
                // flight, and the connection goes as if the send had failed.
                fail::fail_point!(
                    "core.outbox.before_send",
                    matches!(message, ClientMessage::Push(_)),
                    |_| {
                        self.socket = None;
                        self.queue.push(Event::Disconnected {
                            reason: DisconnectReason::Transport(
                                "fail point core.outbox.before_send".into(),
                            ),
                        });
                    }
                );
                if let Some(link) = &mut self.socket
                    && let Err(e) = link.send(&message).await
                {
                    self.socket = None;
                    self.queue.push(Event::Disconnected {
                        reason: DisconnectReason::Transport(e.to_string()),
                    });
                }
            }
            Action::Schedule { timer, after } => {
                self.timers.insert(timer, Instant::now() + after);
            }
            Action::RefreshCredentials => {
                if self.refreshing.is_none() {
                    let access = Arc::clone(&self.access);
                    self.refreshing = Some(tokio::spawn(async move {
                        access
                            .renew()
                            .await
                            .map(|c| c.access_expires_at)
                            .map_err(|e| SyncError::from_error(&Error::from(e)))
                    }));
                }
            }
            Action::Notify(Notice::StatusChanged) => self.status_dirty = true,
            Action::Reply { id, answer } => {
                if let Some(reply) = self.replies.remove(&id) {
                    let _ = reply.send(answer);
                }
            }
            Action::Notify(Notice::RoleChanged(state)) => {
                self.live
                    .publish_role(RoleInfo::from_state(state, &self.me));
            }
            Action::Notify(Notice::DevicesChanged(devices)) => {
                let devices = devices
                    .into_iter()
                    .map(|d| DeviceInfo::from_wire(d, &self.me))
                    .collect();
                self.live.publish_devices(devices);
            }
            Action::Notify(Notice::Online(_)) => self.status_dirty = true,
            Action::Notify(Notice::MutationFailed(failure)) => {
                self.status_dirty = true;
                self.live.publish_failure(failure);
            }
            Action::ResolveConflict { id, conflict } => {
                let handler = self
                    .conflicts
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                match handler {
                    // Without a handler the server's document stands.
                    None => self.queue.push(Event::ConflictResolved {
                        id,
                        resolution: Resolution::KeepRemote,
                    }),
                    Some(handler) => {
                        let back = self.resolved_tx.clone();
                        tokio::spawn(async move {
                            let asked =
                                tokio::task::spawn_blocking(move || handler.resolve(conflict));
                            // A handler that panicked decided nothing:
                            // keeping the user's version loses nothing.
                            let resolution = asked.await.unwrap_or(Resolution::KeepLocal);
                            let _ = back.send((id, resolution));
                        });
                    }
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn join<T>(task: &mut Option<JoinHandle<T>>) -> T
where
    T: Send + 'static + From<JoinFailure>,
{
    match task {
        Some(handle) => match handle.await {
            Ok(value) => value,
            Err(e) => T::from(JoinFailure(e.to_string())),
        },
        None => std::future::pending().await,
    }
}

/// A helper task that panicked or was cancelled.
pub(crate) struct JoinFailure(String);

impl From<JoinFailure> for Opened {
    fn from(f: JoinFailure) -> Self {
        Err(DisconnectReason::Transport(f.0))
    }
}

impl From<JoinFailure> for Result<u64, SyncError> {
    fn from(f: JoinFailure) -> Self {
        Err(SyncError::new(crate::sync::SyncErrorKind::Network, f.0))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use crate::{Client, ClientConfig, StaticToken, SyncConfig};

    /// Log output kept in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_engines_log_lines_carry_the_devices_sync_session() {
        let logs = Captured::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);

        let dir = tempfile::tempdir().unwrap();
        let client = Client::open(ClientConfig::new(
            dir.path().to_str().unwrap(),
            "alice",
            "phone",
        ))
        .unwrap();
        // Nothing listens on port 1: connecting fails at once, and the
        // engine says so.
        let config = SyncConfig::new("http://127.0.0.1:1");
        client
            .start_sync(config, Arc::new(StaticToken::new("t")))
            .await
            .unwrap();
        let device = client.device_id();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let line = loop {
            let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
            if let Some(line) = text
                .lines()
                .find(|l| l.contains("disconnected from the sync server"))
            {
                break line.to_owned();
            }
            assert!(tokio::time::Instant::now() < deadline, "no line: {text}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        client.stop_sync().await;
        assert!(line.contains("sync_session{"), "{line}");
        assert!(line.contains(&format!("device={device}")), "{line}");
    }
}
