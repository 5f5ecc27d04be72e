//! flotilla-bundle: what a signed bundle is, shared by the hub (which seals) and the agent (which
//! verifies) without either depending on the other, and without protobuf (only `flotilla-proto`
//! knows the wire format).
//!
//! A bundle is the canonical encoding of one rendered object set ([`canonical`]), and a
//! [`Header`] naming its audience (cluster), delivery, source revision, sequence, expiry and the
//! payload's sha256 digest. The hub signs the header with ed25519; since the digest is inside the
//! signed header, the signature covers the payload too. The same bytes cannot be replayed to
//! another cluster (the cluster is signed), rolled back (the sequence is signed), or kept past
//! their expiry.
//!
//! Hub signing keys roll over through a [`SignedKeySet`]: the list of keys an agent should trust,
//! signed by a key it already trusts.

pub mod canonical;
pub mod options;

use std::collections::BTreeMap;

use bytes::Bytes;
pub use canonical::Digest;
use ed25519_dalek::{Signer as _, Verifier as _};
pub use options::{
    ConflictPolicy, DeliveryOptions, DriftMode, IgnoreRule, Payload, decode_payload, encode_payload,
};

/// Errors of sealing and verifying bundles and key sets.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The signature names a key the verifier does not trust.
    #[error("bundle signed by unknown key {key_id}")]
    UnknownKey {
        /// The key id the signature names.
        key_id: KeyId,
    },
    /// The signature does not match the signed content under the named key.
    #[error("bad signature by key {key_id}")]
    BadSignature {
        /// The key id the signature names.
        key_id: KeyId,
    },
    /// The payload does not hash to the digest the header carries.
    #[error("payload digest {actual} does not match the signed digest {expected}")]
    DigestMismatch {
        /// The signed digest.
        expected: Digest,
        /// The digest of the payload received.
        actual: Digest,
    },
    /// Bytes that should be an ed25519 public key or signature are not one.
    #[error("malformed {what}")]
    Malformed {
        /// What was malformed.
        what: &'static str,
    },
    /// The operating system's random number generator failed.
    #[error("generating a key")]
    Random(#[source] getrandom::Error),
}

/// A convenient result type for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A short, stable name for a public key: the first 8 bytes of its sha256, in hex.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct KeyId(pub String);

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl KeyId {
    fn of(public: &ed25519_dalek::VerifyingKey) -> Self {
        Self(hex::encode(&Digest::of(public.as_bytes()).0[..8]))
    }
}

/// A hub bundle-signing key. Its `Debug` shows only the key id.
#[derive(Clone)]
pub struct SigningKey {
    inner: ed25519_dalek::SigningKey,
    id: KeyId,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new random key from the operating system's generator.
    pub fn generate() -> Result<Self> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(Error::Random)?;
        Ok(Self::from_seed(seed))
    }

    /// The key with this 32-byte secret seed (as persisted by [`SigningKey::to_seed`]).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let inner = ed25519_dalek::SigningKey::from_bytes(&seed);
        let id = KeyId::of(&inner.verifying_key());
        Self { inner, id }
    }

    /// The secret seed, to persist the key. Never log it.
    pub fn to_seed(&self) -> [u8; 32] {
        self.inner.to_bytes()
    }

    /// This key's id.
    pub fn id(&self) -> &KeyId {
        &self.id
    }

    /// The public half, to hand to agents.
    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            inner: self.inner.verifying_key(),
            id: self.id.clone(),
        }
    }

    fn sign_bytes(&self, message: &[u8]) -> Signature {
        Signature {
            key_id: self.id.clone(),
            bytes: self.inner.sign(message).to_bytes(),
        }
    }

    /// Seals a payload (canonical encoding, see [`canonical::encode_objects`]) into a bundle.
    pub fn seal(&self, meta: BundleMeta, payload: Bytes) -> SignedBundle {
        let header = Header {
            meta,
            digest: Digest::of(&payload),
        };
        let signature = self.sign_bytes(&header.signing_bytes());
        SignedBundle {
            header,
            signature,
            payload,
        }
    }

    /// Signs a set of keys to trust, for rollover.
    pub fn sign_key_set(&self, key_set: KeySet) -> SignedKeySet {
        let signature = self.sign_bytes(&key_set.signing_bytes());
        SignedKeySet { key_set, signature }
    }
}

/// An ed25519 public key an agent may trust.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PublicKey {
    inner: ed25519_dalek::VerifyingKey,
    id: KeyId,
}

impl PublicKey {
    /// Reads a public key from its 32 raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| Error::Malformed { what: "public key" })?;
        let inner = ed25519_dalek::VerifyingKey::from_bytes(&arr)
            .map_err(|_| Error::Malformed { what: "public key" })?;
        Ok(Self {
            id: KeyId::of(&inner),
            inner,
        })
    }

    /// The 32 raw bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.inner.to_bytes()
    }

    /// This key's id.
    pub fn id(&self) -> &KeyId {
        &self.id
    }
}

/// An ed25519 signature and the id of the key that made it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Signature {
    /// The signing key's id.
    pub key_id: KeyId,
    /// The 64 signature bytes.
    pub bytes: [u8; 64],
}

/// What a bundle is for, as chosen by the hub before signing.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct BundleMeta {
    /// The audience: the one cluster allowed to apply this bundle.
    pub cluster: String,
    /// The delivery (a named set of objects) within that cluster.
    pub delivery: String,
    /// The source revision it was rendered from (e.g. a Git commit).
    pub revision: String,
    /// Increases with every new bundle for (cluster, delivery); agents refuse lower ones.
    pub sequence: u64,
    /// Seconds since the Unix epoch after which the bundle must not be applied.
    pub expires_at: u64,
}

/// The signed header of a bundle.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Header {
    /// Audience, delivery, revision, sequence and expiry.
    pub meta: BundleMeta,
    /// sha256 of the canonical payload.
    pub digest: Digest,
}

const BUNDLE_DOMAIN: &[u8] = b"flotilla.bundle.v1\0";
const KEY_SET_DOMAIN: &[u8] = b"flotilla.keyset.v1\0";

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl Header {
    /// The exact bytes the signature covers: a domain tag, then each field length-prefixed, so
    /// no two different headers share an encoding.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let m = &self.meta;
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(BUNDLE_DOMAIN);
        put_str(&mut out, &m.cluster);
        put_str(&mut out, &m.delivery);
        put_str(&mut out, &m.revision);
        out.extend_from_slice(&m.sequence.to_be_bytes());
        out.extend_from_slice(&m.expires_at.to_be_bytes());
        out.extend_from_slice(&self.digest.0);
        out
    }
}

/// A sealed bundle: header, signature and the canonical payload.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SignedBundle {
    /// The signed header.
    pub header: Header,
    /// The hub's signature over the header.
    pub signature: Signature,
    /// The canonical payload (see [`options::encode_payload`]).
    pub payload: Bytes,
}

impl SignedBundle {
    /// Checks the signature against `trusted` and the payload against the signed digest. This
    /// says the hub sealed these bytes; whether they are for this agent, new and unexpired is the
    /// agent's policy (`flotilla_agent::verify`).
    pub fn verify_seal(&self, trusted: &TrustedKeys) -> Result<()> {
        trusted.verify(&self.header.signing_bytes(), &self.signature)?;
        let actual = Digest::of(&self.payload);
        if actual != self.header.digest {
            return Err(Error::DigestMismatch {
                expected: self.header.digest,
                actual,
            });
        }
        Ok(())
    }
}

/// The hub keys an agent accepts signatures from.
#[derive(Clone, Default, Debug, PartialEq, Eq)]
pub struct TrustedKeys {
    keys: BTreeMap<KeyId, PublicKey>,
}

impl TrustedKeys {
    /// A set holding these keys.
    pub fn new(keys: impl IntoIterator<Item = PublicKey>) -> Self {
        Self {
            keys: keys.into_iter().map(|k| (k.id.clone(), k)).collect(),
        }
    }

    /// The keys, ordered by id.
    pub fn keys(&self) -> impl Iterator<Item = &PublicKey> {
        self.keys.values()
    }

    /// True when `id` is trusted.
    pub fn contains(&self, id: &KeyId) -> bool {
        self.keys.contains_key(id)
    }

    fn verify(&self, message: &[u8], signature: &Signature) -> Result<()> {
        let key = self
            .keys
            .get(&signature.key_id)
            .ok_or_else(|| Error::UnknownKey {
                key_id: signature.key_id.clone(),
            })?;
        let sig = ed25519_dalek::Signature::from_bytes(&signature.bytes);
        key.inner
            .verify(message, &sig)
            .map_err(|_| Error::BadSignature {
                key_id: signature.key_id.clone(),
            })
    }
}

/// The keys the hub asks agents to trust from now on. A higher sequence replaces a lower one.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct KeySet {
    /// Increases with each change of the set.
    pub sequence: u64,
    /// The keys to trust.
    pub keys: Vec<PublicKey>,
}

impl KeySet {
    fn signing_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.keys.len() * 32);
        out.extend_from_slice(KEY_SET_DOMAIN);
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&(self.keys.len() as u64).to_be_bytes());
        for k in &self.keys {
            out.extend_from_slice(&k.to_bytes());
        }
        out
    }
}

/// A key set signed by a key the receiver already trusts.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SignedKeySet {
    /// The keys.
    pub key_set: KeySet,
    /// The signature over them.
    pub signature: Signature,
}

impl SignedKeySet {
    /// Checks that a key in `trusted` signed this set.
    pub fn verify(&self, trusted: &TrustedKeys) -> Result<()> {
        trusted.verify(&self.key_set.signing_bytes(), &self.signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> BundleMeta {
        BundleMeta {
            cluster: "prod-eu".into(),
            delivery: "apps".into(),
            revision: "abc123".into(),
            sequence: 7,
            expires_at: 4_000_000_000,
        }
    }

    fn payload() -> Bytes {
        Bytes::from(canonical::encode_objects(&[
            serde_json::json!({"kind": "ConfigMap"}),
        ]))
    }

    #[test]
    fn sealed_bundle_verifies_under_its_key_only() {
        let key = SigningKey::generate().unwrap();
        let other = SigningKey::generate().unwrap();
        let bundle = key.seal(meta(), payload());
        bundle
            .verify_seal(&TrustedKeys::new([key.public_key()]))
            .unwrap();
        let err = bundle
            .verify_seal(&TrustedKeys::new([other.public_key()]))
            .unwrap_err();
        assert!(matches!(err, Error::UnknownKey { .. }), "{err}");
    }

    #[test]
    fn every_header_field_and_the_payload_are_covered() {
        let key = SigningKey::generate().unwrap();
        let trusted = TrustedKeys::new([key.public_key()]);
        let bundle = key.seal(meta(), payload());
        let mutations: Vec<fn(&mut SignedBundle)> = vec![
            |b| b.header.meta.cluster = "prod-us".into(),
            |b| b.header.meta.delivery = "other".into(),
            |b| b.header.meta.revision = "def".into(),
            |b| b.header.meta.sequence += 1,
            |b| b.header.meta.expires_at += 1,
            |b| b.header.digest.0[0] ^= 1,
            |b| b.signature.bytes[0] ^= 1,
        ];
        for m in mutations {
            let mut b = bundle.clone();
            m(&mut b);
            let err = b.verify_seal(&trusted).unwrap_err();
            assert!(matches!(err, Error::BadSignature { .. }), "{err}");
        }
        let mut b = bundle.clone();
        b.payload = Bytes::from_static(b"[{\"kind\":\"Secret\"}]");
        let err = b.verify_seal(&trusted).unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    }

    #[test]
    fn key_set_is_checked_against_trusted_keys() {
        let old = SigningKey::generate().unwrap();
        let new = SigningKey::generate().unwrap();
        let set = old.sign_key_set(KeySet {
            sequence: 2,
            keys: vec![old.public_key(), new.public_key()],
        });
        set.verify(&TrustedKeys::new([old.public_key()])).unwrap();
        assert!(set.verify(&TrustedKeys::new([new.public_key()])).is_err());
        let mut forged = set.clone();
        forged.key_set.sequence = 3;
        assert!(
            forged
                .verify(&TrustedKeys::new([old.public_key()]))
                .is_err()
        );
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let key = SigningKey::from_seed([7; 32]);
        let shown = format!("{key:?}");
        assert!(!shown.contains("07, 07") && shown.contains(&key.id().0));
    }
}
