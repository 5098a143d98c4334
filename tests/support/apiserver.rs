//! A stand-in Kubernetes API server on loopback: it serves one ConfigMap,
//! `jumpstarter-controller` in one namespace, as the real one does (`GET
//! /api/v1/namespaces/NS/configmaps/NAME`, JSON, a `Status` 404 for anything else), and
//! records each request. With [`ApiServer::kubeconfig`], the router reaches it as a pod
//! reaches its cluster's.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The bearer token of the kubeconfig (a service account's, in a pod).
pub const TOKEN: &str = "stand-in-service-account-token";

/// One request the API server answered.
#[derive(Clone, Debug)]
pub struct Seen {
    /// `GET /api/v1/... HTTP/1.1`
    pub line: String,
    pub authorization: Option<String>,
}

pub struct ApiServer {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The controller configuration as jumpstarter 0.9.0's operator writes it (`buildConfig`,
/// marshalled by sigs.k8s.io/yaml: keys sorted, durations as Go prints them), with
/// `keepalive` as the body of its `grpc.keepalive` section. A `Jumpstarter` resource without
/// keepalive settings gives `minTime: 1s` and `permitWithoutStream: true` alone.
pub fn operator_config(keepalive: &[(&str, &str)]) -> String {
    let mut ka: Vec<(&str, &str)> = vec![("minTime", "1s"), ("permitWithoutStream", "true")];
    for (k, v) in keepalive {
        match ka.iter_mut().find(|(name, _)| name == k) {
            Some(slot) => slot.1 = v,
            None => ka.push((k, v)),
        }
    }
    ka.sort();
    let mut s = String::from(
        "authentication:\n  internal:\n    prefix: 'internal:'\n  jwt: []\ndeprecatedLabels: {}\ngrpc:\n  keepalive:\n",
    );
    for (k, v) in ka {
        s += &format!("    {k}: {v}\n");
    }
    s += "hiddenLabels: {}\nleasePolicy: {}\nprovisioning:\n  enabled: false\n";
    s
}

/// A JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::from('"');
    for c in s.chars() {
        match c {
            '"' => out += "\\\"",
            '\\' => out += "\\\\",
            '\n' => out += "\\n",
            c if (c as u32) < 0x20 => out += &format!("\\u{:04x}", c as u32),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl ApiServer {
    /// Serves the ConfigMap `jumpstarter-controller` in `namespace` with `config` as its
    /// `config` key (`None`: no such ConfigMap).
    pub async fn start(namespace: &str, config: Option<String>) -> ApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let path = format!("/api/v1/namespaces/{namespace}/configmaps/jumpstarter-controller");
        let found = config.map(|c| {
            format!(
                r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"jumpstarter-controller","namespace":{},"resourceVersion":"1"}},"data":{{"config":{},"router":"default:\n  endpoint: router.example.com:443\n"}}}}"#,
                json_string(namespace),
                json_string(&c)
            )
        });
        let not_found = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"configmaps \"jumpstarter-controller\" not found","reason":"NotFound","details":{"name":"jumpstarter-controller","kind":"configmaps"},"code":404}"#.to_string();
        let log = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    return;
                };
                let (path, found, not_found, log) =
                    (path.clone(), found.clone(), not_found.clone(), log.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let line = head.lines().next().unwrap_or_default().to_string();
                    let authorization = head.lines().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("authorization")
                            .then(|| v.trim().to_string())
                    });
                    let target = line.split(' ').nth(1).unwrap_or_default();
                    let (status, body) = match (&found, target.split('?').next() == Some(&path)) {
                        (Some(body), true) => ("200 OK", body.clone()),
                        _ => ("404 Not Found", not_found),
                    };
                    log.lock().unwrap().push(Seen {
                        line,
                        authorization,
                    });
                    let response = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tcp.write_all(response.as_bytes()).await;
                    let _ = tcp.shutdown().await;
                });
            }
        });
        ApiServer { addr, seen, task }
    }

    /// Writes a kubeconfig for this server (plain HTTP, the bearer token [`TOKEN`]) into
    /// `dir`; returns its path.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: stand-in\n  cluster:\n    server: http://{}\ncontexts:\n- name: stand-in\n  context:\n    cluster: stand-in\n    user: router\ncurrent-context: stand-in\nusers:\n- name: router\n  user:\n    token: {TOKEN}\n",
            self.addr
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The requests so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}
