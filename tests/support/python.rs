//! The real Jumpstarter Python peers' side of the interop tests: the venv (made once per test
//! binary by `tests/interop/setup_venv.sh`, or skipped visibly), and the JSON lines the
//! scripts in `tests/interop/` print.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

/// The repository (where `tests/interop/` is).
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A script of `tests/interop/`.
pub fn script(name: &str) -> PathBuf {
    repo().join("tests/interop").join(name)
}

/// The venv's python, set up once per test binary; `None` when skipped explicitly with
/// `JUMPSTARTER_ROUTER_SKIP_INTEROP=1` (said on stderr). Without Python, venv or PyPI the
/// test fails and says what to install.
pub fn python() -> Option<&'static PathBuf> {
    static PY: OnceLock<Option<PathBuf>> = OnceLock::new();
    PY.get_or_init(|| {
        if std::env::var_os("JUMPSTARTER_ROUTER_SKIP_INTEROP")
            .is_some_and(|v| v != "0" && !v.is_empty())
        {
            eprintln!("SKIPPED: interop tests (JUMPSTARTER_ROUTER_SKIP_INTEROP is set)");
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
