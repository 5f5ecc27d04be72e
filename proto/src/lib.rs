//! The flotilla wire contract, `flotilla.v1`.
//!
//! This is the only crate that knows protobuf: the hub and the agent convert to their own types
//! at their edge, through [`convert`].

pub mod convert;

/// Generated protobuf types and gRPC stubs.
#[allow(missing_debug_implementations, clippy::all)]
pub mod pb {
    tonic::include_proto!("flotilla.v1");
}

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: pb::ProtocolVersion = pb::ProtocolVersion { major: 1, minor: 2 };

/// A peer speaks a protocol this build cannot talk to.
#[derive(Debug, thiserror::Error)]
#[error("peer speaks protocol {peer}, this build speaks {}.{} (majors must match)", PROTOCOL_VERSION.major, PROTOCOL_VERSION.minor)]
pub struct IncompatibleVersion {
    /// The peer's version, as `major.minor`, or `none` when it sent none.
    pub peer: String,
}

/// Checks that a peer's protocol version can talk to this build: same major version, any minor
/// (minor versions only add fields and messages older peers ignore).
pub fn check_compatible(peer: Option<&pb::ProtocolVersion>) -> Result<(), IncompatibleVersion> {
    match peer {
        Some(v) if v.major == PROTOCOL_VERSION.major => Ok(()),
        Some(v) => Err(IncompatibleVersion {
            peer: format!("{}.{}", v.major, v.minor),
        }),
        None => Err(IncompatibleVersion {
            peer: "none".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_major_any_minor_is_compatible() {
        check_compatible(Some(&pb::ProtocolVersion { major: 1, minor: 7 })).unwrap();
        let err = check_compatible(Some(&pb::ProtocolVersion { major: 2, minor: 0 })).unwrap_err();
        assert_eq!(
            err.to_string(),
            "peer speaks protocol 2.0, this build speaks 1.2 (majors must match)"
        );
        assert!(check_compatible(None).is_err());
    }
}
