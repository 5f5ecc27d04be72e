//! Generates the Rust types for `proto/flotilla/v1/*.proto`.
//!
//! `protoc` comes from the `protoc-bin-vendored` crate, so a fresh machine needs no system
//! package to build flotilla.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/flotilla/v1/version.proto",
        "proto/flotilla/v1/registration.proto",
        "proto/flotilla/v1/delivery.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Bundle payloads are sliced into chunks without copying.
    config.bytes(["."]);
    // No `connect` constructor on clients: it would clash with the `Delivery.Connect` rpc, and
    // hub and agent build their own TLS channels anyway.
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_with_config(config, &protos, &["proto"])?;
    Ok(())
}
