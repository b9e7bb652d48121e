//! A raw WebSocket client that speaks the sync protocol.

use std::collections::{BTreeMap, VecDeque};

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tandem_protocol::wire::{Ack, Changes, ErrorMessage, Hello, Push, Welcome};
use tandem_protocol::{
    ClientMessage, DeviceId, ErrorCode, Mutation, PROTOCOL_VERSION, ServerMessage, SpaceId,
};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::PATIENCE;
use crate::replica::Replica;

/// Why a connection could not be opened.
#[derive(Debug)]
pub enum WsError {
    /// The server answered the upgrade request with an HTTP error.
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The body (JSON if it was JSON).
        body: Value,
    },
    /// Anything else.
    Other(String),
}

/// A protocol client over one WebSocket connection.
pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    stash: VecDeque<ServerMessage>,
    largest_frame: usize,
}

impl WsClient {
    /// Opens `/v1/sync` at `url` with `Authorization: Bearer <token>` (no
    /// header if `token` is `None`).
    pub async fn connect(url: &str, token: Option<&str>) -> Result<WsClient, WsError> {
        Self::connect_with(url, token, None).await
    }

    /// Opens `/v1/sync` like [`WsClient::connect`], refusing (as a broken
    /// connection) any frame or message longer than `max_bytes`: a client
    /// that honours the frame limit the server announces.
    pub async fn connect_limited(url: &str, token: &str, max_bytes: usize) -> WsClient {
        let config = WebSocketConfig::default()
            .max_frame_size(Some(max_bytes))
            .max_message_size(Some(max_bytes));
        match Self::connect_with(url, Some(token), Some(config)).await {
            Ok(client) => client,
            Err(e) => panic!("connecting to {url} failed: {e:?}"),
        }
    }

    async fn connect_with(
        url: &str,
        token: Option<&str>,
        config: Option<WebSocketConfig>,
    ) -> Result<WsClient, WsError> {
        let mut request = url
            .into_client_request()
            .map_err(|e| WsError::Other(e.to_string()))?;
        if let Some(token) = token {
            let value = format!("Bearer {token}").parse().map_err(
                |e: tungstenite::http::header::InvalidHeaderValue| WsError::Other(e.to_string()),
            )?;
            request.headers_mut().insert("authorization", value);
        }
        let connected = tokio::time::timeout(
            PATIENCE,
            tokio_tungstenite::connect_async_with_config(request, config, false),
        )
        .await
        .map_err(|_| WsError::Other("connect timed out".into()))?;
        match connected {
            Ok((ws, _)) => Ok(WsClient {
                ws,
                stash: VecDeque::new(),
                largest_frame: 0,
            }),
            Err(tungstenite::Error::Http(response)) => {
                let status = response.status().as_u16();
                let body = response
                    .body()
                    .as_ref()
                    .map(|b| {
                        serde_json::from_slice(b)
                            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(b).into()))
                    })
                    .unwrap_or(Value::Null);
                Err(WsError::Rejected { status, body })
            }
            Err(e) => Err(WsError::Other(e.to_string())),
        }
    }

    /// Opens `/v1/sync` and panics if that fails.
    pub async fn connect_ok(url: &str, token: &str) -> WsClient {
        match Self::connect(url, Some(token)).await {
            Ok(client) => client,
            Err(e) => panic!("connecting to {url} failed: {e:?}"),
        }
    }

    /// Sends a protocol message.
    pub async fn send(&mut self, message: &ClientMessage) {
        self.send_text(message.encode()).await;
    }

    /// Sends any text frame.
    pub async fn send_text(&mut self, text: impl Into<String>) {
        let text: String = text.into();
        self.send_raw(Message::text(text)).await;
    }

    /// Sends any frame; a failure (the server closed) is ignored, the next
    /// read shows it.
    pub async fn send_raw(&mut self, message: Message) {
        let _ = tokio::time::timeout(PATIENCE, self.ws.send(message)).await;
    }

    /// The next protocol message, or `None` once the connection is closed.
    /// Fails the test if nothing arrives in time or a frame is not a valid
    /// server message.
    pub async fn recv(&mut self) -> Option<ServerMessage> {
        if let Some(message) = self.stash.pop_front() {
            return Some(message);
        }
        self.read().await
    }

    async fn read(&mut self) -> Option<ServerMessage> {
        loop {
            let frame = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no message from the server in {PATIENCE:?}"));
            match frame {
                None | Some(Err(_)) => return None,
                Some(Ok(Message::Text(text))) => {
                    self.largest_frame = self.largest_frame.max(text.len());
                    return Some(ServerMessage::decode(&text).unwrap_or_else(|e| {
                        panic!("the server sent an invalid message ({e}): {text}")
                    }));
                }
                Some(Ok(Message::Close(_))) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next message that `want` accepts; others are kept for later
    /// `recv` calls. Panics if the connection closes first.
    pub async fn recv_matching(
        &mut self,
        what: &str,
        want: impl Fn(&ServerMessage) -> bool,
    ) -> ServerMessage {
        if let Some(i) = self.stash.iter().position(&want)
            && let Some(message) = self.stash.remove(i)
        {
            return message;
        }
        loop {
            match self.read().await {
                Some(message) if want(&message) => return message,
                Some(message) => self.stash.push_back(message),
                None => panic!("the connection closed while waiting for {what}"),
            }
        }
    }

    /// Sends `hello` with `cursors` and returns the `welcome`.
    pub async fn hello(&mut self, device: &str, cursors: BTreeMap<SpaceId, u64>) -> Welcome {
        self.send(&ClientMessage::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            device_id: DeviceId::new(device).unwrap_or_else(|e| panic!("{e}")),
            cursors,
        }))
        .await;
        match self.recv().await {
            Some(ServerMessage::Welcome(welcome)) => welcome,
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    /// Sends a push and waits for its `ack` (other messages are kept).
    pub async fn push(&mut self, batch_id: u64, mutations: Vec<Mutation>) -> Ack {
        self.send(&ClientMessage::Push(Push {
            batch_id,
            mutations,
        }))
        .await;
        self.ack(batch_id).await
    }

    /// Waits for the `ack` of `batch_id`.
    pub async fn ack(&mut self, batch_id: u64) -> Ack {
        let message = self
            .recv_matching("an ack", |m| {
                matches!(m, ServerMessage::Ack(a) if a.batch_id == batch_id)
                    || matches!(m, ServerMessage::Error(e) if e.batch_id == Some(batch_id) || e.fatal)
            })
            .await;
        match message {
            ServerMessage::Ack(ack) => ack,
            other => panic!("expected the ack of batch {batch_id}, got {other:?}"),
        }
    }

    /// Waits for an `error` with `code`.
    pub async fn error(&mut self, code: ErrorCode) -> ErrorMessage {
        let message = self
            .recv_matching(
                &format!("error {}", code.as_str()),
                |m| matches!(m, ServerMessage::Error(e) if e.code == code),
            )
            .await;
        match message {
            ServerMessage::Error(e) => e,
            _ => unreachable!(),
        }
    }

    /// The length of the longest text frame received so far, in bytes.
    pub fn largest_frame(&self) -> usize {
        self.largest_frame
    }

    /// The messages received but not yet taken by `recv` or a `recv_*`
    /// call, oldest first; they are taken now.
    pub fn take_unclaimed(&mut self) -> Vec<ServerMessage> {
        self.stash.drain(..).collect()
    }

    /// Reads until the server closes the connection and returns every
    /// message it sent before closing.
    pub async fn until_closed(&mut self) -> Vec<ServerMessage> {
        let mut seen: Vec<ServerMessage> = self.stash.drain(..).collect();
        while let Some(message) = self.read().await {
            seen.push(message);
        }
        seen
    }

    /// Waits for the next `changes` message of `space`.
    pub async fn changes(&mut self, space: &SpaceId) -> Changes {
        let message = self
            .recv_matching(
                "changes",
                |m| matches!(m, ServerMessage::Changes(c) if &c.space == space),
            )
            .await;
        match message {
            ServerMessage::Changes(c) => c,
            _ => unreachable!(),
        }
    }

    /// Applies `changes` messages to `replica` until every space in `spaces`
    /// has had a final page (`more: false`) and, if `min_revs` names a
    /// revision, the replica's cursor has reached it. Other messages are kept.
    pub async fn sync_into(
        &mut self,
        replica: &mut Replica,
        spaces: &[SpaceId],
        min_revs: &BTreeMap<SpaceId, u64>,
    ) {
        let mut final_seen: std::collections::BTreeSet<SpaceId> = Default::default();
        loop {
            let done = spaces.iter().all(|s| {
                final_seen.contains(s) && replica.cursor(s) >= min_revs.get(s).copied().unwrap_or(0)
            });
            if done {
                return;
            }
            let message = self
                .recv_matching("changes", |m| matches!(m, ServerMessage::Changes(_)))
                .await;
            if let ServerMessage::Changes(changes) = message {
                if !changes.more {
                    final_seen.insert(changes.space.clone());
                }
                replica
                    .apply(&changes)
                    .unwrap_or_else(|e| panic!("applying changes failed: {e}"));
            }
        }
    }

    /// Closes the connection.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(PATIENCE, self.ws.close(None)).await;
    }
}
