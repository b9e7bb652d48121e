//! A TCP proxy for fault injection: it forwards connections to an upstream
//! address and can cut every open connection, delay what it forwards,
//! partition (hold everything, in both directions, without closing
//! anything, as a network that silently drops packets), and switch to
//! another upstream (a restarted server on a new port).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[derive(Default)]
struct State {
    upstream: Mutex<Option<SocketAddr>>,
    connections: Mutex<Vec<JoinHandle<()>>>,
    delay_ms: AtomicU64,
    accepted: AtomicU64,
    partitioned: std::sync::atomic::AtomicBool,
}

impl State {
    /// Waits while the proxy is partitioned.
    async fn pass(&self) {
        while self.partitioned.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running proxy on 127.0.0.1.
pub struct Proxy {
    addr: SocketAddr,
    state: Arc<State>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to `upstream` on a free port.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("proxy bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("proxy addr: {e}"));
        let state = Arc::new(State::default());
        *lock(&state.upstream) = Some(upstream);
        let accept_state = Arc::clone(&state);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                accept_state.accepted.fetch_add(1, Ordering::SeqCst);
                let state = Arc::clone(&accept_state);
                let task = tokio::spawn(async move {
                    state.pass().await;
                    let upstream = *lock(&state.upstream);
                    let Some(upstream) = upstream else { return };
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let up = pump(cr, sw, Arc::clone(&state));
                    let down = pump(sr, cw, Arc::clone(&state));
                    tokio::select! {
                        () = up => {}
                        () = down => {}
                    }
                });
                let mut connections = lock(&accept_state.connections);
                connections.retain(|t| !t.is_finished());
                connections.push(task);
            }
        });
        Proxy {
            addr,
            state,
            accept,
        }
    }

    /// `http://<proxy>`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cuts every open connection (both directions, at once).
    pub fn cut(&self) {
        for task in lock(&self.state.connections).drain(..) {
            task.abort();
        }
    }

    /// Holds each forwarded chunk back by `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.state.delay_ms.store(
            u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }

    /// Starts (`true`) or ends a partition: while it lasts nothing is
    /// forwarded and new connections wait, but nothing is closed, so
    /// neither side notices except by silence.
    pub fn partition(&self, on: bool) {
        self.state.partitioned.store(on, Ordering::SeqCst);
    }

    /// Forwards new connections to `upstream`.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *lock(&self.state.upstream) = Some(upstream);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.state.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: Arc<State>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        state.pass().await;
        let delay = state.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
