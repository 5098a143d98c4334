//! Interop with the real Jumpstarter Python peers (jumpstarter 0.9.0 from PyPI): their
//! `RouterStream` and `forward_stream`, driven by `tests/interop/harness.py` in a venv under
//! `target/interop-venv` (made on first use by `tests/interop/setup_venv.sh`).
//!
//! Set `JUMPSTARTER_ROUTER_SKIP_INTEROP=1` to skip these tests explicitly; otherwise a missing
//! Python fails them with a message that says what to install.
#![cfg(all(feature = "router", feature = "client"))]

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use jumpstarter_router::proto::router_service_server::{RouterService, RouterServiceServer};
use jumpstarter_router::proto::StreamRequest;
use jumpstarter_router::router::Auth;
use jumpstarter_router::{connect, ResponseStream, RouterStream};
use serde_json::Value;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

const MIB: u64 = 1024 * 1024;
/// Bytes each way in the checksummed cases.
const SIZE: u64 = 16 * MIB;

// ===== the harness =====

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's python, set up once per test binary; `None` when skipped explicitly.
fn python() -> Option<&'static PathBuf> {
    static PY: OnceLock<Option<PathBuf>> = OnceLock::new();
    PY.get_or_init(|| {
        if std::env::var_os("JUMPSTARTER_ROUTER_SKIP_INTEROP")
            .is_some_and(|v| v != "0" && !v.is_empty())
        {
            eprintln!("interop tests skipped: JUMPSTARTER_ROUTER_SKIP_INTEROP is set");
            return None;
        }
        let venv = repo().join("target").join("interop-venv");
        let out = Command::new("bash")
            .arg(repo().join("tests/interop/setup_venv.sh"))
            .arg(&venv)
            .output()
            .unwrap_or_else(|e| panic!("cannot run bash for the interop venv: {e}"));
        assert!(
            out.status.success(),
            "cannot set up the interop venv (needs python3 with venv and pip, e.g. \
             `apt-get install python3-venv`, and access to PyPI; or set \
             JUMPSTARTER_ROUTER_SKIP_INTEROP=1 to skip):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Some(venv.join("bin").join("python"))
    })
    .as_ref()
}

/// A running harness process; killed when dropped. Its JSON lines arrive on `lines`.
struct Py {
    child: Child,
    lines: mpsc::UnboundedReceiver<Value>,
    name: String,
}

impl Py {
    fn spawn(py: &Path, args: &[&str]) -> Py {
        let mut child = Command::new(py)
            .arg(repo().join("tests/interop/harness.py"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the Python harness");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        Py {
            child,
            lines: rx,
            name: args.join(" "),
        }
    }

    /// The next JSON line whose `event` is one of `events`.
    async fn next(&mut self, events: &[&str], secs: u64) -> Value {
        let what = format!("{events:?} from `{}`", self.name);
        within(secs, &what, async {
            loop {
                let v = self
                    .lines
                    .recv()
                    .await
                    .unwrap_or_else(|| panic!("harness ended before {what}"));
                if events.iter().any(|e| v["event"] == *e) {
                    return v;
                }
            }
        })
        .await
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Py {
    fn drop(&mut self) {
        self.kill();
    }
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
    Py::spawn(py, &args)
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
            while let Ok(Some(v)) =
                tokio::time::timeout(Duration::from_secs(5), peer.lines.recv()).await
            {
                said.push(v.to_string());
            }
            panic!("our side failed: {e:?}; the Python peer said: {said:?}")
        }
    }
}

/// The Python router (RouterStream + forward_stream) on a free port.
async fn python_router(py: &Path) -> (Py, String) {
    let mut router = Py::spawn(py, &["router", "--listen", "127.0.0.1:0"]);
    let v = router.next(&["listening"], 60).await;
    let port = v["port"].as_u64().expect("port");
    (router, format!("127.0.0.1:{port}"))
}

// ===== a. two Python peers through our router =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_python_peers_through_our_router() {
    let Some(py) = python() else { return };
    let r = TestRouter::start().await;
    let tok = r.token("interop-a");
    let ep = r.addr.to_string();
    let size = size_arg();
    let mut first = peer(py, &ep, &tok, &size, "1", "send-first", false);
    let mut second = peer(py, &ep, &tok, &size, "2", "recv-first", false);
    let a = first.next(&["done", "error"], 120).await;
    let b = second.next(&["done", "error"], 120).await;
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
async fn b_python_peer_and_our_client_through_our_router() {
    let Some(py) = python() else { return };
    let r = TestRouter::start().await;
    let size = size_arg();
    // Both orders: the Python peer finishes first, then ours does.
    for (i, python_sends_first) in [true, false].into_iter().enumerate() {
        let tok = r.token(&format!("interop-b-{i}"));
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
        assert_done(&peer.next(&["done", "error"], 120).await, 3, 4);
    }
}

// ===== c. our streams through a router made of Jumpstarter's Python pieces =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_our_streams_through_the_python_router() {
    let Some(py) = python() else { return };
    let (_router, ep) = python_router(py).await;
    let tok = Auth::new(KEY)
        .mint("interop-c", Duration::from_secs(600))
        .unwrap();
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
async fn c_python_peer_and_our_client_through_the_python_router() {
    let Some(py) = python() else { return };
    let (_router, ep) = python_router(py).await;
    let tok = Auth::new(KEY)
        .mint("interop-c2", Duration::from_secs(600))
        .unwrap();
    let size = size_arg();
    let mut peer = peer(py, &ep, &tok, &size, "7", "send-first", false);
    let ours = connect(&format!("http://{ep}"), &tok).await.unwrap();
    // A clean Python session ends with ABORTED after two GOAWAYs: still a clean EOF here.
    let got = within(120, "our side", our_peer(ours, false, 8)).await;
    let got = ok_or_report(got, &mut peer).await;
    assert_eq!(got, (SIZE, pattern_sha(SIZE, 7)));
    let done = peer.next(&["done", "error"], 120).await;
    assert_done(&done, 7, 8);
    // The Python router ended the session as Jumpstarter's Python pieces do: ABORTED after
    // two GOAWAYs. Our side above read it as a clean EOF with every byte.
    assert_eq!(done["status"], "ABORTED", "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_ping_and_unknown_frames_arrive_as_empty_data_and_are_skipped() {
    let Some(py) = python() else { return };
    let (_router, ep) = python_router(py).await;
    let tok = Auth::new(KEY)
        .mint("interop-frames", Duration::from_secs(600))
        .unwrap();
    let mut ours = connect(&format!("http://{ep}"), &tok).await.unwrap();
    let mut raw = Py::spawn(
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
    let _ = raw.next(&["end"], 30).await;
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

async fn exporter(
    send_first: bool,
    seed: u64,
) -> (
    String,
    mpsc::UnboundedReceiver<std::io::Result<(u64, String)>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let svc = RouterServiceServer::new(Exporter {
        send_first,
        seed,
        results: tx,
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .serve_with_incoming(svc, tonic::transport::server::TcpIncoming::from(listener)),
    );
    (addr.to_string(), rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_our_servicer_answers_a_python_client() {
    let Some(py) = python() else { return };
    let size = size_arg();
    for (python_sends_first, py_seed, our_seed) in [(true, 9, 10), (false, 11, 12)] {
        let (ep, mut results) = exporter(!python_sends_first, our_seed).await;
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
        assert_done(&peer.next(&["done", "error"], 120).await, py_seed, our_seed);
    }
}

// ===== a Python peer killed mid-stream =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_python_peer_is_an_error_through_our_router() {
    let Some(py) = python() else { return };
    let r = TestRouter::start().await;
    let tok = r.token("interop-kill");
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
    let _ = peer.next(&["sent"], 30).await;
    peer.kill();
    let err = read_to_error(&mut ours, 5, "a killed Python peer").await;
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionAborted, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_python_client_is_an_error_at_our_servicer() {
    let Some(py) = python() else { return };
    let (ep, mut results) = exporter(false, 14).await;
    let mut peer = peer(
        py,
        &ep,
        "direct",
        &(4 * MIB).to_string(),
        "15",
        "send-first",
        true,
    );
    let _ = peer.next(&["sent"], 60).await;
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
