//! A TCP proxy for fault injection. It forwards connections to an upstream
//! address and can, at any moment:
//!
//! - [`cut`](Proxy::cut) every open connection (both sides closed at once),
//! - [`reset`](Proxy::reset) them abruptly (a TCP RST to both sides, as a
//!   crashed middlebox or a NAT that forgot the flow),
//! - [`half_open`](Proxy::half_open) them: the upstream side is closed
//!   while the client's side stays open and swallows what it sends, as a
//!   server that vanished without a FIN reaching the client,
//! - [`partition`](Proxy::partition) (hold everything, both directions,
//!   closing nothing, as a network that silently drops packets),
//! - add [`latency`](Proxy::set_latency) with jitter to every forwarded
//!   chunk and [`limit the bandwidth`](Proxy::set_bandwidth),
//! - [`heal`](Proxy::heal) (no latency, no limit, no partition),
//! - and switch to another upstream (a restarted server on a new port).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Rng;

/// What the proxy was told to do to its open connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Blow {
    /// Nothing yet.
    None,
    /// Close both sides with RST.
    Reset,
    /// Close the upstream side; keep the client's open and silent.
    HalfOpen,
}

struct State {
    upstream: Mutex<Option<SocketAddr>>,
    connections: Mutex<Vec<JoinHandle<()>>>,
    latency_ms: AtomicU64,
    jitter_ms: AtomicU64,
    bytes_per_sec: AtomicU64,
    accepted: AtomicU64,
    partitioned: AtomicBool,
    /// Each fault that ends open connections sends a new (generation, kind);
    /// a connection acts on any change after it was opened.
    blows: watch::Sender<(u64, Blow)>,
    seed: AtomicU64,
}

impl State {
    /// Waits while the proxy is partitioned.
    async fn pass(&self) {
        while self.partitioned.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// How long to hold a chunk of `bytes` back: the latency with its
    /// jitter, and the time the bandwidth limit gives that many bytes.
    fn hold(&self, rng: &mut Rng, bytes: usize) -> Duration {
        let base = self.latency_ms.load(Ordering::SeqCst);
        let jitter = self.jitter_ms.load(Ordering::SeqCst);
        let mut hold = Duration::from_millis(rng.between(base, base + jitter));
        let rate = self.bytes_per_sec.load(Ordering::SeqCst);
        if let Some(micros) = (bytes as u64).saturating_mul(1_000_000).checked_div(rate) {
            hold += Duration::from_micros(micros);
        }
        hold
    }

    /// The largest chunk to forward at once: small under a bandwidth limit,
    /// so the limit paces the stream rather than releasing it in bursts.
    fn chunk(&self) -> usize {
        let rate = self.bytes_per_sec.load(Ordering::SeqCst);
        if rate == 0 {
            16 * 1024
        } else {
            usize::try_from(rate / 20)
                .unwrap_or(16 * 1024)
                .clamp(64, 16 * 1024)
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
        let state = Arc::new(State {
            upstream: Mutex::new(Some(upstream)),
            connections: Mutex::default(),
            latency_ms: AtomicU64::new(0),
            jitter_ms: AtomicU64::new(0),
            bytes_per_sec: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            partitioned: AtomicBool::new(false),
            blows: watch::Sender::new((0, Blow::None)),
            seed: AtomicU64::new(u64::from(addr.port())),
        });
        let accept_state = Arc::clone(&state);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let number = accept_state.accepted.fetch_add(1, Ordering::SeqCst);
                let state = Arc::clone(&accept_state);
                let task = tokio::spawn(async move {
                    // Subscribed before anything can wait, so a fault that
                    // comes while connecting still reaches this connection.
                    let blows = state.blows.subscribe();
                    state.pass().await;
                    let upstream = *lock(&state.upstream);
                    let Some(upstream) = upstream else { return };
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let seed = state.seed.load(Ordering::SeqCst) ^ number.wrapping_mul(0x9E37);
                    forward(client, server, state, blows, seed).await;
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

    /// Resets every open connection: both sides get a TCP RST, and what
    /// was buffered and not yet sent is lost.
    pub fn reset(&self) {
        self.blow(Blow::Reset);
    }

    /// Makes every open connection half-open: the upstream side is closed
    /// (the server sees the connection end), while the client's side stays
    /// open, forwards nothing and discards what the client sends, until
    /// the client gives up on it. New connections are not affected.
    pub fn half_open(&self) {
        self.blow(Blow::HalfOpen);
    }

    fn blow(&self, blow: Blow) {
        self.state.blows.send_modify(|(generation, kind)| {
            *generation += 1;
            *kind = blow;
        });
    }

    /// Holds each forwarded chunk back by `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.set_latency(delay, Duration::ZERO);
    }

    /// Holds each forwarded chunk back by a random time in
    /// `[base, base + jitter]`, drawn per chunk (from the seed of
    /// [`Proxy::set_seed`]).
    pub fn set_latency(&self, base: Duration, jitter: Duration) {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.state.latency_ms.store(ms(base), Ordering::SeqCst);
        self.state.jitter_ms.store(ms(jitter), Ordering::SeqCst);
    }

    /// Limits each direction of each connection to `bytes_per_sec`
    /// (0: no limit).
    pub fn set_bandwidth(&self, bytes_per_sec: u64) {
        self.state
            .bytes_per_sec
            .store(bytes_per_sec, Ordering::SeqCst);
    }

    /// Starts (`true`) or ends a partition: while it lasts nothing is
    /// forwarded and new connections wait, but nothing is closed, so
    /// neither side notices except by silence.
    pub fn partition(&self, on: bool) {
        self.state.partitioned.store(on, Ordering::SeqCst);
    }

    /// Ends the partition and removes latency and the bandwidth limit.
    /// Connections already reset or half-open stay so.
    pub fn heal(&self) {
        self.partition(false);
        self.set_latency(Duration::ZERO, Duration::ZERO);
        self.set_bandwidth(0);
    }

    /// Seeds the jitter of connections opened from now on.
    pub fn set_seed(&self, seed: u64) {
        self.state.seed.store(seed, Ordering::SeqCst);
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

/// Forwards between `client` and `server` until either side ends or a
/// fault ends the connection.
async fn forward(
    mut client: TcpStream,
    mut server: TcpStream,
    state: Arc<State>,
    mut blows: watch::Receiver<(u64, Blow)>,
    seed: u64,
) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let blow = {
        let (cr, cw) = client.split();
        let (sr, sw) = server.split();
        let up = pump(cr, sw, &state, Rng::new(seed));
        let down = pump(sr, cw, &state, Rng::new(!seed));
        // The receiver was subscribed when the connection was accepted, so
        // it sees the faults sent since (while connecting too), not older.
        let blown = async {
            match blows.changed().await {
                Ok(()) => blows.borrow().1,
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            () = up => Blow::None,
            () = down => Blow::None,
            blow = blown => blow,
        }
    };
    match blow {
        Blow::None => {}
        Blow::Reset => {
            let _ = client.set_zero_linger();
            let _ = server.set_zero_linger();
        }
        Blow::HalfOpen => {
            let _ = server.set_zero_linger();
            drop(server);
            // The client's side stays open: read and discard until the
            // client closes it or the proxy is dropped.
            let mut sink = vec![0u8; 16 * 1024];
            while let Ok(n) = client.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        }
    }
}

async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    state: &State,
    mut rng: Rng,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let size = state.chunk();
        let n = match from.read(&mut buf[..size]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        state.pass().await;
        let hold = state.hold(&mut rng, n);
        if !hold.is_zero() {
            tokio::time::sleep(hold).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
