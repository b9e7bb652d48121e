//! Runs the engine on tokio: the WebSocket, the timers, the credentials.
//!
//! One task owns the [`Engine`] and loops over a `select!` of: commands
//! from the [`Client`](crate::Client) (events such as a local write, and
//! waits for `sync_once`), frames from the socket, the earliest armed
//! timer, and the results of the two helper tasks it spawns (opening a
//! connection, refreshing credentials). Every input becomes an [`Event`];
//! every [`Action`] is carried out here and nowhere else. The driver holds
//! no sync rule of its own.
//!
//! The socket is tokio-tungstenite over a `TcpStream` with `TCP_NODELAY`
//! (without it a small frame that follows another waits for the peer's
//! delayed ACK, 40 ms on Linux) and a 64 KiB read buffer (tungstenite
//! zeroes its buffer before each read, so its 128 KiB default costs more
//! than the frames need; catch-up pages grow it when larger).
//!
//! Credentials: the access and refresh tokens live in the database or the
//! app's credential store (`crate::credentials`).
//! [`Credentials`] registers with a user token from the app's
//! [`TokenProvider`] when there are none, refreshes when the access token
//! is about to expire or the server refused it, and registers again when a
//! refresh is refused. One lock serializes all of it, because a refresh
//! token is single-use: two refreshes with the same token would revoke the
//! device.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tandem_protocol::{ClientMessage, ServerMessage};

use crate::coordination::{DeviceInfo, DevicesObserver, RoleInfo, RoleObserver};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::credentials::CredentialVault;
use crate::error::Error;
use crate::store::{Store, StoredCredentials};
use crate::sync::api::{Api, ApiFailure, chain};
use crate::sync::endpoint::Endpoint;
use crate::sync::engine::{Action, DisconnectReason, Engine, Event, Notice, Timer};
use crate::sync::status::{StatusObserver, SyncError, SyncStatus};
use crate::sync::tls::{self, CheckedTls};
use crate::sync::tokens::TokenProvider;

/// Refresh an access token that has less than this left before using it.
const REFRESH_MARGIN_MS: u64 = 30_000;

/// The socket's read buffer.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// How this device presents itself to the server.
#[derive(Debug, Clone)]
pub(crate) struct DeviceLabel {
    pub name: String,
    pub platform: String,
    pub app_version: String,
}

/// The device's credentials for one server, and how to reach it.
pub(crate) struct Credentials {
    store: Arc<Store>,
    vault: CredentialVault,
    api: Api,
    /// The server's normalized base URL, which stored credentials are for.
    server_url: String,
    /// The sync socket's URL.
    sync_url: String,
    /// The TLS configuration the HTTP calls use too; `None` for a plain
    /// server.
    tls: Option<Arc<rustls::ClientConfig>>,
    tokens: Arc<dyn TokenProvider>,
    label: DeviceLabel,
    lock: tokio::sync::Mutex<()>,
}

/// Why credentials could not be had.
#[derive(Debug)]
pub(crate) enum CredentialFailure {
    /// The server refused them (even a fresh registration).
    Refused(String),
    /// Anything else: network, token provider, storage.
    Other(Error),
}

impl From<CredentialFailure> for Error {
    fn from(f: CredentialFailure) -> Error {
        match f {
            CredentialFailure::Refused(message) => Error::Server {
                code: tandem_protocol::ErrorCode::Unauthorized,
                message,
            },
            CredentialFailure::Other(e) => e,
        }
    }
}

impl From<Error> for CredentialFailure {
    fn from(e: Error) -> Self {
        CredentialFailure::Other(e)
    }
}

impl From<ApiFailure> for CredentialFailure {
    fn from(f: ApiFailure) -> Self {
        if f.is_auth() {
            match f {
                ApiFailure::Server { message, .. } => CredentialFailure::Refused(message),
                ApiFailure::Transport(m) | ApiFailure::Tls(m) => CredentialFailure::Refused(m),
            }
        } else {
            CredentialFailure::Other(f.into())
        }
    }
}

impl Credentials {
    /// Credentials for the server at `endpoint`, reached with `tls` (the
    /// device's one TLS configuration, for every connection to a secure
    /// server).
    pub fn new(
        store: Arc<Store>,
        vault: CredentialVault,
        endpoint: &Endpoint,
        tls: &CheckedTls,
        tokens: Arc<dyn TokenProvider>,
        label: DeviceLabel,
    ) -> Result<Credentials, Error> {
        let (api, tls) = if endpoint.is_secure() {
            let config = tls.client_config()?;
            (Api::new(endpoint, config.clone())?, Some(Arc::new(config)))
        } else {
            (Api::new(endpoint, tls::plain_config()?)?, None)
        };
        Ok(Credentials {
            store,
            vault,
            api,
            server_url: endpoint.http_base().to_owned(),
            sync_url: endpoint.sync_url(),
            tls,
            tokens,
            label,
            lock: tokio::sync::Mutex::new(()),
        })
    }

    fn stored(&self) -> Result<Option<StoredCredentials>, Error> {
        Ok(self
            .vault
            .load()?
            .filter(|c| c.server_url == self.server_url))
    }

    /// A current access token (registering or refreshing first if needed),
    /// and when it expires.
    pub async fn access_token(&self) -> Result<(String, u64), CredentialFailure> {
        let _guard = self.lock.lock().await;
        let now = crate::store::now_millis();
        if let Some(c) = self.stored()?
            && c.access_expires_at > now + REFRESH_MARGIN_MS
        {
            return Ok((c.access_token, c.access_expires_at));
        }
        let c = self.renew_locked().await?;
        Ok((c.access_token, c.access_expires_at))
    }

    /// Gets new credentials whatever the stored ones say (the server
    /// refused the access token, or it is time to refresh).
    pub async fn renew(&self) -> Result<StoredCredentials, CredentialFailure> {
        let _guard = self.lock.lock().await;
        self.renew_locked().await
    }

    /// Refresh if possible, register otherwise. Holds `lock`.
    async fn renew_locked(&self) -> Result<StoredCredentials, CredentialFailure> {
        if let Some(c) = self.stored()?
            && c.refresh_expires_at > crate::store::now_millis()
        {
            match self.api.refresh(&c.refresh_token).await {
                Ok(fresh) => return self.save(fresh),
                Err(f) if f.is_auth() => {
                    // Spent, expired or revoked: register again below.
                }
                Err(f) => return Err(f.into()),
            }
        }
        let user_token = self
            .tokens
            .user_token()
            .await
            .map_err(|e| CredentialFailure::Other(e.into()))?;
        let identity = self.store.identity();
        let fresh = self
            .api
            .register(
                &user_token,
                &identity.device_id,
                &self.label.name,
                &self.label.platform,
                &self.label.app_version,
            )
            .await?;
        if fresh.user != identity.user_id {
            return Err(CredentialFailure::Other(Error::UserMismatch {
                stored: identity.user_id.to_string(),
                requested: fresh.user.to_string(),
            }));
        }
        self.save(fresh)
    }

    fn save(
        &self,
        fresh: tandem_protocol::api::DeviceCredentials,
    ) -> Result<StoredCredentials, CredentialFailure> {
        let stored = StoredCredentials {
            server_url: self.server_url.clone(),
            user_id: fresh.user.to_string(),
            access_token: fresh.access_token,
            access_expires_at: fresh.access_expires_at,
            refresh_token: fresh.refresh_token,
            refresh_expires_at: fresh.refresh_expires_at,
        };
        // Stored before use: a spent refresh token that was not stored
        // would mean registering again.
        self.vault.save(&stored)?;
        Ok(stored)
    }

    /// Runs an HTTP call with the access token, renewing the credentials
    /// once if the server refuses it.
    pub async fn with_access<T, F, Fut>(&self, call: F) -> Result<T, Error>
    where
        F: Fn(Api, String) -> Fut,
        Fut: std::future::Future<Output = Result<T, ApiFailure>>,
    {
        let (token, _) = self.access_token().await?;
        match call(self.api.clone(), token).await {
            Err(f) if f.is_auth() => {
                let fresh = self.renew().await?;
                Ok(call(self.api.clone(), fresh.access_token).await?)
            }
            other => Ok(other?),
        }
    }
}

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

/// A role observer: its subscription id, the role it watches and itself.
type RoleObserverEntry = (u64, String, Arc<dyn RoleObserver>);

/// What the driver shares with the client: status, roles, devices and
/// their observers.
#[derive(Default)]
pub(crate) struct Shared {
    status: Mutex<Option<SyncStatus>>,
    observers: Mutex<Vec<(u64, Arc<dyn StatusObserver>)>>,
    next_observer: Mutex<u64>,
    roles: Mutex<BTreeMap<String, RoleInfo>>,
    devices: Mutex<Option<Vec<DeviceInfo>>>,
    role_observers: Mutex<Vec<RoleObserverEntry>>,
    devices_observers: Mutex<Vec<(u64, Arc<dyn DevicesObserver>)>>,
}

impl Shared {
    /// The last status the driver published.
    pub fn status(&self) -> Option<SyncStatus> {
        lock(&self.status).clone()
    }

    /// Forgets the published status, roles and devices (the driver
    /// stopped).
    pub fn clear(&self) {
        lock(&self.status).take();
        lock(&self.roles).clear();
        lock(&self.devices).take();
    }

    fn next_id(&self) -> u64 {
        let mut next = lock(&self.next_observer);
        *next += 1;
        *next
    }

    pub fn add_observer(&self, observer: Arc<dyn StatusObserver>) -> u64 {
        let id = self.next_id();
        lock(&self.observers).push((id, observer));
        id
    }

    pub fn remove_observer(&self, id: u64) {
        lock(&self.observers).retain(|(i, _)| *i != id);
        lock(&self.role_observers).retain(|(i, _, _)| *i != id);
        lock(&self.devices_observers).retain(|(i, _)| *i != id);
    }

    /// Adds a role observer and calls it with the role's state if known.
    pub fn add_role_observer(&self, role: &str, observer: Arc<dyn RoleObserver>) -> u64 {
        let id = self.next_id();
        lock(&self.role_observers).push((id, role.to_owned(), Arc::clone(&observer)));
        if let Some(info) = self.role(role) {
            observer.on_role(info);
        }
        id
    }

    /// Adds a devices observer and calls it with the list if known.
    pub fn add_devices_observer(&self, observer: Arc<dyn DevicesObserver>) -> u64 {
        let id = self.next_id();
        lock(&self.devices_observers).push((id, Arc::clone(&observer)));
        let known = lock(&self.devices).clone();
        if let Some(devices) = known {
            observer.on_devices(devices);
        }
        id
    }

    /// The role's last known state.
    pub fn role(&self, role: &str) -> Option<RoleInfo> {
        lock(&self.roles).get(role).cloned()
    }

    fn publish_role(&self, info: RoleInfo) {
        lock(&self.roles).insert(info.role.clone(), info.clone());
        let observers: Vec<Arc<dyn RoleObserver>> = lock(&self.role_observers)
            .iter()
            .filter(|(_, role, _)| role == &info.role)
            .map(|(_, _, o)| Arc::clone(o))
            .collect();
        for observer in observers {
            observer.on_role(info.clone());
        }
    }

    fn publish_devices(&self, devices: Vec<DeviceInfo>) {
        *lock(&self.devices) = Some(devices.clone());
        let observers: Vec<Arc<dyn DevicesObserver>> = lock(&self.devices_observers)
            .iter()
            .map(|(_, o)| Arc::clone(o))
            .collect();
        for observer in observers {
            observer.on_devices(devices.clone());
        }
    }

    pub fn observers(&self) -> Vec<Arc<dyn StatusObserver>> {
        lock(&self.observers)
            .iter()
            .map(|(_, o)| Arc::clone(o))
            .collect()
    }

    pub fn publish(&self, status: SyncStatus) {
        let changed = {
            let mut slot = lock(&self.status);
            let changed = slot.as_ref() != Some(&status);
            *slot = Some(status.clone());
            changed
        };
        if changed {
            for observer in self.observers() {
                observer.on_status(status.clone());
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running driver.
pub(crate) struct SyncHandle {
    commands: mpsc::UnboundedSender<Command>,
    pub credentials: Arc<Credentials>,
    task: Mutex<Option<JoinHandle<()>>>,
    next_request: std::sync::atomic::AtomicU64,
}

impl SyncHandle {
    /// Starts the driver on the current tokio runtime.
    pub fn start(engine: Engine, credentials: Arc<Credentials>, shared: Arc<Shared>) -> SyncHandle {
        let (tx, rx) = mpsc::unbounded_channel();
        let me = engine.device_id();
        let driver = Driver {
            me,
            replies: std::collections::HashMap::new(),
            engine,
            credentials: Arc::clone(&credentials),
            shared,
            socket: None,
            connecting: None,
            refreshing: None,
            timers: BTreeMap::new(),
            waiters: Vec::new(),
            queue: Vec::new(),
            status_dirty: true,
        };
        let task = tokio::spawn(driver.run(rx));
        SyncHandle {
            commands: tx,
            credentials,
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

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the socket's reader task hands the driver: a decoded frame, or why
/// the connection ended.
type Incoming = Result<ServerMessage, DisconnectReason>;

/// Frames decoded ahead of the engine: enough to keep the reader busy
/// while the engine applies a page, few enough to push back on the server.
const DECODED_AHEAD: usize = 4;

/// An open connection: the writing half, and the task that reads and
/// decodes frames on another core while the engine applies earlier ones.
struct Link {
    sink: futures::stream::SplitSink<Socket, Message>,
    frames: mpsc::Receiver<Incoming>,
    reader: JoinHandle<()>,
}

impl Link {
    fn new(socket: Socket) -> Link {
        let (sink, mut stream) = socket.split();
        let (tx, frames) = mpsc::channel(DECODED_AHEAD);
        let reader = tokio::spawn(async move {
            loop {
                let incoming = match stream.next().await {
                    Some(Ok(Message::Text(text))) => decode(text.as_str()).map_err(|e| {
                        DisconnectReason::Transport(format!("bad frame from server: {e}"))
                    }),
                    Some(Ok(Message::Close(frame))) => {
                        Err(DisconnectReason::Transport(frame.map_or_else(
                            || "closed by the server".to_owned(),
                            |f| format!("closed by the server: {} {}", f.code, f.reason),
                        )))
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => Err(DisconnectReason::Transport(e.to_string())),
                    None => Err(DisconnectReason::Transport("connection closed".into())),
                };
                let end = incoming.is_err();
                if tx.send(incoming).await.is_err() || end {
                    return;
                }
            }
        });
        Link {
            sink,
            frames,
            reader,
        }
    }

    async fn close(mut self) {
        self.reader.abort();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.sink.close()).await;
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A `changes` frame, decoded straight into its fields: the generic path
/// (an internally tagged enum) first copies the whole frame into an
/// intermediate tree, which for catch-up pages of a thousand documents
/// costs more than the decoding itself.
#[derive(serde::Deserialize)]
struct ChangesFrame {
    #[serde(rename = "type")]
    _kind: serde::de::IgnoredAny,
    space: tandem_protocol::SpaceId,
    changes: Vec<tandem_protocol::Change>,
    more: bool,
    #[serde(default)]
    checksum: Option<tandem_protocol::SpaceChecksum>,
    #[serde(default)]
    head: Option<u64>,
    #[serde(default)]
    reset: bool,
}

fn decode(text: &str) -> Result<ServerMessage, serde_json::Error> {
    if text.starts_with(r#"{"type":"changes""#) {
        let f: ChangesFrame = serde_json::from_str(text)?;
        return Ok(ServerMessage::Changes(tandem_protocol::wire::Changes {
            space: f.space,
            changes: f.changes,
            more: f.more,
            checksum: f.checksum,
            head: f.head,
            reset: f.reset,
        }));
    }
    ServerMessage::decode(text)
}

/// The result of opening a connection: the socket and when its access
/// token expires.
type Opened = Result<(Socket, u64), DisconnectReason>;

struct Driver {
    /// This device.
    me: tandem_protocol::DeviceId,
    /// Waiting requests.
    replies: std::collections::HashMap<u64, oneshot::Sender<Result<ServerMessage, String>>>,
    engine: Engine,
    credentials: Arc<Credentials>,
    shared: Arc<Shared>,
    socket: Option<Link>,
    connecting: Option<JoinHandle<Opened>>,
    refreshing: Option<JoinHandle<Result<u64, SyncError>>>,
    timers: BTreeMap<Timer, Instant>,
    waiters: Vec<oneshot::Sender<Settling>>,
    /// Events produced while carrying out actions, handled next.
    queue: Vec<Event>,
    status_dirty: bool,
}

impl Driver {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
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
                incoming = next_frame(&mut self.socket), if self.socket.is_some() => {
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
                            self.socket = Some(Link::new(socket));
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
                self.shared.publish(status);
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
            let actions = match self.engine.handle(event) {
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
                if self.connecting.is_none() && self.socket.is_none() {
                    tracing::debug!(target: "tandem_core", "connecting to the sync server");
                    let credentials = Arc::clone(&self.credentials);
                    self.connecting = Some(tokio::spawn(open(credentials)));
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
                    && let Err(e) = link.sink.send(Message::text(message.encode())).await
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
                    let credentials = Arc::clone(&self.credentials);
                    self.refreshing = Some(tokio::spawn(async move {
                        credentials
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
                self.shared
                    .publish_role(RoleInfo::from_state(state, &self.me));
            }
            Action::Notify(Notice::DevicesChanged(devices)) => {
                let devices = devices
                    .into_iter()
                    .map(|d| DeviceInfo::from_wire(d, &self.me))
                    .collect();
                self.shared.publish_devices(devices);
            }
            Action::Notify(Notice::Link(_)) => self.status_dirty = true,
            Action::Notify(Notice::MutationFailed(failure)) => {
                self.status_dirty = true;
                for observer in self.shared.observers() {
                    observer.on_mutation_failed(failure.clone());
                }
            }
        }
    }
}

async fn next_frame(link: &mut Option<Link>) -> Incoming {
    match link {
        Some(link) => match link.frames.recv().await {
            Some(incoming) => incoming,
            None => Err(DisconnectReason::Transport("connection closed".into())),
        },
        None => std::future::pending().await,
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

/// Opens the sync socket: credentials first, and once more with renewed
/// credentials if the server refuses the access token.
async fn open(credentials: Arc<Credentials>) -> Opened {
    let url = credentials.sync_url.clone();
    let tls = credentials.tls.clone();
    let (token, expires) = credentials
        .access_token()
        .await
        .map_err(credential_reason)?;
    match open_socket(&url, tls.clone(), &token).await {
        Err(DisconnectReason::Unauthorized(_)) => {
            let fresh = credentials.renew().await.map_err(credential_reason)?;
            let socket = open_socket(&url, tls, &fresh.access_token).await?;
            Ok((socket, fresh.access_expires_at))
        }
        other => other.map(|socket| (socket, expires)),
    }
}

fn credential_reason(f: CredentialFailure) -> DisconnectReason {
    match f {
        CredentialFailure::Refused(m) => DisconnectReason::Unauthorized(m),
        CredentialFailure::Other(Error::Tls(m)) => DisconnectReason::Tls(m),
        CredentialFailure::Other(e) => DisconnectReason::Transport(e.reason()),
    }
}

/// Opens the socket at `url` (`ws://`, or `wss://` with `tls`, the
/// configuration the HTTP calls use).
async fn open_socket(
    url: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    token: &str,
) -> Result<Socket, DisconnectReason> {
    let transport = |e: &dyn std::fmt::Display| DisconnectReason::Transport(e.to_string());
    let mut request = url.into_client_request().map_err(|e| transport(&e))?;
    let (default_port, connector) = match (request.uri().scheme_str(), tls) {
        (Some("ws"), _) => (80, Connector::Plain),
        (Some("wss"), Some(tls)) => (443, Connector::Rustls(tls)),
        _ => {
            return Err(DisconnectReason::Transport(format!(
                "{url}: the sync URL must be ws:// or wss:// with a TLS configuration"
            )));
        }
    };
    let host = request.uri().host().unwrap_or("localhost").to_owned();
    let port = request.uri().port_u16().unwrap_or(default_port);
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|e| transport(&e))?;
    request.headers_mut().insert("authorization", value);
    let connect = async {
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| transport(&e))?;
        tcp.set_nodelay(true).map_err(|e| transport(&e))?;
        let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
        match tokio_tungstenite::client_async_tls_with_config(
            request,
            tcp,
            Some(config),
            Some(connector),
        )
        .await
        {
            Ok((socket, _)) => Ok(socket),
            Err(tungstenite::Error::Http(response)) if response.status().as_u16() == 401 => {
                Err(DisconnectReason::Unauthorized(format!(
                    "the server refused the access token ({})",
                    response.status()
                )))
            }
            Err(e) => Err(match tls::describe(&e) {
                Some(sentence) => DisconnectReason::Tls(sentence),
                None => DisconnectReason::Transport(chain(&e)),
            }),
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| DisconnectReason::Transport("connecting timed out".into()))?
}
