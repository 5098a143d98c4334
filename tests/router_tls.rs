//! The router over TLS: certificate files, self-signed certificates, and the client's trust
//! options (custom CA, system roots, insecure skip-verify).
#![cfg(all(feature = "router", feature = "client"))]

mod support;

use jumpstarter_router::router::{Auth, Router, ServeConfig, TlsMode};
use jumpstarter_router::ClientBuilder;
use support::*;

/// A router serving the TLS of `tls` (what `ServeConfig` makes of it).
async fn tls_router(tls: TlsMode) -> TestRouter {
    let config = ServeConfig::new(([127, 0, 0, 1], 0).into(), tls);
    let router = Router::builder(Auth::new(KEY)).build();
    TestRouter::with_tls(router, config.tls_config().unwrap()).await
}

/// A pair of streams through the router exchanges bytes both ways and finishes cleanly.
async fn exchange(a: ClientBuilder, b: ClientBuilder) {
    let tok = token("tls");
    let mut x = a.connect(&tok).await.unwrap();
    let mut y = b.connect(&tok).await.unwrap();
    send_and_finish(&mut x, &mut y, b"over tls").await;
    send_and_finish(&mut y, &mut x, b"back").await;
}

#[tokio::test]
async fn certificate_files_and_a_custom_ca() {
    let dir = TempDir::new("tls");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();

    let r = tls_router(TlsMode::Files { cert, key }).await;
    let ep = r.tls_endpoint();
    let with_ca = || ClientBuilder::new(&ep).ca_certificate_pem(ck.cert.pem());
    exchange(with_ca(), with_ca()).await;

    // The system roots do not know this certificate: a clear error, at connect time.
    let tok = token("tls-untrusted");
    let err = within(10, "untrusted", ClientBuilder::new(&ep).connect(&tok))
        .await
        .unwrap_err();
    let io: std::io::Error = err.into();
    assert!(io.to_string().contains("cannot connect to router"), "{io}");
}

#[tokio::test]
async fn self_signed_router_with_insecure_clients() {
    let r = tls_router(TlsMode::SelfSigned("localhost".into())).await;
    let ep = format!("localhost:{}", r.addr.port()); // no scheme: TLS
    let insecure = || ClientBuilder::new(&ep).insecure_skip_verify(true);
    exchange(insecure(), insecure()).await;
}

#[tokio::test]
async fn bad_client_settings_are_config_errors() {
    let err = ClientBuilder::new("ftp://x:1")
        .connect("t")
        .await
        .unwrap_err();
    assert_eq!(
        std::io::Error::from(err).kind(),
        std::io::ErrorKind::InvalidInput
    );
    let err = ClientBuilder::new("https://localhost:1")
        .ca_certificate_pem(b"not a pem".to_vec())
        .connect("t")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("PEM"), "{err}");
    let err = ClientBuilder::new("http://127.0.0.1:1")
        .connect("bad\ntoken")
        .await
        .unwrap_err();
    assert_eq!(
        std::io::Error::from(err).kind(),
        std::io::ErrorKind::InvalidInput
    );
    let err = ClientBuilder::new("http://127.0.0.1:1")
        .connect("")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
}
