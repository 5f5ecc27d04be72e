//! Generates the Rust types for `proto/flotilla/v1/*.proto`.
//!
//! `protoc` comes from the `protoc-bin-vendored` crate, so a fresh machine needs no system
//! package to build flotilla.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/flotilla/v1/version.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().compile_with_config(config, &protos, &["proto"])?;
    Ok(())
}
