//! Conversions between the wire types and `flotilla-bundle`'s, and the chunking of bundles.

use bytes::{Bytes, BytesMut};
use flotilla_bundle::{
    BundleMeta, Digest, Header, KeyId, KeySet, PublicKey, Signature, SignedBundle, SignedKeySet,
};

use crate::pb;

/// The largest chunk of bundle payload sent in one gRPC message.
pub const DEFAULT_CHUNK_SIZE: usize = 1024 * 1024;

/// The largest bundle payload an agent accepts; larger ones are refused before buffering.
pub const MAX_PAYLOAD_SIZE: u64 = 512 * 1024 * 1024;

/// Errors turning wire messages into bundles and key sets.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A required field is absent.
    #[error("{message} has no {field}")]
    Missing {
        /// The message type.
        message: &'static str,
        /// The field.
        field: &'static str,
    },
    /// A field has the wrong length or form.
    #[error("malformed {field}")]
    Malformed {
        /// The field.
        field: &'static str,
        /// Why.
        #[source]
        source: Option<flotilla_bundle::Error>,
    },
    /// Chunks arrived out of order, or a new bundle started before the last one ended.
    #[error("bundle chunk {index} of {count} out of order (expected {expected})")]
    ChunkOrder {
        /// The chunk index received.
        index: u32,
        /// The chunk count it announced.
        count: u32,
        /// The index that was expected.
        expected: u32,
    },
    /// The payload is in an encoding this build does not know, or does not decode.
    #[error("bundle payload encoding {encoding}")]
    Encoding {
        /// The encoding's wire value or name.
        encoding: String,
        /// The decoder's error, when it failed.
        #[source]
        source: Option<std::io::Error>,
    },
    /// The chunks do not add up to the announced size, or that size is too large.
    #[error("bundle payload of {got} bytes, announced {announced}")]
    Size {
        /// Bytes received (or announced, if too large).
        got: u64,
        /// Size the header announced.
        announced: u64,
    },
}

fn signature_to_pb(s: &Signature) -> pb::Signature {
    pb::Signature {
        key_id: s.key_id.0.clone(),
        signature: Bytes::copy_from_slice(&s.bytes),
    }
}

fn signature_from_pb(s: Option<pb::Signature>, message: &'static str) -> Result<Signature, Error> {
    let s = s.ok_or(Error::Missing {
        message,
        field: "signature",
    })?;
    let bytes: [u8; 64] = s
        .signature
        .as_ref()
        .try_into()
        .map_err(|_| Error::Malformed {
            field: "signature",
            source: None,
        })?;
    Ok(Signature {
        key_id: KeyId(s.key_id),
        bytes,
    })
}

/// A signed key set as sent on the wire.
pub fn key_set_to_pb(set: &SignedKeySet) -> pb::KeySet {
    pb::KeySet {
        sequence: set.key_set.sequence,
        keys: set
            .key_set
            .keys
            .iter()
            .map(|k| pb::PublicKey {
                key_id: k.id().0.clone(),
                key: Bytes::copy_from_slice(&k.to_bytes()),
            })
            .collect(),
        signature: Some(signature_to_pb(&set.signature)),
    }
}

/// A signed key set from the wire (its signature is not checked here).
pub fn key_set_from_pb(set: pb::KeySet) -> Result<SignedKeySet, Error> {
    let keys = set
        .keys
        .iter()
        .map(|k| {
            PublicKey::from_bytes(&k.key).map_err(|e| Error::Malformed {
                field: "public key",
                source: Some(e),
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(SignedKeySet {
        key_set: KeySet {
            sequence: set.sequence,
            keys,
        },
        signature: signature_from_pb(set.signature, "KeySet")?,
    })
}

/// The zstd level bundle payloads are compressed at: zstd's default, a good ratio for
/// Kubernetes manifests at a few hundred MB/s.
pub const ZSTD_LEVEL: i32 = 3;

/// Payloads smaller than this are sent as they are: compressing them saves nothing.
pub const COMPRESS_MIN_SIZE: usize = 512;

thread_local! {
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
    // One decompression context per thread: creating one per bundle cost more than decoding a
    // small bundle (an agent process of the fanout benchmark serves thousands of streams).
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Decodes one zstd frame into at most `limit` bytes.
fn decompress_payload(frame: &[u8], limit: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = Some(zstd::bulk::Decompressor::new()?);
        }
        match cell.as_mut() {
            Some(d) => d.decompress(frame, limit),
            None => zstd::bulk::decompress(frame, limit),
        }
    })
}

/// Compresses a bundle payload for the wire: one zstd frame with its size recorded, made once
/// per bundle however many times it is sent. `None` when the payload is too small to gain.
pub fn compress_payload(payload: &[u8]) -> Option<Bytes> {
    if payload.len() < COMPRESS_MIN_SIZE {
        return None;
    }
    COMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
        }
        let compressed = cell.as_mut()?.compress(payload).ok()?;
        (compressed.len() < payload.len()).then(|| Bytes::from(compressed))
    })
}

/// Splits a bundle into chunks of at most `chunk_size` payload bytes (at least one chunk, the
/// first carrying the header). The payload is sliced, not copied.
pub fn bundle_to_chunks(bundle: &SignedBundle, chunk_size: usize) -> Vec<pb::BundleChunk> {
    bundle_to_chunks_encoded(bundle, None, chunk_size)
}

/// [`bundle_to_chunks`] with the payload sent zstd-compressed when `zstd` holds it (from
/// [`compress_payload`] of this bundle's payload).
pub fn bundle_to_chunks_encoded(
    bundle: &SignedBundle,
    zstd: Option<&Bytes>,
    chunk_size: usize,
) -> Vec<pb::BundleChunk> {
    bundle_to_chunks_traced(bundle, zstd, String::new(), chunk_size)
}

/// [`bundle_to_chunks_encoded`] with the W3C `traceparent` of the span that published the
/// bundle in its header (empty: none). Not signed: diagnostic only (see docs/protocol.md).
pub fn bundle_to_chunks_traced(
    bundle: &SignedBundle,
    zstd: Option<&Bytes>,
    traceparent: String,
    chunk_size: usize,
) -> Vec<pb::BundleChunk> {
    let chunk_size = chunk_size.max(1);
    let m = &bundle.header.meta;
    let (wire, encoding) = match zstd {
        Some(z) => (z, pb::PayloadEncoding::Zstd),
        None => (&bundle.payload, pb::PayloadEncoding::Identity),
    };
    let header = pb::BundleHeader {
        cluster_id: m.cluster.clone(),
        delivery: m.delivery.clone(),
        revision: m.revision.clone(),
        sequence: m.sequence,
        expires_at_unix: m.expires_at,
        digest: Bytes::copy_from_slice(&bundle.header.digest.0),
        signature: Some(signature_to_pb(&bundle.signature)),
        payload_size: bundle.payload.len() as u64,
        payload_encoding: encoding as i32,
        encoded_size: if zstd.is_some() { wire.len() as u64 } else { 0 },
        traceparent,
    };
    let len = wire.len();
    let count = len.div_ceil(chunk_size).max(1);
    (0..count)
        .map(|i| {
            let start = i * chunk_size;
            let end = (start + chunk_size).min(len);
            pb::BundleChunk {
                header: (i == 0).then(|| header.clone()),
                index: i as u32,
                count: count as u32,
                data: wire.slice(start..end),
            }
        })
        .collect()
}

/// Reassembles a bundle from chunks sent back to back.
#[derive(Debug, Default)]
pub struct Reassembler {
    partial: Option<(pb::BundleHeader, u32, BytesMut)>,
}

impl Reassembler {
    /// Feeds one chunk; returns the bundle when it was the last. Any error drops the partial
    /// bundle.
    pub fn push(&mut self, chunk: pb::BundleChunk) -> Result<Option<SignedBundle>, Error> {
        Ok(self.push_traced(chunk)?.map(|(bundle, _)| bundle))
    }

    /// [`Reassembler::push`], also returning the header's W3C `traceparent` (empty when the hub
    /// sent none). It is not part of the signed bundle: use it to link spans, nothing else.
    pub fn push_traced(
        &mut self,
        chunk: pb::BundleChunk,
    ) -> Result<Option<(SignedBundle, String)>, Error> {
        let result = self.push_inner(chunk);
        if result.is_err() {
            self.partial = None;
        }
        result
    }

    fn push_inner(
        &mut self,
        chunk: pb::BundleChunk,
    ) -> Result<Option<(SignedBundle, String)>, Error> {
        let expected = self.partial.as_ref().map_or(0, |p| p.1);
        if chunk.index != expected || chunk.index >= chunk.count {
            return Err(Error::ChunkOrder {
                index: chunk.index,
                count: chunk.count,
                expected,
            });
        }
        if chunk.index == 0 {
            let header = chunk.header.ok_or(Error::Missing {
                message: "first BundleChunk",
                field: "header",
            })?;
            let wire_size = wire_size(&header)?;
            if header.payload_size > MAX_PAYLOAD_SIZE || wire_size > MAX_PAYLOAD_SIZE {
                return Err(Error::Size {
                    got: header.payload_size.max(wire_size),
                    announced: header.payload_size,
                });
            }
            let buf = BytesMut::with_capacity(wire_size as usize);
            self.partial = Some((header, 0, buf));
        }
        let (header, next, buf) = self.partial.as_mut().expect("set above");
        buf.extend_from_slice(&chunk.data);
        *next += 1;
        let expected_size = wire_size(header)?;
        if buf.len() as u64 > expected_size {
            return Err(Error::Size {
                got: buf.len() as u64,
                announced: expected_size,
            });
        }
        if chunk.index + 1 < chunk.count {
            return Ok(None);
        }
        let (header, _, buf) = self.partial.take().expect("set above");
        if buf.len() as u64 != expected_size {
            return Err(Error::Size {
                got: buf.len() as u64,
                announced: expected_size,
            });
        }
        let payload = match header.payload_encoding() {
            pb::PayloadEncoding::Identity => buf.freeze(),
            // The decoder stops at the announced size: a frame that inflates further is refused
            // before it can use more memory.
            pb::PayloadEncoding::Zstd => decompress_payload(&buf, header.payload_size as usize)
                .map(Bytes::from)
                .map_err(|source| Error::Encoding {
                    encoding: "zstd".into(),
                    source: Some(source),
                })?,
        };
        if payload.len() as u64 != header.payload_size {
            return Err(Error::Size {
                got: payload.len() as u64,
                announced: header.payload_size,
            });
        }
        let digest = Digest::from_slice(&header.digest).ok_or(Error::Malformed {
            field: "digest",
            source: None,
        })?;
        let bundle = SignedBundle {
            header: Header {
                meta: BundleMeta {
                    cluster: header.cluster_id,
                    delivery: header.delivery,
                    revision: header.revision,
                    sequence: header.sequence,
                    expires_at: header.expires_at_unix,
                },
                digest,
            },
            signature: signature_from_pb(header.signature, "BundleHeader")?,
            payload,
        };
        Ok(Some((bundle, header.traceparent)))
    }
}

/// The number of payload bytes the chunks of a bundle with `header` carry.
fn wire_size(header: &pb::BundleHeader) -> Result<u64, Error> {
    match pb::PayloadEncoding::try_from(header.payload_encoding) {
        Ok(pb::PayloadEncoding::Identity) => Ok(header.payload_size),
        Ok(pb::PayloadEncoding::Zstd) => Ok(header.encoded_size),
        Err(_) => Err(Error::Encoding {
            encoding: header.payload_encoding.to_string(),
            source: None,
        }),
    }
}

/// A whole bundle as one protobuf message (a single `BundleChunk`), for transports other than
/// the stream, such as the HTTPS polling reference of the fan-out benchmark.
pub fn bundle_to_bytes(bundle: &SignedBundle) -> Vec<u8> {
    use prost::Message as _;
    let mut chunks = bundle_to_chunks(bundle, usize::MAX);
    chunks.remove(0).encode_to_vec()
}

/// Reads a bundle written by [`bundle_to_bytes`].
pub fn bundle_from_bytes(bytes: &[u8]) -> Result<SignedBundle, Error> {
    use prost::Message as _;
    let chunk = pb::BundleChunk::decode(bytes).map_err(|_| Error::Malformed {
        field: "bundle",
        source: None,
    })?;
    Reassembler::default().push(chunk)?.ok_or(Error::Missing {
        message: "BundleChunk",
        field: "final chunk",
    })
}

#[cfg(test)]
mod tests {
    use flotilla_bundle::SigningKey;

    use super::*;

    fn bundle(len: usize) -> SignedBundle {
        let key = SigningKey::from_seed([1; 32]);
        key.seal(
            BundleMeta {
                cluster: "c".into(),
                delivery: "d".into(),
                revision: "r".into(),
                sequence: 1,
                expires_at: 10,
            },
            Bytes::from(vec![b'x'; len]),
        )
    }

    #[test]
    fn the_traceparent_travels_in_the_first_chunk_outside_the_signature() {
        let b = bundle(25);
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let chunks = bundle_to_chunks_traced(&b, None, tp.to_owned(), 10);
        assert_eq!(chunks[0].header.as_ref().unwrap().traceparent, tp);
        let mut r = Reassembler::default();
        let mut out = None;
        for c in chunks {
            out = r.push_traced(c).unwrap();
        }
        let (got, traceparent) = out.unwrap();
        assert_eq!(traceparent, tp);
        // The same signed bundle as without a trace context: it is not signed.
        assert_eq!(got, b);
        got.verify_seal(&flotilla_bundle::TrustedKeys::new(vec![
            SigningKey::from_seed([1; 32]).public_key(),
        ]))
        .unwrap();
    }

    #[test]
    fn chunks_round_trip_at_every_size() {
        for len in [0, 1, 9, 10, 11, 95] {
            let b = bundle(len);
            let chunks = bundle_to_chunks(&b, 10);
            assert_eq!(chunks.len(), len.div_ceil(10).max(1));
            let mut r = Reassembler::default();
            let mut out = None;
            for c in chunks {
                assert!(out.is_none());
                out = r.push(c).unwrap();
            }
            assert_eq!(out.unwrap(), b);
        }
    }

    fn reassemble(chunks: Vec<pb::BundleChunk>) -> Result<Option<SignedBundle>, Error> {
        let mut r = Reassembler::default();
        let mut out = None;
        for c in chunks {
            out = r.push(c)?;
        }
        Ok(out)
    }

    #[test]
    fn zstd_payloads_round_trip_and_are_smaller() {
        for len in [600, 5_000, 100_000] {
            let b = bundle(len);
            let z = compress_payload(&b.payload).expect("compressible");
            assert!(z.len() < len / 10, "{} bytes for {len}", z.len());
            let chunks = bundle_to_chunks_encoded(&b, Some(&z), 7);
            assert_eq!(chunks.len(), z.len().div_ceil(7));
            let h = chunks[0].header.as_ref().unwrap();
            assert_eq!(h.payload_encoding(), pb::PayloadEncoding::Zstd);
            assert_eq!(h.encoded_size, z.len() as u64);
            assert_eq!(reassemble(chunks).unwrap().unwrap(), b);
        }
        assert!(
            compress_payload(&[b'x'; 100]).is_none(),
            "too small to gain"
        );
    }

    #[test]
    fn a_zstd_frame_larger_than_announced_is_refused() {
        let b = bundle(10_000);
        let z = compress_payload(&b.payload).unwrap();
        let mut chunks = bundle_to_chunks_encoded(&b, Some(&z), 1 << 20);
        // The header claims a smaller payload than the frame inflates to.
        chunks[0].header.as_mut().unwrap().payload_size = 1_000;
        let err = reassemble(chunks).unwrap_err();
        assert!(matches!(err, Error::Encoding { .. }), "{err}");
    }

    #[test]
    fn unknown_and_corrupt_encodings_are_refused() {
        let b = bundle(10_000);
        let z = compress_payload(&b.payload).unwrap();
        let mut chunks = bundle_to_chunks_encoded(&b, Some(&z), 1 << 20);
        chunks[0].header.as_mut().unwrap().payload_encoding = 7;
        let err = reassemble(chunks).unwrap_err();
        assert_eq!(err.to_string(), "bundle payload encoding 7");

        let mut corrupt = z.to_vec();
        let mid = corrupt.len() / 2;
        corrupt[mid] ^= 0xff;
        let corrupt = Bytes::from(corrupt);
        let chunks = bundle_to_chunks_encoded(&b, Some(&corrupt), 1 << 20);
        match reassemble(chunks) {
            // Either the frame does not decode, or what it decodes to is not what was signed.
            Err(Error::Encoding { .. }) | Err(Error::Size { .. }) => {}
            Ok(Some(got)) => assert_ne!(got.payload, b.payload),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn out_of_order_and_short_chunks_are_refused() {
        let b = bundle(30);
        let mut chunks = bundle_to_chunks(&b, 10);
        let mut r = Reassembler::default();
        assert!(matches!(
            r.push(chunks.remove(1)),
            Err(Error::ChunkOrder { .. })
        ));
        let mut chunks = bundle_to_chunks(&b, 10);
        chunks[2].data = Bytes::from_static(b"y");
        let mut r = Reassembler::default();
        r.push(chunks.remove(0)).unwrap();
        r.push(chunks.remove(0)).unwrap();
        assert!(matches!(r.push(chunks.remove(0)), Err(Error::Size { .. })));
    }

    #[test]
    fn bundle_round_trips_as_one_message() {
        let b = bundle(5000);
        assert_eq!(bundle_from_bytes(&bundle_to_bytes(&b)).unwrap(), b);
        assert!(bundle_from_bytes(b"junk").is_err());
    }

    #[test]
    fn key_set_round_trips() {
        let key = SigningKey::from_seed([2; 32]);
        let set = key.sign_key_set(KeySet {
            sequence: 3,
            keys: vec![key.public_key()],
        });
        assert_eq!(key_set_from_pb(key_set_to_pb(&set)).unwrap(), set);
    }
}
