//! The router service: pairing, forwarding, half-close and aborts, over loopback.

mod support;

use std::io::ErrorKind;
use std::time::Duration;

use jumpstarter_router::connect;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: u64 = 1024 * 1024;

#[tokio::test]
async fn half_close_through_the_router() {
    let r = TestRouter::start().await;
    let tok = r.token("half-close");
    let mut a = connect(&r.endpoint(), &tok).await.unwrap();
    let mut b = connect(&r.endpoint(), &tok).await.unwrap();

    // A sends a request and finishes.
    let a_task = tokio::spawn(async move {
        let sent = send_pattern(&mut a, MIB, 1, 16 * 1024).await.unwrap();
        a.shutdown().await.unwrap();
        // ... and still receives all of B's answer after its own shutdown.
        let (n, sha) = recv_all(&mut a).await.unwrap();
        (sent, n, sha)
    });
    // B reads to EOF, then sends 16 MiB, then finishes.
    let (n, sha) = within(30, "B reads A", recv_all(&mut b)).await.unwrap();
    assert_eq!((n, sha), (MIB, pattern_sha(MIB, 1)));
    let b_sent = send_pattern(&mut b, 16 * MIB, 2, 64 * 1024).await.unwrap();
    b.shutdown().await.unwrap();
    let (_, a_n, a_sha) = within(30, "A reads B", a_task).await.unwrap();
    assert_eq!(a_n, 16 * MIB);
    assert_eq!(a_sha, b_sent);
    r.wait_for("pair to end", |s| s.active == 0).await;
    let s = r.router.stats();
    assert_eq!(s.pairs_total, 1);
    assert_eq!(
        s.aborts_total, 0,
        "a clean session counted as an abort: {s:?}"
    );
    assert!(s.bytes_forwarded >= 17 * MIB);
}

#[tokio::test]
async fn lone_caller_leaving_empties_the_pending_table() {
    let r = TestRouter::start().await;
    let tok = r.token("lonely");
    let a = connect(&r.endpoint(), &tok).await.unwrap();
    r.wait_for("caller to wait", |s| s.pending == 1).await;
    drop(a);
    r.wait_for("pending table to empty", |s| s.pending == 0)
        .await;
}

#[tokio::test]
async fn peer_abort_is_an_error_not_eof() {
    let r = TestRouter::start().await;
    let tok = r.token("abort");
    let mut a = connect(&r.endpoint(), &tok).await.unwrap();
    let mut b = connect(&r.endpoint(), &tok).await.unwrap();
    a.write_all(b"hello").await.unwrap();
    a.flush().await.unwrap();
    let mut buf = [0u8; 5];
    within(10, "first bytes", b.read_exact(&mut buf))
        .await
        .unwrap();
    drop(a); // no shutdown: abort
    let err = within(5, "abort to reach B", async {
        let mut rest = Vec::new();
        b.read_to_end(&mut rest).await
    })
    .await
    .unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::UnexpectedEof
        ),
        "unexpected error kind: {err:?}"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
}
