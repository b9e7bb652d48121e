//! Accepting TCP connections and serving HTTP/1.1 on them, WebSocket
//! upgrades included.
//!
//! This is what `axum::serve` does, plus a deadline on request headers:
//! `axum::serve` gives hyper no timer, so a client that opens a connection
//! and sends its request a byte at a time (or nothing at all) holds a socket
//! and a task for as long as it likes, and enough of them exhaust the
//! server's file descriptors (slowloris). Here every connection gets
//! [`Limits::request_header_timeout`](crate::Limits::request_header_timeout)
//! from the accept, and again from the end of each request on a kept-alive
//! connection, to deliver a complete request head; hyper closes it
//! otherwise. Once a connection is upgraded to a WebSocket, the session's
//! own limits (handshake, idle) take over.
//!
//! With a TLS acceptor ([`crate::tls`]) each connection's handshake comes
//! first, within the same deadline as the request head, so a client that
//! opens a connection and never finishes its handshake is cut off the same
//! way.
//!
//! Only HTTP/1.1 is spoken: devices use it for the WebSocket upgrade and the
//! HTTP endpoints; with TLS, ALPN says so.
//!
//! Every connection runs in a `connection` span with its id (counted from 1
//! by this listener) and the remote address: each log line of its TLS
//! handshake, its HTTP requests and the WebSocket session it may become
//! carries them, so one connection can be followed through the log.

use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, error_span};

/// How long to wait before accepting again after `accept` failed (out of
/// file descriptors, most likely): retrying at once would spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serves `app` on every connection `listener` accepts (through `tls` when
/// given) until `stop` is cancelled; then stops accepting, asks every
/// connection still serving HTTP to finish its current request and close,
/// and returns when they have. (Upgraded WebSockets are not connections
/// here any more: their sessions end on their own at shutdown.)
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    request_header_timeout: Duration,
    stop: CancellationToken,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(request_header_timeout);
    let connections = TaskTracker::new();
    let mut connection_id: u64 = 0;
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                error!(error = %e, "accepting a connection failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        // Without TCP_NODELAY, an ack followed by a changes frame waits for
        // the device's delayed ACK (40 ms on Linux): Nagle's algorithm.
        let _ = tcp.set_nodelay(true);
        connection_id += 1;
        // At ERROR level so that the span is on whenever any line is: under
        // `RUST_LOG=warn` an INFO span would be filtered out, and the
        // connection's warnings would lose it.
        let span = error_span!("connection", id = connection_id, remote = %peer);
        let (builder, app, stop) = (builder.clone(), app.clone(), stop.clone());
        match tls.clone() {
            None => connections.spawn(
                serve_connection(builder, TokioIo::new(tcp), app, stop).instrument(span),
            ),
            Some(acceptor) => connections.spawn(async move {
                let handshake = tokio::select! {
                    _ = stop.cancelled() => return,
                    handshake = tokio::time::timeout(request_header_timeout, acceptor.accept(tcp)) => handshake,
                };
                match handshake {
                    Ok(Ok(stream)) => {
                        serve_connection(builder, TokioIo::new(stream), app, stop).await;
                    }
                    // A client that does not trust the certificate, speaks
                    // plain HTTP to the TLS port, or is too slow: its
                    // business, not the server's.
                    Ok(Err(e)) => debug!(error = %e, "a TLS handshake failed"),
                    Err(_) => debug!("a TLS handshake timed out"),
                }
            }
            .instrument(span)),
        };
    }
    connections.close();
    connections.wait().await;
}

/// Serves HTTP/1.1 (and upgrades) on one connection until it ends or
/// `stop` asks it to finish.
async fn serve_connection<I>(
    builder: http1::Builder,
    io: TokioIo<I>,
    app: Router,
    stop: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(app);
    let connection = builder.serve_connection(io, service).with_upgrades();
    let mut connection = std::pin::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        _ = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = served {
        // Timeouts, resets and malformed requests: the client's
        // business, not the server's.
        debug!(error = %e, "an HTTP connection ended with an error");
    }
}
