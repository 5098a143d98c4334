//! deploy/router.yaml and deploy/Containerfile against what `jumpstarter-router serve` really
//! takes, so that the manifest cannot drift from the binary: its flags are serve's flags, its
//! env is serve's env, and the ports of args, container, Service, probes and scrape annotations
//! agree.
#![cfg(feature = "cli")]

use std::collections::HashMap;
use std::process::Command;
use std::sync::OnceLock;

use yaml_rust2::{Yaml, YamlLoader};

const BIN: &str = env!("CARGO_BIN_EXE_jumpstarter-router");
const MANIFEST: &str = include_str!("../deploy/router.yaml");
const CONTAINERFILE: &str = include_str!("../deploy/Containerfile");

/// The env serve reads (src/router: `Auth::from_env`, `ServeConfig::from_env`).
const SERVE_ENV: &[&str] = &[
    "ROUTER_KEY",
    "EXTERNAL_CERT_PEM",
    "EXTERNAL_KEY_PEM",
    "GRPC_ROUTER_ENDPOINT",
];

/// `jumpstarter-router serve --help`, run once.
fn serve_help() -> &'static str {
    static HELP: OnceLock<String> = OnceLock::new();
    HELP.get_or_init(|| {
        let out = Command::new(BIN)
            .args(["serve", "--help"])
            .env_remove("RUST_LOG")
            .output()
            .expect("run jumpstarter-router serve --help");
        assert!(out.status.success(), "serve --help failed: {out:?}");
        String::from_utf8(out.stdout).expect("help is UTF-8")
    })
}

/// The lines of the options section of `serve --help`, grouped by option: (the option's line,
/// its whole block).
fn serve_options() -> Vec<(&'static str, String)> {
    let mut out: Vec<(&str, String)> = Vec::new();
    let options = serve_help()
        .lines()
        .skip_while(|l| l.trim() != "Options:")
        .skip(1);
    for line in options {
        let trimmed = line.trim_start();
        // An option's own line starts with `-` and is indented less than its description.
        if trimmed.starts_with('-') && line.len() - trimmed.len() < 8 {
            out.push((trimmed, String::new()));
        }
        if let Some((_, block)) = out.last_mut() {
            block.push_str(line);
            block.push('\n');
        }
    }
    out
}

/// The long options of `serve --help`, each with whether it takes a value (`--listen <LISTEN>`).
fn serve_flags() -> HashMap<String, bool> {
    serve_options()
        .into_iter()
        .filter_map(|(line, _)| {
            // `-h, --help` or `--listen <LISTEN>`
            let long = line.split(", ").last().unwrap_or(line);
            let rest = long.strip_prefix("--")?;
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            let takes_value = rest[name.len()..].trim_start().starts_with('<');
            (!name.is_empty()).then(|| (format!("--{name}"), takes_value))
        })
        .collect()
}

/// The `[default: ..]` of `flag` in `serve --help`.
fn serve_default(flag: &str) -> Option<String> {
    let (_, block) = serve_options().into_iter().find(|(line, _)| {
        line.split(", ")
            .last()
            .unwrap_or(line)
            .split_whitespace()
            .next()
            == Some(flag)
    })?;
    let at = block.find("[default: ")? + "[default: ".len();
    let len = block[at..].find(']')?;
    Some(block[at..at + len].to_string())
}

struct Manifest {
    deployment: Yaml,
    service: Yaml,
}

impl Manifest {
    fn load() -> Self {
        let docs = YamlLoader::load_from_str(MANIFEST).expect("deploy/router.yaml is YAML");
        let kinds: Vec<&str> = docs.iter().map(|d| str_of(&d["kind"], "kind")).collect();
        assert_eq!(
            kinds,
            ["Deployment", "Service"],
            "router.yaml holds a Deployment and a Service, nothing else"
        );
        let mut docs = docs.into_iter();
        Manifest {
            deployment: docs.next().unwrap(),
            service: docs.next().unwrap(),
        }
    }

    fn pod(&self) -> &Yaml {
        &self.deployment["spec"]["template"]
    }

    fn container(&self) -> &Yaml {
        let containers = vec_of(&self.pod()["spec"]["containers"], "containers");
        assert_eq!(containers.len(), 1, "one container, the router");
        &containers[0]
    }

    /// The container's args, as flag -> value ("" for a flag without one).
    fn args(&self) -> Vec<(String, String)> {
        let args: Vec<&str> = vec_of(&self.container()["args"], "args")
            .iter()
            .map(|a| str_of(a, "an arg"))
            .collect();
        let mut out = Vec::new();
        let mut i = 0;
        while i < args.len() {
            let a = args[i];
            assert!(
                a.starts_with("--"),
                "arg {a:?}: serve takes no positional arguments"
            );
            if let Some((flag, value)) = a.split_once('=') {
                out.push((flag.to_string(), value.to_string()));
            } else if args.get(i + 1).is_some_and(|v| !v.starts_with("--")) {
                out.push((a.to_string(), args[i + 1].to_string()));
                i += 1;
            } else {
                out.push((a.to_string(), String::new()));
            }
            i += 1;
        }
        out
    }

    fn arg(&self, flag: &str) -> Option<String> {
        self.args()
            .into_iter()
            .find(|(f, _)| f == flag)
            .map(|(_, v)| v)
    }

    /// The port of an `ADDR:PORT` flag in the args.
    fn arg_port(&self, flag: &str) -> i64 {
        let addr = self
            .arg(flag)
            .unwrap_or_else(|| panic!("the container args set {flag}"));
        addr.rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or_else(|| panic!("{flag} {addr:?} is ADDR:PORT"))
    }

    /// The containerPort named `name`.
    fn container_port(&self, name: &str) -> i64 {
        vec_of(&self.container()["ports"], "ports")
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["containerPort"].as_i64())
            .unwrap_or_else(|| panic!("a containerPort named {name:?}"))
    }

    /// A port reference (a number, or the name of a container port) as a number.
    fn resolve_port(&self, port: &Yaml) -> i64 {
        match port {
            Yaml::Integer(n) => *n,
            Yaml::String(name) => self.container_port(name),
            other => panic!("not a port: {other:?}"),
        }
    }

    /// The container's env, as name -> the entry.
    fn env(&self) -> Vec<(&str, &Yaml)> {
        vec_of(&self.container()["env"], "env")
            .iter()
            .map(|e| (str_of(&e["name"], "env name"), e))
            .collect()
    }

    fn env_value(&self, name: &str) -> &str {
        let (_, e) = self
            .env()
            .into_iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("the container sets {name}"));
        str_of(&e["value"], name)
    }

    fn annotation(&self, key: &str) -> &str {
        let a = &self.pod()["metadata"]["annotations"][key];
        str_of(a, key)
    }

    /// TLS is on: the cert and key are given and --plaintext is not.
    fn serves_tls(&self) -> bool {
        let names: Vec<&str> = self.env().into_iter().map(|(n, _)| n).collect();
        names.contains(&"EXTERNAL_CERT_PEM")
            && names.contains(&"EXTERNAL_KEY_PEM")
            && self.arg("--plaintext").is_none()
    }
}

fn str_of<'a>(y: &'a Yaml, what: &str) -> &'a str {
    y.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {y:?}"))
}

fn vec_of<'a>(y: &'a Yaml, what: &str) -> &'a Vec<Yaml> {
    y.as_vec()
        .unwrap_or_else(|| panic!("{what}: expected a list, got {y:?}"))
}

#[test]
fn container_args_are_serve_flags() {
    let m = Manifest::load();
    let flags = serve_flags();
    assert!(
        flags.contains_key("--listen"),
        "parsed serve --help: {flags:?}"
    );
    let mut unknown = Vec::new();
    for (flag, value) in m.args() {
        match flags.get(&flag) {
            None => unknown.push(flag),
            Some(&takes_value) => assert_eq!(
                takes_value,
                !value.is_empty(),
                "{flag}: a value where serve takes none, or none where it takes one"
            ),
        }
    }
    assert!(
        unknown.is_empty(),
        "router.yaml passes flags that `serve` does not have: {unknown:?}\n{}",
        serve_help()
    );
}

#[test]
fn env_is_what_serve_reads() {
    let m = Manifest::load();
    let help = serve_help();
    let env = m.env();
    for (name, entry) in &env {
        assert!(
            SERVE_ENV.contains(name),
            "router.yaml sets {name}, which serve does not read"
        );
        assert!(
            help.contains(name),
            "serve --help does not mention {name}:\n{help}"
        );
        let (value, value_from) = (
            entry["value"].as_str().is_some(),
            !entry["valueFrom"].is_badvalue(),
        );
        assert!(
            value ^ value_from,
            "{name}: exactly one of value and valueFrom"
        );
    }
    for name in SERVE_ENV {
        assert!(
            env.iter().any(|(n, _)| n == name),
            "router.yaml does not set {name}"
        );
    }
    // The key comes from a Secret, never a literal in the manifest.
    let (_, key) = env.iter().find(|(n, _)| *n == "ROUTER_KEY").unwrap();
    let r = &key["valueFrom"]["secretKeyRef"];
    str_of(&r["name"], "ROUTER_KEY secretKeyRef name");
    str_of(&r["key"], "ROUTER_KEY secretKeyRef key");
}

#[test]
fn grpc_ports_agree() {
    let m = Manifest::load();
    let listen = m.arg_port("--listen");
    assert_eq!(
        m.container_port("grpc"),
        listen,
        "containerPort grpc vs --listen"
    );
    let ports = vec_of(&m.service["spec"]["ports"], "Service ports");
    let grpc = ports
        .iter()
        .find(|p| p["name"].as_str() == Some("grpc"))
        .expect("a Service port named grpc");
    assert_eq!(
        m.resolve_port(&grpc["targetPort"]),
        listen,
        "Service targetPort vs --listen"
    );
    for p in ports {
        let target = m.resolve_port(&p["targetPort"]);
        assert!(
            vec_of(&m.container()["ports"], "ports")
                .iter()
                .any(|c| c["containerPort"].as_i64() == Some(target)),
            "Service targetPort {target} is no containerPort"
        );
    }
    assert_eq!(
        m.service["spec"]["selector"], m.deployment["spec"]["selector"]["matchLabels"],
        "the Service selects the Deployment's pods"
    );
    let labels = m.pod()["metadata"]["labels"].as_hash().expect("pod labels");
    for (k, v) in m.service["spec"]["selector"].as_hash().expect("selector") {
        assert_eq!(labels.get(k), Some(v), "pod label {k:?}");
    }
}

#[test]
fn probes_hit_the_plaintext_health_port() {
    let m = Manifest::load();
    let health = m.arg_port("--health-listen");
    assert_eq!(
        m.container_port("health"),
        health,
        "containerPort health vs --health-listen"
    );
    for probe in ["livenessProbe", "readinessProbe"] {
        let port = &m.container()[probe]["grpc"]["port"];
        assert_eq!(
            m.resolve_port(port),
            health,
            "{probe} grpc port vs --health-listen"
        );
    }
    // The kubelet's gRPC probe speaks no TLS: with TLS on --listen it cannot probe that port.
    if m.serves_tls() {
        assert_ne!(
            health,
            m.arg_port("--listen"),
            "gRPC probes on the TLS port fail"
        );
    }
}

#[test]
fn metrics_port_agrees() {
    let m = Manifest::load();
    let metrics = m.arg_port("--metrics-listen");
    assert_eq!(
        m.container_port("metrics"),
        metrics,
        "containerPort metrics vs --metrics-listen"
    );
    assert_eq!(m.annotation("prometheus.io/scrape"), "true");
    assert_eq!(
        m.annotation("prometheus.io/port").parse::<i64>().ok(),
        Some(metrics),
        "prometheus.io/port vs --metrics-listen"
    );
    assert_eq!(m.annotation("prometheus.io/path"), "/metrics");
}

#[test]
fn tls_files_come_from_the_mounted_tls_secret() {
    let m = Manifest::load();
    let mounts = vec_of(&m.container()["volumeMounts"], "volumeMounts");
    let volumes = vec_of(&m.pod()["spec"]["volumes"], "volumes");
    for (name, file) in [
        ("EXTERNAL_CERT_PEM", "tls.crt"),
        ("EXTERNAL_KEY_PEM", "tls.key"),
    ] {
        let path = m.env_value(name);
        let mount = mounts
            .iter()
            .find(|v| {
                let dir = str_of(&v["mountPath"], "mountPath").trim_end_matches('/');
                path.strip_prefix(dir).and_then(|r| r.strip_prefix('/')) == Some(file)
            })
            .unwrap_or_else(|| panic!("{name}={path}: not {file} under a volumeMount"));
        let volume = str_of(&mount["name"], "volumeMount name");
        let secret = volumes
            .iter()
            .find(|v| v["name"].as_str() == Some(volume))
            .map(|v| &v["secret"])
            .unwrap_or_else(|| panic!("no volume {volume}"));
        str_of(&secret["secretName"], "the TLS volume's secretName");
        // kubernetes.io/tls keys, each file under its own key's name.
        assert!(
            secret["items"].is_badvalue(),
            "the TLS volume maps its keys: {file} may not be there"
        );
    }
}

#[test]
fn shutdown_grace_fits_in_the_termination_grace_period() {
    let m = Manifest::load();
    let grace: i64 = m
        .arg("--grace")
        .or_else(|| serve_default("--grace"))
        .expect("--grace in the args or a default in serve --help")
        .parse()
        .expect("--grace is seconds");
    let period = m.pod()["spec"]["terminationGracePeriodSeconds"]
        .as_i64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        period > grace,
        "terminationGracePeriodSeconds {period} must exceed serve's --grace {grace}"
    );
}

#[test]
fn runs_as_non_root_with_a_read_only_root() {
    let m = Manifest::load();
    let pod = &m.pod()["spec"]["securityContext"];
    let ctr = &m.container()["securityContext"];
    assert_eq!(pod["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(ctr["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(ctr["allowPrivilegeEscalation"].as_bool(), Some(false));
    let uid = pod["runAsUser"].as_i64().expect("runAsUser");
    assert_ne!(uid, 0);
    // The image's USER is the same non-root uid.
    let user = containerfile_instructions("USER")
        .last()
        .cloned()
        .expect("the Containerfile sets USER");
    assert_eq!(
        user.split(':').next().and_then(|u| u.parse::<i64>().ok()),
        Some(uid),
        "Containerfile USER {user} vs runAsUser {uid}"
    );
}

/// The arguments of every `INSTR` line of the Containerfile (continuations joined).
fn containerfile_instructions(instr: &str) -> Vec<String> {
    let joined = CONTAINERFILE.replace("\\\n", " ");
    joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (i, rest) = l.split_once(char::is_whitespace)?;
            i.eq_ignore_ascii_case(instr)
                .then(|| rest.trim().to_string())
        })
        .collect()
}

#[test]
fn containerfile_entrypoint_is_serve() {
    let entrypoint = containerfile_instructions("ENTRYPOINT")
        .last()
        .cloned()
        .expect("an ENTRYPOINT");
    // The exec form, a JSON array: the manifest's args follow it unchanged.
    let argv: Vec<String> =
        serde_json::from_str(&entrypoint).expect("ENTRYPOINT in exec form (a JSON array)");
    assert_eq!(
        argv.last().map(String::as_str),
        Some("serve"),
        "ENTRYPOINT {argv:?}"
    );
    assert_eq!(argv.len(), 2, "ENTRYPOINT is the binary and `serve`");
    assert!(
        argv[0].ends_with("/jumpstarter-router"),
        "ENTRYPOINT runs {}",
        argv[0]
    );
    // ... the binary the run stage copies there, built with the CLI and the Kubernetes client
    // (`kube` includes `cli`): under the operator it reads the ConfigMap.
    assert!(
        containerfile_instructions("COPY")
            .iter()
            .any(|c| c.starts_with("--from=") && c.ends_with(&argv[0])),
        "no COPY --from=... {}",
        argv[0]
    );
    assert!(
        containerfile_instructions("RUN").iter().any(|r| {
            r.contains("cargo build")
                && r.contains("--release")
                && r.contains("--locked")
                && r.contains("--features kube")
        }),
        "no `cargo build --release --locked --features kube`"
    );
    assert!(
        containerfile_instructions("CMD").is_empty(),
        "a CMD would be appended to `serve` when the manifest gives no args"
    );
    // Every port of the manifest's container is EXPOSEd.
    let exposed: Vec<i64> = containerfile_instructions("EXPOSE")
        .iter()
        .flat_map(|e| e.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .map(|p| p.split('/').next().unwrap().parse().expect("EXPOSE port"))
        .collect();
    let m = Manifest::load();
    for p in vec_of(&m.container()["ports"], "ports") {
        let port = p["containerPort"].as_i64().expect("containerPort");
        assert!(
            exposed.contains(&port),
            "containerPort {port} not EXPOSEd: {exposed:?}"
        );
    }
}
