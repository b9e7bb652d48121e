//! The sync socket: a WebSocket over tokio.
//!
//! tokio-tungstenite over a `TcpStream` with `TCP_NODELAY` (without it a
//! small frame that follows another waits for the peer's delayed ACK,
//! 40 ms on Linux) and a 64 KiB read buffer (tungstenite zeroes its buffer
//! before each read, so its 128 KiB default costs more than the frames
//! need; catch-up pages grow it when larger). A reader task decodes frames
//! on another core while the engine applies earlier ones.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tandem_protocol::{ClientMessage, ServerMessage};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::error::Error;
use crate::sync::access::{Access, CredentialFailure};
use crate::sync::api::chain;
use crate::sync::interface::DisconnectReason;
use crate::sync::tls;

/// The socket's read buffer.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

type WebSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the socket's reader task hands the driver: a decoded frame, or why
/// the connection ended.
pub(super) type Incoming = Result<ServerMessage, DisconnectReason>;

/// Frames decoded ahead of the engine: enough to keep the reader busy
/// while the engine applies a page, few enough to push back on the server.
const DECODED_AHEAD: usize = 4;

/// An open connection: the writing half, and the task that reads and
/// decodes frames on another core while the engine applies earlier ones.
pub(super) struct Socket {
    sink: futures::stream::SplitSink<WebSocket, Message>,
    frames: mpsc::Receiver<Incoming>,
    reader: JoinHandle<()>,
}

impl Socket {
    fn new(socket: WebSocket) -> Socket {
        let (sink, mut stream) = socket.split();
        let (tx, frames) = mpsc::channel(DECODED_AHEAD);
        let reader = tokio::spawn(async move {
            loop {
                let incoming = match stream.next().await {
                    Some(Ok(Message::Text(text))) => {
                        ServerMessage::decode(text.as_str()).map_err(|e| {
                            DisconnectReason::Transport(format!("bad frame from server: {e}"))
                        })
                    }
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
        Socket {
            sink,
            frames,
            reader,
        }
    }

    /// Closes the connection (best effort, within a second).
    pub(super) async fn close(mut self) {
        self.reader.abort();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.sink.close()).await;
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Socket {
    /// Sends one message.
    pub(super) async fn send(&mut self, message: &ClientMessage) -> Result<(), tungstenite::Error> {
        self.sink.send(Message::text(message.encode())).await
    }
}

/// The next frame of the open connection; pending forever without one.
pub(super) async fn next_frame(link: &mut Option<Socket>) -> Incoming {
    match link {
        Some(link) => match link.frames.recv().await {
            Some(incoming) => incoming,
            None => Err(DisconnectReason::Transport("connection closed".into())),
        },
        None => std::future::pending().await,
    }
}

/// The result of opening a connection: the socket and when its access
/// token expires.
pub(super) type Opened = Result<(Socket, u64), DisconnectReason>;

/// Opens the sync socket: credentials first, and once more with renewed
/// credentials if the server refuses the access token.
pub(super) async fn open(access: Arc<Access>) -> Opened {
    let url = access.sync_url.clone();
    let tls = access.tls.clone();
    let (token, expires) = access.access_token().await.map_err(credential_reason)?;
    match open_socket(&url, tls.clone(), &token).await {
        Err(DisconnectReason::Unauthorized(_)) => {
            let fresh = access.renew().await.map_err(credential_reason)?;
            let socket = open_socket(&url, tls, &fresh.access_token).await?;
            Ok((Socket::new(socket), fresh.access_expires_at))
        }
        other => other.map(|socket| (Socket::new(socket), expires)),
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
) -> Result<WebSocket, DisconnectReason> {
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
