//! The real proxies labs put in front of the router (GitHub issue 23), with the real
//! Jumpstarter 0.9.0 Python peers (`tests/interop/harness.py`) through them and
//! `jumpstarter-router serve` behind them:
//!
//! - `nginx_ingress`: nginx as ingress-nginx renders the router's `backend-protocol: GRPC`
//!   Ingress, TLS at nginx, `grpc_pass` to `serve --plaintext`;
//! - `haproxy_edge`, `haproxy_reencrypt`, `haproxy_passthrough`: HAProxy 2.6 as the OpenShift
//!   router renders an edge route (TLS at HAProxy, h2 to `serve --plaintext`), a re-encrypt
//!   route (TLS at HAProxy, TLS again to `serve`) and a passthrough route (`mode tcp`, TLS from
//!   the peer to `serve`; what Jumpstarter's operator makes).
//!
//! The proxies' idle timers are shortened to 3 s ([`TIMER`]; `tests/support/proxy.rs` has the
//! configurations and their sources). `serve` runs as behind a real proxy, with
//! `--keepalive-interval 1s` (HTTP/2 PINGs) and `--ping-frame-interval 1s` (Jumpstarter PING
//! frames on quiet calls). For each proxy:
//!
//! - `exchange_frames_refusal_and_kill`: 16 MiB each way with a half-close (SHA-256); PING,
//!   unknown and RST_STREAM frames pass unchanged; bad tokens get `UNAUTHENTICATED` with the
//!   same words as from `serve` directly; a peer killed mid-transfer is an error at the other
//!   peer (never a clean end), told by the router before any proxy timer;
//! - `idle_sessions_outlive_three_timers`: a caller waiting for its peer, a paired session, and
//!   a session with one side half-closed, each idle 3 timers and a half, then an exchange;
//! - `without_pings_an_idle_session_dies_at_the_timer`: the control. With the router's pings
//!   off, the paired idle session fails at the proxy's timer (an error, never an EOF): the idle
//!   cases above can fail;
//! - `one_kind_of_ping_at_a_time`: the same idle session with HTTP/2 PINGs only, and with PING
//!   frames only: which of the two each proxy needs.
//!
//! `throughput_through_each_proxy_and_direct` (ignored: run it with `--ignored --nocapture`)
//! prints the rate of a 64 MiB one-way transfer through each proxy and straight to `serve`.
//!
//! `JMP_PROXY_STOCK=1 cargo test --all-features --test interop_proxy idle -- --test-threads 4`
//! runs the idle cases with the proxies' stock timers (60 s, 30 s) and the router's default
//! pings: as labs run them, in about four minutes.
//!
//! `JMP_PROXY_LOGS=1` prints the proxy's and `serve`'s logs of each control case (which timer
//! fired, how the router classed the session's end).
//!
//! Needs `nginx` and `haproxy` (`apt-get install nginx haproxy`; the tests start them, the
//! packaged services are not needed) and the interop venv. With
//! `JUMPSTARTER_ROUTER_SKIP_INTEROP=1` they are `ignored` (build.rs's `skip_interop`).
#![cfg(feature = "cli")]

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::process::Serve;
use support::proxy::{self, Certs, Proxy, Route, TempDir, TIMER};
use support::python::{self, python, Py};
use support::{pattern_sha, KEY};

const MIB: u64 = 1024 * 1024;
/// Bytes each way in the exchange.
const SIZE: u64 = 16 * MIB;
/// Bytes each way after an idle wait.
const AFTER_IDLE: u64 = 4 * MIB;

/// The router's pings.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pings {
    /// HTTP/2 PINGs and PING frames every second, as behind a real proxy.
    On,
    /// Neither: the control.
    Off,
    /// HTTP/2 PINGs only (`--ping-frame-interval 0`).
    H2Only,
    /// PING frames only (`--keepalive-interval 0`).
    FramesOnly,
}

impl Pings {
    fn args(self) -> [&'static str; 4] {
        let (h2, frames) = match self {
            // With the proxies' stock timers, the router's defaults.
            Pings::On if proxy::stock() => ("10s", "20s"),
            Pings::On => ("1s", "1s"),
            Pings::Off => ("0", "0"),
            Pings::H2Only => ("1s", "0"),
            Pings::FramesOnly => ("0", "1s"),
        };
        ["--keepalive-interval", h2, "--ping-frame-interval", frames]
    }
}

/// With `JMP_PROXY_STOCK`, only the idle cases run (the others wait on the short timers); the
/// rest say so.
fn skipped_with_stock_timers(what: &str) -> bool {
    if proxy::stock() {
        eprintln!("SKIPPED: {what} (JMP_PROXY_STOCK runs the idle cases only)");
    }
    proxy::stock()
}

/// Three timers and a half of `route`: the idle waits.
fn idle_secs(route: Route) -> String {
    format!("{}", (proxy::timer(route) * 7 / 2).as_secs_f64())
}

// ===== the lab: certificates, serve, the proxy =====

struct Lab {
    py: &'static Path,
    route: Route,
    /// The test CA's file (`--tls-ca`).
    ca: String,
    proxy: Proxy,
    serve: Serve,
    /// Last: removed once the processes are gone.
    _dir: TempDir,
}

impl Lab {
    /// Certificates, `serve` with `pings`, and the proxy of `route` in front of it.
    async fn start(route: Route, pings: Pings) -> Lab {
        let py = python().as_path();
        proxy::binary(route.binary());
        let dir = TempDir::new(route.name());
        let (certs_dir, default_pem) = (dir.file("certs"), dir.file("default.pem"));
        // OpenShift's default certificate names the cluster's wildcard, never the route.
        let mut default = Py::spawn(
            py,
            "harness.py",
            &[
                "self-signed",
                "--name",
                "*.apps.example.invalid",
                "--out",
                &default_pem,
            ],
            false,
        );
        Py::make_certs(py, &certs_dir, "ecdsa").await;
        default.next("self-signed", 60).await;
        let file = |f: &str| format!("{certs_dir}/{f}");
        let certs = Certs {
            ca: file("ca.pem"),
            cert: file("cert.pem"),
            key: file("key.pem"),
            default_pem,
        };
        let mut args = pings.args().to_vec();
        let mut env = Vec::new();
        if route.router_tls() {
            env.push(("EXTERNAL_CERT_PEM", certs.cert.as_str()));
            env.push(("EXTERNAL_KEY_PEM", certs.key.as_str()));
        } else {
            args.push("--plaintext");
        }
        let serve = Serve::start_with_env(&args, &env).await;
        let proxy = Proxy::start(route, &dir, serve.listen, &certs).await;
        Lab {
            py,
            route,
            ca: certs.ca,
            proxy,
            serve,
            _dir: dir,
        }
    }

    /// `--endpoint` and TLS flags: through the proxy, or straight to `serve` (`direct`).
    fn endpoint_args(&self, direct: bool) -> Vec<String> {
        let tls = ["--tls-ca".to_string(), self.ca.clone()];
        match (direct, self.route.router_tls()) {
            (false, _) => [
                vec!["--endpoint".into(), self.proxy.endpoint()],
                tls.to_vec(),
            ]
            .concat(),
            (true, true) => [
                vec![
                    "--endpoint".into(),
                    format!("{}:{}", proxy::HOST, self.serve.listen.port()),
                ],
                tls.to_vec(),
            ]
            .concat(),
            (true, false) => vec!["--endpoint".into(), self.serve.listen.to_string()],
        }
    }

    /// `harness.py SUBCOMMAND` with the endpoint, a token minted by the harness (PyJWT) for
    /// `stream`, and `rest`.
    fn harness(&self, sub: &str, direct: bool, stream: &str, rest: &[&str]) -> Py {
        let mut args: Vec<String> = vec![sub.into()];
        args.extend(self.endpoint_args(direct));
        args.extend(["--key", KEY, "--stream", stream].map(String::from));
        args.extend(rest.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Py::spawn(self.py, "harness.py", &args, false)
    }

    /// `harness.py idle-peer` through the proxy: sends `send` pattern bytes with `seed`.
    fn idle_peer(&self, stream: &str, seed: u64, send: u64, order: &str, rest: &[&str]) -> Py {
        self.idle_peer_via(false, stream, seed, send, order, rest)
    }

    fn idle_peer_via(
        &self,
        direct: bool,
        stream: &str,
        seed: u64,
        send: u64,
        order: &str,
        rest: &[&str],
    ) -> Py {
        let (send, seed) = (send.to_string(), seed.to_string());
        let args = [
            &["--send", &send, "--seed", &seed, "--order", order][..],
            rest,
        ]
        .concat();
        self.harness("idle-peer", direct, stream, &args)
    }

    fn name(&self) -> &'static str {
        self.route.name()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- {} logs\n{}\n--- serve\n{}",
                self.name(),
                tail(&self.proxy.logs(), 40),
                tail(&self.serve.raw_logs(), 40)
            );
        }
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ===== what the peers said =====

/// The peer's last word: its `done` or `error` event.
async fn outcome(p: &mut Py, secs: u64) -> Value {
    p.wait_for(secs, "done or error", |v| {
        v["event"] == "done" || v["event"] == "error"
    })
    .await
}

/// The `t` (seconds since its start) of the peer's first `event`.
fn t_of(p: &Py, event: &str) -> f64 {
    p.all
        .lock()
        .unwrap()
        .iter()
        .find(|v| v["event"] == event)
        .and_then(|v| v["t"].as_f64())
        .unwrap_or_else(|| panic!("no {event} event: {}", p.tail(10)))
}

/// A clean exchange: `size` pattern bytes with `sent_seed` sent, `size` with `recv_seed`
/// received, status OK.
fn assert_done(v: &Value, size: u64, sent_seed: u64, recv_seed: u64, what: &str) {
    assert_eq!(v["event"], "done", "{what}: {v}");
    assert_eq!(
        (v["sent"].as_u64(), v["sent_sha256"].as_str()),
        (Some(size), Some(pattern_sha(size, sent_seed).as_str())),
        "{what}: {v}"
    );
    assert_eq!(
        (v["received"].as_u64(), v["received_sha256"].as_str()),
        (Some(size), Some(pattern_sha(size, recv_seed).as_str())),
        "{what}: {v}"
    );
    assert_eq!(v["status"], "OK", "{what}: {v}");
}

/// A session that did not end cleanly at this peer: an error, or a final status other than OK.
fn assert_not_clean(v: &Value, what: &str) {
    assert!(
        v["event"] == "error" || (v["event"] == "done" && v["status"] != "OK"),
        "{what}: a broken session looked like a clean end: {v}"
    );
}

// ===== the cases =====

async fn exchange_frames_refusal_and_kill(route: Route) {
    let lab = Lab::start(route, Pings::On).await;
    let name = lab.name();

    // 16 MiB each way with a half-close.
    let size = SIZE.to_string();
    let exchange = |seed: &str, order: &str| {
        lab.harness(
            "peer",
            false,
            "exchange",
            &["--send", &size, "--seed", seed, "--order", order],
        )
    };
    let (mut a, mut b) = (exchange("1", "send-first"), exchange("2", "recv-first"));
    let (va, vb) = (outcome(&mut a, 120).await, outcome(&mut b, 120).await);
    assert_done(&va, SIZE, 1, 2, name);
    assert_done(&vb, SIZE, 2, 1, name);

    // Every frame passes unchanged and in order, both ways; both calls end with OK.
    let raw = |frames: &str| lab.harness("raw-client", false, "raw-frames", &["--frames", frames]);
    let (mut ra, mut rb) = (raw(python::RAW_FRAMES[0]), raw(python::RAW_FRAMES[1]));
    ra.assert_raw_frames_crossed(&mut rb, name).await;

    // Refused callers learn why, with the words `serve` gives them directly. nginx refuses a
    // request with two `authorization` headers itself (HTTP 400, "client sent duplicate header
    // line"): the router never sees it, and the client gets no gRPC status from nginx.
    let via_proxy = refusals(&lab, false).await;
    let direct = refusals(&lab, true).await;
    assert_eq!(via_proxy.len(), 15, "{name}: {via_proxy:?}");
    assert_eq!(
        via_proxy.iter().map(|c| &c.0).collect::<Vec<_>>(),
        direct.iter().map(|c| &c.0).collect::<Vec<_>>()
    );
    for ((case, answer), (_, from_serve)) in via_proxy.iter().zip(&direct) {
        assert!(
            from_serve.starts_with("UNAUTHENTICATED: "),
            "{case}: {from_serve}"
        );
        if route == Route::IngressNginx && case == "duplicated header" {
            assert!(!answer.starts_with("OK"), "{name}: {case}: {answer}");
            assert!(
                lab.proxy
                    .logs()
                    .contains("client sent duplicate header line"),
                "{name}: {case}: {answer}"
            );
            eprintln!("{name}: {case}: refused by nginx: {answer}");
        } else {
            assert_eq!(
                answer, from_serve,
                "{name}: {case}: the proxy changed the refusal"
            );
        }
    }

    // A peer killed mid-transfer: the other peer gets an error, never a clean end, from the
    // router (well before any proxy timer).
    let mib4 = 4 * MIB;
    let mut sender = lab.idle_peer(
        "kill",
        13,
        mib4,
        "send-first",
        &["--handshake", "--hold-after-send"],
    );
    let mut survivor = lab.idle_peer("kill", 14, MIB, "recv-first", &["--handshake"]);
    survivor.next("paired", 30).await;
    sender.next("sent", 60).await;
    sender.kill();
    let killed = std::time::Instant::now();
    let (v, at) = survivor
        .try_wait_for(Duration::from_secs(10), |v| {
            v["event"] == "done" || v["event"] == "error"
        })
        .await
        .unwrap_or_else(|| panic!("{name}: the survivor heard nothing: {}", survivor.tail(10)));
    assert_not_clean(&v, name);
    let took = at - killed;
    assert!(
        took < TIMER,
        "{name}: the survivor learned after {took:?}: {v}"
    );
    eprintln!(
        "{name}: a killed peer: the other's end after {:.0} ms: {v}",
        took.as_secs_f64() * 1e3
    );
}

/// `harness.py bad-tokens --rounds 1` through the proxy or straight to `serve`: each case's
/// answer, as `CODE: details`.
async fn refusals(lab: &Lab, direct: bool) -> Vec<(String, String)> {
    let mut args: Vec<String> = vec!["bad-tokens".into()];
    args.extend(lab.endpoint_args(direct));
    args.extend(["--key", KEY, "--rounds", "1"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut p = Py::spawn(lab.py, "harness.py", &args, false);
    let mut seen = Vec::new();
    loop {
        let v = p
            .wait_for(60, "a case or the end", |v| {
                v["event"] == "case" || v["event"] == "end" || v["event"] == "error"
            })
            .await;
        match v["event"].as_str() {
            Some("case") => {
                let counts = v["counts"].as_object().unwrap();
                assert_eq!(counts.len(), 1, "{v}");
                let answer = counts.keys().next().unwrap().clone();
                seen.push((v["name"].as_str().unwrap().to_string(), answer));
            }
            Some("end") => return seen,
            _ => panic!("bad-tokens failed: {v}"),
        }
    }
}

/// The three idle cases at once, each idle three timers and a half (the router's pings on),
/// then an exchange that must be whole.
async fn idle_sessions_outlive_three_timers(route: Route) {
    let lab = Lab::start(route, Pings::On).await;
    let name = lab.name();
    let idle = idle_secs(route);
    let n = AFTER_IDLE;
    // (a) a caller waits for its peer, which comes after the idle wait.
    let mut a1 = lab.idle_peer("idle-a", 1, n, "recv-first", &[]);
    let mut a2 = lab.idle_peer(
        "idle-a",
        2,
        n,
        "send-first",
        &["--sleep-before-connect", &idle],
    );
    // (b) a paired session (hello both ways) idle on both sides.
    let after_pairing = ["--handshake", "--sleep-after-pairing", &idle];
    let mut b1 = lab.idle_peer("idle-b", 3, n, "send-first", &after_pairing);
    let mut b2 = lab.idle_peer("idle-b", 4, n, "recv-first", &after_pairing);
    // (c) one side sends and half-closes; the other reads to that EOF, stays idle, then
    // sends its part and finishes.
    let mut c1 = lab.idle_peer("idle-c", 5, n, "send-first", &["--handshake"]);
    let mut c2 = lab.idle_peer(
        "idle-c",
        6,
        n,
        "recv-first",
        &["--handshake", "--sleep-after-eof", &idle],
    );
    let limit = 60 + 4 * proxy::timer(route).as_secs();
    let peers: [(&mut Py, u64, u64, &str); 6] = [
        (&mut a1, 1, 2, "(a) the waiting caller"),
        (&mut a2, 2, 1, "(a) the late peer"),
        (&mut b1, 3, 4, "(b) first"),
        (&mut b2, 4, 3, "(b) second"),
        (&mut c1, 5, 6, "(c) the side that half-closed"),
        (&mut c2, 6, 5, "(c) the idle side"),
    ];
    let mut done = Vec::new();
    for (p, sent, received, what) in peers {
        let v = outcome(p, limit).await;
        assert_done(&v, n, sent, received, &format!("{name} {what}"));
        done.push(v);
    }
    // Each was idle that long.
    let least = (proxy::timer(route) * 3).as_secs_f64();
    let waited = [
        (
            "(a) waited for its peer",
            t_of(&a1, "eof") - t_of(&a1, "ready"),
        ),
        (
            "(b) idle after pairing",
            t_of(&b1, "sent") - t_of(&b1, "paired"),
        ),
        (
            "(c) idle after the EOF",
            t_of(&c2, "sent") - t_of(&c2, "eof"),
        ),
        (
            "(c) half-closed, waited",
            t_of(&c1, "eof") - t_of(&c1, "sent"),
        ),
    ];
    for (what, secs) in waited {
        assert!(secs >= least, "{name} {what}: only {secs:.2} s");
    }
    // The router's PING frames reached the quiet callers through the proxy (the peers skip
    // them: `RouterStream.receive` returns b"").
    for (v, what) in [
        (&done[0], "(a)"),
        (&done[2], "(b)"),
        (&done[3], "(b)"),
        (&done[4], "(c)"),
    ] {
        assert!(
            v["empty"].as_u64() >= Some(3),
            "{name} {what}: PING frames did not pass: {v}"
        );
    }
    eprintln!(
        "{name}: idle {:.1} {:.1} {:.1} s, PING frames seen {} {} {} {}",
        waited[0].1,
        waited[1].1,
        waited[2].1,
        done[0]["empty"],
        done[2]["empty"],
        done[3]["empty"],
        done[4]["empty"]
    );
}

/// Case (b) on `lab`: two peers pair (hello both ways), stay idle three timers and a half,
/// then exchange; their last words.
async fn paired_idle(lab: &Lab, stream: &str) -> (Value, Value) {
    let idle = idle_secs(lab.route);
    let after_pairing = ["--handshake", "--sleep-after-pairing", &idle];
    let mut b1 = lab.idle_peer(stream, 3, AFTER_IDLE, "send-first", &after_pairing);
    let mut b2 = lab.idle_peer(stream, 4, AFTER_IDLE, "recv-first", &after_pairing);
    (outcome(&mut b1, 30).await, outcome(&mut b2, 30).await)
}

/// The paired idle session failed at about the proxy's timer: an error at a peer during the
/// idle wait, never a clean end. Returns how long the first peer that failed had been idle.
fn assert_died_at_the_timer(name: &str, v1: &Value, v2: &Value) -> f64 {
    assert_not_clean(v1, name);
    assert_not_clean(v2, name);
    let first = [v1, v2]
        .into_iter()
        .filter(|v| v["event"] == "error" && v["stage"] == "sleep-after-pairing")
        .filter_map(|v| v["idle_for"].as_f64())
        .fold(f64::INFINITY, f64::min);
    let timer = TIMER.as_secs_f64();
    assert!(
        (timer - 0.5..=timer * 2.0).contains(&first),
        "{name}: the idle session should fail at about {timer} s: {v1} {v2}"
    );
    first
}

/// The control: with the router's pings off, a paired idle session fails at the proxy's
/// timer, as an error at a peer, never as a clean end.
async fn without_pings_an_idle_session_dies_at_the_timer(route: Route) {
    if skipped_with_stock_timers("the control") {
        return;
    }
    let lab = Lab::start(route, Pings::Off).await;
    let name = lab.name();
    let (v1, v2) = paired_idle(&lab, "control").await;
    let first = assert_died_at_the_timer(name, &v1, &v2);
    if std::env::var_os("JMP_PROXY_LOGS").is_some() {
        eprintln!("{}\n--- serve\n{}", lab.proxy.logs(), lab.serve.raw_logs());
    }
    eprintln!(
        "proxy-control {name} failed after {first:.2} s idle (timer {} s): {v1} {v2}",
        TIMER.as_secs_f64()
    );
}

/// Which of the router's two pings keeps a paired idle session alive through each proxy:
/// PING frames (stream data) through all of them; HTTP/2 PINGs through nginx (they re-arm its
/// body and read timers) and the TCP passthrough, not through HAProxy in HTTP mode, whose
/// `timeout server` counts only stream data.
async fn one_kind_of_ping_at_a_time(route: Route) {
    if skipped_with_stock_timers("one kind of ping at a time") {
        return;
    }
    let (h2, frames) = tokio::join!(
        Lab::start(route, Pings::H2Only),
        Lab::start(route, Pings::FramesOnly)
    );
    let name = route.name();
    let ((h1, h2v), (f1, f2)) = tokio::join!(
        paired_idle(&h2, "h2-pings-only"),
        paired_idle(&frames, "ping-frames-only")
    );
    assert_done(&f1, AFTER_IDLE, 3, 4, &format!("{name}, PING frames only"));
    assert_done(&f2, AFTER_IDLE, 4, 3, &format!("{name}, PING frames only"));
    let what = format!("{name}, HTTP/2 PINGs only");
    if matches!(route, Route::IngressNginx | Route::Passthrough) {
        assert_done(&h1, AFTER_IDLE, 3, 4, &what);
        assert_done(&h2v, AFTER_IDLE, 4, 3, &what);
        eprintln!("proxy-pings {name}: HTTP/2 PINGs alone keep it, PING frames alone keep it");
    } else {
        let first = assert_died_at_the_timer(&what, &h1, &h2v);
        eprintln!(
            "proxy-pings {name}: HTTP/2 PINGs alone: dead after {first:.2} s idle; PING frames \
             alone keep it"
        );
    }
}

macro_rules! route_tests {
    ($module:ident, $route:expr) => {
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[cfg_attr(skip_interop, ignore = "JUMPSTARTER_ROUTER_SKIP_INTEROP is set")]
            async fn exchange_frames_refusal_and_kill() {
                super::exchange_frames_refusal_and_kill($route).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[cfg_attr(skip_interop, ignore = "JUMPSTARTER_ROUTER_SKIP_INTEROP is set")]
            async fn idle_sessions_outlive_three_timers() {
                super::idle_sessions_outlive_three_timers($route).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[cfg_attr(skip_interop, ignore = "JUMPSTARTER_ROUTER_SKIP_INTEROP is set")]
            async fn without_pings_an_idle_session_dies_at_the_timer() {
                super::without_pings_an_idle_session_dies_at_the_timer($route).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[cfg_attr(skip_interop, ignore = "JUMPSTARTER_ROUTER_SKIP_INTEROP is set")]
            async fn one_kind_of_ping_at_a_time() {
                super::one_kind_of_ping_at_a_time($route).await
            }
        }
    };
}

route_tests!(nginx_ingress, Route::IngressNginx);
route_tests!(haproxy_edge, Route::Edge);
route_tests!(haproxy_reencrypt, Route::Reencrypt);
route_tests!(haproxy_passthrough, Route::Passthrough);

// ===== throughput =====

/// Seconds for `MIB64` one way between two Python peers (through the proxy, or `direct`),
/// from the receiver's pairing to its EOF.
async fn one_way_secs(lab: &Lab, direct: bool, stream: &str) -> f64 {
    let size = 64 * MIB;
    let mut tx = lab.idle_peer_via(direct, stream, 7, size, "send-first", &["--handshake"]);
    let mut rx = lab.idle_peer_via(direct, stream, 8, 0, "recv-first", &["--handshake"]);
    let v = outcome(&mut rx, 120).await;
    assert_eq!(v["event"], "done", "{v}");
    assert_eq!(
        v["received_sha256"].as_str(),
        Some(pattern_sha(size, 7).as_str()),
        "{v}"
    );
    let _ = outcome(&mut tx, 30).await;
    t_of(&rx, "eof") - t_of(&rx, "paired")
}

/// 64 MiB one way through each proxy and straight to the `serve` behind it, side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: cargo test --all-features --test interop_proxy -- --ignored --nocapture"]
async fn throughput_through_each_proxy_and_direct() {
    for route in Route::ALL {
        let lab = Lab::start(route, Pings::On).await;
        let mib = 64.0;
        let through = mib / one_way_secs(&lab, false, "via").await;
        let direct = mib / one_way_secs(&lab, true, "direct").await;
        let backend = if route.router_tls() {
            "TLS"
        } else {
            "plaintext"
        };
        println!(
            "proxy-throughput {} {through:.0} MiB/s direct {direct:.0} MiB/s ratio {:.2} (serve {backend})",
            route.name(),
            through / direct
        );
    }
}
