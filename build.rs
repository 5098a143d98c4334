//! Compiles `proto/` with protox (a protobuf compiler in pure Rust, so no system `protoc`)
//! and generates the tonic client and server with `bytes::Bytes` payloads and the crate's codec.
//!
//! Also sets `cfg(skip_interop)` when `JUMPSTARTER_ROUTER_SKIP_INTEROP` is set (not empty, not
//! `0`): the interop tests, which need the Python venv, nginx and haproxy, are then `ignored`
//! (`#[cfg_attr(skip_interop, ignore = ...)]`) and say so in cargo test's summary.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo::rustc-check-cfg=cfg(skip_interop)");
    println!("cargo::rerun-if-env-changed=JUMPSTARTER_ROUTER_SKIP_INTEROP");
    if std::env::var_os("JUMPSTARTER_ROUTER_SKIP_INTEROP")
        .is_some_and(|v| !v.is_empty() && v != "0")
    {
        println!("cargo::rustc-cfg=skip_interop");
    }

    let proto = "proto/jumpstarter/v1/router.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_transport(false)
        .bytes(".")
        // prost with smaller per-call buffers (src/prost_codec.rs).
        .codec_path("crate::prost_codec::RouterCodec")
        .compile_fds(fds)?;
    Ok(())
}
