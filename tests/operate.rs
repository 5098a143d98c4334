//! Operating the router, as an operator sees it through the `serve` process: Prometheus
//! metrics over real HTTP, the gRPC health service before and during a graceful shutdown, and
//! one JSON log line per pairing and per session end (with a stream id hash, never a token).
#![cfg(feature = "cli")]

use support::process;
use support::process::{http_get, scrape};
mod support;

use std::collections::HashMap;
use std::io::ErrorKind;
use std::time::Duration;

use jumpstarter_router::connect;
use jumpstarter_router::router::Auth;
use process::Serve;
use sha2::{Digest, Sha256};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

fn sample(m: &HashMap<String, f64>, name: &str) -> f64 {
    *m.get(name)
        .unwrap_or_else(|| panic!("no sample {name} in {m:#?}"))
}

fn stream_hash(stream: &str) -> String {
    hex(&Sha256::digest(stream.as_bytes())[..8])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_session_a_timeout_and_a_refusal() {
    let mut serve = Serve::start(&[
        "--plaintext",
        "--metrics-listen",
        "127.0.0.1:0",
        "--pairing-timeout",
        "3",
    ])
    .await;
    let metrics = serve.metrics.expect("the metrics address in the log");
    let before = scrape(metrics).await;
    assert_eq!(
        sample(&before, "jumpstarter_router_calls_total{result=\"paired\"}"),
        0.0
    );

    let tok = token("metrics-session");
    let ep = serve.endpoint();
    // The first caller waits (its log line says so), then the second pairs with it.
    let mut first = connect(&ep, &tok).await.unwrap();
    first.write_all(&[1u8; 1000]).await.unwrap();
    first.flush().await.unwrap();
    let waiting = serve.log("waiting for the peer").await;
    assert_eq!(waiting["stream"], stream_hash("metrics-session"));
    let mut second = connect(&ep, &tok).await.unwrap();
    second.write_all(&[2u8; 333]).await.unwrap();
    let paired = serve.log("paired").await;
    assert_eq!(paired["stream"], stream_hash("metrics-session"));
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
    let (mut got_first, mut got_second) = (Vec::new(), Vec::new());
    within(10, "both read to EOF", async {
        first.read_to_end(&mut got_first).await.unwrap();
        second.read_to_end(&mut got_second).await.unwrap();
    })
    .await;
    assert_eq!((got_first.len(), got_second.len()), (333, 1000));
    first.close().await.unwrap();
    second.close().await.unwrap();
    let ended = serve.log("session ended").await;
    assert_eq!(ended["stream"], stream_hash("metrics-session"));
    assert_eq!(ended["outcome"], "finished");
    assert_eq!(ended["bytes_first_to_second"], 1000);
    assert_eq!(ended["bytes_second_to_first"], 333);
    assert!(ended["duration_ms"].is_u64(), "{ended}");

    // An unpaired caller times out; a refused one learns why.
    let lonely = token("metrics-lonely");
    let mut c = connect(&ep, &lonely).await.unwrap();
    let err = read_to_error(&mut c, 5, "the pairing timeout").await;
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err:?}");
    let bad = Auth::new(b"another-key")
        .mint("metrics-refused", Duration::from_secs(600))
        .unwrap();
    let mut r = connect(&ep, &bad).await.unwrap();
    r.write_all(b"x").await.unwrap();
    let err = read_to_error(&mut r, 5, "the refusal").await;
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err:?}");

    let m = scrape(metrics).await;
    let calls = |result: &str| {
        sample(
            &m,
            &format!("jumpstarter_router_calls_total{{result=\"{result}\"}}"),
        )
    };
    assert_eq!(calls("paired"), 2.0);
    assert_eq!(calls("finished"), 2.0);
    assert_eq!(calls("aborted"), 0.0);
    assert_eq!(calls("timed_out"), 1.0);
    assert_eq!(calls("refused"), 1.0);
    assert_eq!(calls("left"), 0.0);
    assert_eq!(sample(&m, "jumpstarter_router_pairs_total"), 1.0);
    assert_eq!(
        sample(
            &m,
            "jumpstarter_router_bytes_forwarded_total{direction=\"first_to_second\"}"
        ),
        1000.0
    );
    assert_eq!(
        sample(
            &m,
            "jumpstarter_router_bytes_forwarded_total{direction=\"second_to_first\"}"
        ),
        333.0
    );
    assert_eq!(sample(&m, "jumpstarter_router_active_pairs"), 0.0);
    assert_eq!(sample(&m, "jumpstarter_router_pending_callers"), 0.0);
    assert_eq!(
        sample(&m, "jumpstarter_router_pairing_wait_seconds_count"),
        1.0
    );
    assert_eq!(
        sample(&m, "jumpstarter_router_session_duration_seconds_count"),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            "jumpstarter_router_session_duration_seconds_bucket{le=\"+Inf\"}"
        ),
        1.0
    );

    // Neither a token nor the key is in the logs.
    let logs = serve.raw_logs();
    for secret in [tok.as_str(), lonely.as_str(), bad.as_str(), KEY] {
        assert!(!logs.contains(secret), "a secret in the logs: {logs}");
    }
    // Other paths are 404.
    let response = http_get(metrics, "/").await;
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
}

async fn health_status(channel: tonic::transport::Channel, service: &str) -> ServingStatus {
    let r = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap();
    r.into_inner().status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_serving_then_not_serving_from_the_start_of_a_graceful_shutdown() {
    let serve = Serve::start(&[
        "--plaintext",
        "--health-listen",
        "127.0.0.1:0",
        "--grace",
        "20",
    ])
    .await;
    let channel = |addr: std::net::SocketAddr| async move {
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap()
    };
    let health_port = channel(serve.health.expect("the health address in the log")).await;
    let main_port = channel(serve.listen).await;
    // On the router's own port and on the plaintext health port, for "" and the service.
    for service in ["", "jumpstarter.v1.RouterService"] {
        assert_eq!(
            health_status(main_port.clone(), service).await,
            ServingStatus::Serving
        );
        assert_eq!(
            health_status(health_port.clone(), service).await,
            ServingStatus::Serving
        );
    }
    assert_eq!(
        HealthClient::new(main_port.clone())
            .check(HealthCheckRequest {
                service: "no.such.Service".into()
            })
            .await
            .unwrap_err()
            .code(),
        tonic::Code::NotFound
    );
    let mut watch = HealthClient::new(health_port.clone())
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = within(5, "the first watch status", watch.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);

    // An active session holds the grace period open.
    let tok = token("health-grace");
    let (mut a, mut b) = pair_up(&serve.endpoint(), &tok, b"hello").await;
    serve.terminate();
    let next = within(5, "NOT_SERVING after SIGTERM", watch.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.status(), ServingStatus::NotServing);
    for service in ["", "jumpstarter.v1.RouterService"] {
        assert_eq!(
            health_status(health_port.clone(), service).await,
            ServingStatus::NotServing
        );
    }
    // The session still finishes, and then the router exits cleanly.
    send_and_finish(&mut a, &mut b, b"during the grace period").await;
    send_and_finish(&mut b, &mut a, b"reply").await;
    a.close().await.unwrap();
    b.close().await.unwrap();
    let status = serve.exit_status(15).await;
    assert!(status.success(), "{status:?}");
}

/// Tokens and the key never reach the logs, at any level: a run at TRACE (h2 and hyper
/// included) with a session, a refusal and a malformed header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_or_key_in_the_logs_even_at_trace() {
    let mut serve = Serve::start_with_env(&["--plaintext"], &[("RUST_LOG", "trace")]).await;
    let tok = token("trace-session");
    let (mut a, mut b) = pair_up(&serve.endpoint(), &tok, b"hello").await;
    send_and_finish(&mut a, &mut b, b"bye").await;
    send_and_finish(&mut b, &mut a, b"bye").await;
    a.close().await.unwrap();
    b.close().await.unwrap();
    let _ = serve.log("session ended").await;
    let bad = Auth::new(b"another-key")
        .mint("trace-refused", Duration::from_secs(600))
        .unwrap();
    let mut r = connect(&serve.endpoint(), &bad).await.unwrap();
    r.write_all(b"x").await.unwrap();
    let err = read_to_error(&mut r, 5, "the refusal").await;
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err:?}");
    let logs = serve.raw_logs();
    assert!(logs.lines().count() > 50, "not a TRACE run: {logs}");
    // The whole token, and each of its signed parts (header.payload and the signature).
    for secret in [tok.as_str(), bad.as_str(), KEY] {
        assert!(!logs.contains(secret), "a secret in the logs");
        for part in secret.rsplitn(2, '.') {
            assert!(
                part.len() < 16 || !logs.contains(part),
                "a token part in the logs: {part}"
            );
        }
    }
}
