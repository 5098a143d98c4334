//! Rust as a Jumpstarter client: gRPC to the REAL Jumpstarter 0.9.0 exporter (from PyPI), over
//! one router stream through our router.
//!
//! `tests/interop/session.py lab` runs a stand-in controller and a real exporter (`MockPower`
//! as "power", `TcpNetwork` as "net") that uses our `serve` binary (TLS with the harness's
//! certificates) as its router, leases it and dials once; it prints the `dial` event with the
//! router endpoint, the stream's token and the CA. This test opens the stream with
//! `ClientBuilder::new(endpoint).ca_certificate_pem(ca).connect(token)`, runs a tonic
//! `Channel` over it (plaintext HTTP/2 inside the stream, as Jumpstarter's client does) and
//! calls `jumpstarter.v1.ExporterService`: `GetReport` (the drivers must be in the answer),
//! `DriverCall` (`power.on`) and the server-streaming `StreamingDriverCall` (`power.read`).
//!
//! No `.proto` of `ExporterService` ships on PyPI: the calls go through a pass-through codec
//! (`Bytes` in, `Bytes` out) on `tonic::client::Grpc`, and the answers are read with a few
//! hand-written `prost` messages (field numbers from `jumpstarter_protocol`'s
//! `jumpstarter_pb2` in the venv).
//!
//! The venv is `tests/interop.rs`'s (`target/interop-venv`); with
//! `JUMPSTARTER_ROUTER_SKIP_INTEROP=1` the test is `ignored` (build.rs's `skip_interop`).
#![cfg(feature = "cli")]

mod support;

use std::collections::HashMap;
use std::time::Instant;

use bytes::{Buf, BufMut, Bytes};
use jumpstarter_router::ClientBuilder;
use prost::Message;
use support::process::Serve;
use support::python::{python, Py};
use support::{within, TempDir};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Request, Status};

// ===== the venv and the lab =====

// ===== gRPC over the router stream, with no .proto =====

/// A pass-through codec: messages are their protobuf bytes.
#[derive(Clone, Copy, Debug, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

const GET_REPORT: &str = "/jumpstarter.v1.ExporterService/GetReport";
const DRIVER_CALL: &str = "/jumpstarter.v1.ExporterService/DriverCall";
const STREAMING_DRIVER_CALL: &str = "/jumpstarter.v1.ExporterService/StreamingDriverCall";

/// `jumpstarter.v1.GetReportResponse`, the fields read here.
#[derive(Clone, PartialEq, Message)]
struct GetReportResponse {
    #[prost(string, tag = "1")]
    uuid: String,
    #[prost(map = "string, string", tag = "2")]
    labels: HashMap<String, String>,
    #[prost(message, repeated, tag = "3")]
    reports: Vec<DriverInstanceReport>,
}

/// `jumpstarter.v1.DriverInstanceReport`, the fields read here.
#[derive(Clone, PartialEq, Message)]
struct DriverInstanceReport {
    #[prost(string, tag = "1")]
    uuid: String,
    #[prost(string, tag = "2")]
    parent_uuid: String,
    #[prost(map = "string, string", tag = "3")]
    labels: HashMap<String, String>,
}

/// `jumpstarter.v1.DriverCallRequest` and `StreamingDriverCallRequest` with no `args`.
#[derive(Clone, PartialEq, Message)]
struct DriverCallRequest {
    #[prost(string, tag = "1")]
    uuid: String,
    #[prost(string, tag = "2")]
    method: String,
}

/// `jumpstarter.v1.DriverCallResponse` and `StreamingDriverCallResponse`; `result` (a
/// `google.protobuf.Value`) kept as its bytes.
#[derive(Clone, PartialEq, Message)]
struct DriverCallResponse {
    #[prost(string, tag = "1")]
    uuid: String,
    #[prost(bytes = "bytes", tag = "2")]
    result: Bytes,
}

async fn grpc(channel: &Channel) -> tonic::client::Grpc<Channel> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("the channel is ready");
    grpc
}

fn driver_call(uuid: &str, method: &str) -> Request<Bytes> {
    let req = DriverCallRequest {
        uuid: uuid.into(),
        method: method.into(),
    };
    Request::new(req.encode_to_vec().into())
}

// ===== the case =====

/// Our router (`serve`, TLS), the real exporter behind it, and Rust calling the exporter's
/// `ExporterService` over the router stream its lease dialled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(skip_interop, ignore = "JUMPSTARTER_ROUTER_SKIP_INTEROP is set")]
async fn rust_calls_the_real_exporter_over_our_router() {
    let py = python();
    let t0 = Instant::now();

    // The harness's CA and server certificate, and our router serving it.
    let dir = TempDir::new("interop-grpc");
    let dir_arg = dir.file("");
    Py::make_certs(py, &dir_arg, "ecdsa").await;
    let path = |f: &str| dir.file(f);
    let router = Serve::start_with_env(
        &[],
        &[
            ("EXTERNAL_CERT_PEM", &path("cert.pem")),
            ("EXTERNAL_KEY_PEM", &path("key.pem")),
        ],
    )
    .await;
    let endpoint = format!("localhost:{}", router.listen.port());

    // The lab: stand-in controller, real exporter, a lease, one Dial.
    let mut lab = Py::spawn(
        py,
        "session.py",
        &[
            "lab",
            "--router",
            &endpoint,
            "--router-key",
            support::KEY,
            "--certs",
            &dir_arg,
        ],
        true,
    );
    // The controller logs its own "dial" (no token); the lab's line has the router's.
    let dial = lab
        .wait_for(120, "the dial event", |v| {
            (v["event"] == "dial" && v["router_token"].is_string()) || v["event"] == "error"
        })
        .await;
    assert_eq!(
        dial["event"],
        "dial",
        "the lab failed: {dial}\n{}",
        lab.stderr()
    );
    eprintln!("router on {endpoint}; lab ready after {:?}", t0.elapsed());
    let ca = std::fs::read(dial["ca"].as_str().unwrap()).unwrap();
    let client =
        ClientBuilder::new(dial["router_endpoint"].as_str().unwrap()).ca_certificate_pem(ca);
    let stream = client
        .connect(dial["router_token"].as_str().unwrap())
        .await
        .unwrap();
    let channel = within(
        30,
        "the channel to the exporter's session",
        jumpstarter_router::grpc::channel(stream),
    )
    .await
    .unwrap();

    // GetReport (takes google.protobuf.Empty: no bytes).
    let t = Instant::now();
    let reply = within(
        30,
        "GetReport",
        grpc(&channel).await.unary(
            Request::new(Bytes::new()),
            PathAndQuery::from_static(GET_REPORT),
            RawCodec,
        ),
    )
    .await
    .unwrap()
    .into_inner();
    eprintln!("GetReport: {} bytes in {:?}", reply.len(), t.elapsed());
    for needle in [
        "jumpstarter_driver_power.client.PowerClient",
        "jumpstarter_driver_network.client.NetworkClient",
    ] {
        assert!(
            reply.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{needle} not in the report: {reply:?}"
        );
    }
    let report = GetReportResponse::decode(reply).unwrap();
    let named = |name: &str| {
        report
            .reports
            .iter()
            .find(|r| r.labels.get("jumpstarter.dev/name").map(String::as_str) == Some(name))
            .unwrap_or_else(|| panic!("no driver {name:?} in {report:?}"))
    };
    let (power, net) = (named("power"), named("net"));
    assert_eq!(
        power.labels["jumpstarter.dev/client"],
        "jumpstarter_driver_power.client.PowerClient"
    );
    assert_eq!(
        net.labels["jumpstarter.dev/client"],
        "jumpstarter_driver_network.client.NetworkClient"
    );
    // Both under the exporter's root driver (the composite).
    let root = report
        .reports
        .iter()
        .find(|r| r.parent_uuid.is_empty())
        .expect("a root driver");
    assert_eq!(
        (&power.parent_uuid, &net.parent_uuid),
        (&root.uuid, &root.uuid)
    );

    // A driver call: power.on().
    let t = Instant::now();
    let on = within(
        30,
        "DriverCall power.on",
        grpc(&channel).await.unary(
            driver_call(&power.uuid, "on"),
            PathAndQuery::from_static(DRIVER_CALL),
            RawCodec,
        ),
    )
    .await
    .unwrap()
    .into_inner();
    DriverCallResponse::decode(on).unwrap();
    eprintln!("DriverCall power.on in {:?}", t.elapsed());

    // A server-streaming driver call: power.read() yields MockPower's two readings.
    let mut readings = within(
        30,
        "StreamingDriverCall power.read",
        grpc(&channel).await.server_streaming(
            driver_call(&power.uuid, "read"),
            PathAndQuery::from_static(STREAMING_DRIVER_CALL),
            RawCodec,
        ),
    )
    .await
    .unwrap()
    .into_inner();
    let mut n = 0;
    while let Some(m) = within(30, "a reading", readings.message()).await.unwrap() {
        let m = DriverCallResponse::decode(m).unwrap();
        assert!(!m.result.is_empty(), "an empty reading");
        n += 1;
    }
    assert_eq!(n, 2, "MockPower.read() yields two readings");

    // Done: our side goes away, and the lab (lease deleted, exporter stopped) exits cleanly.
    drop(channel);
    lab.close_stdin();
    lab.next("lab_exit", 60).await;
    eprintln!("whole case in {:?}", t0.elapsed());
    drop(router);
}
