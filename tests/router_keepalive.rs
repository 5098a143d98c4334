//! HTTP/2 keepalive enforcement, like the Go router: PINGs are welcome with no call open and
//! at most once a second; a client that floods PINGs gets GOAWAY `ENHANCE_YOUR_CALM` and is
//! disconnected.
#![cfg(all(feature = "router", feature = "client"))]

mod support;

use support::*;

type Conn = tokio::task::JoinHandle<Result<(), h2::Error>>;

/// A raw HTTP/2 connection with no stream open. The `SendRequest` must be kept: dropping it
/// makes the h2 client close the connection itself.
async fn h2_client(r: &TestRouter) -> (h2::PingPong, Conn, h2::client::SendRequest<bytes::Bytes>) {
    let tcp = tokio::net::TcpStream::connect(r.addr).await.unwrap();
    let (send, mut conn) = h2::client::handshake(tcp).await.unwrap();
    let pp = conn.ping_pong().unwrap();
    (pp, tokio::spawn(conn), send)
}

/// (Pings once a second for longer, on paused time through the same I/O wrapper:
/// `src/h2io/ping_policy.rs`.)
#[tokio::test]
async fn pings_without_streams_are_answered() {
    let r = TestRouter::start().await;
    let (mut pp, conn, mut send) = h2_client(&r).await;
    for _ in 0..=2 {
        within(5, "pong", pp.ping(h2::Ping::opaque()))
            .await
            .unwrap();
    }
    // The connection is still up: a call on it gets its answer (here: no token).
    within(5, "ready", send.clone().ready()).await.unwrap();
    let req = tonic::codegen::http::Request::post(format!(
        "http://{}/jumpstarter.v1.RouterService/Stream",
        r.addr
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap();
    let (resp, _body) = send.send_request(req, true).unwrap();
    let resp = within(5, "response", resp).await.unwrap();
    let status = resp
        .headers()
        .get("grpc-status")
        .expect("trailers-only refusal");
    assert_eq!(status, "16", "{resp:?}"); // UNAUTHENTICATED
    assert!(
        !conn.is_finished(),
        "the router closed a well-behaved connection"
    );
}

#[tokio::test]
async fn a_ping_flood_closes_the_connection() {
    let r = TestRouter::start().await;
    let (mut pp, conn, _send) = h2_client(&r).await;
    let mut answered = 0;
    for _ in 0..10 {
        match within(5, "pong or close", pp.ping(h2::Ping::opaque())).await {
            Ok(_) => answered += 1,
            Err(_) => break,
        }
    }
    // The first ping and two early ones pass (grpc-go's maxPingStrikes = 2); the 4th closes.
    assert!(answered <= 3, "{answered} rapid pings were answered");
    // The router said why, as grpc-go does: GOAWAY ENHANCE_YOUR_CALM "too_many_pings".
    let ended = within(5, "connection to end", conn).await.unwrap();
    let e = ended.expect_err("the connection ends with the router's GOAWAY");
    assert!(e.is_go_away() && e.is_remote(), "{e:?}");
    assert_eq!(e.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM), "{e:?}");
    // The router itself keeps serving others.
    let tok = token("after-flood");
    let a = jumpstarter_router::connect(&r.endpoint(), &tok)
        .await
        .unwrap();
    r.wait_for("new caller", |s| s.pending == 1).await;
    drop(a);
}
