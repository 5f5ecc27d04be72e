//! The flotilla wire contract, `flotilla.v1`.
//!
//! This is the only crate that knows protobuf: the hub and the agent convert to their own types
//! at their edge.

/// Generated protobuf types and gRPC stubs.
#[allow(missing_debug_implementations, clippy::all)]
pub mod pb {
    tonic::include_proto!("flotilla.v1");
}

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: pb::ProtocolVersion = pb::ProtocolVersion { major: 1, minor: 0 };
