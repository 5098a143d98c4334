//! The real Jumpstarter Python peers' side of the interop tests: the venv (made once per test
//! binary by `tests/interop/setup_venv.sh`), and the JSON lines the scripts in
//! `tests/interop/` print. Standalone (the relay bench includes it by `#[path]`).
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::mpsc;

/// What the two `raw-client`s of [`Py::assert_raw_frames_crossed`] write: empty DATA, PING
/// with and without payload, an unknown type, RST_STREAM and DATA after it, then GOAWAY; and
/// RST_STREAM, DATA, GOAWAY back.
pub const RAW_FRAMES: [&str; 2] = [
    "data:,ping,ping:payload,unknown9:xyz,rst:why,data:after,goaway",
    "rst,data:back,goaway",
];

/// The repository (where `tests/interop/` is).
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A script of `tests/interop/`.
pub fn script_path(name: &str) -> PathBuf {
    repo().join("tests/interop").join(name)
}

/// The venv's python, set up once per test binary. Without Python, venv or PyPI the test
/// fails and says what to install. The tests that call it carry
/// `#[cfg_attr(skip_interop, ignore = ...)]`: with `JUMPSTARTER_ROUTER_SKIP_INTEROP=1` they are
/// `ignored` (build.rs sets the cfg).
pub fn python() -> &'static PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
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
        venv.join("bin").join("python")
    })
}

/// Reads a script's stdout to its end, handing each JSON event to `each` (which returns
/// `false` to stop). Two objects on one line (written by two threads at once) are both
/// handed out; a line that is not JSON is said on stderr, never dropped silently.
pub fn read_events(from: impl Read, name: &str, mut each: impl FnMut(Value) -> bool) {
    for line in BufReader::new(from).lines().map_while(Result::ok) {
        for v in serde_json::Deserializer::from_str(&line).into_iter::<Value>() {
            match v {
                Ok(v) => {
                    if !each(v) {
                        return;
                    }
                }
                Err(e) => {
                    eprintln!("{name}: a line that is not JSON ({e}): {line}");
                    break;
                }
            }
        }
    }
}

/// A Python process whose stdout lines are JSON events, each stamped with the instant it was
/// read; killed when dropped.
pub struct Py {
    child: Child,
    name: String,
    lines: mpsc::UnboundedReceiver<(Instant, Value)>,
    /// Every event so far (the log lines are counted from here).
    pub all: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
    stdin: Option<ChildStdin>,
}

impl Py {
    pub fn spawn(py: &Path, script: &str, args: &[&str], stdin: bool) -> Py {
        let mut child = Command::new(py)
            .arg(script_path(script))
            .args(args)
            .env("NONINTERACTIVE", "1")
            .env("PYTHONUNBUFFERED", "1")
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start python");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let all = Arc::new(Mutex::new(Vec::new()));
        let keep = all.clone();
        let who = script.to_string();
        std::thread::spawn(move || {
            read_events(stdout, &who, |v| {
                keep.lock().unwrap().push(v.clone());
                let _ = tx.send((Instant::now(), v));
                true
            })
        });
        let err = Arc::new(Mutex::new(String::new()));
        let keep = err.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut s = keep.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let stdin = child.stdin.take();
        Py {
            child,
            name: format!("{script} {}", args.first().copied().unwrap_or_default()),
            lines: rx,
            all,
            stderr: err,
            stdin,
        }
    }

    pub fn session(py: &Path, args: &[&str]) -> Py {
        Self::spawn(py, "session.py", args, false)
    }

    /// `harness.py certs`: a test CA (`ca.pem`) and a certificate for localhost signed by it
    /// (`cert.pem`, `key.pem`; `key_type` `rsa` or `ecdsa`) made in `dir`.
    pub async fn make_certs(py: &Path, dir: &str, key_type: &str) {
        let args = ["certs", "--dir", dir, "--key-type", key_type];
        Self::spawn(py, "harness.py", &args, false)
            .next("certs", 60)
            .await;
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next event matching `f` within `limit`, with the instant it was read; `None` on
    /// timeout.
    pub async fn try_wait_for(
        &mut self,
        limit: Duration,
        f: impl Fn(&Value) -> bool,
    ) -> Option<(Value, Instant)> {
        tokio::time::timeout(limit, async {
            loop {
                match self.lines.recv().await {
                    Some((at, v)) if f(&v) => return Some((v, at)),
                    Some(_) => {}
                    None => return None,
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// The next event matching `f` within `secs`; panics with the process's stderr otherwise.
    pub async fn wait_for(&mut self, secs: u64, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        match self.try_wait_for(Duration::from_secs(secs), f).await {
            Some((v, _)) => v,
            None => panic!(
                "no {what} from `{}` within {secs} s (or it ended)\nstderr:\n{}\nlast events:\n{}",
                self.name,
                self.stderr(),
                self.tail(15)
            ),
        }
    }

    /// The next event named `event` (an "error" event fails the test).
    pub async fn next(&mut self, event: &str, secs: u64) -> Value {
        let v = self
            .wait_for(secs, event, |v| {
                v["event"] == event || v["event"] == "error"
            })
            .await;
        assert_eq!(
            v["event"],
            event,
            "`{}` failed: {v}\n{}",
            self.name,
            self.stderr()
        );
        v
    }

    /// The next event named one of `events` (an "error" event too only when named).
    pub async fn next_of(&mut self, events: &[&str], secs: u64) -> Value {
        self.wait_for(secs, &format!("{events:?}"), |v| {
            events.iter().any(|e| v["event"] == *e)
        })
        .await
    }

    /// The frames a `harness.py raw-client` received, as (type, payload), and its final
    /// status.
    pub async fn raw_frames(&mut self) -> (Vec<(u64, String)>, String) {
        let mut got = Vec::new();
        loop {
            let v = self.next_of(&["frame", "end", "error"], 30).await;
            match v["event"].as_str() {
                Some("frame") => got.push((
                    v["frame_type"].as_u64().unwrap(),
                    v["payload"].as_str().unwrap().to_string(),
                )),
                Some("end") => return (got, v["status"].as_str().unwrap().to_string()),
                _ => panic!("raw client failed: {v}"),
            }
        }
    }

    /// The frame-transparency check of two `harness.py raw-client`s of one stream, this one
    /// having written [`RAW_FRAMES`]`[0]` and `other` [`RAW_FRAMES`]`[1]`: each received what
    /// the other wrote, unchanged and in order, and both calls ended with OK. `name` goes in
    /// the failure messages.
    pub async fn assert_raw_frames_crossed(&mut self, other: &mut Py, name: &str) {
        let (got_other, status_other) = other.raw_frames().await;
        let (got, status) = self.raw_frames().await;
        let own = |v: &[(u64, &str)]| -> Vec<(u64, String)> {
            v.iter().map(|(t, p)| (*t, p.to_string())).collect()
        };
        let sent = own(&[
            (0, ""),
            (6, ""),
            (6, "payload"),
            (9, "xyz"),
            (3, "why"),
            (0, "after"),
            (7, ""),
        ]);
        assert_eq!(got_other, sent, "{name}");
        assert_eq!(got, own(&[(3, ""), (0, "back"), (7, "")]), "{name}");
        assert_eq!(
            (status.as_str(), status_other.as_str()),
            ("OK", "OK"),
            "{name}"
        );
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn tail(&self, n: usize) -> String {
        let all = self.all.lock().unwrap();
        all[all.len().saturating_sub(n)..]
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Its log lines at WARNING or above so far.
    pub fn warnings(&self) -> Vec<Value> {
        self.all
            .lock()
            .unwrap()
            .iter()
            .filter(|v| {
                v["event"] == "log"
                    && matches!(v["level"].as_str(), Some("WARNING" | "ERROR" | "CRITICAL"))
            })
            .cloned()
            .collect()
    }

    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin piped");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Closes its stdin (a `lab` then ends).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// SIGKILL, and reaped.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn terminate(&self) {
        let pid = self.pid().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
    }

    /// Its exit status, within `secs`.
    pub async fn exit_status(&mut self, secs: u64) -> ExitStatus {
        let exited = async {
            loop {
                if let Some(s) = self.child.try_wait().unwrap() {
                    return s;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        match tokio::time::timeout(Duration::from_secs(secs), exited).await {
            Ok(s) => s,
            Err(_) => panic!("timed out after {secs} s: `{}` to exit", self.name),
        }
    }
}

impl Drop for Py {
    fn drop(&mut self) {
        self.kill();
    }
}
