//! The router's TLS: [`ServerTls`], made from PEM (files, text, or a self-signed certificate
//! made at start), and the certificate files followed as they are renewed.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio_rustls::rustls;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

use super::error::ConfigError;

/// The router's TLS settings: a certificate chain and key, with ALPN `h2`.
///
/// Made from certificate files ([`TlsMode::Files`](super::TlsMode::Files) through [`ServeConfig::tls_config`](super::ServeConfig::tls_config)), it
/// can also follow those files as they are renewed: see [`ServerTls::watch_files`].
#[derive(Clone)]
pub struct ServerTls {
    pub(super) config: Arc<rustls::ServerConfig>,
    /// The files the certificate came from, when it did.
    files: Option<Arc<CertFiles>>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    /// From a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1 or SEC1).
    ///
    /// # Errors
    ///
    /// When the PEM holds no certificate or no key, or rustls rejects them (a key that does
    /// not belong to the certificate, for one).
    pub fn from_pem(cert: &[u8], key: &[u8]) -> Result<Self, ConfigError> {
        let current = certified_key(cert, key)?;
        Self::with_resolver(Arc::new(CurrentCert::new(current)), None)
    }

    fn with_resolver(
        resolver: Arc<CurrentCert>,
        files: Option<Arc<CertFiles>>,
    ) -> Result<Self, ConfigError> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::tls("TLS setup", e))?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(ServerTls {
            config: Arc::new(cfg),
            files,
        })
    }

    /// From the PEM files `cert` and `key`, followed by [`ServerTls::watch_files`].
    pub(super) fn from_files(cert: &Path, key: &Path) -> Result<Self, ConfigError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| ConfigError::Read {
                path: p.to_path_buf(),
                source,
            })
        };
        let pair = (read(cert)?, read(key)?);
        let current = certified_key(&pair.0, &pair.1).map_err(|e| match e {
            ConfigError::Tls { context, source } => ConfigError::Tls {
                context: format!("{} and {}: {context}", cert.display(), key.display()),
                source,
            },
            e => e,
        })?;
        let resolver = Arc::new(CurrentCert::new(current));
        let files = CertFiles {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            loaded: pair,
            resolver: resolver.clone(),
        };
        Self::with_resolver(resolver, Some(Arc::new(files)))
    }

    /// A self-signed certificate for `host` (a name or an IP address), made now.
    ///
    /// # Errors
    ///
    /// When the certificate cannot be made.
    pub fn self_signed(host: &str) -> Result<Self, ConfigError> {
        let ck = rcgen::generate_simple_self_signed(vec![host.to_string()]).map_err(|e| {
            ConfigError::tls(
                format!("cannot make a self-signed certificate for {host}"),
                e,
            )
        })?;
        Self::from_pem(
            ck.cert.pem().as_bytes(),
            ck.signing_key.serialize_pem().as_bytes(),
        )
    }

    /// For settings made from certificate files ([`TlsMode::Files`](super::TlsMode::Files) through
    /// [`ServeConfig::tls_config`](super::ServeConfig::tls_config)): a task that reads the two files every `every` and, when
    /// their contents changed, puts the new certificate in use for new connections (open
    /// connections keep theirs). `None` for other settings, or when `every` is zero.
    ///
    /// A pair that is unusable (a file missing or half-written, unparsable PEM, a key that
    /// does not belong to the certificate) is refused with a warning, once per change of the
    /// files, and the current certificate stays in use; the files are read again on the next
    /// tick, so a pair that becomes whole is picked up. A new certificate in use is logged at
    /// info level with its `notAfter` and SHA-256 fingerprint.
    ///
    /// [`Router::run`](super::Router::run) spawns this task when [`ServeConfig::tls_reload`](super::ServeConfig::tls_reload) is set; with
    /// [`Router::serve_listener`](super::Router::serve_listener), spawn it yourself. It runs until dropped.
    pub fn watch_files(
        &self,
        every: Duration,
    ) -> Option<impl Future<Output = ()> + Send + 'static> {
        let files = self.files.clone()?;
        (!every.is_zero()).then(|| files.poll(every))
    }
}

impl From<Arc<rustls::ServerConfig>> for ServerTls {
    /// Your own rustls settings; set `alpn_protocols` to `h2`.
    fn from(cfg: Arc<rustls::ServerConfig>) -> Self {
        ServerTls {
            config: cfg,
            files: None,
        }
    }
}

fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate chain and key of two PEM texts, checked to belong together.
fn certified_key(cert: &[u8], key: &[u8]) -> Result<CertifiedKey, ConfigError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::tls("bad certificate PEM", e))?;
    if certs.is_empty() {
        return Err(ConfigError::Tls {
            context: "the certificate PEM holds no certificate".into(),
            source: None,
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| ConfigError::tls("bad private key PEM", e))?;
    // As rustls' `with_single_cert`: the key must match the certificate's public key.
    CertifiedKey::from_der(certs, key, &crypto_provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => ConfigError::tls(
            "certificate and key rejected: the private key does not belong to the certificate",
            e,
        ),
        e => ConfigError::tls("certificate and key rejected", e),
    })
}

/// The certificate handed to new connections; swapped when the files are renewed.
#[derive(Debug)]
struct CurrentCert(RwLock<Arc<CertifiedKey>>);

impl CurrentCert {
    fn new(ck: CertifiedKey) -> Self {
        CurrentCert(RwLock::new(Arc::new(ck)))
    }

    fn set(&self, ck: CertifiedKey) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(ck);
    }
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.0
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

/// The contents of the certificate file and of the key file.
type PemPair = (Vec<u8>, Vec<u8>);

/// The certificate files behind a [`CurrentCert`]. (No `Debug`: it holds the key.)
struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    /// What the current certificate was made from at start.
    loaded: PemPair,
    resolver: Arc<CurrentCert>,
}

impl CertFiles {
    /// Both files; `None` when the certificate changed while they were read (a Secret
    /// volume's `..data` swapped under us): the next tick reads the settled pair.
    fn read(&self) -> Result<Option<PemPair>, String> {
        let read =
            |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
        let cert = read(&self.cert)?;
        let key = read(&self.key)?;
        Ok((read(&self.cert)? == cert).then_some((cert, key)))
    }

    async fn poll(self: Arc<Self>, every: Duration) {
        // What the files held at the last look: a change is acted on (and logged) once.
        let mut seen: Result<PemPair, String> = Ok(self.loaded.clone());
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let files = self.clone();
            let now = match tokio::task::spawn_blocking(move || files.read()).await {
                Ok(Ok(None)) => continue,
                Ok(Ok(Some(pair))) => Ok(pair),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(format!("the file reader failed: {e}")),
            };
            if now == seen {
                continue;
            }
            seen = now;
            let (cert, key) = (self.cert.display(), self.key.display());
            let made = match &seen {
                Ok((c, k)) => certified_key(c, k).map_err(|e| crate::error::error_chain(&e)),
                Err(e) => Err(e.clone()),
            };
            match made {
                Ok(ck) => {
                    let (not_after, sha256) = match ck.end_entity_cert() {
                        Ok(der) => (not_after(der).unwrap_or_default(), sha256_hex(der)),
                        Err(_) => Default::default(),
                    };
                    self.resolver.set(ck);
                    tracing::info!(%cert, %key, %not_after, %sha256, "TLS certificate reloaded: new connections get it");
                }
                Err(error) => {
                    tracing::warn!(%cert, %key, %error, "TLS certificate files refused: the current certificate stays in use")
                }
            }
        }
    }
}

/// The SHA-256 fingerprint of a DER certificate, in hex.
fn sha256_hex(der: &[u8]) -> String {
    use fmt::Write;
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest.as_ref().iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The `notAfter` of a DER certificate, as `YYYY-MM-DDTHH:MM:SSZ`; `None` when it cannot be
/// read. (A walk over the few DER fields before it, rather than an X.509 crate.)
fn not_after(der: &[u8]) -> Option<String> {
    /// One DER element: its tag, its contents, and what follows it.
    fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, b) = b.split_first()?;
        let (&len, b) = b.split_first()?;
        let (len, b) = if len < 0x80 {
            (usize::from(len), b)
        } else {
            let n = usize::from(len & 0x7f);
            if n == 0 || n > 4 {
                return None;
            }
            let (bytes, b) = b.split_at_checked(n)?;
            let len = bytes.iter().fold(0usize, |a, &x| (a << 8) | usize::from(x));
            (len, b)
        };
        let (contents, rest) = b.split_at_checked(len)?;
        Some((tag, contents, rest))
    }
    let (_, certificate, _) = tlv(der)?;
    let (_, tbs, _) = tlv(certificate)?;
    // TBSCertificate: [0] version (optional), serial, signature, issuer, validity, ...
    let (tag, _, after_version) = tlv(tbs)?;
    let fields = if tag == 0xa0 { after_version } else { tbs };
    let (_, _, rest) = tlv(fields)?; // serial
    let (_, _, rest) = tlv(rest)?; // signature algorithm
    let (_, _, rest) = tlv(rest)?; // issuer
    let (_, validity, _) = tlv(rest)?;
    let (_, _, rest) = tlv(validity)?; // notBefore
    let (tag, time, _) = tlv(rest)?;
    let time = std::str::from_utf8(time).ok()?;
    let time = match tag {
        // UTCTime: YYMMDDHHMMSSZ, years 1950..=2049.
        0x17 => {
            let century = if time.get(..2)? >= "50" { "19" } else { "20" };
            format!("{century}{time}")
        }
        // GeneralizedTime: YYYYMMDDHHMMSSZ.
        0x18 => time.to_string(),
        _ => return None,
    };
    let digits = time.strip_suffix('Z')?;
    if digits.len() != 14 || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let d = |a: usize, b: usize| &digits[a..b];
    Some(format!(
        "{}-{}-{}T{}:{}:{}Z",
        d(0, 4),
        d(4, 6),
        d(6, 8),
        d(8, 10),
        d(10, 12),
        d(12, 14)
    ))
}

#[cfg(test)]
mod tests {
    use super::{certified_key, not_after};

    #[test]
    fn not_after_of_certificates() {
        for (year, want) in [
            (2031, "2031-03-04T00:00:00Z"),
            (2051, "2051-03-04T00:00:00Z"),
        ] {
            let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
            params.not_after = rcgen::date_time_ymd(year, 3, 4);
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            assert_eq!(not_after(cert.der()).as_deref(), Some(want));
            // Cut anywhere: no answer, no panic.
            for n in 0..cert.der().len() {
                let _ = not_after(&cert.der()[..n]);
            }
        }
        assert_eq!(not_after(b""), None);
        assert_eq!(not_after(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let a = rcgen::generate_simple_self_signed(vec!["a".to_string()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b".to_string()]).unwrap();
        let (a_cert, a_key) = (a.cert.pem(), a.signing_key.serialize_pem());
        let b_key = b.signing_key.serialize_pem();
        assert!(certified_key(a_cert.as_bytes(), a_key.as_bytes()).is_ok());
        let err = certified_key(a_cert.as_bytes(), b_key.as_bytes()).unwrap_err();
        // rustls' own error is kept as the source.
        let source = std::error::Error::source(&err).expect("a source");
        assert!(
            source
                .downcast_ref::<tokio_rustls::rustls::Error>()
                .is_some(),
            "{source:?}"
        );
        let err = err.to_string();
        assert!(err.contains("does not belong"), "{err}");
        let half = &a_cert.as_bytes()[..a_cert.len() / 2];
        let err = certified_key(half, a_key.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("certificate PEM"), "{err}");
    }
}
