//! A real tunnel through a Jumpstarter router, all on this machine:
//!
//! ```text
//! cargo run --release --all-features --example tunnel -- [MiB] [--tls]
//! ```
//!
//! It starts, in this process and on loopback,
//! - a router (the crate's `router` service, plaintext or TLS with a self-signed certificate),
//! - a TCP echo server (the "device" behind an exporter),
//! - the exporter side: a `RouterStream` bridged to the echo server with `copy_bidirectional`,
//! - the client side: a local TCP port bridged to a `RouterStream` with `copy_bidirectional`,
//!
//! then pushes MiB megabytes (default 256) through the local port, reads the echo back
//! concurrently, checks every byte with SHA-256, and prints the throughput.

use std::time::{Duration, Instant};

use jumpstarter_router::router::{Auth, Router, ServeConfig, TlsMode};
use jumpstarter_router::ClientBuilder;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BUF: usize = 64 * 1024;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tls = args.iter().any(|a| a == "--tls");
    let mib: u64 = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(256);
    let total = mib * 1024 * 1024;

    // 1. The router.
    let auth = Auth::new(b"demo-key");
    let token = auth.mint("demo-stream", Duration::from_secs(600))?;
    let router = Router::builder(auth).build();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let router_addr = listener.local_addr()?;
    let config = ServeConfig::new(
        router_addr,
        if tls {
            TlsMode::SelfSigned("localhost".into())
        } else {
            TlsMode::Plaintext
        },
    );
    tokio::spawn(router.clone().serve_listener(
        listener,
        config.tls_config()?,
        std::future::pending(),
    ));
    let client = if tls {
        ClientBuilder::new(format!("https://localhost:{}", router_addr.port()))
            .insecure_skip_verify(true)
    } else {
        ClientBuilder::new(format!("http://{router_addr}"))
    };

    // 2. The device: a TCP echo server.
    let echo = TcpListener::bind("127.0.0.1:0").await?;
    let echo_addr = echo.local_addr()?;
    tokio::spawn(async move {
        let (mut s, _) = echo.accept().await?;
        let (mut r, mut w) = s.split();
        tokio::io::copy(&mut r, &mut w).await?;
        w.shutdown().await?;
        Ok::<_, std::io::Error>(())
    });

    // 3. The exporter side: router stream <-> echo server.
    let exporter_client = client.clone();
    let exporter_token = token.clone();
    let exporter = tokio::spawn(async move {
        let mut stream = exporter_client.connect(&exporter_token).await?;
        let mut device = TcpStream::connect(echo_addr).await?;
        device.set_nodelay(true)?;
        tokio::io::copy_bidirectional_with_sizes(&mut device, &mut stream, BUF, BUF).await?;
        stream.close().await?;
        Ok::<_, std::io::Error>(())
    });

    // 4. The client side: a local port <-> router stream (what `connect --listen` does).
    let local = TcpListener::bind("127.0.0.1:0").await?;
    let local_addr = local.local_addr()?;
    let bridge = tokio::spawn(async move {
        let (mut tcp, _) = local.accept().await?;
        tcp.set_nodelay(true)?;
        let mut stream = client.connect(&token).await?;
        tokio::io::copy_bidirectional_with_sizes(&mut tcp, &mut stream, BUF, BUF).await?;
        stream.close().await?;
        Ok::<_, std::io::Error>(())
    });

    // 5. The user: push data through the tunnel and read the echo back.
    println!(
        "router {} on {router_addr}, echo on {echo_addr}, tunnel entrance {local_addr}",
        if tls {
            "(TLS, self-signed)"
        } else {
            "(plaintext)"
        }
    );
    let start = Instant::now();
    let user = TcpStream::connect(local_addr).await?;
    user.set_nodelay(true)?;
    let (mut rd, mut wr) = user.into_split();
    let writer = tokio::spawn(async move {
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; BUF];
        let mut sent = 0u64;
        while sent < total {
            let n = BUF.min((total - sent) as usize);
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = ((sent + i as u64).wrapping_mul(2_654_435_761) >> 13) as u8;
            }
            hash.update(&buf[..n]);
            wr.write_all(&buf[..n]).await?;
            sent += n as u64;
        }
        wr.shutdown().await?;
        Ok::<_, std::io::Error>(hash.finalize())
    });
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; BUF];
    let mut received = 0u64;
    loop {
        let n = rd.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        received += n as u64;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let sent_hash = writer.await??;
    bridge.await??;
    exporter.await??;

    let ok = received == total && hash.finalize() == sent_hash;
    let stats = router.stats();
    println!(
        "{mib} MiB through the router and back in {elapsed:.2} s: {:.0} MiB/s each way; \
         {} bytes forwarded by the router; every byte checked: {}",
        mib as f64 / elapsed,
        stats.bytes_forwarded,
        if ok { "OK" } else { "MISMATCH" }
    );
    if !ok {
        return Err(
            format!("received {received} of {total} bytes, or the checksum differs").into(),
        );
    }
    Ok(())
}
