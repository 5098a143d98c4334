//! The router's parsing of a gRPC request body: arbitrary bytes, split at arbitrary points.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    jumpstarter_router::fuzz::router_body(data);
});
