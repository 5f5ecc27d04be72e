//! Sealing rendered object sets into signed bundles, and the hub's signing keys.
//!
//! The encoding and signature format live in `flotilla-bundle`, shared with the agent; this
//! module owns the keys: which one signs now, which ones agents should trust, and the signed key
//! set that rolls them over without a gap in delivery.

use bytes::Bytes;
use flotilla_bundle::{
    BundleMeta, DeliveryOptions, KeyId, KeySet, PublicKey, SignedBundle, SignedKeySet, SigningKey,
};
use serde_json::Value;

/// Errors of key management.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key is not in the trusted set.
    #[error("signing key {key_id} is not trusted")]
    NotTrusted {
        /// The key.
        key_id: KeyId,
    },
    /// The active key cannot be retired; activate another one first.
    #[error("signing key {key_id} is active and cannot be retired")]
    RetireActive {
        /// The key.
        key_id: KeyId,
    },
}

/// A convenient result type for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Encodes a rendered object set with default delivery options as the canonical bundle
/// payload `{"objects":[...],"options":{...}}` (what [`crate::delivery::Hub::publish`] seals).
pub fn encode(objects: &[Value]) -> Bytes {
    encode_with_options(objects, &DeliveryOptions::default())
}

/// Encodes a rendered object set and its delivery options as the canonical bundle payload
/// (what [`crate::delivery::Hub::publish_with_options`] seals).
pub fn encode_with_options(objects: &[Value], options: &DeliveryOptions) -> Bytes {
    flotilla_bundle::encode_payload(objects, options)
}

/// The hub's signing keys: the active one and the ones agents are told to trust.
///
/// A rollover is three steps, each safe on its own: [`KeyRing::add`] a new key (agents are sent
/// a key set trusting both, signed by the active key), [`KeyRing::activate`] it once agents hold
/// that set, then [`KeyRing::retire`] the old one.
#[derive(Debug, Clone)]
pub struct KeyRing {
    active: SigningKey,
    keys: Vec<SigningKey>,
    key_set: SignedKeySet,
}

impl KeyRing {
    /// A ring with one key, active and trusted.
    pub fn new(active: SigningKey) -> Self {
        let key_set = active.sign_key_set(KeySet {
            sequence: 1,
            keys: vec![active.public_key()],
        });
        Self {
            keys: vec![active.clone()],
            active,
            key_set,
        }
    }

    /// The key that signs bundles now.
    pub fn active(&self) -> &SigningKey {
        &self.active
    }

    /// The current signed set of keys agents should trust.
    pub fn key_set(&self) -> &SignedKeySet {
        &self.key_set
    }

    /// The public keys agents should trust.
    pub fn trusted(&self) -> Vec<PublicKey> {
        self.keys.iter().map(SigningKey::public_key).collect()
    }

    fn resign(&mut self) {
        self.key_set = self.active.sign_key_set(KeySet {
            sequence: self.key_set.key_set.sequence + 1,
            keys: self.trusted(),
        });
    }

    /// Adds a key to the trusted set (not yet signing); returns the new key set to send.
    pub fn add(&mut self, key: SigningKey) -> &SignedKeySet {
        if !self.keys.iter().any(|k| k.id() == key.id()) {
            self.keys.push(key);
            self.resign();
        }
        &self.key_set
    }

    /// Makes a trusted key the one that signs.
    pub fn activate(&mut self, id: &KeyId) -> Result<()> {
        let key = self
            .keys
            .iter()
            .find(|k| k.id() == id)
            .ok_or_else(|| Error::NotTrusted { key_id: id.clone() })?;
        self.active = key.clone();
        Ok(())
    }

    /// Removes a key that no longer signs; returns the new key set to send.
    pub fn retire(&mut self, id: &KeyId) -> Result<&SignedKeySet> {
        if self.active.id() == id {
            return Err(Error::RetireActive { key_id: id.clone() });
        }
        let before = self.keys.len();
        self.keys.retain(|k| k.id() != id);
        if self.keys.len() == before {
            return Err(Error::NotTrusted { key_id: id.clone() });
        }
        self.resign();
        Ok(&self.key_set)
    }

    /// Seals a payload with the active key.
    pub fn seal(&self, meta: BundleMeta, payload: Bytes) -> SignedBundle {
        self.active.seal(meta, payload)
    }
}

#[cfg(test)]
mod tests {
    use flotilla_bundle::TrustedKeys;

    use super::*;

    #[test]
    fn rollover_key_sets_chain_from_trusted_keys() {
        let k1 = SigningKey::generate().unwrap();
        let k2 = SigningKey::generate().unwrap();
        let mut ring = KeyRing::new(k1.clone());
        let agent_trust = TrustedKeys::new([k1.public_key()]);
        let both = ring.add(k2.clone()).clone();
        both.verify(&agent_trust).unwrap();
        assert_eq!(both.key_set.keys.len(), 2);
        assert!(
            ring.retire(k1.id()).is_err(),
            "active key cannot be retired"
        );
        ring.activate(k2.id()).unwrap();
        let only2 = ring.retire(k1.id()).unwrap().clone();
        only2
            .verify(&TrustedKeys::new(both.key_set.keys.clone()))
            .unwrap();
        assert_eq!(only2.key_set.sequence, 3);
        assert_eq!(ring.active().id(), k2.id());
    }
}
