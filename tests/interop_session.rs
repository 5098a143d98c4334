//! A real Jumpstarter 0.9.0 session through `jumpstarter-router serve`: the released
//! `Exporter` with its `MockPower` and `TcpNetwork` drivers, and a lease client doing what a
//! user's script does (`config.lease()`, `lease.connect()`, driver calls), each its own process,
//! driven by `tests/interop/session.py` (which also plays Jumpstarter's controller). The router
//! runs over TLS with a certificate made here, which Jumpstarter trusts through its own
//! `tls.ca` setting, unmodified.
//!
//! - `a_b_c_d_...`: driver calls (p50/p99), 16 MiB through `TcpNetwork` (SHA-256), 5 connects in
//!   one lease, a clean end (lease released, exporter exits 0), and the exporter's WARNING lines
//!   per session. The router writes a Jumpstarter PING frame on each call quiet for 20 ms
//!   (`--ping-frame-interval`, 20 s by default, for proxies): the real peers skip them.
//! - `e_...`: the exporter SIGKILLed mid-call and mid-stream: the client raises, and how soon.
//! - `f_...`: the client SIGKILLed: the exporter's session for it ends (its connections to the
//!   router close), and the exporter keeps serving the lease. Its controller gives the two
//!   sides two different tokens of the same stream (the others one token, as upstream).
//!
//! Knobs: `JMP_SESSION_RUNS=N` repeats the kill cases (default 3) and prints the figures;
//! `JMP_SESSION_ROUTER=python` runs everything against the Python reference router
//! (`harness.py`'s `PythonRouter`, over TLS) instead of ours, for comparison;
//! `JMP_SESSION_TOKENS=distinct` gives the two sides different tokens of the same stream.
//!
//! With `JUMPSTARTER_ROUTER_SKIP_INTEROP=1` these tests are `ignored` (build.rs's
//! `skip_interop`); otherwise a missing Python fails them with a message that says what to
//! install.
#![cfg(feature = "cli")]

mod support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::process::Serve;
use support::python::{python, Py};
use support::{env_or, TempDir, KEY};

const MIB: u64 = 1024 * 1024;

/// The targets.
const KILL_TO_ERROR_MAX: Duration = Duration::from_secs(1);
const KILL_TO_ERROR_MEDIAN: Duration = Duration::from_millis(50);
const SESSION_END_MAX: Duration = Duration::from_secs(1);
/// How long a client may take to notice its exporter died before the run counts as a hang.
const HANG: Duration = Duration::from_secs(5);

// ===== the venv (as tests/interop.rs) =====

/// The tests of this file one at a time: they measure latencies, and two cores shared by
/// several Jumpstarter processes per test would measure the machine instead. (Each test has its
/// own runtime; tokio's mutex works across them and is not poisoned by a failed test.)
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ===== what the exporter holds open =====

/// Established TCP connections of process `pid` to `port` on the loopback.
fn tcp_conns_to(pid: u32, port: u16) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    let inodes: HashSet<String> = fds
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let want = format!("{port:04X}");
    let mut n = 0;
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9
                && f[3] == "01"
                && f[2].rsplit(':').next() == Some(want.as_str())
                && inodes.contains(f[9])
            {
                n += 1;
            }
        }
    }
    n
}

/// Polls (every 2 ms) until `pid` holds no connection to `port`; how long it took, or `None`
/// after `limit`.
async fn until_no_conns(pid: u32, port: u16, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if tcp_conns_to(pid, port) == 0 {
            return Some(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

// ===== the lab: certificates, a router, the stand-in controller =====

/// The router process, held until the lab drops (then killed).
#[allow(dead_code)]
enum RouterProc {
    Ours(Serve),
    Python(Py),
}

struct Lab {
    py: PathBuf,
    _router: RouterProc,
    router_port: u16,
    controller: Py,
    controller_ep: String,
    echo_port: u16,
    /// Last: removed once the processes are gone.
    dir: TempDir,
}

impl Lab {
    /// Certificates, the router (ours, or the Python one with `JMP_SESSION_ROUTER=python`)
    /// serving them, and the controller handing out that router with `tokens` (`same`: one
    /// token for both sides, as upstream; `distinct`: two tokens of the same stream;
    /// `JMP_SESSION_TOKENS` overrides it). Our router gets `router_args` too.
    async fn start(py: &Path, name: &str, tokens: &str, router_args: &[&str]) -> Lab {
        let dir = TempDir::new(&format!("session-{name}"));
        Py::make_certs(py, &dir.file(""), "ecdsa").await;
        let path = |f: &str| dir.file(f);
        let (router, router_port) =
            if std::env::var("JMP_SESSION_ROUTER").as_deref() == Ok("python") {
                let mut r = Py::session(py, &["pyrouter", "--certs", &path("")]);
                let port = r.next("listening", 60).await["port"].as_u64().unwrap() as u16;
                (RouterProc::Python(r), port)
            } else {
                let (cert, key) = (path("cert.pem"), path("key.pem"));
                let serve = Serve::start_with_env(
                    router_args,
                    &[("EXTERNAL_CERT_PEM", &cert), ("EXTERNAL_KEY_PEM", &key)],
                )
                .await;
                let port = serve.listen.port();
                (RouterProc::Ours(serve), port)
            };
        let tokens = std::env::var("JMP_SESSION_TOKENS").unwrap_or_else(|_| tokens.into());
        let router_ep = format!("127.0.0.1:{router_port}");
        let mut controller = Py::session(
            py,
            &[
                "controller",
                "--router",
                &router_ep,
                "--router-key",
                KEY,
                "--certs",
                &path(""),
                "--tokens",
                &tokens,
            ],
        );
        let v = controller.next("listening", 60).await;
        Lab {
            py: py.to_path_buf(),
            _router: router,
            router_port,
            controller_ep: v["endpoint"].as_str().unwrap().to_string(),
            echo_port: v["echo_port"].as_u64().unwrap() as u16,
            controller,
            dir,
        }
    }

    fn ca(&self) -> String {
        self.dir.file("ca.pem")
    }

    fn exporter(&self) -> Py {
        let echo = self.echo_port.to_string();
        let args = [
            "exporter",
            "--controller",
            &self.controller_ep,
            "--ca",
            &self.ca(),
            "--echo-port",
            &echo,
        ];
        Py::session(&self.py, &args)
    }

    fn client(&self, case: &str, extra: &[&str], stdin: bool) -> Py {
        let ca = self.ca();
        let mut args = vec![
            "client",
            "--controller",
            &self.controller_ep,
            "--ca",
            &ca,
            "--case",
            case,
        ];
        args.extend_from_slice(extra);
        Py::spawn(&self.py, "session.py", &args, stdin)
    }

    /// Waits for the controller's event `event` (with `field` == `value` when given).
    async fn controller_event(&mut self, event: &str, field: Option<(&str, &str)>) -> Value {
        self.controller
            .wait_for(30, event, |v| {
                v["event"] == event && field.is_none_or(|(k, want)| v[k] == want)
            })
            .await
    }

    /// The `outcome` of every `session ended` line of our router so far (none for the Python
    /// router).
    fn router_outcomes(&self) -> Vec<String> {
        let RouterProc::Ours(serve) = &self._router else {
            return Vec::new();
        };
        serve
            .raw_logs()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"] == "session ended")
            .map(|v| {
                let outcome = v["outcome"].as_str().unwrap_or_default();
                match v["reason"].as_str() {
                    Some(why) if !why.is_empty() => format!("{outcome} ({why})"),
                    _ => outcome.to_string(),
                }
            })
            .collect()
    }

    /// Our router's log lines about calls and sessions (for a failure's message).
    fn router_log(&self) -> String {
        let RouterProc::Ours(serve) = &self._router else {
            return String::new();
        };
        serve
            .raw_logs()
            .lines()
            .filter(|l| {
                l.contains("session ended") || l.contains("caller went") || l.contains("paired")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The exporter's connections to the router.
    fn router_conns(&self, exporter: &Py) -> usize {
        tcp_conns_to(exporter.pid(), self.router_port)
    }
}

fn runs() -> usize {
    env_or("JMP_SESSION_RUNS", 3usize).max(1)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// (min, median, max) in ms.
fn spread(xs: &[Duration]) -> Option<(f64, f64, f64)> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort();
    Some((ms(v[0]), ms(v[v.len() / 2]), ms(v[v.len() - 1])))
}

fn router_name() -> &'static str {
    if std::env::var("JMP_SESSION_ROUTER").as_deref() == Ok("python") {
        "the Python reference router"
    } else {
        "jumpstarter-router serve"
    }
}

// ===== a-d: calls, transfer, reconnects, a clean end; WARNING lines per session =====

/// Waits until the exporter has closed the lease's session (its "Session closed" line after
/// the lease ended), then returns its WARNING lines logged since `from`.
async fn lease_warnings(exporter: &mut Py, from: usize) -> Vec<Value> {
    exporter
        .wait_for(30, "the end of the lease's session", |v| {
            v["event"] == "log" && v["message"] == "Session closed"
        })
        .await;
    exporter.warnings()[from..].to_vec()
}

#[tokio::test]
#[cfg_attr(skip_interop, ignore = "JUMPSTARTER_ROUTER_SKIP_INTEROP is set")]
async fn a_b_c_d_calls_transfer_reconnects_and_a_clean_end() {
    let py = python();
    let _serial = SERIAL.lock().await;
    let mut lab = Lab::start(
        py,
        "abcd",
        "same",
        &[
            "--ping-frame-interval",
            "100ms",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    )
    .await;
    let mut exporter = lab.exporter();
    lab.controller_event("register", None).await;
    lab.controller_event("status", Some(("status", "AVAILABLE")))
        .await;
    let mut per_lease = Vec::new(); // (case, sessions, warnings)

    // a. driver calls: MockPower on, off, read (a streaming call).
    let w0 = exporter.warnings().len();
    // Then 0.5 s of quiet in the session (PING frames to both sides), and calls again.
    let mut client = lab.client("calls", &["--calls", "200", "--pause", "0.5"], false);
    let lat = client.next("latency", 120).await;
    client.next("after_pause", 60).await;
    client.next("released", 60).await;
    assert!(
        client.exit_status(30).await.success(),
        "{}",
        client.stderr()
    );
    for op in ["on", "off", "read"] {
        assert_eq!(lat[op]["n"], 200, "{lat}");
        println!(
            "a. MockPower.{op}() through {}: p50 {} ms, p99 {} ms, max {} ms (200 calls)",
            router_name(),
            lat[op]["p50_ms"],
            lat[op]["p99_ms"],
            lat[op]["max_ms"]
        );
    }
    per_lease.push(("calls", 1, lease_warnings(&mut exporter, w0).await));

    // b. 16 MiB through TcpNetwork to the echo server and back.
    let w0 = exporter.warnings().len();
    let size = (16 * MIB).to_string();
    let mut client = lab.client("transfer", &["--size", &size], false);
    let t = client.next("transfer", 180).await;
    client.next("released", 60).await;
    assert!(
        client.exit_status(30).await.success(),
        "{}",
        client.stderr()
    );
    assert_eq!(t["bytes"].as_u64(), Some(16 * MIB), "{t}");
    assert_eq!(
        t["sent_sha256"], t["received_sha256"],
        "bytes changed on the way: {t}"
    );
    println!(
        "b. 16 MiB echoed through TcpNetwork: {} s, {} MiB/s each way, SHA-256 equal",
        t["secs"], t["mib_per_s"]
    );
    per_lease.push(("transfer", 1, lease_warnings(&mut exporter, w0).await));

    // c. 5 connects in one lease; each dials twice (the readiness probe pairs too). Paced: the
    // exporter's connections to the router are looked at between connects.
    let w0 = exporter.warnings().len();
    let dials_before = count(&lab.controller, "dial_served");
    let mut client = lab.client("reconnect", &["--connects", "5", "--paced"], true);
    let mut lingering = Vec::new();
    for i in 1..=5u64 {
        client
            .wait_for(60, "ready_to_connect", |v| {
                v["event"] == "ready_to_connect" || v["event"] == "error"
            })
            .await;
        client.send_line("go");
        client
            .wait_for(60, "disconnected", |v| {
                (v["event"] == "disconnected" && v["n"] == i) || v["event"] == "error"
            })
            .await;
        // The session is over for the client: the exporter's bridges of it must end too.
        let ended = until_no_conns(exporter.pid(), lab.router_port, SESSION_END_MAX).await;
        lingering.push((i, ended, lab.router_conns(&exporter)));
    }
    client.next("released", 60).await;
    assert!(
        client.exit_status(30).await.success(),
        "{}",
        client.stderr()
    );
    let dials = count(&lab.controller, "dial_served") - dials_before;
    per_lease.push(("reconnect", 5, lease_warnings(&mut exporter, w0).await));
    println!("c. 5 connects in one lease: {dials} dials");
    for (i, ended, left) in &lingering {
        match ended {
            Some(d) => println!(
                "c.   connect {i}: exporter's router connections closed {:.1} ms after the client's disconnect",
                ms(*d)
            ),
            None => println!(
                "c.   connect {i}: exporter still holds {left} router connection(s) 1 s after the client's disconnect"
            ),
        }
    }
    assert_eq!(dials, 10, "each lease.connect() dials twice");

    // d. A clean end: the lease is released (above), the exporter reports AVAILABLE, and on
    // SIGTERM (as `jmp run` stops) it reports OFFLINE, unregisters and exits 0.
    assert_eq!(
        count(&lab.controller, "lease_deleted"),
        3,
        "every lease released"
    );
    exporter.terminate();
    lab.controller_event("status", Some(("status", "OFFLINE")))
        .await;
    lab.controller_event("unregister", None).await;
    let status = exporter.exit_status(30).await;
    assert!(
        status.success(),
        "exporter: {status}\n{}",
        exporter.stderr()
    );
    println!("d. lease released, exporter OFFLINE, unregistered, exit 0");

    // WARNING lines of the exporter per normal session.
    let mut worst = 0.0f64;
    for (case, sessions, w) in &per_lease {
        let per = w.len() as f64 / *sessions as f64;
        worst = worst.max(per);
        println!(
            "   exporter WARNING lines, {case} lease ({sessions} session(s)): {} ({per:.1} per session)",
            w.len()
        );
        for v in w {
            println!("     {} {}: {}", v["level"], v["logger"], v["message"]);
        }
    }
    // How the router ended each session, for the failures below too.
    let outcomes = lab.router_outcomes();
    println!("   router outcomes of the normal sessions: {outcomes:?}");
    let never_ended: Vec<_> = lingering.iter().filter(|(_, e, _)| e.is_none()).collect();
    assert!(
        never_ended.is_empty(),
        "the exporter kept its side of finished sessions open (connect, -, connections left): {never_ended:?}\n{}",
        lab.router_log()
    );
    assert!(
        worst <= 1.0,
        "more than 1 exporter WARNING line per normal session: {worst:.1}\n{}",
        lab.router_log()
    );
    // The router counts normal sessions as normal: a real client ends by cancelling its call.
    assert!(
        outcomes
            .iter()
            .all(|o| o == "finished" || o.starts_with("cancelled")),
        "a normal session counted as an abort: {outcomes:?}\n{}",
        lab.router_log()
    );
    // PING frames went to the real peers all along, and every session above still held.
    if let RouterProc::Ours(serve) = &lab._router {
        let metrics = support::process::scrape(serve.metrics.expect("the metrics address")).await;
        let pings = metrics
            .get("jumpstarter_router_ping_frames_total")
            .copied()
            .unwrap_or_default();
        println!("   PING frames the router wrote on quiet calls: {pings}");
        assert!(pings > 0.0, "no PING frame reached the peers: {metrics:?}");
    }
}

fn count(p: &Py, event: &str) -> usize {
    p.all
        .lock()
        .unwrap()
        .iter()
        .filter(|v| v["event"] == event)
        .count()
}

// ===== e: the exporter SIGKILLed mid-call and mid-stream =====

/// One run: a fresh exporter and a client in `case` (`busy-calls` or `busy-stream`); the
/// exporter is SIGKILLed once the client is busy. Returns the time from the kill to the
/// client's exception (`None`: none within [`HANG`]), the exception, and the client's own
/// log lines of Jumpstarter's bridge (`jumpstarter.streams.common`).
async fn kill_exporter_once(lab: &mut Lab, case: &str) -> (Option<Duration>, Value, Vec<String>) {
    let mut exporter = lab.exporter();
    let mut client = lab.client(case, &[], false);
    client.next("busy", 120).await;
    let t0 = Instant::now();
    exporter.kill();
    let got = client
        .try_wait_for(HANG, |v| v["event"] == "error" || v["event"] == "released")
        .await;
    client.kill();
    let bridge: Vec<String> = client
        .all
        .lock()
        .unwrap()
        .iter()
        .filter(|v| v["logger"] == "jumpstarter.streams.common")
        .map(|v| format!("{} {}", v["level"], v["message"]))
        .collect();
    match got {
        Some((v, at)) => {
            assert_eq!(
                v["event"], "error",
                "the client went on as if nothing happened: {v}"
            );
            (Some(at - t0), v, bridge)
        }
        None => (None, Value::Null, bridge),
    }
}

#[tokio::test]
#[cfg_attr(skip_interop, ignore = "JUMPSTARTER_ROUTER_SKIP_INTEROP is set")]
async fn e_exporter_killed_mid_call_and_mid_stream_the_client_raises() {
    let py = python();
    let _serial = SERIAL.lock().await;
    let mut lab = Lab::start(py, "e", "same", &[]).await;
    let n = runs();
    let mut failures = Vec::new();
    for (case, what) in [
        ("busy-calls", "mid-call (MockPower on/read back to back)"),
        ("busy-stream", "mid-stream (TcpNetwork echo)"),
    ] {
        let mut took = Vec::new();
        let mut errors = std::collections::BTreeMap::<String, usize>::new();
        let mut hung_bridge = None;
        for _ in 0..n {
            let (t, err, bridge) = kill_exporter_once(&mut lab, case).await;
            match t {
                Some(t) => {
                    took.push(t);
                    let msg = err["message"].as_str().unwrap_or_default();
                    let msg = msg.lines().next().unwrap_or_default();
                    *errors.entry(format!("{}: {msg}", err["type"])).or_default() += 1;
                }
                None => {
                    hung_bridge.get_or_insert(bridge);
                }
            }
        }
        let raised = took.len();
        let line = match spread(&took) {
            Some((lo, med, hi)) => {
                format!("kill->error min/median/max {lo:.1}/{med:.1}/{hi:.1} ms")
            }
            None => "no error at all".into(),
        };
        println!(
            "e. exporter SIGKILL {what}, through {}: the client raised in {raised}/{n} runs \
             (others: no exception within {} s); {line}",
            router_name(),
            HANG.as_secs()
        );
        for (e, k) in &errors {
            println!("e.   {k}x {e}");
        }
        if let Some(bridge) = hung_bridge {
            println!("e.   a run with no exception: the client's bridge logged {bridge:?}");
        }
        if raised < n {
            failures.push(format!(
                "{case}: the client raised in only {raised}/{n} runs"
            ));
        }
        if let Some(worst) = took.iter().max() {
            if *worst > KILL_TO_ERROR_MAX {
                failures.push(format!("{case}: kill->error up to {:.1} ms", ms(*worst)));
            }
        }
        if let Some((_, med, _)) = spread(&took) {
            if med > ms(KILL_TO_ERROR_MEDIAN) {
                failures.push(format!("{case}: median kill->error {med:.1} ms"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

// ===== f: the client SIGKILLed =====

#[tokio::test]
#[cfg_attr(skip_interop, ignore = "JUMPSTARTER_ROUTER_SKIP_INTEROP is set")]
async fn f_client_killed_the_exporter_ends_its_session_and_keeps_serving() {
    let py = python();
    let _serial = SERIAL.lock().await;
    let mut lab = Lab::start(py, "f", "distinct", &[]).await;
    let exporter = lab.exporter();
    lab.controller_event("register", None).await;
    let n = runs();
    let mut ended = Vec::new();
    let mut failures = Vec::new();
    let mut lease: Option<String> = None;
    for run in 0..n {
        // A client holding a session (after one driver call); the later ones reuse the lease.
        let mut extra: Vec<&str> = vec![];
        if let Some(l) = &lease {
            extra = vec!["--lease", l.as_str()];
        }
        let mut client = lab.client("hold", &extra, false);
        let leased = client.next("leased", 60).await;
        lease.get_or_insert_with(|| leased["lease"].as_str().unwrap().to_string());
        client.next("connected", 60).await;
        let before = lab.router_conns(&exporter);
        assert!(
            before >= 1,
            "the exporter holds no connection to the router"
        );
        let w0 = exporter.warnings().len();
        client.kill();
        match until_no_conns(exporter.pid(), lab.router_port, SESSION_END_MAX).await {
            Some(t) => ended.push(t),
            None => failures.push(format!(
                "run {run}: the exporter still holds {} of its {before} router connection(s) {} ms after the client died",
                lab.router_conns(&exporter),
                SESSION_END_MAX.as_millis()
            )),
        }
        // The exporter keeps serving the lease: a new client calls a driver.
        let l = lease.clone().unwrap();
        let mut next = lab.client("calls", &["--lease", &l, "--calls", "3"], false);
        next.next("latency", 60).await;
        next.next("released", 60).await;
        assert!(next.exit_status(30).await.success(), "{}", next.stderr());
        let w: Vec<String> = exporter.warnings()[w0..]
            .iter()
            .map(|v| format!("{}: {}", v["logger"], v["message"]))
            .collect();
        if run == 0 {
            println!("f.   exporter WARNING lines after a client SIGKILL (run 0): {w:?}");
        }
    }
    let line = match spread(&ended) {
        Some((lo, med, hi)) => format!(
            "its router connections closed {lo:.1}/{med:.1}/{hi:.1} ms (min/median/max) after the kill"
        ),
        None => "its router connections never closed".into(),
    };
    println!(
        "f. client SIGKILL, through {}: the exporter's session ended within {} ms in {}/{n} runs; {line}; \
         a new client served in every run",
        router_name(),
        SESSION_END_MAX.as_millis(),
        ended.len()
    );
    drop(exporter);
    assert!(failures.is_empty(), "{failures:?}");
}
