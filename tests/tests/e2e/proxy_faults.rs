//! The fault proxy does what the soak relies on: against a plain TCP echo
//! server on 127.0.0.1, a reset reaches the client as a connection reset,
//! a half-open connection ends on the server's side while the client's
//! side stays open and silent, a partition holds bytes until it heals,
//! latency and the bandwidth limit hold the stream back at least as long
//! as they say, and healing restores prompt forwarding.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tandem_e2e::{PATIENCE, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// An echo server; it reports each connection's end (`true`: closed by
/// the peer or reset, seen as a read of 0 bytes or an error).
async fn echo() -> (SocketAddr, mpsc::UnboundedReceiver<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (ended, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let ended = ended.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = ended.send(true);
            });
        }
    });
    (addr, rx)
}

async fn connect(proxy: &Proxy) -> TcpStream {
    let addr = proxy.http_url().trim_start_matches("http://").to_owned();
    TcpStream::connect(addr).await.unwrap()
}

/// Sends `bytes` and reads them back; returns how long it took.
async fn round_trip(stream: &mut TcpStream, bytes: usize) -> Duration {
    let started = Instant::now();
    let data = vec![7u8; bytes];
    let (mut reader, mut writer) = stream.split();
    let send = async { writer.write_all(&data).await.unwrap() };
    let receive = async {
        let mut got = vec![0u8; bytes];
        reader.read_exact(&mut got).await.unwrap();
    };
    tokio::join!(send, receive);
    started.elapsed()
}

#[tokio::test]
async fn reset_reaches_the_client_as_a_connection_reset() {
    let (upstream, mut ended) = echo().await;
    let proxy = Proxy::start(upstream).await;
    let mut stream = connect(&proxy).await;
    round_trip(&mut stream, 10).await;
    proxy.reset();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
        .await
        .unwrap();
    let error = read.expect_err("a reset is an error, not an orderly end");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
    tokio::time::timeout(PATIENCE, ended.recv()).await.unwrap();
    // New connections are not affected.
    let mut again = connect(&proxy).await;
    round_trip(&mut again, 10).await;
}

#[tokio::test]
async fn half_open_ends_the_server_side_and_leaves_the_client_in_silence() {
    let (upstream, mut ended) = echo().await;
    let proxy = Proxy::start(upstream).await;
    let mut stream = connect(&proxy).await;
    round_trip(&mut stream, 10).await;
    proxy.half_open();
    tokio::time::timeout(PATIENCE, ended.recv()).await.unwrap();
    // The client can still write, and hears nothing.
    stream.write_all(b"anyone there?").await.unwrap();
    let mut buf = [0u8; 16];
    let silent = tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await;
    assert!(silent.is_err(), "the client heard {silent:?}");
    let mut again = connect(&proxy).await;
    round_trip(&mut again, 10).await;
}

#[tokio::test]
async fn a_partition_holds_bytes_until_it_heals() {
    let (upstream, _ended) = echo().await;
    let proxy = Proxy::start(upstream).await;
    let mut stream = connect(&proxy).await;
    round_trip(&mut stream, 10).await;
    proxy.partition(true);
    stream.write_all(b"held").await.unwrap();
    let mut buf = [0u8; 4];
    let held = tokio::time::timeout(Duration::from_millis(500), stream.read_exact(&mut buf)).await;
    assert!(held.is_err(), "forwarded during a partition");
    proxy.heal();
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"held");
}

#[tokio::test]
async fn latency_and_bandwidth_hold_the_stream_back_until_healed() {
    let (upstream, _ended) = echo().await;
    let proxy = Proxy::start(upstream).await;
    let mut stream = connect(&proxy).await;

    // Each chunk waits 100 to 150 ms each way.
    proxy.set_latency(Duration::from_millis(100), Duration::from_millis(50));
    let slow = round_trip(&mut stream, 10).await;
    assert!(slow >= Duration::from_millis(200), "round trip {slow:?}");

    // 8 KiB at 4 KiB/s, each way: at least 2 s (each direction is paced
    // on its own, and they overlap).
    proxy.set_latency(Duration::ZERO, Duration::ZERO);
    proxy.set_bandwidth(4 * 1024);
    let limited = round_trip(&mut stream, 8 * 1024).await;
    assert!(
        limited >= Duration::from_millis(1_900),
        "8 KiB in {limited:?}"
    );

    // Healed, 64 KiB goes through at once: at 4 KiB/s it would take at
    // least 16 s.
    proxy.heal();
    let healed = round_trip(&mut stream, 64 * 1024).await;
    assert!(
        healed < Duration::from_secs(16),
        "healed {healed:?}, limited {limited:?}"
    );
}
