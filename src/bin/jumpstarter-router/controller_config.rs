//! Jumpstarter's controller configuration (the `config` key of the `jumpstarter-controller`
//! ConfigMap, which the operator writes, or the same YAML in a file): the router reads its
//! `grpc.keepalive` section as the Go router does (`LoadGrpcConfiguration` in jumpstarter
//! 0.9.0's `controller/internal/config/grpc.go`).

use std::time::Duration;

use jumpstarter_router::router::Keepalive;
use yaml_rust2::{Yaml, YamlLoader};

/// The ConfigMap the operator writes and the Go router reads.
pub(crate) const CONFIG_MAP: &str = "jumpstarter-controller";

/// Applies the `grpc.keepalive` section of the controller configuration `yaml` to `base`, with
/// the Go router's meaning:
///
/// - `minTime` (empty or zero: 1 s) and `permitWithoutStream` (absent: false) are the ping
///   policy;
/// - `intervalTime` and `timeout` are the router's PINGs; empty or zero keeps `base` (the
///   operator's 10 s and 180 s), where the Go router falls back to grpc-go's (a PING every two
///   hours, 20 s to answer): behind a proxy with a 60 s idle timer, two hours loses sessions;
/// - `maxConnectionIdle`, `maxConnectionAge`, `maxConnectionAgeGrace`: empty or zero is no
///   limit.
///
/// Other sections are ignored. A value that is not a Go duration, or an unknown key in
/// `grpc.keepalive`, is an error (the Go router parses it strictly, and exits).
pub(crate) fn apply(yaml: &str, base: Keepalive) -> Result<Keepalive, String> {
    let docs = YamlLoader::load_from_str(yaml).map_err(|e| format!("not YAML: {e}"))?;
    let mut k = base;
    k.min_time = Duration::from_secs(1);
    k.permit_without_stream = false;
    let Some(doc) = docs.first() else {
        return Ok(k);
    };
    let section = |y: &Yaml, key: &str, path: &str| -> Result<Option<Yaml>, String> {
        match y {
            Yaml::Hash(h) => Ok(h.get(&Yaml::String(key.into())).cloned()),
            Yaml::Null => Ok(None),
            other => Err(format!("{path}: expected a mapping, found {}", kind(other))),
        }
    };
    let Some(grpc) = section(doc, "grpc", "the configuration")? else {
        return Ok(k);
    };
    let Some(keepalive) = section(&grpc, "keepalive", "grpc")? else {
        return Ok(k);
    };
    let fields = match keepalive {
        Yaml::Hash(h) => h,
        Yaml::Null => return Ok(k),
        other => {
            return Err(format!(
                "grpc.keepalive: expected a mapping, found {}",
                kind(&other)
            ))
        }
    };
    for (key, value) in &fields {
        let name = key.as_str().unwrap_or_default();
        let field = format!("grpc.keepalive.{name}");
        let duration = || -> Result<Option<Duration>, String> {
            match value {
                Yaml::String(s) => parse_go_duration(s)
                    .map(|d| Some(d).filter(|d| !d.is_zero()))
                    .map_err(|e| format!("{field}: {e}")),
                Yaml::Null => Ok(None),
                other => Err(format!(
                    "{field}: expected a Go duration string such as \"10s\", found {}",
                    kind(other)
                )),
            }
        };
        match name {
            "minTime" => k.min_time = duration()?.unwrap_or(Duration::from_secs(1)),
            "permitWithoutStream" => {
                k.permit_without_stream = match value {
                    Yaml::Boolean(b) => *b,
                    Yaml::Null => false,
                    other => {
                        return Err(format!(
                            "{field}: expected true or false, found {}",
                            kind(other)
                        ))
                    }
                }
            }
            "timeout" => {
                if let Some(d) = duration()? {
                    k.timeout = d;
                }
            }
            "intervalTime" => {
                if let Some(d) = duration()? {
                    k.interval = Some(d);
                }
            }
            "maxConnectionIdle" => k.max_connection_idle = duration()?,
            "maxConnectionAge" => k.max_connection_age = duration()?,
            "maxConnectionAgeGrace" => k.max_connection_age_grace = duration()?,
            _ => {
                return Err(format!(
                    "{field}: unknown field (known: minTime, permitWithoutStream, timeout, \
                     intervalTime, maxConnectionIdle, maxConnectionAge, maxConnectionAgeGrace)"
                ))
            }
        }
    }
    Ok(k)
}

fn kind(y: &Yaml) -> String {
    match y {
        Yaml::String(s) => format!("the string {s:?}"),
        Yaml::Integer(i) => format!("the number {i}"),
        Yaml::Real(r) => format!("the number {r}"),
        Yaml::Boolean(b) => format!("{b}"),
        Yaml::Array(_) => "a list".into(),
        Yaml::Hash(_) => "a mapping".into(),
        Yaml::Null => "nothing".into(),
        _ => "something else".into(),
    }
}

/// A Go duration (`time.ParseDuration`): "180s", "3m0s", "1.5h", "300ms", "0". Negative
/// durations are refused: no setting here means anything by one.
pub(crate) fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?} (a Go duration such as \"10s\", \"3m0s\")");
    let rest = match s.strip_prefix('-') {
        Some(r) if r != "0" => return Err(format!("negative duration {s:?}")),
        Some(r) => r,
        None => s.strip_prefix('+').unwrap_or(s),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: u128 = 0;
    let mut rest = rest;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(|| format!("missing unit in duration {s:?}"))?;
        let (number, tail) = rest.split_at(digits);
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && frac.is_empty()) || frac.contains('.') {
            return Err(bad());
        }
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(format!("missing unit in duration {s:?}")),
            u => return Err(format!("unknown unit {u:?} in duration {s:?}")),
        };
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| bad())?
        };
        let mut part = whole.checked_mul(nanos).ok_or_else(bad)?;
        // The fraction, to the nanosecond, as Go rounds it (down).
        let mut scale = nanos;
        for d in frac.bytes().take(30) {
            scale /= 10;
            part += u128::from(d - b'0') * scale;
        }
        total = total.checked_add(part).ok_or_else(bad)?;
        rest = tail;
    }
    // Go's durations end at 2^63 - 1 ns (about 292 years).
    if total > i64::MAX as u128 {
        return Err(format!("duration {s:?} is out of range"));
    }
    Ok(Duration::from_nanos(total as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn go_durations() {
        for (text, want) in [
            ("0", Duration::ZERO),
            ("1s", S(1)),
            ("180s", S(180)),
            ("3m0s", S(180)),
            (
                "2h45m30.5s",
                S(2 * 3600 + 45 * 60 + 30) + Duration::from_millis(500),
            ),
            ("1.5h", S(5400)),
            ("300ms", Duration::from_millis(300)),
            ("10us", Duration::from_micros(10)),
            ("10µs", Duration::from_micros(10)),
            ("7ns", Duration::from_nanos(7)),
            (".5s", Duration::from_millis(500)),
            ("+5s", S(5)),
        ] {
            assert_eq!(parse_go_duration(text), Ok(want), "{text}");
        }
        for (text, says) in [
            ("", "invalid duration"),
            ("10", "missing unit"),
            ("10 s", "unknown unit"),
            ("1d", "unknown unit"),
            ("s", "invalid duration"),
            ("1..5s", "invalid duration"),
            ("-1s", "negative"),
            ("3000000h", "out of range"),
            ("abc", "invalid duration"),
        ] {
            let e = parse_go_duration(text).unwrap_err();
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }

    /// What jumpstarter 0.9.0's operator writes (`buildConfig`): a CR without a keepalive
    /// section gives only `minTime` and `permitWithoutStream`.
    #[test]
    fn the_operators_config_without_keepalive_settings() {
        let yaml = r#"
authentication:
  internal:
    prefix: "internal:"
  jwt: []
provisioning:
  enabled: false
grpc:
  keepalive:
    minTime: 1s
    permitWithoutStream: true
leasePolicy: {}
"#;
        let k = apply(yaml, Keepalive::default()).unwrap();
        assert_eq!(k, Keepalive::default());
    }

    #[test]
    fn every_keepalive_setting_with_the_go_routers_meaning() {
        let yaml = r#"
grpc:
  keepalive:
    minTime: 5s
    permitWithoutStream: false
    timeout: 3m0s
    intervalTime: 30s
    maxConnectionIdle: 10m0s
    maxConnectionAge: 1h0m0s
    maxConnectionAgeGrace: 5m0s
"#;
        let k = apply(yaml, Keepalive::default()).unwrap();
        assert_eq!(k.min_time, S(5));
        assert!(!k.permit_without_stream);
        assert_eq!(k.timeout, S(180));
        assert_eq!(k.interval, Some(S(30)));
        assert_eq!(k.max_connection_idle, Some(S(600)));
        assert_eq!(k.max_connection_age, Some(S(3600)));
        assert_eq!(k.max_connection_age_grace, Some(S(300)));
        // Zero is "unset", as in grpc-go; no section at all is Go's zero configuration.
        let yaml = "grpc:\n  keepalive:\n    minTime: 0s\n    maxConnectionAge: 0s\n";
        let k = apply(yaml, Keepalive::default()).unwrap();
        assert_eq!(k.min_time, S(1));
        assert!(!k.permit_without_stream);
        assert_eq!(k.max_connection_age, None);
        let k = apply("router: {}\n", Keepalive::default()).unwrap();
        assert!(!k.permit_without_stream);
        assert_eq!(k.interval, Keepalive::default().interval);
    }

    #[test]
    fn a_malformed_keepalive_value_is_an_error_naming_the_field() {
        for (yaml, says) in [
            (
                "grpc:\n  keepalive:\n    timeout: 180\n",
                "grpc.keepalive.timeout: expected a Go duration string",
            ),
            (
                "grpc:\n  keepalive:\n    intervalTime: ten\n",
                "grpc.keepalive.intervalTime: invalid duration",
            ),
            (
                "grpc:\n  keepalive:\n    permitWithoutStream: yes please\n",
                "grpc.keepalive.permitWithoutStream: expected true or false",
            ),
            (
                "grpc:\n  keepalive:\n    intervaltime: 10s\n",
                "grpc.keepalive.intervaltime: unknown field",
            ),
            ("grpc: [1]\n", "grpc: expected a mapping"),
            ("grpc: {keepalive: {minTime: 1s}", "not YAML"),
        ] {
            let e = apply(yaml, Keepalive::default()).unwrap_err();
            assert!(e.contains(says), "{yaml:?}: {e}");
        }
    }
}
