//! Verification of signed bundles before anything of them is applied.
//!
//! A bundle is accepted only if a trusted hub key signed it, its payload matches the signed
//! digest, it names this cluster, it has not expired, and its sequence is not lower than the one
//! this agent holds for the delivery. Trusted keys change only through a key set signed by a key
//! already trusted, which lets the hub roll its key over without a gap.

use std::collections::BTreeMap;

use bytes::Bytes;
use flotilla_bundle::{
    BundleMeta, Digest, Header, Payload, Signature, SignedBundle, SignedKeySet, TrustedKeys,
};

/// Why a bundle or key set was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The signature or digest does not hold (tampered bundle, unknown or retired key).
    #[error("bundle {delivery}#{sequence} for cluster {cluster} failed verification")]
    Seal {
        /// The cluster the bundle claims to be for.
        cluster: String,
        /// The delivery it claims.
        delivery: String,
        /// The sequence it claims.
        sequence: u64,
        /// What failed.
        #[source]
        source: Box<flotilla_bundle::Error>,
    },
    /// The bundle was signed for another cluster.
    #[error("bundle {delivery}#{sequence} is for cluster {got}, this agent is cluster {expected}")]
    WrongAudience {
        /// The delivery.
        delivery: String,
        /// The sequence.
        sequence: u64,
        /// The cluster the bundle names.
        got: String,
        /// This agent's cluster.
        expected: String,
    },
    /// The bundle is older than the one held: a replay or a rollback.
    #[error("bundle {delivery}#{got} is older than the held sequence {held}")]
    Replay {
        /// The delivery.
        delivery: String,
        /// The sequence received.
        got: u64,
        /// The sequence held.
        held: u64,
    },
    /// The bundle's expiry has passed.
    #[error("bundle {delivery}#{sequence} expired at unix time {expired_at}")]
    Expired {
        /// The delivery.
        delivery: String,
        /// The sequence.
        sequence: u64,
        /// When it expired, in seconds since the Unix epoch.
        expired_at: u64,
    },
    /// A key set was not signed by a trusted key.
    #[error("key set {sequence} failed verification")]
    KeySet {
        /// The key set's sequence.
        sequence: u64,
        /// What failed.
        #[source]
        source: Box<flotilla_bundle::Error>,
    },
}

/// A convenient result type for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A bundle that passed verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedBundle {
    /// Cluster, delivery, revision, sequence and expiry, as signed.
    pub meta: BundleMeta,
    /// The payload's digest.
    pub digest: Digest,
    /// The hub's signature, kept so the bundle can be stored and verified again at restart.
    pub signature: Signature,
    /// The canonical payload: objects and delivery options.
    pub payload: Bytes,
}

impl VerifiedBundle {
    /// Parses the payload into its objects and delivery options.
    pub fn decode(&self) -> Result<Payload, serde_json::Error> {
        flotilla_bundle::decode_payload(&self.payload)
    }

    /// Parses the payload's objects.
    pub fn objects(&self) -> Result<Vec<serde_json::Value>, serde_json::Error> {
        self.decode().map(|p| p.objects)
    }

    /// The signed bundle again, as received: to persist and re-verify later.
    pub fn to_signed(&self) -> SignedBundle {
        SignedBundle {
            header: Header {
                meta: self.meta.clone(),
                digest: self.digest,
            },
            signature: self.signature.clone(),
            payload: self.payload.clone(),
        }
    }
}

/// Verifies a bundle the agent stored itself, at restart: a trusted key signed it, the payload
/// matches the digest and it names `cluster`. Neither sequence nor expiry is checked: the stored
/// bundle is by construction the newest one the agent accepted, and it remains the desired state
/// of its delivery until the hub sends a newer one, however long the hub stays away.
pub fn verify_stored(
    bundle: SignedBundle,
    cluster: &str,
    trusted: &TrustedKeys,
) -> Result<VerifiedBundle> {
    let meta = &bundle.header.meta;
    bundle.verify_seal(trusted).map_err(|source| Error::Seal {
        cluster: meta.cluster.clone(),
        delivery: meta.delivery.clone(),
        sequence: meta.sequence,
        source: Box::new(source),
    })?;
    if meta.cluster != cluster {
        return Err(Error::WrongAudience {
            delivery: meta.delivery.clone(),
            sequence: meta.sequence,
            got: meta.cluster.clone(),
            expected: cluster.to_owned(),
        });
    }
    Ok(VerifiedBundle {
        meta: bundle.header.meta,
        digest: bundle.header.digest,
        signature: bundle.signature,
        payload: bundle.payload,
    })
}

/// What to do with a verified bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Newer than what is held: apply it.
    New(VerifiedBundle),
    /// The sequence already held (a redelivery): acknowledge, do not apply again.
    Duplicate(VerifiedBundle),
}

/// The agent's verification state: its cluster, the keys it trusts and the sequence it holds
/// per delivery.
#[derive(Clone, Debug)]
pub struct Verifier {
    cluster: String,
    trusted: TrustedKeys,
    key_set_sequence: u64,
    held: BTreeMap<String, u64>,
}

impl Verifier {
    /// A verifier for `cluster` trusting `trusted` (from registration), holding nothing yet.
    pub fn new(cluster: impl Into<String>, trusted: TrustedKeys, key_set_sequence: u64) -> Self {
        Self {
            cluster: cluster.into(),
            trusted,
            key_set_sequence,
            held: BTreeMap::new(),
        }
    }

    /// Resumes from the sequences held before a restart.
    pub fn with_held(mut self, held: BTreeMap<String, u64>) -> Self {
        self.held = held;
        self
    }

    /// This agent's cluster.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The newest sequence held per delivery.
    pub fn held(&self) -> &BTreeMap<String, u64> {
        &self.held
    }

    /// The keys trusted now.
    pub fn trusted(&self) -> &TrustedKeys {
        &self.trusted
    }

    /// The sequence of the key set trusted now.
    pub fn key_set_sequence(&self) -> u64 {
        self.key_set_sequence
    }

    /// Verifies a bundle at time `now_unix` (seconds). On success a new bundle's sequence
    /// becomes the held one; on failure nothing changes.
    pub fn verify(&mut self, bundle: SignedBundle, now_unix: u64) -> Result<Verdict> {
        let meta = &bundle.header.meta;
        bundle
            .verify_seal(&self.trusted)
            .map_err(|source| Error::Seal {
                cluster: meta.cluster.clone(),
                delivery: meta.delivery.clone(),
                sequence: meta.sequence,
                source: Box::new(source),
            })?;
        if meta.cluster != self.cluster {
            return Err(Error::WrongAudience {
                delivery: meta.delivery.clone(),
                sequence: meta.sequence,
                got: meta.cluster.clone(),
                expected: self.cluster.clone(),
            });
        }
        if meta.expires_at <= now_unix {
            return Err(Error::Expired {
                delivery: meta.delivery.clone(),
                sequence: meta.sequence,
                expired_at: meta.expires_at,
            });
        }
        let held = self.held.get(&meta.delivery).copied().unwrap_or(0);
        let verified = VerifiedBundle {
            meta: bundle.header.meta,
            digest: bundle.header.digest,
            signature: bundle.signature,
            payload: bundle.payload,
        };
        match verified.meta.sequence.cmp(&held) {
            std::cmp::Ordering::Less => Err(Error::Replay {
                delivery: verified.meta.delivery,
                got: verified.meta.sequence,
                held,
            }),
            std::cmp::Ordering::Equal => Ok(Verdict::Duplicate(verified)),
            std::cmp::Ordering::Greater => {
                self.held
                    .insert(verified.meta.delivery.clone(), verified.meta.sequence);
                Ok(Verdict::New(verified))
            }
        }
    }

    /// Adopts a key set signed by a currently trusted key. Returns false (and changes nothing)
    /// when its sequence is not newer than the one trusted.
    pub fn accept_key_set(&mut self, set: SignedKeySet) -> Result<bool> {
        set.verify(&self.trusted).map_err(|source| Error::KeySet {
            sequence: set.key_set.sequence,
            source: Box::new(source),
        })?;
        if set.key_set.sequence <= self.key_set_sequence {
            return Ok(false);
        }
        self.key_set_sequence = set.key_set.sequence;
        self.trusted = TrustedKeys::new(set.key_set.keys);
        Ok(true)
    }
}

#[cfg(test)]
mod tests;
