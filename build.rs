//! Compiles `proto/` with protox (a protobuf compiler in pure Rust, so no system `protoc`)
//! and generates the tonic client and server with `bytes::Bytes` payloads and the crate's codec.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/jumpstarter/v1/router.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_transport(false)
        .bytes(".")
        // prost with smaller per-call buffers (src/codec.rs).
        .codec_path("crate::prost_codec::RouterCodec")
        .compile_fds(fds)?;
    Ok(())
}
