//! The command-line tool end to end, with real processes on loopback: `serve`, `expose` to an
//! echo server, `connect --listen` and `connect` on stdio, SHA-256 over 64 MiB; a peer killed
//! mid-transfer; clear one-line errors.
#![cfg(feature = "cli")]

use support::process;
mod support;

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::time::{Duration, Instant};

use process::{cmd, Proc, Serve};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MIB: u64 = 1024 * 1024;

/// Starts `serve --plaintext --grace 1` on a free loopback port.
async fn serve() -> Serve {
    serve_with_grace("1").await
}

/// Starts `serve --plaintext --grace SECS` on a free loopback port.
async fn serve_with_grace(grace: &str) -> Serve {
    Serve::start(&["--plaintext", "--grace", grace]).await
}

/// The stderr of the command `args`, which must fail.
fn refused(args: &[&str]) -> String {
    let out = cmd(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn token(subject: &str) -> String {
    let out = cmd(&["token", "--subject", subject, "--ttl", "600"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A TCP echo server for one connection that echoes until EOF, then half-closes.
async fn echo_server() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let (mut r, mut w) = s.split();
        tokio::io::copy(&mut r, &mut w).await.unwrap();
        w.shutdown().await.unwrap();
    });
    addr
}

/// `connect` on stdio with `flag`, its stdin, stdout and stderr piped to the test.
fn connect_piped(endpoint: &str, tok: &str, flag: &str) -> Proc {
    Proc(
        cmd(&["connect", "--endpoint", endpoint, "--token", tok, flag])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

fn expose(endpoint: &str, tok: &str, target: &str) -> Proc {
    Proc(
        cmd(&[
            "expose",
            "--endpoint",
            endpoint,
            "--token",
            tok,
            "--target",
            target,
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_tunnel_64_mib_through_serve_expose_connect() {
    let router = serve().await;
    let endpoint = router.endpoint();
    let tok = token("cli-tcp");
    let echo = echo_server().await;
    let _exporter = expose(&endpoint, &tok, &echo.to_string());

    let mut connect = Proc(
        cmd(&[
            "connect",
            "--endpoint",
            &endpoint,
            "--token",
            &tok,
            "--listen",
            "127.0.0.1:0",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap(),
    );
    // It prints the address it listens on.
    let mut stderr = BufReader::new(connect.0.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let addr = line.trim().rsplit(' ').next().unwrap().to_string();
    assert!(line.contains("listening on"), "{line}");

    let tcp = TcpStream::connect(&addr).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    let (sent, got) = within(120, "64 MiB round trip", async {
        tokio::join!(
            async {
                let sha = send_pattern(&mut wr, 64 * MIB, 3, 64 * 1024).await.unwrap();
                wr.shutdown().await.unwrap();
                sha
            },
            async { recv_all(&mut rd).await.unwrap() }
        )
    })
    .await;
    assert_eq!(got, (64 * MIB, sent));
    // Both bridges end cleanly and report their byte counts.
    let status = within(20, "connect exits", async {
        tokio::task::spawn_blocking(move || {
            let st = connect.0.wait().unwrap();
            let mut rest = String::new();
            stderr.read_to_string(&mut rest).unwrap();
            (st, rest)
        })
        .await
        .unwrap()
    })
    .await;
    assert!(status.0.success(), "connect failed: {}", status.1);
    assert!(
        status.1.contains("67108864 bytes up, 67108864 bytes down"),
        "{}",
        status.1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_tunnel_through_connect() {
    stdio_echo_through(&serve().await, "cli-stdio", 3 * MIB).await;
}

/// `serve` runs on one thread unless told otherwise (`--worker-threads`), and serves the same
/// either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_on_the_threads_it_is_given() {
    // `serve` names its worker threads (and its blocking pool's, which it does not use).
    let workers = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|name| name.trim() == "router-worker")
            .count()
    };
    let one = serve().await;
    stdio_echo_through(&one, "one-thread", MIB).await;
    assert_eq!(
        workers(one.proc.0.id()),
        0,
        "the default runs on the main thread"
    );

    let three = Serve::start(&["--plaintext", "--grace", "1", "--worker-threads", "3"]).await;
    stdio_echo_through(&three, "three-threads", MIB).await;
    assert_eq!(workers(three.proc.0.id()), 3);

    let err = refused(&["serve", "--plaintext", "--worker-threads", "0"]);
    assert!(err.contains("--worker-threads"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_tunnels_with_its_batched_io_turned_off() {
    let plain = Serve::start(&["--plaintext", "--grace", "1", "--batched-io", "false"]).await;
    stdio_echo_through(&plain, "unbatched", MIB).await;

    let err = refused(&["serve", "--plaintext", "--batched-io", "maybe"]);
    assert!(err.contains("--batched-io"), "{err}");
}

/// A setup error is one line: what failed, then why, each said once.
#[test]
fn serve_says_why_it_cannot_listen_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = refused(&["serve", "--plaintext", "--listen", &addr]);
    let line = err.lines().last().unwrap_or_default();
    assert!(
        line.contains(&format!("cannot listen on {addr}: ")),
        "{err}"
    );
    assert!(line.contains("in use"), "{err}");
    assert_eq!(
        line.matches("(os error").count(),
        1,
        "the cause twice: {line}"
    );
}

/// `bytes` of pattern through `connect` on stdio, `router`, `expose` and an echo server, and
/// back, compared.
async fn stdio_echo_through(router: &Serve, subject: &str, bytes: u64) {
    let endpoint = router.endpoint();
    let tok = token(subject);
    let echo = echo_server().await;
    let _exporter = expose(&endpoint, &tok, &echo.to_string());

    let input: Vec<u8> = (0..bytes).map(|i| pattern_byte(i, 9)).collect();
    let mut child = cmd(&["connect", "--endpoint", &endpoint, "--token", &tok])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feed = input.clone();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(&feed).unwrap();
        // dropping stdin is EOF: the tunnel half-closes
    });
    let out = within(60, "stdio tunnel", async {
        tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap()
    })
    .await;
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), input.len());
    assert!(out.stdout == input, "echoed bytes differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_peer_is_an_error_within_a_second() {
    let router = serve().await;
    let endpoint = router.endpoint();
    let tok = token("cli-kill");
    // Our side: a library stream that keeps reading.
    let mut ours = jumpstarter_router::connect(&endpoint, &tok).await.unwrap();
    // The peer: a `connect` process fed from a pipe we keep open.
    let mut child = Proc(
        cmd(&["connect", "--endpoint", &endpoint, "--token", &tok])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut stdin = child.0.stdin.take().unwrap();
    std::thread::spawn(move || {
        use std::io::Write;
        let chunk = vec![7u8; 64 * 1024];
        while stdin.write_all(&chunk).is_ok() {}
    });
    // Mid-transfer: some data has arrived.
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < 4 * MIB as usize {
        let n = within(20, "data from the peer", ours.read(&mut buf))
            .await
            .unwrap();
        assert!(n > 0, "EOF before the kill");
        got += n;
    }
    child.0.kill().unwrap();
    let killed = Instant::now();
    let err = within(5, "error after kill", async {
        loop {
            match ours.read(&mut buf).await {
                Ok(0) => panic!("a killed peer looked like a clean EOF"),
                Ok(_) => continue,
                Err(e) => return e,
            }
        }
    })
    .await;
    let after = killed.elapsed();
    assert!(after < Duration::from_secs(1), "error came after {after:?}");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionAborted, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_that_dies_is_an_error_on_both_sides_never_eof() {
    let mut router = serve().await;
    let endpoint = router.endpoint();
    let (mut a, mut b) = pair_up(&endpoint, &token("cli-router-dies"), b"hello").await;
    router.proc.0.kill().unwrap();
    let killed = Instant::now();
    for (name, s) in [("a", &mut a), ("b", &mut b)] {
        let err = read_to_error(s, 5, "an error after the router died").await;
        assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
            ),
            "{name}: {err:?}"
        );
    }
    assert!(
        killed.elapsed() < Duration::from_secs(2),
        "{:?}",
        killed.elapsed()
    );
    // Writes fail too, and the error stays.
    assert!(a.write_all(b"more").await.is_err() || a.flush().await.is_err());
    // A new router on the same address: new sessions pair on it.
    let listen = router.listen.to_string();
    drop(router);
    let again = Serve::start_on(&listen, &["--plaintext"], &[]).await;
    let (mut a, mut b) = pair_up(&again.endpoint(), &token("cli-router-again"), b"hello").await;
    send_and_finish(&mut a, &mut b, b"after the restart").await;
}

#[tokio::test]
async fn errors_are_one_line_and_nonzero() {
    let router = serve().await;
    let endpoint = router.endpoint();
    // `connect` fails with exit status non-zero and one line on stderr that says why.
    let fails_with = |endpoint: &str, token: &str, why: &str| {
        let out = cmd(&["connect", "--endpoint", endpoint, "--token", token])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(why), "{err}");
    };
    fails_with(&endpoint, "not-a-jwt", "Unauthenticated"); // a bad token
    fails_with("http://127.0.0.1:1", "x", "cannot connect to router"); // an unreachable router
                                                                       // Every subcommand has --help.
    for sub in ["serve", "connect", "expose", "token"] {
        let out = cmd(&[sub, "--help"]).output().unwrap();
        assert!(out.status.success(), "{sub} --help");
        assert!(!out.stdout.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_and_lets_active_streams_finish() {
    let mut router = serve_with_grace("20").await;
    let (listen, endpoint) = (router.listen, router.endpoint());
    let (mut a, mut b) = pair_up(&endpoint, &token("cli-term"), b"before").await;

    router.terminate();
    // New connections are refused once the router says its listener is closed...
    router.log("listener closed: no new connections").await;
    let refused = TcpStream::connect(&listen).await;
    assert!(refused.is_err(), "a connection after SIGTERM was accepted");
    // ... while the active stream goes on, in both directions, and finishes cleanly.
    send_and_finish(&mut a, &mut b, b" and after SIGTERM").await;
    send_and_finish(&mut b, &mut a, b"reply").await;
    a.close().await.unwrap();
    b.close().await.unwrap();
    drop((a, b));
    // The router exits on its own once the streams are done, well within the grace period.
    let status = router.exit_status(15).await;
    assert!(status.success(), "{status:?}");
}

/// `connect --progress` shows live bytes and rates on stderr while the tunnel runs (one line a
/// second when stderr is no terminal; on a terminal the line is redrawn in place), then the
/// summary as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_progress_shows_live_bytes_while_the_tunnel_runs() {
    let router = serve().await;
    let endpoint = router.endpoint();
    let tok = token("cli-progress");
    let echo = echo_server().await;
    let _exporter = expose(&endpoint, &tok, &echo.to_string());
    let mut child = connect_piped(&endpoint, &tok, "--progress");
    let mut stdin = child.0.stdin.take().unwrap();
    let mut stdout = child.0.stdout.take().unwrap();
    let stderr = child.0.stderr.take().unwrap();
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // 1 MiB in, 1 MiB echoed back; stdin stays open, so the tunnel runs on.
    let stdin = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(&vec![7u8; MIB as usize]).unwrap();
        stdin
    });
    let echoed = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; MIB as usize];
        stdout.read_exact(&mut buf).map(|_| (buf, stdout))
    });
    let (buf, mut stdout) = within(30, "the echo", echoed).await.unwrap().unwrap();
    assert!(buf.iter().all(|&b| b == 7));
    let live = within(10, "a live progress line", async {
        loop {
            let line = lines.recv().await.expect("connect's stderr closed");
            if line.contains("stdio: 1.0 MiB up") && line.contains("1.0 MiB down") {
                return line;
            }
        }
    })
    .await;
    assert!(live.contains("MiB/s"), "{live}");
    // EOF on stdin: the tunnel half-closes and ends; the summary follows.
    drop(stdin.join().unwrap());
    let rest = tokio::task::spawn_blocking(move || {
        let mut rest = Vec::new();
        stdout.read_to_end(&mut rest).map(|_| rest)
    });
    let rest = within(20, "stdout to end", rest).await.unwrap().unwrap();
    assert!(rest.is_empty());
    let summary = within(20, "the summary", async {
        loop {
            let line = lines.recv().await.expect("no summary line");
            if line.contains("bytes up") {
                return line;
            }
        }
    })
    .await;
    assert!(
        summary.contains("1048576 bytes up, 1048576 bytes down"),
        "{summary}"
    );
    let status = tokio::task::spawn_blocking(move || child.0.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// `connect` on stdio whose peer goes (another `connect`, SIGKILLed: the router's GOAWAY that
/// says so, then `ABORTED`) exits non-zero with one line that says why, at once, though its
/// stdin stays open and idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_exits_non_zero_with_the_reason_when_its_peer_goes() {
    let router = serve().await;
    let endpoint = router.endpoint();
    let tok = token("cli-peer-goes");
    let connect = || connect_piped(&endpoint, &tok, "--quiet");
    let (mut survivor, mut peer) = (connect(), connect());
    // Paired and flowing: what the peer reads on stdin comes out of the survivor's stdout.
    let mut peer_stdin = peer.0.stdin.take().unwrap();
    std::io::Write::write_all(&mut peer_stdin, b"hello\n").unwrap();
    let mut stdout = BufReader::new(survivor.0.stdout.take().unwrap());
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        line
    });
    assert_eq!(
        within(10, "hello on stdout", line).await.unwrap(),
        "hello\n"
    );
    // The peer dies; the survivor's stdin (kept open here) has nothing to say.
    let _stdin = survivor.0.stdin.take().unwrap();
    let mut stderr = survivor.0.stderr.take().unwrap();
    peer.0.kill().unwrap();
    let status = within(5, "connect to exit", async {
        tokio::task::spawn_blocking(move || survivor.0.wait().unwrap())
            .await
            .unwrap()
    })
    .await;
    assert!(!status.success(), "{status:?}");
    let mut err = String::new();
    stderr.read_to_string(&mut err).unwrap();
    let err = err.trim_end();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("jumpstarter-router: error: "), "{err}");
    assert!(err.contains("peer vanished"), "{err}");
}

/// SIGTERM with a session that does not end: past `--grace`, both callers get the router's
/// GOAWAY that says it is shutting down (then `UNAVAILABLE`), never a cut connection, and the
/// router exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_grace_period_each_caller_is_told_the_router_is_shutting_down() {
    let mut router = serve_with_grace("1").await;
    let (mut a, mut b) = pair_up(&router.endpoint(), &token("cli-grace"), b"hello").await;
    router.terminate();
    router
        .log("grace period over: ending the remaining calls (GOAWAY, then UNAVAILABLE)")
        .await;
    for (name, s) in [("a", &mut a), ("b", &mut b)] {
        let err = read_to_error(s, 5, "the router's shutdown").await;
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::ConnectionAborted,
            "{name}: {err:?}"
        );
        assert!(
            err.to_string().contains("router shutting down"),
            "{name}: {err}"
        );
    }
    let status = router.exit_status(10).await;
    assert!(status.success(), "{status:?}");
}

/// Outside Kubernetes, the controller configuration comes from a file (`--config`), and each
/// flag overrides it: the file's `grpc.keepalive` is read as the Go router reads it, the
/// flag's PING interval is the one seen on the wire, and a malformed file stops `serve` with
/// the file and the field named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_takes_keepalive_from_a_config_file_and_flags_override_it() {
    use support::wire::{Pings, RawH2};
    let dir = TempDir::new("config");
    let file = dir.path().join("config.yaml");
    std::fs::write(
        &file,
        "grpc:\n  keepalive:\n    minTime: 3s\n    permitWithoutStream: true\n    intervalTime: 1m0s\n    timeout: 2s\n    maxConnectionAge: 1h0m0s\n",
    )
    .unwrap();
    let serve = Serve::start(&[
        "--plaintext",
        "--config",
        file.to_str().unwrap(),
        "--keepalive-interval",
        "1s",
    ])
    .await;
    let logs = serve.raw_logs();
    let keepalive = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "keepalive")
        .unwrap_or_else(|| panic!("no keepalive line in {logs}"));
    assert_eq!(keepalive["min_time"], "3s", "{keepalive}");
    assert_eq!(keepalive["interval"], "1s", "{keepalive}");
    assert_eq!(keepalive["timeout"], "2s", "{keepalive}");
    assert_eq!(keepalive["max_connection_age"], "3600s", "{keepalive}");
    assert_eq!(keepalive["max_connection_idle"], "none", "{keepalive}");
    // On the wire: a PING after about 1 s of quiet (the flag), not a minute (the file).
    let mut c = RawH2::connect(serve.listen, Pings::Answer).await;
    let at = c.first_ping(10).await;
    assert!(
        (0.5..5.0).contains(&at),
        "first PING after {at:.2} s (--keepalive-interval 1s)"
    );

    std::fs::write(
        &file,
        "grpc:\n  keepalive:\n    maxConnectionIdle: 5 minutes\n",
    )
    .unwrap();
    let out = cmd(&[
        "serve",
        "--plaintext",
        "--listen",
        "127.0.0.1:0",
        "--config",
        file.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "bad keepalive configuration in {}",
            file.display()
        )) && err.contains("grpc.keepalive.maxConnectionIdle: unknown unit"),
        "{err}"
    );
}
