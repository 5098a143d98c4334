//! Started as `/router` (the name Jumpstarter's operator runs its router image by: `command:
//! ["/router"]`, no arguments), the binary is `serve` with the Go router's contract: its
//! environment, the operator's ports (8083 gRPC, 8080 metrics, 8081 health) and the Go
//! router's flags (controller-runtime's zap flags, `-metrics-bind-address`, `-kubeconfig`),
//! single or double dash, `-flag=value` or `-flag value`, as Go's `flag` package takes them.

use std::net::{SocketAddr, ToSocketAddrs};

/// The name the operator starts the router by.
pub(crate) const NAME: &str = "router";

/// The operator's ports (the container ports it declares).
pub(crate) const GRPC_PORT: u16 = 8083;
pub(crate) const METRICS_PORT: u16 = 8080;
pub(crate) const HEALTH_PORT: u16 = 8081;

/// Seconds active streams may go on after SIGTERM: under the operator's 30 s termination
/// grace period, so that the last calls are ended with a GOAWAY before the kubelet kills.
pub(crate) const GRACE_SECS: u64 = 25;

/// What the Go router's command line says, in our terms.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct GoFlags {
    /// Where metrics go (`None`: off, `-metrics-bind-address=0`).
    pub(crate) metrics: Option<SocketAddr>,
    /// JSON logs (zap's production encoder, its default) or text (`console`, `-zap-devel`).
    pub(crate) json: bool,
    /// The log level filter.
    pub(crate) level: String,
    /// Flags taken but without effect here, as given: said in the log.
    pub(crate) ignored: Vec<String>,
    /// controller-runtime's `-kubeconfig`.
    pub(crate) kubeconfig: Option<String>,
}

/// Whether the binary was started by the operator's name for it.
pub(crate) fn started_as_router(argv0: &std::ffi::OsStr) -> bool {
    std::path::Path::new(argv0)
        .file_name()
        .is_some_and(|n| n == NAME)
}

/// Parses the Go router's flags as Go's `flag` package does (it stops at the first argument
/// that is not a flag, and at `--`).
pub(crate) fn parse(args: &[String]) -> Result<GoFlags, String> {
    let mut flags = GoFlags {
        metrics: Some(all_interfaces(METRICS_PORT)),
        json: true,
        level: "info".into(),
        ignored: Vec::new(),
        kubeconfig: None,
    };
    let mut devel = false;
    let (mut encoder, mut level) = (None, None);
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" || !arg.starts_with('-') || arg == "-" {
            flags
                .ignored
                .extend(args[i - 1..].iter().filter(|a| *a != "--").cloned());
            break;
        }
        let body = arg.trim_start_matches('-');
        if arg.starts_with("---") || body.is_empty() {
            return Err(format!("bad flag syntax: {arg}"));
        }
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        if name == "zap-devel" {
            devel = match inline.as_deref() {
                None | Some("true" | "1" | "t" | "T" | "TRUE" | "True") => true,
                Some("false" | "0" | "f" | "F" | "FALSE" | "False") => false,
                Some(v) => return Err(format!("invalid boolean value {v:?} for -zap-devel")),
            };
            continue;
        }
        if !VALUE_FLAGS.contains(&name) {
            return Err(format!(
                "flag provided but not defined: -{name} (the Go router's flags: -zap-devel, -{})",
                VALUE_FLAGS.join(", -")
            ));
        }
        let value = match inline {
            Some(v) => v,
            None if i < args.len() => {
                i += 1;
                args[i - 1].clone()
            }
            None => return Err(format!("flag needs an argument: -{name}")),
        };
        match name {
            "metrics-bind-address" => flags.metrics = bind_address(&value)?,
            "zap-encoder" => encoder = Some(value),
            "zap-log-level" => level = Some(value),
            "kubeconfig" if cfg!(feature = "kube") => flags.kubeconfig = Some(value),
            _ => flags.ignored.push(format!("-{name}={value}")),
        }
    }
    flags.json = match encoder.as_deref() {
        None => !devel,
        Some("json") => true,
        Some("console") => false,
        Some(other) => return Err(format!("invalid -zap-encoder {other:?}: json or console")),
    };
    flags.level = match level.as_deref() {
        None if devel => "debug".into(),
        None => "info".into(),
        Some(l) => zap_level(l)?,
    };
    Ok(flags)
}

/// The flags that take a value (controller-runtime's zap flags but `-zap-devel`, the metrics
/// address a later operator passes, and controller-runtime's `-kubeconfig`).
const VALUE_FLAGS: [&str; 6] = [
    "metrics-bind-address",
    "zap-encoder",
    "zap-log-level",
    "zap-stacktrace-level",
    "zap-time-encoding",
    "kubeconfig",
];

fn all_interfaces(port: u16) -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], port))
}

/// Whether the router has Kubernetes credentials, looked for where controller-runtime looks:
/// `-kubeconfig`, `KUBECONFIG`, the pod's service account, `~/.kube/config`.
pub(crate) fn kube_credentials(kubeconfig: Option<&str>) -> bool {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    kubeconfig.is_some()
        || var("KUBECONFIG").is_some()
        || (var("KUBERNETES_SERVICE_HOST").is_some()
            && std::path::Path::new("/var/run/secrets/kubernetes.io/serviceaccount/token").exists())
        || var("HOME").is_some_and(|h| std::path::Path::new(&h).join(".kube/config").exists())
}

/// A Go listen address: `:8080` (every interface), `host:port`, or `0` (off, as
/// controller-runtime takes it).
fn bind_address(value: &str) -> Result<Option<SocketAddr>, String> {
    if value == "0" {
        return Ok(None);
    }
    let bad = |e: String| format!("invalid -metrics-bind-address {value:?}: {e}");
    if let Some(port) = value.strip_prefix(':') {
        let port = port.parse::<u16>().map_err(|e| bad(e.to_string()))?;
        return Ok(Some(all_interfaces(port)));
    }
    value
        .to_socket_addrs()
        .map_err(|e| bad(e.to_string()))?
        .next()
        .map(Some)
        .ok_or_else(|| bad("no address".into()))
}

/// A zap level (`debug`, `info`, `error`, `panic`, or a verbosity: `1` and up log more) as a
/// log filter.
fn zap_level(level: &str) -> Result<String, String> {
    Ok(match level {
        "debug" => "debug",
        "info" => "info",
        "warn" => "warn",
        "error" | "dpanic" | "panic" | "fatal" => "error",
        n => match n.parse::<u8>() {
            Ok(0) => "info",
            Ok(1..=4) => "debug",
            Ok(_) => "trace",
            Err(_) => {
                return Err(format!(
                    "invalid -zap-log-level {level:?}: debug, info, error, or an integer"
                ))
            }
        },
    }
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn no_flags_is_the_operators_deployment() {
        let f = parse(&[]).unwrap();
        assert_eq!(f.metrics, Some("0.0.0.0:8080".parse().unwrap()));
        assert!(f.json);
        assert_eq!(f.level, "info");
        assert!(f.ignored.is_empty());
    }

    #[test]
    fn go_flag_forms_single_and_double_dash_inline_and_separate() {
        for a in [
            &["-metrics-bind-address=:9090"][..],
            &["--metrics-bind-address=:9090"],
            &["-metrics-bind-address", ":9090"],
            &["--metrics-bind-address", ":9090"],
        ] {
            let f = parse(&args(a)).unwrap();
            assert_eq!(f.metrics, Some("0.0.0.0:9090".parse().unwrap()), "{a:?}");
        }
        let f = parse(&args(&["-metrics-bind-address=127.0.0.1:7070"])).unwrap();
        assert_eq!(f.metrics, Some("127.0.0.1:7070".parse().unwrap()));
        assert_eq!(
            parse(&args(&["-metrics-bind-address=0"])).unwrap().metrics,
            None
        );
    }

    #[test]
    fn zap_flags_set_the_log_format_and_level_or_are_said_to_be_ignored() {
        let f = parse(&args(&["-zap-devel"])).unwrap();
        assert!(!f.json);
        assert_eq!(f.level, "debug");
        let f = parse(&args(&["--zap-devel=false", "-zap-encoder", "console"])).unwrap();
        assert!(!f.json);
        assert_eq!(f.level, "info");
        let f = parse(&args(&["-zap-log-level=error", "-zap-encoder=json"])).unwrap();
        assert!(f.json);
        assert_eq!(f.level, "error");
        assert_eq!(parse(&args(&["-zap-log-level=3"])).unwrap().level, "debug");
        let f = parse(&args(&[
            "-zap-stacktrace-level=error",
            "--zap-time-encoding",
            "iso8601",
            "-kubeconfig=/k",
        ]))
        .unwrap();
        let mut ignored = vec!["-zap-stacktrace-level=error", "-zap-time-encoding=iso8601"];
        if cfg!(feature = "kube") {
            assert_eq!(f.kubeconfig.as_deref(), Some("/k"));
        } else {
            ignored.push("-kubeconfig=/k");
        }
        assert_eq!(f.ignored, ignored);
    }

    #[test]
    fn unknown_or_malformed_flags_are_refused_as_go_refuses_them() {
        for (a, says) in [
            (
                &["-listen=:1"][..],
                "flag provided but not defined: -listen",
            ),
            (&["-metrics-bind-address"], "flag needs an argument"),
            (&["-zap-encoder=xml"], "invalid -zap-encoder"),
            (&["-zap-devel=maybe"], "invalid boolean value"),
            (&["-zap-log-level=loud"], "invalid -zap-log-level"),
            (
                &["-metrics-bind-address=:http"],
                "invalid -metrics-bind-address",
            ),
            (&["---x"], "bad flag syntax"),
        ] {
            let e = parse(&args(a)).unwrap_err();
            assert!(e.contains(says), "{a:?}: {e}");
        }
    }

    #[test]
    fn parsing_stops_at_the_first_non_flag_as_go_does() {
        let f = parse(&args(&["-zap-devel", "extra", "-zap-encoder=json"])).unwrap();
        assert!(!f.json, "flags after a non-flag argument are not flags");
        assert_eq!(f.ignored, ["extra", "-zap-encoder=json"]);
    }

    #[test]
    fn only_the_name_router_is_the_operators() {
        assert!(started_as_router("/router".as_ref()));
        assert!(started_as_router("router".as_ref()));
        assert!(!started_as_router(
            "/usr/local/bin/jumpstarter-router".as_ref()
        ));
    }
}
