//! The image under Jumpstarter's operator: deploy/operator-router.yaml is the Deployment the
//! operator makes (`command: ["/router"]`, no arguments, its env and ports), and the binary,
//! started exactly that way (by the name `router`, with that env, nothing else), serves the
//! router with TLS on :8083, metrics on :8080 and gRPC health on :8081, logs JSON as the Go
//! router does, says which Go flags it ignores, and stops cleanly on SIGTERM.
//!
//! The ports are the operator's, fixed: the test fails with a clear message when one is taken.
#![cfg(feature = "cli")]

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use serde_json::Value;
use support::process::{scrape, Proc, BIN};
use support::*;
use tokio::sync::mpsc;
use yaml_rust2::{Yaml, YamlLoader};

const MANIFEST: &str = include_str!("../deploy/operator-router.yaml");
const CONTAINERFILE: &str = include_str!("../deploy/Containerfile");

fn container() -> Yaml {
    let docs = YamlLoader::load_from_str(MANIFEST).expect("the operator manifest is YAML");
    docs[0]["spec"]["template"]["spec"]["containers"][0].clone()
}

/// The container's env: name -> literal value (or `from:` what it is taken from).
fn env() -> Vec<(String, String)> {
    let c = container();
    c["env"]
        .as_vec()
        .expect("env")
        .iter()
        .map(|e| {
            let name = e["name"].as_str().expect("env name").to_string();
            let value = match e["value"].as_str() {
                Some(v) => v.to_string(),
                None => format!("from:{:?}", e["valueFrom"].as_hash().map(|h| h.len())),
            };
            (name, value)
        })
        .collect()
}

#[test]
fn the_manifest_is_the_operators_router_deployment() {
    let c = container();
    let command: Vec<&str> = c["command"]
        .as_vec()
        .expect("a command")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(command, ["/router"]);
    assert!(c["args"].is_badvalue(), "the operator passes no arguments");
    let names: Vec<String> = env().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "GRPC_ROUTER_ENDPOINT",
            "ROUTER_KEY",
            "NAMESPACE",
            "EXTERNAL_CERT_PEM",
            "EXTERNAL_KEY_PEM"
        ]
    );
    let env: std::collections::HashMap<_, _> = env().into_iter().collect();
    assert_eq!(env["EXTERNAL_CERT_PEM"], "/tls/tls.crt");
    assert_eq!(env["EXTERNAL_KEY_PEM"], "/tls/tls.key");
    let ports: Vec<(i64, &str)> = c["ports"]
        .as_vec()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["containerPort"].as_i64().unwrap(),
                p["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(ports, [(8083, "grpc"), (8080, "metrics"), (8081, "health")]);
    let docs = YamlLoader::load_from_str(MANIFEST).unwrap();
    let pod = &docs[0]["spec"]["template"]["spec"];
    // The router's grace after SIGTERM (25 s) ends before the kubelet's SIGKILL.
    assert_eq!(pod["terminationGracePeriodSeconds"].as_i64(), Some(30));
    assert!(c["readinessProbe"].is_badvalue() && c["livenessProbe"].is_badvalue());
}

#[test]
fn the_image_has_router_at_the_root() {
    assert!(
        CONTAINERFILE
            .lines()
            .any(|l| l.starts_with("COPY") && l.trim_end().ends_with(" /router")),
        "deploy/Containerfile must put the binary at /router"
    );
}

/// The binary started as the operator starts it: a `router` link to it, no arguments, the
/// manifest's env (the Secret's key, the pod's namespace, the endpoint, a mounted TLS pair).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_as_router_it_serves_as_the_operator_expects() {
    for port in [8083, 8080, 8081] {
        assert!(
            std::net::TcpListener::bind(("0.0.0.0", port)).is_ok(),
            "port {port} is taken on this machine: the operator's ports are fixed, free it to run this test"
        );
    }
    let tmp = TempDir::new("operator");
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("tls")).unwrap();
    let router = dir.join("router");
    std::os::unix::fs::symlink(BIN, &router).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_pem = ck.cert.pem();
    std::fs::write(dir.join("tls/tls.crt"), &cert_pem).unwrap();
    std::fs::write(dir.join("tls/tls.key"), ck.signing_key.serialize_pem()).unwrap();

    // With the `kube` feature, the pod's credentials reach a stand-in API server that serves
    // the operator's ConfigMap, with a PING every second and two seconds to answer.
    #[cfg(feature = "kube")]
    let api = support::apiserver::ApiServer::start(
        "jumpstarter-lab",
        Some(support::apiserver::operator_config(&[
            ("intervalTime", "1s"),
            ("timeout", "2s"),
        ])),
    )
    .await;
    let mut cmd = Command::new(&router);
    cmd.env_clear()
        .env("GRPC_ROUTER_ENDPOINT", "localhost:8083")
        .env("ROUTER_KEY", KEY)
        .env("NAMESPACE", "jumpstarter-lab")
        .env("EXTERNAL_CERT_PEM", dir.join("tls/tls.crt"))
        .env("EXTERNAL_KEY_PEM", dir.join("tls/tls.key"));
    #[cfg(feature = "kube")]
    cmd.env("KUBECONFIG", api.kubeconfig(dir));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = Proc(cmd.spawn().expect("start the router as /router"));
    let stderr = child.0.stderr.take().unwrap();
    let (tx, mut logs) = mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // JSON logs, as the Go router's zap; the ports said; the NAMESPACE caveat said.
    let mut seen = Vec::new();
    within(20, "the router to listen", async {
        loop {
            let line = logs
                .recv()
                .await
                .expect("the router exited before it listened");
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
            let message = v["message"].as_str().unwrap_or_default().to_string();
            seen.push(message.clone());
            if message == "router listening" {
                break;
            }
        }
    })
    .await;
    assert!(
        seen.iter().any(|m| m.contains("started as /router")),
        "{seen:?}"
    );
    if cfg!(feature = "kube") {
        assert!(
            seen.iter()
                .any(|m| m.contains("keepalive configuration read")),
            "{seen:?}"
        );
    } else {
        assert!(
            seen.iter().any(|m| m.contains("ConfigMap is not read")),
            "{seen:?}"
        );
    }
    #[cfg(feature = "kube")]
    {
        let asked = api.requests();
        assert_eq!(
            asked.first().map(|s| s.line.as_str()),
            Some(
                "GET /api/v1/namespaces/jumpstarter-lab/configmaps/jumpstarter-controller HTTP/1.1"
            ),
            "{asked:?}"
        );
        // The ConfigMap's settings on the wire, through TLS on :8083: a client that does not
        // answer gets a PING after about 1 s of quiet, and is closed about 2 s later.
        use support::wire::{Pings, RawH2};
        let mut c = RawH2::connect_tls(
            SocketAddr::from(([127, 0, 0, 1], 8083)),
            "localhost",
            cert_pem.as_bytes(),
            Pings::Ignore,
        )
        .await;
        let first = c.first_ping(10).await;
        assert!(
            (0.5..5.0).contains(&first),
            "first PING after {first:.2} s (intervalTime 1s)"
        );
        let closed = c.closed(20, "the unanswering connection to close").await - first;
        assert!(
            (1.5..15.0).contains(&closed),
            "closed {closed:.2} s after the PING (timeout 2s)"
        );
    }

    // Metrics on :8080, health on :8081 (plaintext gRPC), the router on :8083 with the TLS pair.
    let metrics = scrape(SocketAddr::from(([127, 0, 0, 1], 8080))).await;
    assert_eq!(metrics.get("jumpstarter_router_active_pairs"), Some(&0.0));
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Endpoint::from_static("http://127.0.0.1:8081")
            .connect()
            .await
            .expect("the health port"),
    );
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("a health answer")
        .into_inner()
        .status();
    assert_eq!(
        serving,
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    let client = jumpstarter_router::ClientBuilder::new("https://localhost:8083")
        .ca_certificate_pem(cert_pem.as_bytes().to_vec());
    let token = token("operator-session");
    let (mut a, mut b) = pair_up_with(&client, &token, b"hello through /router").await;
    send_and_finish(&mut a, &mut b, b" and done").await;
    send_and_finish(&mut b, &mut a, b"bye").await;
    within(10, "a to close", a.close()).await.unwrap();
    within(10, "b to close", b.close()).await.unwrap();

    // SIGTERM: a clean exit.
    assert!(Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap()
        .success());
    let mut child = child;
    let status = within(40, "the router to exit", async {
        tokio::task::spawn_blocking(move || child.0.wait().unwrap())
            .await
            .unwrap()
    })
    .await;
    assert!(status.success(), "{status:?}");
}

/// The Go router's flags, as the operator may pass them: taken, and the ones without effect
/// here said in the log; a flag the Go router does not have is refused with Go's words.
#[test]
fn go_flags_are_taken_and_unknown_ones_refused() {
    let dir = TempDir::new("flags");
    let router = dir.path().join("router");
    std::os::unix::fs::symlink(BIN, &router).unwrap();
    let out = Command::new(&router)
        .env_clear()
        .args(["-listen=:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("flag provided but not defined: -listen"),
        "{err}"
    );
    // Without ROUTER_KEY the router stops at once with its reason, after saying which flags
    // it ignores: enough to see the flags taken without binding the fixed ports.
    let out = Command::new(&router)
        .env_clear()
        .args([
            "--metrics-bind-address",
            ":18080",
            "-zap-encoder=console",
            "-zap-stacktrace-level=error",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("ROUTER_KEY"), "{err}");
    assert!(err.contains("metrics 0.0.0.0:18080"), "{err}");
    assert!(
        err.contains("ignoring a Go router flag") && err.contains("-zap-stacktrace-level=error"),
        "{err}"
    );
}
