//! Interop with the real Jumpstarter Python peers (jumpstarter 0.9.0 from PyPI): their
//! `RouterStream` and `forward_stream`, driven by `tests/interop/harness.py` in a venv under
//! `target/interop-venv` (made on first use by `tests/interop/setup_venv.sh`).
//!
//! Tokens come from outside the crate: the harness mints them with PyJWT in the form
//! Jumpstarter's controller issues (`aud` as an array, a `jti`). The TLS cases use certificates
//! the harness makes with Python's `cryptography`, and Jumpstarter's own client TLS setup.
//!
//! With `JUMPSTARTER_ROUTER_SKIP_INTEROP=1` these tests are `ignored` (build.rs's
//! `skip_interop`); otherwise a missing Python fails them with a message that says what to
//! install.
#![cfg(all(feature = "router", feature = "client"))]

#[cfg(feature = "cli")]
use support::process;
mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use jumpstarter_router::proto::router_service_server::RouterService;
use jumpstarter_router::proto::StreamRequest;
use jumpstarter_router::{connect, ResponseStream, RouterStream};
use serde_json::Value;
use support::python::{self, python, Py};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status, Streaming};

const MIB: u64 = 1024 * 1024;
/// Bytes each way in the checksummed cases.
const SIZE: u64 = 16 * MIB;

// ===== the harness =====

/// `harness.py` with `args` (its JSON lines read as events).
fn harness(py: &Path, args: &[&str]) -> Py {
    Py::spawn(py, "harness.py", args, false)
}

/// A Python `RouterStream` peer (`harness.py peer`): sends `send` pattern bytes with `seed`,
/// `order` `send-first` or `recv-first`; with `hold`, it stops after sending (until killed).
fn peer(py: &Path, ep: &str, tok: &str, send: &str, seed: &str, order: &str, hold: bool) -> Py {
    let mut args = vec![
        "peer",
        "--endpoint",
        ep,
        "--token",
        tok,
        "--send",
        send,
        "--seed",
        seed,
        "--order",
        order,
    ];
    if hold {
        args.push("--hold-after-send");
    }
    harness(py, &args)
}

/// A token for `stream` minted by the harness with PyJWT in the controller's form.
async fn py_token(py: &Path, stream: &str) -> String {
    let mut p = harness(py, &["token", "--key", KEY, "--stream", stream]);
    let v = p.next_of(&["token", "error"], 60).await;
    v["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token from the harness: {v}"))
        .to_string()
}

fn size_arg() -> String {
    SIZE.to_string()
}

/// Asserts a harness `done` line: it sent `SIZE` pattern bytes with `sent_seed` and received
/// `SIZE` pattern bytes with `recv_seed`.
fn assert_done(v: &Value, sent_seed: u64, recv_seed: u64) {
    assert_eq!(v["event"], "done", "{v}");
    assert_eq!(v["sent"].as_u64(), Some(SIZE), "{v}");
    assert_eq!(
        v["sent_sha256"].as_str(),
        Some(pattern_sha(SIZE, sent_seed).as_str()),
        "{v}"
    );
    assert_eq!(v["received"].as_u64(), Some(SIZE), "{v}");
    assert_eq!(
        v["received_sha256"].as_str(),
        Some(pattern_sha(SIZE, recv_seed).as_str()),
        "{v}"
    );
}

/// Our side of the half-close exchange: `first` sends then reads; otherwise reads to EOF,
/// then sends. Returns what it received as (bytes, sha).
async fn our_peer(
    mut s: RouterStream,
    send_first: bool,
    seed: u64,
) -> std::io::Result<(u64, String)> {
    let got = if send_first {
        send_pattern(&mut s, SIZE, seed, 64 * 1024).await?;
        s.shutdown().await?;
        recv_all(&mut s).await?
    } else {
        let got = recv_all(&mut s).await?;
        send_pattern(&mut s, SIZE, seed, 64 * 1024).await?;
        s.shutdown().await?;
        got
    };
    s.close().await?;
    Ok(got)
}

/// Unwraps our side's result; on an error, shows what the Python peer reported as well.
async fn ok_or_report<T>(r: std::io::Result<T>, peer: &mut Py) -> T {
    match r {
        Ok(v) => v,
        Err(e) => {
            let mut said = Vec::new();
            while let Some((v, _)) = peer.try_wait_for(Duration::from_secs(5), |_| true).await {
                said.push(v.to_string());
            }
            panic!(
                "our side failed: {e:?}; the Python peer said: {said:?}\n{}",
                peer.stderr()
            )
        }
    }
}

/// The Python router (RouterStream + forward_stream) on a free port.
async fn python_router(py: &Path) -> (Py, String) {
    let mut router = harness(py, &["router", "--listen", "127.0.0.1:0"]);
    let v = router.next_of(&["listening"], 60).await;
    let port = v["port"].as_u64().expect("port");
    (router, format!("127.0.0.1:{port}"))
}

// ===== a. two Python peers through our router =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(skip_interop, ignore = "JUMPSTARTER_ROUTER_SKIP_INTEROP is set")]
async fn a_two_python_peers_through_our_router() {
    let py = python();
    let r = TestRouter::start().await;
    // Each peer mints its own token with PyJWT (controller form, its own `jti`).
    let ep = r.addr.to_string();
    let size = size_arg();
    let minted = |seed: &'static str, order: &'static str| {
        harness(
            py,
            &[
                "peer",
                "--endpoint",
                &ep,
                "--key",
                KEY,
                "--stream",
                "interop-a",
                "--send",
                &size,
                "--seed",
                seed,
                "--order",
                order,
            ],
        )
    };
    let mut first = minted("1", "send-first");
    let mut second = minted("2", "recv-first");
    let a = first.next_of(&["done", "error"], 120).await;
    let b = second.next_of(&["done", "error"], 120).await;
    assert_done(&a, 1, 2);
    assert_done(&b, 2, 1);
    // Our router ends clean sessions with OK.
    assert_eq!(a["status"], "OK", "{a}");
    assert_eq!(b["status"], "OK", "{b}");
    r.wait_for("pair to end", |s| s.active == 0).await;
    assert_eq!(r.router.stats().pairs_total, 1);
}

// ===== b. a Python peer and our client through our router =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(skip_interop, ignore = "JUMPSTARTER_ROUTER_SKIP_INTEROP is set")]
async fn b_python_peer_and_our_client_through_our_router() {
    let py = python();
    let r = TestRouter::start().await;
    let size = size_arg();
    // Both orders: the Python peer finishes first, then ours does.
    for (i, python_sends_first) in [true, false].into_iter().enumerate() {
        let tok = py_token(py, &format!("interop-b-{i}")).await;
        let order = if python_sends_first {
            "send-first"
        } else {
            "recv-first"
        };
        let mut peer = peer(py, &r.addr.to_string(), &tok, &size, "3", order, false);
        let ours = connect(&r.endpoint(), &tok).await.unwrap();
        let got = within(120, "our side", our_peer(ours, !python_sends_first, 4)).await;
        let got = ok_or_report(got, &mut peer).await;
        assert_eq!(got, (SIZE, pattern_sha(SIZE, 3)));
        assert_done(&peer.next_of(&["done", "error"], 120).await, 3, 4);
    }
}

/// Frame transparency seen by two grpc-core clients: every frame one writes reaches the other
/// unchanged and in order (empty DATA, PING with and without payload, an unknown type,
/// RST_STREAM and DATA after it), both ways, and both calls end with OK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(skip_interop, ignore = "JUMPSTARTER_ROUTER_SKIP_INTEROP is set")]
async fn a_raw_python_frames_pass_our_router_unchanged() {
    let py = python();
    let r = TestRouter::start().await;
    let ep = r.addr.to_string();
    let raw = |frames: &str| {
        harness(
            py,
            &[
                "raw-client",
                "--endpoint",
                &ep,
                "--key",
                KEY,
                "--stream",
                "raw-frames",
                "--frames",
                frames,
            ],
        )
    };
    let (mut a, mut b) = (raw(python::RAW_FRAMES[0]), raw(python::RAW_FRAMES[1]));
    a.assert_raw_frames_crossed(&mut b, "our router").await;
    r.wait_for("the pair to end", |s| s.active == 0).await;
    assert_eq!(r.router.stats().aborts_total, 0);
}

/// Eight Python peers in four concurrent pairs, at 1 KiB and 64 KiB writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(skip_interop, ignore = "JUMPSTARTER_ROUTER_SKIP_INTEROP is set")]
async fn a_concurrent_python_pairs_at_two_write_sizes() {
    let py = python();
    let r = TestRouter::start().await;
    let ep = r.addr.to_string();
    let size = (4 * MIB).to_string();
    let mut peers = Vec::new();
    for i in 0..4u64 {
        let stream = format!("concurrent-{i}");
        let chunk = if i % 2 == 0 { "1024" } else { "65536" };
        for (seed, order) in [(2 * i + 100, "send-first"), (2 * i + 101, "recv-first")] {
            let seed = seed.to_string();
            let args = [
                "peer",
                "--endpoint",
                &ep,
                "--key",
                KEY,
                "--stream",
                &stream,
                "--send",
                &size,
                "--seed",
                &seed,
                "--order",
                order,
                "--chunk",
                chunk,
            ];
            peers.push(harness(py, &args));
        }
    }
    for (i, p) in peers.iter_mut().enumerate() {
        let v = p.next_of(&["done", "error"], 120).await;
        let (me, other) = (i as u64 + 100, (i as u64 ^ 1) + 100);
        assert_eq!(v["event"], "done", "{v}");
        assert_eq!(
            v["sent_sha256"].as_str(),
            Some(pattern_sha(4 * MIB, me).as_str())
        );
        assert_eq!(
            v["received_sha256"].as_str(),
            Some(pattern_sha(4 * MIB, other).as_str())
        );
        assert_eq!(v["status"], "OK", "{v}");
    }
    r.wait_for("all pairs to end", |s| s.active == 0).await;
    assert_eq!(r.router.stats().pairs_total, 4);
}

// ===== c. our streams through a router made of Jumpstarter's Python pieces =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(skip_interop, ignore = "JUMPSTARTER_ROUTER_SKIP_INTEROP is set")]
async fn c_our_streams_through_the_python_router() {
    let py = python();
    let (_router, ep) = python_router(py).await;
    let tok = py_token(py, "interop-c").await;
    let a = connect(&format!("http://{ep}"), &tok).await.unwrap();
    let b = connect(&format!("http://{ep}"), &tok).await.unwrap();
    let (got_a, got_b) = within(120, "through the Python router", async {
        tokio::join!(our_peer(a, true, 5), our_peer(b, false, 6))
    })
    .await;
    let (got_a, got_b) = (got_a.unwrap(), got_b.unwrap());
    assert_eq!(got_a, (SIZE, pattern_sha(SIZE, 6)));
    assert_eq!(got_b, (SIZE, pattern_sha(SIZE, 5)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(skip_interop, ignore = "JUMPSTARTER_ROUTER_SKIP_INTEROP is set")]
async fn c_python_peer_and_our_client_through_the_python_router() {
    let py = python();
    let (_router, ep) = python_router(py).await;
    let tok = py_token(py, "interop-c2").await;
    let size = size_arg();
    let mut peer = peer(py, &ep, &tok, &size, "7", "send-first", false);
    let ours = connect(&format!("http://{ep}"), &tok).await.unwrap();
    // A clean Python session ends with ABORTED after two GOAWAYs: still a clean EOF here.
    let got = within(120, "our side", our_peer(ours, false, 8)).await;
    let got = ok_or_report(got, &mut peer).await;
    assert_eq!(got, (SIZE, pattern_sha(SIZE, 7)));
    let done = peer.next_of(&["done", "error"], 120).await;
    assert_done(&done, 7, 8);
    // The Python router ended the session as Jumpstarter's Python pieces do: ABORTED after
    // two GOAWAYs. Our side above read it as a clean EOF with every byte.
    assert_eq!(done["status"], "ABORTED", "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(skip_interop, ignore = "JUMPSTARTER_ROUTER_SKIP_INTEROP is set")]
async fn c_ping_and_unknown_frames_arrive_as_empty_data_and_are_skipped() {
    let py = python();
    let (_router, ep) = python_router(py).await;
    let tok = py_token(py, "interop-frames").await;
    let mut ours = connect(&format!("http://{ep}"), &tok).await.unwrap();
    let mut raw = harness(
        py,
        &[
            "raw-client",
            "--endpoint",
            &ep,
            "--token",
            &tok,
            "--frames",
            "ping,data:hello,unknown9:xyz,ping,data: world,goaway",
        ],
    );
    let mut got = Vec::new();
    within(
        30,
        "frames through the Python router",
        ours.read_to_end(&mut got),
    )
    .await
    .unwrap();
    assert_eq!(
        got, b"hello world",
        "empty DATA must not end the stream early"
    );
    ours.shutdown().await.unwrap();
    let _ = raw.next_of(&["end"], 30).await;
}

// ===== d. our servicer answering a Python client directly (the exporter case) =====

/// An exporter: our servicer-side stream, doing the half-close exchange with each caller.
struct Exporter {
    send_first: bool,
    seed: u64,
    results: mpsc::UnboundedSender<std::io::Result<(u64, String)>>,
}

#[tonic::async_trait]
impl RouterService for Exporter {
    type StreamStream = ResponseStream;

    async fn stream(
        &self,
        request: Request<Streaming<StreamRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let (s, response) = RouterStream::accept(request.into_inner());
        let (send_first, seed, results) = (self.send_first, self.seed, self.results.clone());
        tokio::spawn(async move {
            let _ = results.send(our_peer(s, send_first, seed).await);
        });
        Ok(Response::new(response))
    }
}

/// An [`Exporter`] on 127.0.0.1: its address, its results, and the sender that stops it when
/// dropped.
async fn exporter(
    send_first: bool,
    seed: u64,
) -> (
    String,
    mpsc::UnboundedReceiver<std::io::Result<(u64, String)>>,
    oneshot::Sender<()>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (addr, stop) = raw::serve(Exporter {
        send_first,
        seed,
        results: tx,
    })
    .await;
    (addr.to_string(), rx, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(skip_interop, ignore = "JUMPSTARTER_ROUTER_SKIP_INTEROP is set")]
async fn d_our_servicer_answers_a_python_client() {
    let py = python();
    let size = size_arg();
    for (python_sends_first, py_seed, our_seed) in [(true, 9, 10), (false, 11, 12)] {
        let (ep, mut results, _stop) = exporter(!python_sends_first, our_seed).await;
        let order = if python_sends_first {
            "send-first"
        } else {
            "recv-first"
        };
        let mut peer = peer(py, &ep, "direct", &size, &py_seed.to_string(), order, false);
        let got = within(120, "our servicer", results.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, (SIZE, pattern_sha(SIZE, py_seed)));
        assert_done(
            &peer.next_of(&["done", "error"], 120).await,
            py_seed,
            our_seed,
        );
    }
}

// ===== a Python peer killed mid-stream =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(skip_interop, ignore = "JUMPSTARTER_ROUTER_SKIP_INTEROP is set")]
async fn killed_python_peer_is_an_error_through_our_router() {
    let py = python();
    let r = TestRouter::start().await;
    let tok = py_token(py, "interop-kill").await;
    let mut peer = peer(
        py,
        &r.addr.to_string(),
        &tok,
        &(4 * MIB).to_string(),
        "13",
        "send-first",
        true,
    );
    let mut ours = connect(&r.endpoint(), &tok).await.unwrap();
    let mut buf = vec![0u8; 4 * MIB as usize];
    within(60, "the peer's bytes", ours.read_exact(&mut buf))
        .await
        .unwrap();
    let _ = peer.next_of(&["sent"], 30).await;
    peer.kill();
    let err = read_to_error(&mut ours, 5, "a killed Python peer").await;
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionAborted, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(skip_interop, ignore = "JUMPSTARTER_ROUTER_SKIP_INTEROP is set")]
async fn killed_python_client_is_an_error_at_our_servicer() {
    let py = python();
    let (ep, mut results, _stop) = exporter(false, 14).await;
    let mut peer = peer(
        py,
        &ep,
        "direct",
        &(4 * MIB).to_string(),
        "15",
        "send-first",
        true,
    );
    let _ = peer.next_of(&["sent"], 60).await;
    peer.kill();
    let r = within(10, "servicer result", results.recv()).await.unwrap();
    let err = r.expect_err("a killed Python client looked like a clean EOF");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::ConnectionReset
        ),
        "{err:?}"
    );
}

// ===== refused callers: a grpc-core client always learns why =====

/// The cases `harness.py bad-tokens` tries, and the status message each must get.
const BAD_TOKEN_CASES: &[(&str, &str)] = &[
    ("wrong key", "invalid jwt token"),
    ("alg none", "invalid jwt token"),
    ("RS256", "invalid jwt token"),
    ("ES256", "invalid jwt token"),
    ("wrong iss", "invalid jwt token"),
    ("aud array without ours", "invalid jwt token"),
    ("wrong aud string", "invalid jwt token"),
    ("expired", "invalid jwt token"),
    ("nbf in the future", "invalid jwt token"),
    ("iat in the future", "invalid jwt token"),
    ("empty subject", "invalid jwt token"),
    ("malformed", "invalid jwt token"),
    (
        "missing header",
        "expected exactly one authorization header",
    ),
    (
        "duplicated header",
        "expected exactly one authorization header",
    ),
    ("not bearer", "malformed authorization header"),
];

/// Runs `harness.py bad-tokens` (each case 20 times: open a call, write the first message,
/// read) against `endpoint` and asserts every answer was `UNAUTHENTICATED` with the case's
/// message: never `INTERNAL` "Internal error from Core" (a write failing under a reset).
async fn assert_bad_tokens_refused(py: &Path, endpoint: &str, tls: &[&str]) {
    let mut args = vec!["bad-tokens", "--endpoint", endpoint, "--key", KEY];
    args.extend_from_slice(tls);
    args.extend_from_slice(&["--rounds", "20"]);
    let mut p = harness(py, &args);
    let mut seen = Vec::new();
    loop {
        let v = p.next_of(&["case", "end", "error"], 120).await;
        match v["event"].as_str() {
            Some("case") => seen.push(v),
            Some("end") => break,
            _ => panic!("bad-tokens failed: {v}"),
        }
    }
    let names: Vec<&str> = seen.iter().filter_map(|v| v["name"].as_str()).collect();
    let want: Vec<&str> = BAD_TOKEN_CASES.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, want);
    for (v, (name, message)) in seen.iter().zip(BAD_TOKEN_CASES) {
        let expected = serde_json::json!({ format!("UNAUTHENTICATED: {message}"): 20 });
        assert_eq!(v["counts"], expected, "case {name:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(skip_interop, ignore = "JUMPSTARTER_ROUTER_SKIP_INTEROP is set")]
async fn bad_tokens_reach_a_python_client_as_unauthenticated_every_time() {
    let py = python();
    let r = TestRouter::start().await;
    assert_bad_tokens_refused(py, &r.addr.to_string(), &[]).await;
    let s = r.router.stats();
    assert_eq!(
        (s.pending, s.pairs_total),
        (0, 0),
        "a refused caller was queued: {s:?}"
    );
    // The router still pairs honest callers on the same port.
    let tok = py_token(py, "after-bad-tokens").await;
    let (mut a, mut b) = pair_up(&r.endpoint(), &tok, b"still serving").await;
    send_and_finish(&mut a, &mut b, b"bye").await;
}

/// A grpc-core client with gzip compression on is refused before pairing, with
/// `UNIMPLEMENTED` (the router forwards messages as they are), and learns it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(skip_interop, ignore = "JUMPSTARTER_ROUTER_SKIP_INTEROP is set")]
async fn a_compressing_python_client_is_refused_as_unimplemented() {
    let py = python();
    let r = TestRouter::start().await;
    let ep = r.addr.to_string();
    let args = [
        "compressed",
        "--endpoint",
        &ep,
        "--key",
        KEY,
        "--stream",
        "gzip",
    ];
    let v = harness(py, &args).next_of(&["status", "error"], 60).await;
    assert_eq!(v["code"], "UNIMPLEMENTED", "{v}");
    assert!(v["details"].as_str().unwrap().contains("gzip"), "{v}");
    assert_eq!(r.router.stats().pending, 0);
}

// ===== TLS, as real deployments run it: `serve` with cert files or self-signed =====

#[cfg(feature = "cli")]
mod tls {
    use super::*;

    use super::process::{cmd, Serve};

    /// Starts `serve` (TLS) with `env`.
    pub(super) async fn serve(env: &[(&str, String)]) -> Serve {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Serve::start_with_env(&[], &env).await
    }

    /// `jumpstarter-router connect` on stdio with `tls` flags: writes `SIZE` pattern bytes
    /// with `seed` to its stdin (then EOF) and returns what it printed, with its exit status.
    pub(super) async fn cli_connect(
        endpoint: &str,
        token: &str,
        tls: &[&str],
        seed: u64,
    ) -> (std::process::ExitStatus, Vec<u8>, String) {
        let mut child = cmd(&["connect", "--endpoint", endpoint, "--token", token])
            .args(tls)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start connect");
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let mut buf = vec![0u8; 64 * 1024];
            let mut at = 0;
            while at < SIZE {
                let n = (SIZE - at).min(buf.len() as u64) as usize;
                fill_pattern(&mut buf[..n], at, seed);
                stdin.write_all(&buf[..n]).unwrap();
                at += n as u64;
            }
            // Dropping stdin is EOF: the tunnel half-closes.
        });
        let out = within(120, "connect on stdio", async {
            tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
                .await
                .unwrap()
        })
        .await;
        writer.join().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status, out.stdout, stderr)
    }

    /// A Python peer (Jumpstarter's TLS setup, `tls` flags) and our CLI client (`ours` flags)
    /// exchange `SIZE` bytes each way through `serve` at `endpoint`, with a half-close.
    pub(super) async fn python_and_cli(
        py: &Path,
        endpoint: &str,
        stream: &str,
        tls: &[&str],
        ours: &[&str],
    ) {
        let tok = py_token(py, stream).await;
        let size = size_arg();
        let mut args = vec![
            "peer",
            "--endpoint",
            endpoint,
            "--token",
            &tok,
            "--send",
            &size,
            "--seed",
            "21",
            "--order",
            "recv-first",
        ];
        args.extend_from_slice(tls);
        let mut peer = harness(py, &args);
        let (status, out, stderr) = cli_connect(endpoint, &tok, ours, 22).await;
        assert!(status.success(), "connect failed: {stderr}");
        assert_eq!(out.len() as u64, SIZE, "{stderr}");
        assert_eq!(hex(&sha2_of(&out)), pattern_sha(SIZE, 21));
        assert_done(&peer.next_of(&["done", "error"], 120).await, 21, 22);
    }

    fn sha2_of(b: &[u8]) -> Vec<u8> {
        use sha2::Digest;
        sha2::Sha256::digest(b).to_vec()
    }

    /// The harness's CA and server certificate (`rsa` or `ecdsa`) in a fresh folder.
    pub(super) async fn certs(py: &Path, key_type: &str) -> TempDir {
        let dir = TempDir::new(&format!("interop-{key_type}"));
        Py::make_certs(py, &dir.file(""), key_type).await;
        dir
    }
}

/// Python peers over `grpc.ssl_channel_credentials` with the test CA (through Jumpstarter's
/// own client TLS code) and our CLI with `--ca-file`, through `serve` with
/// `EXTERNAL_CERT_PEM`/`EXTERNAL_KEY_PEM`: RSA (PKCS#1 key) and ECDSA (SEC1 key).
#[cfg(feature = "cli")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(skip_interop, ignore = "JUMPSTARTER_ROUTER_SKIP_INTEROP is set")]
async fn tls_with_cert_files_python_peers_and_our_cli_rsa_and_ecdsa() {
    let py = python();
    for key_type in ["rsa", "ecdsa"] {
        let dir = tls::certs(py, key_type).await;
        let path = |f: &str| dir.file(f);
        let router = tls::serve(&[
            ("EXTERNAL_CERT_PEM", path("cert.pem")),
            ("EXTERNAL_KEY_PEM", path("key.pem")),
        ])
        .await;
        let ep = format!("localhost:{}", router.listen.port());
        let ca = path("ca.pem");
        // Two Python peers.
        let size = size_arg();
        let stream = format!("tls-{key_type}");
        let tok = py_token(py, &stream).await;
        let both = |seed: &'static str, order: &'static str| {
            harness(
                py,
                &[
                    "peer",
                    "--endpoint",
                    &ep,
                    "--token",
                    &tok,
                    "--send",
                    &size,
                    "--seed",
                    seed,
                    "--order",
                    order,
                    "--tls-ca",
                    &ca,
                ],
            )
        };
        let (mut first, mut second) = (both("1", "send-first"), both("2", "recv-first"));
        let a = first.next_of(&["done", "error"], 120).await;
        let b = second.next_of(&["done", "error"], 120).await;
        assert_done(&a, 1, 2);
        assert_done(&b, 2, 1);
        assert_eq!(
            (&a["status"], &b["status"]),
            (&"OK".into(), &"OK".into()),
            "{a} {b}"
        );
        // A Python peer and our CLI client with --ca-file.
        let stream = format!("tls-cli-{key_type}");
        tls::python_and_cli(py, &ep, &stream, &["--tls-ca", &ca], &["--ca-file", &ca]).await;
        // Refusals over TLS reach a grpc-core client as UNAUTHENTICATED too.
        if key_type == "rsa" {
            assert_bad_tokens_refused(py, &ep, &["--tls-ca", &ca]).await;
        }
        drop(router);
    }
}

/// `serve` with no certificate files makes a self-signed certificate for the host of
/// `GRPC_ROUTER_ENDPOINT`: our CLI with `--insecure` and a Python peer in Jumpstarter's
/// `tls.insecure` mode pair through it.
#[cfg(feature = "cli")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(skip_interop, ignore = "JUMPSTARTER_ROUTER_SKIP_INTEROP is set")]
async fn tls_self_signed_default_with_insecure_clients() {
    let py = python();
    // The certificate names the host of GRPC_ROUTER_ENDPOINT (default `localhost:8083`).
    let router = tls::serve(&[]).await;
    let ep = format!("localhost:{}", router.listen.port());
    tls::python_and_cli(
        py,
        &ep,
        "tls-insecure",
        &["--tls-insecure"],
        &["--insecure"],
    )
    .await;
}
