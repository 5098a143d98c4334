//! Processes of the `jumpstarter-router` binary, for the CLI and operator tests: a child that
//! is killed when dropped, and a `serve` with JSON logs whose lines the test reads as events.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

pub const BIN: &str = env!("CARGO_BIN_EXE_jumpstarter-router");

/// Kills the child when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The binary with `args`, `ROUTER_KEY` set to [`KEY`](super::KEY), and none of the variables it reads otherwise.
pub fn cmd(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args).env("ROUTER_KEY", super::KEY);
    // Nothing from the environment of the test run.
    for var in [
        "RUST_LOG",
        "EXTERNAL_CERT_PEM",
        "EXTERNAL_KEY_PEM",
        "GRPC_ROUTER_ENDPOINT",
        "JMP_ROUTER_ENDPOINT",
        "JMP_ROUTER_TOKEN",
    ] {
        c.env_remove(var);
    }
    c
}

/// A `serve --log-format json` process on a free loopback port.
pub struct Serve {
    pub proc: Proc,
    /// The router's address.
    pub listen: SocketAddr,
    /// `--metrics-listen`'s address, when given.
    pub metrics: Option<SocketAddr>,
    /// `--health-listen`'s address, when given.
    pub health: Option<SocketAddr>,
    /// The log lines after "router listening", as JSON.
    logs: mpsc::UnboundedReceiver<Value>,
    /// Every line it wrote to stderr.
    raw: Arc<Mutex<String>>,
}

impl Serve {
    /// Starts `serve --log-format json --listen 127.0.0.1:PORT ARGS...` and waits for its
    /// "router listening" line.
    pub async fn start(args: &[&str]) -> Serve {
        Self::start_with_env(args, &[]).await
    }

    /// [`Serve::start`] with more environment variables (e.g. `RUST_LOG`).
    pub async fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Serve {
        // Port 0: the address comes from its "router listening" line.
        Self::start_on("127.0.0.1:0", args, env).await
    }

    /// [`Serve::start_with_env`] on the address `listen`.
    pub async fn start_on(listen: &str, args: &[&str], env: &[(&str, &str)]) -> Serve {
        let mut child = cmd(&["--log-format", "json", "serve", "--listen", listen])
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start serve");
        let stderr = child.stderr.take().unwrap();
        let raw = Arc::new(Mutex::new(String::new()));
        let (tx, mut logs) = mpsc::unbounded_channel();
        let keep = raw.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                keep.lock().unwrap().push_str(&line);
                keep.lock().unwrap().push('\n');
                let v = serde_json::from_str::<Value>(&line)
                    .unwrap_or_else(|_| serde_json::json!({ "message": line }));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let proc = Proc(child);
        let (mut metrics, mut health) = (None, None);
        let addr = |v: &Value| v["addr"].as_str().and_then(|a| a.parse().ok());
        let listen = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let v = logs.recv().await.expect("serve exited before listening");
                let msg = v["message"].as_str().unwrap_or_default();
                if msg.starts_with("metrics listening") {
                    metrics = addr(&v);
                } else if msg.starts_with("health listening") {
                    health = addr(&v);
                } else if msg == "router listening" {
                    return addr(&v).expect("the router's address in its log line");
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("serve did not start: {}", raw.lock().unwrap()));
        Serve {
            proc,
            listen,
            metrics,
            health,
            logs,
            raw,
        }
    }

    /// `http://` + the router's address.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// The next log line with this message, within 10 s.
    pub async fn log(&mut self, message: &str) -> Value {
        let logs = &mut self.logs;
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let v = logs.recv().await.expect("serve's stderr closed");
                if v["message"] == message {
                    return v;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {message:?} log line: {}", self.raw.lock().unwrap()))
    }

    /// Everything it logged so far.
    pub fn raw_logs(&self) -> String {
        self.raw.lock().unwrap().clone()
    }

    /// Waits, at most `secs`, for the process to exit on its own; its exit status.
    pub async fn exit_status(self, secs: u64) -> std::process::ExitStatus {
        let mut proc = self.proc;
        let wait = tokio::task::spawn_blocking(move || proc.0.wait().unwrap());
        tokio::time::timeout(Duration::from_secs(secs), wait)
            .await
            .unwrap_or_else(|_| panic!("serve did not exit within {secs} s"))
            .unwrap()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid = self.proc.0.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
    }
}

/// `GET path` over a plain TCP connection (HTTP/1.1, `Connection: close`): the whole response,
/// within 10 s.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: router\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    let what = format!("the {path} response");
    super::within(10, &what, tcp.read_to_string(&mut response))
        .await
        .unwrap();
    response
}

/// `GET /metrics` ([`http_get`]); returns the samples as `name{labels}` -> value.
pub async fn scrape(addr: SocketAddr) -> std::collections::HashMap<String, f64> {
    let response = http_get(addr, "/metrics").await;
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap();
            (name.to_string(), value.parse().unwrap())
        })
        .collect()
}

/// The number of open file descriptors of a process.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}
