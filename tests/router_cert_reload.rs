//! The router's certificate files renewed under it, as Kubernetes renews a Secret volume
//! (cert-manager): new connections get the new certificate, open sessions go on, and a
//! half-written or mismatched pair is refused while the old certificate stays in use.
//!
//! The router runs through `Router::run` with a short `tls_reload`; the tests wait for its
//! log lines (a JSON tracing subscriber feeding a channel), never for a fixed time.
#![cfg(all(feature = "router", feature = "client", feature = "cli"))]

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jumpstarter_router::router::{Auth, Router, ServeConfig, TlsMode};
use jumpstarter_router::ClientBuilder;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use serde_json::Value;
use sha2::{Digest, Sha256};
use support::*;
use tokio::sync::mpsc;
use tokio_rustls::rustls;

const POLL: Duration = Duration::from_millis(50);

// ===== certificates =====

/// A CA whose certificates the clients trust.
struct Ca(CertifiedIssuer<'static, KeyPair>);

/// A certificate for `localhost` and its key.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
    /// As the router logs it.
    not_after: String,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "reload test CA");
        Ca(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
    }

    fn pem(&self) -> String {
        self.0.pem()
    }

    /// A certificate for `localhost` valid until January 1st of `year`.
    fn leaf(&self, year: i32) -> Leaf {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.not_after = rcgen::date_time_ymd(year, 1, 1);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &*self.0).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
            not_after: format!("{year}-01-01T00:00:00Z"),
        }
    }
}

impl Leaf {
    fn sha256(&self) -> String {
        hex(&Sha256::digest(&self.der))
    }
}

// ===== a Secret volume =====

/// A directory laid out as the kubelet lays out a Secret volume: `..<timestamp>/tls.crt`,
/// `..data -> ..<timestamp>`, `tls.crt -> ..data/tls.crt` (and `tls.key`).
struct SecretVolume {
    dir: TempDir,
    version: u32,
}

impl SecretVolume {
    fn new(name: &str) -> SecretVolume {
        let dir = TempDir::new(&format!("reload-{name}"));
        for file in ["tls.crt", "tls.key"] {
            let link = dir.path().join(file);
            std::os::unix::fs::symlink(Path::new("..data").join(file), link).unwrap();
        }
        SecretVolume { dir, version: 0 }
    }

    fn tls_mode(&self) -> TlsMode {
        TlsMode::Files {
            cert: self.dir.path().join("tls.crt"),
            key: self.dir.path().join("tls.key"),
        }
    }

    /// A new timestamped directory with these files (`None`: left out), then `..data` swapped
    /// to it atomically (a new symlink renamed over the old one).
    fn publish(&mut self, cert: Option<&[u8]>, key: Option<&[u8]>) {
        self.version += 1;
        let name = format!("..2026_12_07_01_{:02}_00.{:09}", self.version, self.version);
        let data = self.dir.path().join(&name);
        std::fs::create_dir(&data).unwrap();
        for (file, contents) in [("tls.crt", cert), ("tls.key", key)] {
            if let Some(contents) = contents {
                let mut f = std::fs::File::create(data.join(file)).unwrap();
                f.write_all(contents).unwrap();
                f.sync_all().unwrap();
            }
        }
        let tmp = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("..data")).unwrap();
    }

    fn publish_pair(&mut self, leaf: &Leaf) {
        self.publish(
            Some(leaf.cert_pem.as_bytes()),
            Some(leaf.key_pem.as_bytes()),
        );
    }
}

// ===== the router and its logs =====

/// Each formatted event (one JSON line per write) into a channel.
#[derive(Clone)]
struct LogWriter(mpsc::UnboundedSender<Vec<u8>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.send(buf.to_vec());
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> LogWriter {
        self.clone()
    }
}

/// `Router::run` on a free loopback port with the files of `volume`, read every [`POLL`].
struct RunningRouter {
    addr: SocketAddr,
    logs: mpsc::UnboundedReceiver<Vec<u8>>,
    task: tokio::task::JoinHandle<()>,
    /// The subscriber of this test's thread (a current-thread runtime: the router's tasks
    /// run here too).
    _subscriber: tracing::subscriber::DefaultGuard,
}

impl RunningRouter {
    async fn start(volume: &SecretVolume) -> RunningRouter {
        let (tx, logs) = mpsc::unbounded_channel();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_max_level(tracing::Level::INFO)
            .with_writer(LogWriter(tx))
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        let mut config = ServeConfig::new("127.0.0.1:0".parse().unwrap(), volume.tls_mode());
        config.tls_reload = Some(POLL);
        let task = tokio::spawn(async move {
            let r = Router::builder(Auth::new(KEY))
                .build()
                .run(config, std::future::pending())
                .await;
            panic!("the router ended: {r:?}");
        });
        let mut router = RunningRouter {
            addr: "0.0.0.0:0".parse().unwrap(),
            logs,
            task,
            _subscriber: guard,
        };
        let listening = router.log("router listening").await;
        router.addr = listening["addr"].as_str().unwrap().parse().unwrap();
        router
    }

    /// The next log line with this message, within 10 s.
    async fn log(&mut self, message: &str) -> Value {
        let logs = &mut self.logs;
        let found = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let line = logs.recv().await.expect("the log channel closed");
                let v: Value = serde_json::from_slice(&line).unwrap();
                if v["message"] == message {
                    return v;
                }
            }
        });
        found
            .await
            .unwrap_or_else(|_| panic!("no {message:?} log line within 10 s"))
    }

    /// The next line saying a new certificate is in use.
    async fn reloaded(&mut self) -> Value {
        self.log("TLS certificate reloaded: new connections get it")
            .await
    }

    /// The next line saying the files were refused.
    async fn refused(&mut self) -> Value {
        self.log("TLS certificate files refused: the current certificate stays in use")
            .await
    }

    fn endpoint(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// The certificate a new TLS connection is served (verified against `ca`).
    async fn served(&self, ca: &Ca) -> Vec<u8> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.0.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = within(
            10,
            "a TLS handshake",
            tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
        )
        .await
        .unwrap();
        tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    }
}

impl Drop for RunningRouter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ===== the tests =====

/// A renewal: new connections get the new certificate; a session opened before goes on.
#[tokio::test]
async fn renewed_certificate_is_served_and_open_sessions_go_on() {
    let ca = Ca::new();
    let (old, new) = (ca.leaf(2031), ca.leaf(2032));
    let mut volume = SecretVolume::new("renew");
    volume.publish_pair(&old);
    let mut router = RunningRouter::start(&volume).await;
    assert_eq!(router.served(&ca).await, old.der);

    // A session through the router, exchanging data before the renewal.
    let endpoint = router.endpoint();
    let client = || ClientBuilder::new(&endpoint).ca_certificate_pem(ca.pem());
    let tok = token("renewal");
    let mut x = client().connect(&tok).await.unwrap();
    let mut y = client().connect(&tok).await.unwrap();
    send_and_read(&mut x, &mut y, b"before the renewal").await;
    send_and_read(&mut y, &mut x, b"answer before").await;

    volume.publish_pair(&new);
    let line = router.reloaded().await;
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["not_after"], new.not_after.as_str(), "{line}");
    assert_eq!(line["sha256"], new.sha256().as_str(), "{line}");
    assert_eq!(
        line["cert"],
        volume.dir.path().join("tls.crt").to_str().unwrap()
    );
    assert_eq!(router.served(&ca).await, new.der);
    assert_eq!(router.served(&ca).await, new.der);

    // The session from before goes on over its TLS connections, and ends cleanly.
    send_and_read(&mut x, &mut y, b"after the renewal").await;
    send_and_read(&mut y, &mut x, b"answer after").await;
    send_and_finish(&mut x, &mut y, b"x done").await;
    send_and_finish(&mut y, &mut x, b"y done").await;

    // A new session, on the new certificate.
    let tok = token("after-renewal");
    let mut x = client().connect(&tok).await.unwrap();
    let mut y = client().connect(&tok).await.unwrap();
    send_and_finish(&mut x, &mut y, b"new session").await;
    send_and_finish(&mut y, &mut x, b"back").await;
}

/// A mismatched pair, a half-written certificate and a missing file are refused, each with
/// a warning, and the old certificate stays served; then a good pair is picked up.
#[tokio::test]
async fn unusable_files_are_refused_until_a_good_pair_arrives() {
    let ca = Ca::new();
    let (old, other, third, good) = (ca.leaf(2031), ca.leaf(2032), ca.leaf(2033), ca.leaf(2034));
    let mut volume = SecretVolume::new("refuse");
    volume.publish_pair(&old);
    let mut router = RunningRouter::start(&volume).await;
    assert_eq!(router.served(&ca).await, old.der);

    // A certificate with the key of another one.
    volume.publish(
        Some(other.cert_pem.as_bytes()),
        Some(third.key_pem.as_bytes()),
    );
    let line = router.refused().await;
    assert_eq!(line["level"], "WARN");
    let error = line["error"].as_str().unwrap();
    assert!(
        error.contains("does not belong to the certificate"),
        "{line}"
    );
    assert_eq!(
        line["key"],
        volume.dir.path().join("tls.key").to_str().unwrap()
    );
    assert_eq!(router.served(&ca).await, old.der);

    // A certificate cut in the middle.
    let half = &good.cert_pem.as_bytes()[..good.cert_pem.len() / 2];
    volume.publish(Some(half), Some(good.key_pem.as_bytes()));
    let line = router.refused().await;
    let error = line["error"].as_str().unwrap();
    assert!(error.contains("certificate PEM"), "{line}");
    assert_eq!(
        line["cert"],
        volume.dir.path().join("tls.crt").to_str().unwrap()
    );
    assert_eq!(router.served(&ca).await, old.der);

    // The certificate file missing.
    volume.publish(None, Some(good.key_pem.as_bytes()));
    let line = router.refused().await;
    let error = line["error"].as_str().unwrap();
    let crt = volume.dir.path().join("tls.crt");
    assert!(
        error.contains(&format!("cannot read {}", crt.display())),
        "{line}"
    );
    assert_eq!(router.served(&ca).await, old.der);

    // A good pair at last.
    volume.publish_pair(&good);
    let line = router.reloaded().await;
    assert_eq!(line["sha256"], good.sha256().as_str(), "{line}");
    assert_eq!(line["not_after"], good.not_after.as_str(), "{line}");
    assert_eq!(router.served(&ca).await, good.der);
}
