//! The real proxies labs put in front of the router, for `tests/interop_proxy.rs`: Debian's
//! `nginx` configured as ingress-nginx renders a gRPC Ingress, and Debian's `haproxy` (2.6)
//! configured as the OpenShift router renders an edge, a re-encrypt or a passthrough route.
//! Each runs in the foreground with a configuration written into a temporary folder (its logs,
//! pid and temporary files go there too), listens on 127.0.0.1 only, and is killed when its
//! [`Proxy`] drops.
//!
//! The configurations follow their sources line by line where it matters (each setting says
//! where it comes from):
//! - ingress-nginx: `rootfs/etc/nginx/template/nginx.tmpl` and the defaults of
//!   `internal/ingress/controller/config/config.go` (kubernetes/ingress-nginx), for an Ingress
//!   with Jumpstarter's annotations (`controller/deploy/operator/internal/controller/
//!   jumpstarter/endpoints/ingress.go`: `backend-protocol: GRPC`, `proxy-read-timeout` and
//!   `proxy-send-timeout` `"300"`) and `proxy-body-size: "0"`, TLS terminated at nginx;
//! - the OpenShift router: `images/router/haproxy/conf/haproxy-config.template` and
//!   `pkg/router/template/util/util.go` (openshift/router) with its environment's defaults.
//!
//! Every timer that can end an open call is shortened to [`TIMER`] (3 s) so that the idle
//! cases take seconds, not minutes.
#![allow(dead_code, unreachable_pub)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::process::Proc;
pub use super::TempDir;

/// What to install when a proxy is missing.
pub const INSTALL: &str = "apt-get install nginx haproxy";

/// The proxies' idle timers, shortened from their defaults (nginx 60 s, Jumpstarter's
/// annotations 300 s, OpenShift 30 s).
pub const TIMER: Duration = Duration::from_secs(3);

/// `JMP_PROXY_STOCK=1`: the proxies' timers at their stock values instead (every timer of the
/// configuration at the one that ends a quiet call first: 60 s for ingress-nginx's
/// `client_body_timeout` and `grpc_read_timeout`, 30 s for OpenShift's `timeout server`), and
/// the router with its default pings: the idle cases as labs run them (minutes).
pub fn stock() -> bool {
    std::env::var_os("JMP_PROXY_STOCK").is_some_and(|v| v != "0" && !v.is_empty())
}

/// The timer of `route` in this run: [`TIMER`], or its stock value.
pub fn timer(route: Route) -> Duration {
    match (stock(), route) {
        (false, _) => TIMER,
        (true, Route::IngressNginx) => Duration::from_secs(60),
        (true, _) => Duration::from_secs(30),
    }
}

/// The host the tests dial: the name in the test certificate (and the route's host).
pub const HOST: &str = "localhost";

/// A proxy's binary: `PATH`, then the sbin folders (Debian puts both there). A missing one
/// fails the test with one line that says what to install.
pub fn binary(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed (the proxy tests run it): {INSTALL}"))
}

// ===== the configurations =====

/// How the lab reaches the router.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// nginx as ingress-nginx renders a `backend-protocol: GRPC` Ingress: TLS ends at nginx,
    /// `grpc_pass grpc://` to `serve --plaintext`.
    IngressNginx,
    /// HAProxy as an OpenShift edge route: TLS ends at HAProxy, h2 (`proto h2`) to
    /// `serve --plaintext`.
    Edge,
    /// HAProxy as an OpenShift re-encrypt route: TLS ends at HAProxy, TLS (ALPN h2) again to
    /// `serve` with its own certificate.
    Reencrypt,
    /// HAProxy as an OpenShift passthrough route (`mode tcp` on the SNI), as Jumpstarter's
    /// operator makes them (and ingress-nginx's `ssl-passthrough` works the same way): TLS
    /// from the peer to `serve`.
    Passthrough,
}

impl Route {
    pub const ALL: [Route; 4] = [
        Route::IngressNginx,
        Route::Edge,
        Route::Reencrypt,
        Route::Passthrough,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Route::IngressNginx => "nginx-tls",
            Route::Edge => "haproxy-edge",
            Route::Reencrypt => "haproxy-reencrypt",
            Route::Passthrough => "haproxy-passthrough",
        }
    }

    /// Whether `serve` speaks TLS behind this proxy.
    pub fn router_tls(self) -> bool {
        matches!(self, Route::Reencrypt | Route::Passthrough)
    }

    /// The proxy's program.
    pub fn binary(self) -> &'static str {
        match self {
            Route::IngressNginx => "nginx",
            _ => "haproxy",
        }
    }
}

/// The certificate files a proxy serves (made by `harness.py certs` and `self-signed`).
pub struct Certs {
    /// The test CA (it signed `cert`); the peers and HAProxy's re-encrypt backend trust it.
    pub ca: String,
    /// The certificate and key for [`HOST`] (the route's own certificate, and `serve`'s).
    pub cert: String,
    pub key: String,
    /// The router's default certificate (OpenShift's wildcard `*.apps...`): cert and key in
    /// one PEM, for a name that is not [`HOST`].
    pub default_pem: String,
}

/// The nginx configuration ingress-nginx renders for the router's Ingress (see the module's
/// sources), as one server on `port`.
pub fn nginx_conf(dir: &TempDir, port: u16, router: SocketAddr, certs: &Certs) -> String {
    let t = timer(Route::IngressNginx).as_secs();
    let d = |name: &str| dir.file(name);
    // nginx switches its workers to `nobody` when started by root; the files here are the
    // test's, so the workers stay the current user.
    let user = if is_root() { "user root root;" } else { "" };
    format!(
        r##"# ingress-nginx's nginx.conf for one Ingress: backend-protocol GRPC, TLS at nginx.
{user}
worker_processes 1;
daemon off;
# The test's folder for everything nginx writes (ingress-nginx: /tmp/nginx/..., /var/log/nginx).
pid {pid};
# ingress-nginx: error-log-level notice; info shows the "timed out" lines of the idle cases.
error_log {error_log} info;
events {{
    # ingress-nginx: multi_accept on, worker_connections 16384 (max-worker-connections).
    multi_accept on;
    worker_connections 1024;
}}
http {{
    access_log {access_log};
    client_body_temp_path {client_body};
    proxy_temp_path {proxy_temp};
    fastcgi_temp_path {fastcgi_temp};
    uwsgi_temp_path {uwsgi_temp};
    scgi_temp_path {scgi_temp};

    # nginx.tmpl's http block.
    tcp_nopush on;
    tcp_nodelay on;
    reset_timedout_connection on;
    # keep-alive: 75 s (ingress-nginx's default); with HTTP/2 the idle connection's timer.
    keepalive_timeout {t}s;
    keepalive_requests 1000;
    client_header_buffer_size 1k;
    # client-header-timeout: 60 s.
    client_header_timeout {t}s;
    large_client_header_buffers 4 8k;
    client_body_buffer_size 8k;
    # client-body-timeout: 60 s. Between two reads of a request body: a caller that sends
    # nothing (waiting for its peer, idle) meets it.
    client_body_timeout {t}s;
    http2_max_concurrent_streams 128;
    server_tokens off;

    # ssl-protocols "TLSv1.2 TLSv1.3", ssl-session-cache 10m, ssl-session-timeout 10m,
    # ssl-session-tickets false.
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    ssl_session_timeout 10m;
    ssl_session_tickets off;
    ssl_prefer_server_ciphers on;

    # With upstream keepalive on (its default), an empty Connection: nginx sends none (a
    # `close` would be a connection-specific header, which HTTP/2 forbids: the router resets
    # such a request).
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        '' '';
    }}

    # ingress-nginx: `upstream upstream_balancer` (Lua picks the endpoint) with
    # upstream-keepalive-connections 320, -time 1h, -timeout 60 s, -requests 10000.
    upstream upstream_balancer {{
        server {router};
        keepalive 320;
        keepalive_time 1h;
        keepalive_timeout {t}s;
        keepalive_requests 10000;
    }}

    server {{
        server_name {HOST};
        # TLS at nginx with the Ingress's Secret; use-http2 true. (nginx 1.22, Debian
        # bookworm: `http2` on `listen`; ingress-nginx's nginx 1.25 writes `http2 on;`.)
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};

        location / {{
            set $proxy_upstream_name "jumpstarter-router-8083";
            # proxy-body-size "0": no limit (the default 1m cuts a session at 1 MiB sent).
            client_max_body_size 0;
            grpc_set_header Host $best_http_host;
            grpc_set_header Upgrade $http_upgrade;
            grpc_set_header Connection $connection_upgrade;
            grpc_set_header X-Real-IP $remote_addr;
            grpc_set_header X-Forwarded-For $remote_addr;
            grpc_set_header X-Forwarded-Host $best_http_host;
            grpc_set_header X-Forwarded-Port $server_port;
            grpc_set_header X-Forwarded-Proto $scheme;
            grpc_set_header X-Forwarded-Scheme $scheme;
            grpc_set_header X-Scheme $scheme;
            grpc_set_header Proxy "";
            # proxy-request-buffering on, proxy-buffering off (grpc_pass streams either way).
            proxy_request_buffering on;
            proxy_buffering off;
            # "# Grpc settings": proxy-connect-timeout 5 s; proxy-send-timeout and
            # proxy-read-timeout from Jumpstarter's annotations, "300" (default 60).
            grpc_connect_timeout 5s;
            grpc_send_timeout {t}s;
            grpc_read_timeout {t}s;
            grpc_pass grpc://upstream_balancer;
        }}
    }}

    # nginx.tmpl's $best_http_host.
    map $http_host $best_http_host {{
        default $http_host;
        '' $host;
    }}
}}
"##,
        pid = d("nginx.pid"),
        error_log = d("error.log"),
        access_log = d("access.log"),
        client_body = d("client-body"),
        proxy_temp = d("proxy-temp"),
        fastcgi_temp = d("fastcgi-temp"),
        uwsgi_temp = d("uwsgi-temp"),
        scgi_temp = d("scgi-temp"),
        cert = certs.cert,
        key = certs.key,
    )
}

/// The OpenShift router's `haproxy.config` with one route of `kind` to `router` (see the
/// module's sources), its front door on `port`, and the map files it reads; writes the maps
/// and the certificate list into `dir`.
pub fn haproxy_conf(
    dir: &TempDir,
    route: Route,
    port: u16,
    router: SocketAddr,
    certs: &Certs,
) -> String {
    let t = timer(route).as_secs();
    let d = |name: &str| dir.file(name);
    // GenerateRouteRegexp(host, "", false): the route's host, any port, any path.
    let host_re = format!("^{HOST}\\.?(:[0-9]+)?(/.*)?$");
    // The backend's name: genBackendNamePrefix(termination):namespace:route.
    let backend = match route {
        Route::Edge => "be_edge_http:jumpstarter:jumpstarter-router-route",
        Route::Reencrypt => "be_secure:jumpstarter:jumpstarter-router-route",
        Route::Passthrough => "be_tcp:jumpstarter:jumpstarter-router-route",
        Route::IngressNginx => unreachable!("not an HAProxy route"),
    };
    // The maps the router writes for one route (configmanager/haproxy/manager.go).
    let (edge_reencrypt, tcp, passthrough) = match route {
        Route::Edge => (
            format!("{host_re} {backend}\n"),
            String::new(),
            String::new(),
        ),
        Route::Reencrypt => (
            format!("{host_re} {backend}\n"),
            format!("{host_re} {backend}\n"),
            String::new(),
        ),
        _ => (
            String::new(),
            format!("{host_re} {backend}\n"),
            format!("{host_re} 1\n"),
        ),
    };
    // The route's own certificate (cert and key in one file) in cert_config.map, a crt-list
    // whose entries get `[alpn h2,http/1.1]` (template_helper.go): routes with their own
    // certificate speak HTTP/2 to clients; the default certificate's binds offer no ALPN.
    let route_pem = d("route.pem");
    let pem = [
        std::fs::read_to_string(&certs.cert).unwrap(),
        std::fs::read_to_string(&certs.key).unwrap(),
    ]
    .concat();
    std::fs::write(&route_pem, pem).unwrap();
    let files = [
        ("os_edge_reencrypt_be.map", edge_reencrypt),
        ("os_tcp_be.map", tcp),
        ("os_sni_passthrough.map", passthrough),
        (
            "cert_config.map",
            format!("{route_pem} [alpn h2,http/1.1] {HOST}\n"),
        ),
    ];
    for (name, text) in files {
        std::fs::write(d(name), text).unwrap();
    }
    let server = match route {
        // An endpoint whose Service port has appProtocol h2c gets `proto h2`; without it
        // HAProxy speaks HTTP/1.1 to the pod, which gRPC cannot use.
        Route::Edge => {
            format!("server pod:jumpstarter-router:8083 {router} cookie 1f8bc9d5 weight 1 proto h2")
        }
        // A re-encrypt route with a destinationCACertificate: `ssl alpn h2,http/1.1` (HTTP/2
        // not disabled), `verify required ca-file` the route's destination CA.
        Route::Reencrypt => format!(
            "server pod:jumpstarter-router:8083 {router} cookie 1f8bc9d5 weight 1 ssl alpn \
             h2,http/1.1 verify required ca-file {}",
            certs.ca
        ),
        _ => format!("server pod:jumpstarter-router:8083 {router} weight 1"),
    };
    let backend_section = if route == Route::Passthrough {
        format!(
            r#"# Secure backend, pass through
backend {backend}
  balance source
  hash-type consistent
  timeout check 5000ms
  {server}
"#
        )
    } else {
        format!(
            r#"# Plain http backend or backend with TLS terminated at the edge or a
# secure backend with re-encryption.
backend {backend}
  mode http
  option redispatch
  option forwardfor
  balance random
  timeout check 5000ms
  http-request add-header X-Forwarded-Host %[req.hdr(host)]
  http-request add-header X-Forwarded-Port %[dst_port]
  http-request add-header X-Forwarded-Proto http if !{{ ssl_fc }}
  http-request add-header X-Forwarded-Proto https if {{ ssl_fc }}
  http-request add-header X-Forwarded-Proto-Version h2 if {{ ssl_fc_alpn -i h2 }}
  acl ipv6_addr src -m sub :
  http-request add-header Forwarded for=\"[%[src]]\";host=%[req.hdr(host)];proto=%[req.hdr(X-Forwarded-Proto)] if ipv6_addr
  http-request add-header Forwarded for=%[src];host=%[req.hdr(host)];proto=%[req.hdr(X-Forwarded-Proto)] if !ipv6_addr
  cookie 0b7b1e6a7d2d8e4c insert indirect nocache httponly secure attr SameSite=None
  {server}
"#
        )
    };
    format!(
        r#"# The OpenShift router's haproxy.config (haproxy-config.template) for one route.
global
  # Drop resource limit checks to mitigate https://issues.redhat.com/browse/OCPBUGS-21803 in HAProxy 2.6.
  no strict-limits
  # ROUTER_MAX_CONNECTIONS: 50000; here what the test machine's open-file limit allows.
  maxconn 2000
  # The router logs to ROUTER_SYSLOG_ADDRESS when set; here to stderr (the test's log file).
  log stderr format short local1 info
  tune.maxrewrite 8192
  tune.bufsize 32768
  ssl-default-bind-options ssl-min-ver TLSv1.2
  tune.ssl.default-dh-param 2048

defaults
  maxconn 2000
  log global
  option httplog
  # ROUTER_DEFAULT_CONNECT_TIMEOUT 5s.
  timeout connect 5s
  # ROUTER_DEFAULT_CLIENT_TIMEOUT and ROUTER_DEFAULT_SERVER_TIMEOUT: 30s (`timeout server`
  # counts only stream data, not HTTP/2 PINGs).
  timeout client {t}s
  timeout server {t}s
  # ROUTER_CLIENT_FIN_TIMEOUT, ROUTER_DEFAULT_SERVER_FIN_TIMEOUT: 1s.
  timeout client-fin 1s
  timeout server-fin 1s
  # ROUTER_SLOWLORIS_TIMEOUT 10s, ROUTER_SLOWLORIS_HTTP_KEEPALIVE 300s.
  timeout http-request {t}s
  timeout http-keep-alive {t}s
  # ROUTER_DEFAULT_TUNNEL_TIMEOUT 1h: TCP-mode connections once forwarding (the TLS
  # passthrough, and the hop from public_ssl to fe_sni). Jumpstarter's operator annotates its
  # passthrough routes with haproxy.router.openshift.io/timeout and timeout-tunnel "2d".
  timeout tunnel {t}s

# public ssl accepts all connections and isn't checking certificates yet certificates to use will be
# determined by the next backend in the chain which may be an app backend (passthrough termination) or a backend
# that terminates encryption in this router (edge)
frontend public_ssl
  option tcplog
  bind 127.0.0.1:{port}
  tcp-request inspect-delay 5s
  tcp-request content accept if {{ req_ssl_hello_type 1 }}
  acl sni req.ssl_sni -m found
  acl sni_passthrough req.ssl_sni,lower,map_reg({passthrough_map}) -m found
  use_backend %[req.ssl_sni,lower,map_reg({tcp_map})] if sni sni_passthrough
  use_backend be_sni if sni
  default_backend be_no_sni

backend be_sni
  server fe_sni unix@{sni_sock} weight 1 send-proxy

frontend fe_sni
  # terminate ssl on edge (the template's `no-alpn` is HAProxy 2.8's; 2.6 offers no ALPN
  # unless told, which is the same)
  bind unix@{sni_sock} ssl crt {default_pem} crt-list {crt_list} accept-proxy
  mode http
  # Mitigate CVE-2023-40225 (Proxy forwards malformed empty Content-Length headers)
  http-request deny if {{ hdr_len(content-length) 0 }}
  http-request del-header Proxy
  http-request del-header X-SSL
  http-request del-header X-SSL-Client-CN
  http-request del-header X-SSL-Client-DER
  http-request del-header X-SSL-Client-DN
  http-request set-header Host %[req.hdr(Host),lower]
  use_backend %[base,map_reg({edge_map})]
  default_backend openshift_default

backend be_no_sni
  server fe_no_sni unix@{no_sni_sock} weight 1 send-proxy

frontend fe_no_sni
  bind unix@{no_sni_sock} ssl crt {default_pem} accept-proxy
  mode http
  http-request deny if {{ hdr_len(content-length) 0 }}
  http-request del-header Proxy
  http-request set-header Host %[req.hdr(Host),lower]
  use_backend %[base,map_reg({edge_map})]
  default_backend openshift_default

backend openshift_default
  mode http
  option forwardfor
  option http-pretend-keepalive

{backend_section}"#,
        passthrough_map = d("os_sni_passthrough.map"),
        tcp_map = d("os_tcp_be.map"),
        edge_map = d("os_edge_reencrypt_be.map"),
        crt_list = d("cert_config.map"),
        sni_sock = d("haproxy-sni.sock"),
        no_sni_sock = d("haproxy-no-sni.sock"),
        default_pem = certs.default_pem,
    )
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        == Some("0")
}

// ===== the running proxy =====

/// A proxy process in front of `serve`; killed (by its pid) when dropped.
pub struct Proxy {
    proc: Proc,
    pub route: Route,
    /// Its front door on 127.0.0.1.
    pub port: u16,
    /// Its log files.
    logs: Vec<PathBuf>,
}

impl Proxy {
    /// Writes the configuration of `route` into `dir` and starts the proxy in front of
    /// `router`; returns once it accepts connections on its port.
    pub async fn start(route: Route, dir: &TempDir, router: SocketAddr, certs: &Certs) -> Proxy {
        let bin = binary(route.binary());
        // A free port can be taken between its probe and the proxy's bind: try another.
        let mut tries = 0;
        loop {
            tries += 1;
            let port = free_port();
            let mut command = match route {
                Route::IngressNginx => {
                    let conf = dir.file("nginx.conf");
                    std::fs::write(&conf, nginx_conf(dir, port, router, certs)).unwrap();
                    let mut c = Command::new(&bin);
                    // -e: the log of nginx's start, before it reads `error_log`.
                    c.args(["-e", &dir.file("error.log"), "-c", &conf, "-p"])
                        .arg(dir.path());
                    c
                }
                _ => {
                    let conf = dir.file("haproxy.cfg");
                    std::fs::write(&conf, haproxy_conf(dir, route, port, router, certs)).unwrap();
                    let mut c = Command::new(&bin);
                    // -db: foreground, no daemon; its `log stderr` lines go to haproxy.out.
                    c.args(["-f", &conf, "-db"]);
                    c
                }
            };
            let out = dir.path().join(format!("{}.out", route.binary()));
            let mut logs = vec![out.clone()];
            if route == Route::IngressNginx {
                logs.extend(["error.log", "access.log"].map(|f| dir.path().join(f)));
            }
            let out = std::fs::File::create(&out).unwrap();
            let proc = Proc(
                command
                    .stdin(Stdio::null())
                    .stdout(out.try_clone().unwrap())
                    .stderr(out)
                    .spawn()
                    .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display())),
            );
            let mut proxy = Proxy {
                proc,
                route,
                port,
                logs,
            };
            if let Err(why) = until_listening(&mut proxy.proc, port).await {
                let text = proxy.logs();
                if tries < 5 && text.contains("in use") {
                    continue;
                }
                panic!("{} did not start ({why}):\n{text}", route.name());
            }
            return proxy;
        }
    }

    /// `localhost:PORT`: where the peers dial (the certificate's name).
    pub fn endpoint(&self) -> String {
        format!("{HOST}:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.proc.0.id()
    }

    /// Everything it logged so far.
    pub fn logs(&self) -> String {
        self.logs
            .iter()
            .filter_map(|p| {
                Some(format!(
                    "--- {}\n{}",
                    p.display(),
                    std::fs::read_to_string(p).ok()?
                ))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Proxy {
    /// Stops it by its pid: SIGTERM (nginx's master then stops its workers; a SIGKILL would
    /// leave them running, holding the port), and after 5 s SIGKILL for it and its children.
    fn drop(&mut self) {
        let pid = self.pid();
        let children = children_of(pid);
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if !matches!(self.proc.0.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.proc.0.kill();
        for child in children {
            let _ = Command::new("kill")
                .args(["-KILL", &child.to_string()])
                .status();
        }
    }
}

/// The pids whose parent is `pid` (from `/proc/*/stat`).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let child: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
        // `pid (comm) state ppid ...`: the fields after the last ')'.
        let ppid: u32 = stat
            .rsplit(')')
            .next()?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        (ppid == pid).then_some(child)
    })
    .collect()
}

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (at most 10 s) until the process accepts connections on `port`, or exits.
async fn until_listening(proc: &mut Proc, port: u16) -> Result<(), String> {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        if let Some(status) = proc.0.try_wait().unwrap() {
            return Err(format!("it exited: {status}"));
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            // Ours, not a stranger that took the port: still running.
            return match proc.0.try_wait().unwrap() {
                Some(status) => Err(format!("it exited: {status}")),
                None => Ok(()),
            };
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err("no listener within 10 s".into())
}
