//! `jumpstarter-router`: serve a Jumpstarter router, or tunnel TCP or stdio through one.

mod controller_config;
#[cfg(feature = "kube")]
mod kubernetes;
mod operator;
mod progress;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use jumpstarter_router::router::{Auth, Keepalive, Router, ServeConfig, TlsMode};
use jumpstarter_router::{ClientBuilder, RouterStream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use progress::{Counted, Progress};

/// How long a finished bridge waits for the router to end the call.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser, Debug)]
#[command(name = "jumpstarter-router", version, about = "Jumpstarter router protocol: serve a router, or tunnel TCP or stdio through one", long_about = None)]
struct Cli {
    /// Log format on stderr: text, or json (one object per line, for log collectors).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the router (a drop-in for Jumpstarter's Go router).
    ///
    /// Tokens are checked with the key in ROUTER_KEY. TLS: EXTERNAL_CERT_PEM / EXTERNAL_KEY_PEM
    /// (paths) when both are set, else a self-signed certificate for the host of
    /// GRPC_ROUTER_ENDPOINT (default localhost:8083); --plaintext turns TLS off.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value_t = ServeConfig::DEFAULT_LISTEN)]
        listen: SocketAddr,
        /// Serve without TLS (loopback, tests, or behind a TLS-terminating proxy).
        #[arg(long)]
        plaintext: bool,
        /// Seconds active streams may go on after SIGTERM/SIGINT.
        #[arg(long, default_value_t = ServeConfig::DEFAULT_GRACE.as_secs())]
        grace: u64,
        /// Drop a caller that waited this many seconds for its peer (default: until its
        /// token expires).
        #[arg(long)]
        pairing_timeout: Option<u64>,
        /// Seconds a new connection may take for its TLS handshake and HTTP/2 preface.
        #[arg(long, value_name = "SECS", default_value_t = jumpstarter_router::router::DEFAULT_HANDSHAKE_TIMEOUT.as_secs())]
        handshake_timeout: u64,
        /// At most this many callers wait for their peer at once; past it, a caller that would
        /// wait gets RESOURCE_EXHAUSTED (default: no cap).
        #[arg(long, value_name = "CALLERS")]
        max_pending: Option<usize>,
        /// At most this many callers of one client connection wait at once (default: no cap).
        #[arg(long, value_name = "CALLERS")]
        max_pending_per_connection: Option<usize>,
        /// Serve Prometheus metrics on http://ADDR/metrics (default: off).
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<SocketAddr>,
        /// Also serve grpc.health.v1.Health without TLS on ADDR, for probes that speak no TLS
        /// (the kubelet's); NOT_SERVING from the start of a graceful shutdown (default: off).
        #[arg(long, value_name = "ADDR")]
        health_listen: Option<SocketAddr>,
        /// Seconds between reads of the EXTERNAL_CERT_PEM / EXTERNAL_KEY_PEM files: a renewed
        /// pair (a Secret volume's ..data swap) is used for new connections without a restart,
        /// a bad one is refused with a log line (0: read once).
        #[arg(long, value_name = "SECS", env = "TLS_RELOAD_INTERVAL", default_value_t = ServeConfig::DEFAULT_TLS_RELOAD.as_secs())]
        tls_reload_interval: u64,
        /// Threads that serve the connections. 1 runs the whole router on one thread: the
        /// least CPU per message, since nothing wakes another thread (a fifth less than a
        /// worker per core in the real shape; see the README). More spread a busy router
        /// over cores.
        #[arg(long, value_name = "N", env = "JMP_ROUTER_WORKER_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
        worker_threads: u16,
        /// Batch the socket I/O under HTTP/2: bulk reads under load, the frames flushed one by
        /// one written together. `false` sends every read and flush to the socket as HTTP/2
        /// makes it: for debugging.
        #[arg(long, value_name = "BOOL", env = "JMP_ROUTER_BATCHED_IO", default_value_t = true, action = clap::ArgAction::Set)]
        batched_io: bool,
        #[command(flatten)]
        keepalive: Box<KeepaliveArgs>,
    },
    /// Client side: bridge stdin/stdout (or, with --listen, one TCP connection) to a router
    /// stream. Usable as `ssh -o ProxyCommand='jumpstarter-router connect ...'`.
    Connect {
        #[command(flatten)]
        client: ClientArgs,
        /// Accept one TCP connection on this address and bridge it instead of stdio.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Exporter side: bridge a router stream to a TCP target.
    Expose {
        #[command(flatten)]
        client: ClientArgs,
        /// The TCP service to expose, HOST:PORT.
        #[arg(long)]
        target: String,
    },
    /// Print a router token for a stream, signed with ROUTER_KEY (for local labs and tests).
    Token {
        /// The stream id (the token's subject).
        #[arg(long)]
        subject: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
}

/// The router's connection settings (grpc-go's server keepalive). A duration is a Go
/// duration ("10s", "3m0s") or a number of seconds. Each flag overrides the configuration
/// (--config or --kube-namespace), which overrides the defaults.
#[derive(Args, Debug, Default)]
#[command(next_help_heading = "Connection keepalive")]
struct KeepaliveArgs {
    /// Jumpstarter's controller configuration, YAML, as in the `config` key of the
    /// jumpstarter-controller ConfigMap: its grpc.keepalive section is read as the Go router
    /// reads it.
    #[arg(long, value_name = "FILE", env = "JMP_ROUTER_CONFIG")]
    config: Option<PathBuf>,
    /// Read the controller configuration from the jumpstarter-controller ConfigMap in this
    /// Kubernetes namespace (credentials: --kubeconfig, KUBECONFIG, ~/.kube/config, or the
    /// pod's service account). `/router` does this with $NAMESPACE, as the Go router does.
    #[cfg(feature = "kube")]
    #[arg(long, value_name = "NAMESPACE", conflicts_with = "config")]
    kube_namespace: Option<String>,
    /// The kubeconfig for --kube-namespace.
    #[cfg(feature = "kube")]
    #[arg(long, value_name = "FILE", requires = "kube_namespace")]
    kubeconfig: Option<PathBuf>,
    /// How often the router PINGs each client connection (intervalTime; 0: never)
    /// [default: 10s, the operator's].
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    keepalive_interval: Option<Duration>,
    /// How long a client has to answer a PING before its connection, with every call on it,
    /// is closed (timeout) [default: 180s, the operator's; long, for an exporter whose network
    /// is saturated while it flashes].
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    keepalive_timeout: Option<Duration>,
    /// Clients' PINGs closer together than this are strikes; past two in a row the client
    /// gets GOAWAY ENHANCE_YOUR_CALM "too_many_pings" (minTime) [default: 1s].
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    keepalive_min_time: Option<Duration>,
    /// Whether clients may PING with no call open (permitWithoutStream) [default: true].
    #[arg(long, value_name = "BOOL")]
    keepalive_permit_without_stream: Option<bool>,
    /// Close a connection gracefully after this long with no call open (maxConnectionIdle;
    /// 0: never) [default: never].
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    max_connection_idle: Option<Duration>,
    /// Send a connection this old a GOAWAY: no new calls, its calls go on
    /// (maxConnectionAge; 0: never) [default: never].
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    max_connection_age: Option<Duration>,
    /// Close a connection past its max age this long after its GOAWAY, with its calls
    /// (maxConnectionAgeGrace; 0: at once) [default: when its calls end].
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    max_connection_age_grace: Option<Duration>,
    /// Write a Jumpstarter PING frame on a call after this long with nothing sent to it, for
    /// proxies that count only stream data as activity (HAProxy, OpenShift routes: 30 s);
    /// Jumpstarter's peers skip PING frames (0: never) [default: 20s].
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    ping_frame_interval: Option<Duration>,
}

/// A Go duration, or a number of seconds.
fn duration(s: &str) -> Result<Duration, String> {
    match s.parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => controller_config::parse_go_duration(s),
    }
}

impl KeepaliveArgs {
    /// The settings: defaults, then the configuration, then the flags.
    async fn resolve(self) -> Result<Keepalive, String> {
        let mut k = Keepalive::default();
        let mut source = None;
        if let Some(path) = &self.config {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            source = Some((path.display().to_string(), text));
        }
        #[cfg(feature = "kube")]
        if let Some(ns) = &self.kube_namespace {
            let text = kubernetes::read_config(ns, self.kubeconfig.as_deref()).await?;
            source = Some((
                format!("ConfigMap {ns}/{}", controller_config::CONFIG_MAP),
                text,
            ));
        }
        if let Some((from, text)) = source {
            k = controller_config::apply(&text, k)
                .map_err(|e| format!("bad keepalive configuration in {from}: {e}"))?;
            tracing::info!(from = %from, "keepalive configuration read");
        }
        let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
        if let Some(d) = self.keepalive_interval {
            k.interval = nonzero(d);
        }
        if let Some(d) = self.keepalive_timeout {
            k.timeout = d;
        }
        if let Some(d) = self.keepalive_min_time {
            k.min_time = d;
        }
        if let Some(b) = self.keepalive_permit_without_stream {
            k.permit_without_stream = b;
        }
        if let Some(d) = self.max_connection_idle {
            k.max_connection_idle = nonzero(d);
        }
        if let Some(d) = self.max_connection_age {
            k.max_connection_age = nonzero(d);
        }
        if let Some(d) = self.max_connection_age_grace {
            k.max_connection_age_grace = Some(d);
        }
        if let Some(d) = self.ping_frame_interval {
            k.ping_frame_interval = nonzero(d);
        }
        if k.interval.is_some_and(|i| i < Keepalive::MIN_INTERVAL) {
            tracing::warn!("keepalive interval below 1s: 1s, as grpc-go");
        }
        let show = |d: Option<Duration>| d.map_or("none".to_string(), |d| format!("{d:?}"));
        tracing::info!(
            interval = %show(k.interval),
            timeout = ?k.timeout,
            min_time = ?k.min_time,
            permit_without_stream = k.permit_without_stream,
            max_connection_idle = %show(k.max_connection_idle),
            max_connection_age = %show(k.max_connection_age),
            max_connection_age_grace = %show(k.max_connection_age_grace),
            ping_frame_interval = %show(k.ping_frame_interval),
            "keepalive"
        );
        Ok(k)
    }
}

#[derive(Args, Debug)]
struct ClientArgs {
    /// Router endpoint: host:port or https://host:port (TLS), http://host:port (plaintext).
    #[arg(long, env = "JMP_ROUTER_ENDPOINT")]
    endpoint: String,
    /// The stream token (a JWT from the controller, or from `jumpstarter-router token`).
    #[arg(long, env = "JMP_ROUTER_TOKEN", hide_env_values = true)]
    token: String,
    /// Trust this CA certificate (PEM) instead of the system roots.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Do not verify the router's certificate (Jumpstarter's tls.insecure).
    #[arg(long)]
    insecure: bool,
    /// Show live bytes and rates on stderr even when it is not a terminal (one line a second).
    #[arg(long, conflicts_with = "quiet")]
    progress: bool,
    /// No live progress on stderr (shown by default when stderr is a terminal).
    #[arg(long)]
    quiet: bool,
    /// Batch the socket I/O under HTTP/2: bulk reads under load, the frames flushed one by
    /// one written together. `false` sends every read and flush to the socket as HTTP/2
    /// makes it: for debugging.
    #[arg(long, value_name = "BOOL", env = "JMP_ROUTER_BATCHED_IO", default_value_t = true, action = clap::ArgAction::Set)]
    batched_io: bool,
}

impl ClientArgs {
    async fn connect(&self) -> Result<RouterStream, String> {
        let mut b = ClientBuilder::new(&self.endpoint)
            .insecure_skip_verify(self.insecure)
            .batched_io(self.batched_io);
        if let Some(ca) = &self.ca_file {
            let pem =
                std::fs::read(ca).map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
            b = b.ca_certificate_pem(pem);
        }
        b.connect(&self.token).await.map_err(|e| e.to_string())
    }
}

fn main() -> ExitCode {
    // Started as `/router`, as Jumpstarter's operator runs its router image: the Go router's
    // flags, environment and ports.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let go = if operator::started_as_router(&argv0) {
        let args: Vec<String> = std::env::args_os()
            .skip(1)
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        match operator::parse(&args) {
            Ok(flags) => Some(flags),
            Err(e) => {
                eprintln!("{}: {e}", operator::NAME);
                // Go's flag package exits 2 on a bad command line.
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    let namespace = std::env::var("NAMESPACE").ok().filter(|n| !n.is_empty());
    let configmap = match (&go, &namespace) {
        (Some(flags), Some(ns)) => Some((ns.as_str(), flags.kubeconfig.as_deref())),
        _ => None,
    };
    // The Go router reads the ConfigMap when it has a namespace (and dies without
    // credentials); outside a cluster, this one says so and keeps its defaults.
    let read_configmap = cfg!(feature = "kube")
        && configmap.is_some_and(|(_, kubeconfig)| operator::kube_credentials(kubeconfig));
    let cli = match &go {
        Some(flags) => operator_cli(flags, configmap.filter(|_| read_configmap)),
        None => Cli::parse(),
    };
    let default_level = match (&go, &cli.command) {
        (Some(flags), _) => flags.level.as_str(),
        (None, Command::Serve { .. }) => "info",
        (None, _) => "warn",
    };
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colours only for a person: log files and collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        );
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    if let Some(flags) = &go {
        tracing::info!(
            "started as /{}: serving as Jumpstarter's operator runs the Go router (gRPC :{}, metrics {}, health :{}, grace {} s)",
            operator::NAME,
            operator::GRPC_PORT,
            flags.metrics.map_or("off".to_string(), |a| a.to_string()),
            operator::HEALTH_PORT,
            operator::GRACE_SECS
        );
        for flag in &flags.ignored {
            tracing::info!(flag = %flag, "ignoring a Go router flag that has no effect here");
        }
        if let (Some(ns), false) = (&namespace, read_configmap) {
            let why = if cfg!(feature = "kube") {
                "there are no Kubernetes credentials (no -kubeconfig, KUBECONFIG, service \
                 account or ~/.kube/config)"
            } else {
                "this binary is built without the `kube` feature"
            };
            tracing::warn!(
                namespace = %ns,
                "NAMESPACE is set, but the {} ConfigMap is not read: {why}; \
                 the keepalive settings are the operator's defaults (PING every 10 s, 180 s timeout)",
                controller_config::CONFIG_MAP
            );
        }
    }
    let rt = match &cli.command {
        Command::Serve {
            worker_threads: 1, ..
        } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Command::Serve { worker_threads, .. } => tokio::runtime::Builder::new_multi_thread()
            .worker_threads((*worker_threads).into())
            .thread_name("router-worker")
            .enable_all()
            .build(),
        _ => tokio::runtime::Runtime::new(),
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    let result = rt.block_on(run(cli.command));
    // Stdin may still be blocked in a read on a runtime thread: do not wait for it.
    rt.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// `serve` as the operator's `/router`: its ports and the Go router's settings, given to
/// the same command line as `serve`'s, so every other setting keeps `serve`'s default (and its
/// environment variable).
fn operator_cli(flags: &operator::GoFlags, configmap: Option<(&str, Option<&str>)>) -> Cli {
    let any = |port| SocketAddr::from(([0, 0, 0, 0], port)).to_string();
    let mut args = vec![
        "jumpstarter-router".to_string(),
        "--log-format".into(),
        if flags.json { "json" } else { "text" }.into(),
        "serve".into(),
        "--listen".into(),
        any(operator::GRPC_PORT),
        "--grace".into(),
        operator::GRACE_SECS.to_string(),
        "--health-listen".into(),
        any(operator::HEALTH_PORT),
    ];
    if let Some(metrics) = flags.metrics {
        args.extend(["--metrics-listen".into(), metrics.to_string()]);
    }
    if let Some((namespace, kubeconfig)) = configmap {
        args.extend(["--kube-namespace".into(), namespace.into()]);
        if let Some(path) = kubeconfig {
            args.extend(["--kubeconfig".into(), path.into()]);
        }
    }
    Cli::parse_from(args)
}

/// `a: b: c` for an error and its causes.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    std::iter::successors(Some(e), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

/// SIGTERM (what Kubernetes sends) or SIGINT: `serve` stops taking calls and lets the active
/// ones finish for the grace period.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("jumpstarter-router: error: {msg}");
    ExitCode::FAILURE
}

async fn run(cmd: Command) -> Result<(), String> {
    match cmd {
        Command::Serve {
            listen,
            plaintext,
            grace,
            pairing_timeout,
            handshake_timeout,
            keepalive,
            max_pending,
            max_pending_per_connection,
            metrics_listen,
            health_listen,
            tls_reload_interval,
            worker_threads,
            batched_io,
        } => {
            tracing::info!(worker_threads, "serving on {worker_threads} thread(s)");
            let auth = Auth::from_env().map_err(|e| chain(&e))?;
            let keepalive = keepalive.resolve().await?;
            let mut config = ServeConfig::from_env();
            config.listen = listen;
            config.tls_reload =
                (tls_reload_interval > 0).then(|| Duration::from_secs(tls_reload_interval));
            config.grace = Duration::from_secs(grace);
            config.metrics_listen = metrics_listen;
            config.health_listen = health_listen;
            if plaintext {
                config.tls = TlsMode::Plaintext;
            }
            Router::builder(auth)
                .pairing_timeout(pairing_timeout.map(Duration::from_secs))
                .handshake_timeout(Duration::from_secs(handshake_timeout))
                .keepalive(keepalive)
                .max_pending(max_pending)
                .max_pending_per_connection(max_pending_per_connection)
                .batched_io(batched_io)
                .build()
                .run(config, shutdown_signal())
                .await
                .map_err(|e| chain(&e))
        }
        Command::Token { subject, ttl } => {
            let token = Auth::from_env()
                .and_then(|auth| auth.mint(&subject, Duration::from_secs(ttl)))
                .map_err(|e| chain(&e))?;
            println!("{token}");
            Ok(())
        }
        Command::Connect { client, listen } => {
            let progress = Progress::choose(client.progress, client.quiet);
            let Some(addr) = listen else {
                let mut stream = client.connect().await?;
                let mut stdio = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
                return bridge(&mut stdio, &mut stream, "stdio", progress).await;
            };
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            let local = listener.local_addr().map_err(|e| e.to_string())?;
            eprintln!("jumpstarter-router: listening on {local}");
            let (mut tcp, peer) = listener
                .accept()
                .await
                .map_err(|e| format!("accept on {local}: {e}"))?;
            drop(listener);
            let _ = tcp.set_nodelay(true);
            tracing::info!(%peer, "accepted");
            let mut stream = client.connect().await?;
            bridge(&mut tcp, &mut stream, &peer.to_string(), progress).await
        }
        Command::Expose { client, target } => {
            let progress = Progress::choose(client.progress, client.quiet);
            let mut stream = client.connect().await?;
            let mut tcp = TcpStream::connect(&target)
                .await
                .map_err(|e| format!("cannot connect to target {target}: {e}"))?;
            let _ = tcp.set_nodelay(true);
            bridge(&mut tcp, &mut stream, &target, progress).await
        }
    }
}

/// Copies both ways until both sides finished; prints bytes and rates to stderr, live when
/// `progress` says so.
async fn bridge<L>(
    local: &mut L,
    stream: &mut RouterStream,
    name: &str,
    progress: Progress,
) -> Result<(), String>
where
    L: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let mut local = Counted::new(local);
    let live = progress.start(name, local.counters());
    // copy_bidirectional, with the received payloads written straight from their buffers.
    let result = jumpstarter_router::bridge(&mut local, stream).await;
    drop(live);
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    if result.is_ok() {
        // Both sides finished: wait until the router has every frame before exiting.
        match tokio::time::timeout(CLOSE_TIMEOUT, stream.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("{name}: closing the router stream: {e}")),
            Err(_) => tracing::warn!("the router did not end the call within {CLOSE_TIMEOUT:?}"),
        }
    }
    match result {
        Ok((up, down)) => {
            let mib = |b: u64| b as f64 / (1024.0 * 1024.0) / secs;
            eprintln!(
                "jumpstarter-router: {name}: {up} bytes up, {down} bytes down in {secs:.2} s ({:.1} MiB/s up, {:.1} MiB/s down)",
                mib(up),
                mib(down)
            );
            Ok(())
        }
        Err(e) => Err(format!("{name}: {e}")),
    }
}
