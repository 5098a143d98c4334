//! The router's connection settings from Jumpstarter's controller configuration, read from the
//! `jumpstarter-controller` ConfigMap through the Kubernetes API (a stand-in API server here,
//! reached through a kubeconfig) in the form jumpstarter 0.9.0's operator writes it, and each
//! setting observed on the wire by a raw HTTP/2 client: the router's PINGs and their timeout,
//! the ping policy (`minTime`, `permitWithoutStream`), `maxConnectionAge` with its grace, and
//! `maxConnectionIdle`. A malformed value or a missing ConfigMap stops the router with its
//! reason.
//!
//! The settings are short (seconds) so that each case takes a few seconds; the bounds the
//! tests assert are loose for a busy machine, yet far from the defaults (a PING every 10 s,
//! 180 s to answer, pings allowed every second, no idle or age limit).
#![cfg(feature = "kube")]

mod support;

use std::time::Duration;

use support::apiserver::{operator_config, ApiServer, TOKEN};
use support::process::{cmd, Serve};
use support::wire::{Pings, RawH2, DATA, ENHANCE_YOUR_CALM, GOAWAY, NO_ERROR, PING};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NAMESPACE: &str = "jumpstarter-lab";

/// A router (`serve --plaintext`) that read `keepalive` from the stand-in API server's
/// ConfigMap; the API server and the directory of its kubeconfig stay with it.
struct Configured {
    serve: Serve,
    _api: ApiServer,
    _dir: TempDir,
}

async fn configured(name: &str, keepalive: &[(&str, &str)]) -> Configured {
    let api = ApiServer::start(NAMESPACE, Some(operator_config(keepalive))).await;
    let dir = TempDir::new(name);
    let kubeconfig = api.kubeconfig(dir.path());
    let serve = Serve::start(&[
        "--plaintext",
        "--kube-namespace",
        NAMESPACE,
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
    ])
    .await;
    let seen = api.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0].line,
        format!("GET /api/v1/namespaces/{NAMESPACE}/configmaps/jumpstarter-controller HTTP/1.1")
    );
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    Configured {
        serve,
        _api: api,
        _dir: dir,
    }
}

/// `intervalTime: 2s`, `timeout: 3s`: a client that does not answer sees the first PING
/// after about 2 s of quiet, and its connection closed about 3 s later.
#[tokio::test]
async fn the_routers_pings_and_their_timeout_follow_the_configmap() {
    let r = configured("pings", &[("intervalTime", "2s"), ("timeout", "3s")]).await;
    let mut c = RawH2::connect(r.serve.listen, Pings::Ignore).await;
    let first = c.first_ping(15).await;
    assert!(
        (1.5..8.0).contains(&first),
        "first PING after {first:.2} s (intervalTime 2s)"
    );
    let closed = c.closed(30, "the unanswering connection to close").await - first;
    assert!(
        (2.5..20.0).contains(&closed),
        "closed {closed:.2} s after the unanswered PING (timeout 3s)"
    );
}

/// Pings from a client every `every`, each waiting for its ACK; returns how many were
/// answered before a GOAWAY came, and the GOAWAY.
async fn ping_every(
    c: &mut RawH2,
    every: Duration,
    pings: usize,
) -> (usize, Option<(u32, u32, String)>) {
    for i in 0..pings {
        if i > 0 {
            tokio::time::sleep(every).await;
        }
        if c.ping([i as u8; 8]).await.is_err() {
            return (i, None);
        }
        let f = within(
            10,
            "the PING's answer",
            c.until(
                |f| f.ty == PING && f.flags & 1 != 0 || f.ty == GOAWAY,
                |_| {},
            ),
        )
        .await;
        match f {
            Some(f) if f.ty == GOAWAY => return (i, f.goaway()),
            Some(_) => {}
            None => return (i, None),
        }
    }
    (pings, None)
}

/// `minTime: 3s`: pings 1.5 s apart (allowed by the default of 1 s) are strikes; the third
/// strike gets GOAWAY `ENHANCE_YOUR_CALM` "too_many_pings".
#[tokio::test]
async fn a_client_pinging_more_often_than_min_time_gets_enhance_your_calm() {
    let r = configured("min-time", &[("minTime", "3s")]).await;
    let mut c = RawH2::connect(r.serve.listen, Pings::Answer).await;
    let (answered, goaway) = ping_every(&mut c, Duration::from_millis(1500), 6).await;
    let (_, code, debug) = goaway.expect("a GOAWAY for pinging too often");
    assert_eq!(
        (code, debug.as_str()),
        (ENHANCE_YOUR_CALM, "too_many_pings")
    );
    assert_eq!(
        answered, 3,
        "the first ping and two strikes pass, the third strike does not"
    );
}

/// `permitWithoutStream: false` (minTime 1s): with no call open, pings 1.2 s apart are
/// strikes and end with GOAWAY `ENHANCE_YOUR_CALM`; with a call open they are fine.
#[tokio::test]
async fn without_permit_without_stream_only_connections_with_a_call_may_ping() {
    let r = configured("permit", &[("permitWithoutStream", "false")]).await;
    let mut idle = RawH2::connect(r.serve.listen, Pings::Answer).await;
    let mut busy = RawH2::connect(r.serve.listen, Pings::Answer).await;
    busy.open_stream_call(&token("permit-busy")).await;
    let every = Duration::from_millis(1200);
    let ((idle_answered, idle_goaway), (busy_answered, busy_goaway)) = tokio::join!(
        ping_every(&mut idle, every, 6),
        ping_every(&mut busy, every, 5)
    );
    let (_, code, _) = idle_goaway.expect("a GOAWAY for pinging with no call open");
    assert_eq!(code, ENHANCE_YOUR_CALM);
    assert_eq!(idle_answered, 3);
    assert_eq!(
        (busy_answered, busy_goaway),
        (5, None),
        "a connection with a call may ping"
    );
}

/// `maxConnectionAge: 2s`, `maxConnectionAgeGrace: 3s`: a connection with a session on it is
/// sent a GOAWAY at about 2 s, the session goes on both ways, and the connection is closed
/// about 3 s later; the peer is then told its peer is gone (an error, never EOF).
#[tokio::test]
async fn a_connection_past_max_age_gets_a_goaway_and_its_calls_go_on_for_the_grace() {
    let r = configured(
        "age",
        &[("maxConnectionAge", "2s"), ("maxConnectionAgeGrace", "3s")],
    )
    .await;
    let tok = token("age");
    let mut c = RawH2::connect(r.serve.listen, Pings::Answer).await;
    let stream = c.open_stream_call(&tok).await;
    let mut peer = jumpstarter_router::ClientBuilder::new(r.serve.endpoint())
        .connect(&tok)
        .await
        .unwrap();
    let (at, code) = c.goaway(15, "a GOAWAY at the max age").await;
    assert!(
        (1.5..6.0).contains(&at),
        "GOAWAY after {at:.2} s (maxConnectionAge 2s)"
    );
    assert_eq!(code, NO_ERROR);
    // The session goes on, both ways.
    c.send_payload(stream, b"after the goaway").await.unwrap();
    let mut buf = [0u8; 16];
    within(5, "the raw caller's bytes", peer.read_exact(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf, b"after the goaway");
    peer.write_all(b"and back").await.unwrap();
    peer.flush().await.unwrap();
    let back = within(
        5,
        "the peer's bytes",
        c.until(
            |f| f.ty == DATA && f.payload.windows(8).any(|w| w == b"and back"),
            |_| {},
        ),
    )
    .await;
    assert!(back.is_some(), "the peer's bytes after the GOAWAY");
    // Then the grace ends: the connection closes, and the peer is told.
    let closed = c
        .closed(20, "the connection to close after the grace")
        .await;
    assert!(
        (at + 2.0..at + 15.0).contains(&closed),
        "closed {:.2} s after the GOAWAY (maxConnectionAgeGrace 3s)",
        closed - at
    );
    read_to_error(&mut peer, 10, "the peer's error (never EOF)").await;
}

/// `maxConnectionIdle: 2s`: a connection with no call gets a GOAWAY at about 2 s and is
/// closed; one with a call open is left alone until its call ends, then gets its GOAWAY.
#[tokio::test]
async fn a_connection_without_calls_for_max_connection_idle_is_closed() {
    let r = configured("idle", &[("maxConnectionIdle", "2s")]).await;
    let mut idle = RawH2::connect(r.serve.listen, Pings::Answer).await;
    let mut busy = RawH2::connect(r.serve.listen, Pings::Answer).await;
    let stream = busy.open_stream_call(&token("idle-busy")).await;
    let (at, code) = idle.goaway(15, "the idle connection's GOAWAY").await;
    assert!(
        (1.5..6.0).contains(&at),
        "GOAWAY after {at:.2} s (maxConnectionIdle 2s)"
    );
    assert_eq!(code, NO_ERROR);
    idle.closed(10, "the idle connection to close").await;
    // The connection with a call open got nothing of the kind, even now, past its idle time
    // had it been idle.
    tokio::time::sleep_until((busy.start + Duration::from_secs(3)).into()).await;
    assert!(
        !busy.arrived().iter().any(|f| f.ty == GOAWAY),
        "a connection with a call open was sent a GOAWAY"
    );
    let ended = busy.elapsed().as_secs_f64();
    busy.cancel(stream).await.unwrap();
    let (at, _) = busy.goaway(15, "the GOAWAY once its call ended").await;
    let after = at - ended;
    assert!(
        (1.5..6.0).contains(&after),
        "GOAWAY {after:.2} s after the call ended"
    );
}

/// A value the Go router would not parse stops the router with the field and the ConfigMap
/// named; so does a missing ConfigMap. Nothing is served.
#[tokio::test]
async fn a_malformed_or_missing_configmap_stops_the_router_with_its_reason() {
    let malformed = ApiServer::start(NAMESPACE, Some(operator_config(&[("timeout", "ten")]))).await;
    let missing = ApiServer::start(NAMESPACE, None).await;
    for (api, says) in [
        (
            &malformed,
            "grpc.keepalive.timeout: invalid duration \"ten\"",
        ),
        (&missing, "not found"),
    ] {
        let dir = TempDir::new(&format!("bad-{}", api.addr.port()));
        let kubeconfig = api.kubeconfig(dir.path());
        let mut router = cmd(&[
            "serve",
            "--plaintext",
            "--listen",
            "127.0.0.1:0",
            "--kube-namespace",
            NAMESPACE,
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
        ]);
        // The API server answers on this runtime: wait for the process on another thread.
        let out = within(
            30,
            "the router to stop",
            tokio::task::spawn_blocking(move || router.output()),
        )
        .await
        .unwrap()
        .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains(says), "{err}");
        assert!(
            err.contains(&format!("{NAMESPACE}/jumpstarter-controller")),
            "the ConfigMap must be named: {err}"
        );
        assert!(!err.contains("router listening"), "{err}");
    }
}
