//! The last verified bundle of each delivery, persisted in the workload cluster.
//!
//! An agent restarted while the hub is unreachable resumes from these: it re-applies them and
//! keeps correcting drift. A bundle from the hub is stored as signed (header, signature and
//! payload) and verified again before it is resumed, so whoever can edit these Secrets still
//! cannot make the agent apply something the hub did not sign. A bundle an operator applied
//! with `flotilla-agent apply --store` is stored unsigned and marked as such
//! ([`StoredBundle::Operator`]). They are Secrets (bundles may contain Secrets), gzip-compressed and
//! split into chunks of under 1 MiB: `bundle-<delivery>-<sequence>-<i>`, labelled with the
//! delivery, sequence and chunk count. A new bundle's chunks are all written before the old
//! ones are deleted, and loading takes the highest sequence whose chunks are complete, so an
//! agent killed half-way through a write still finds a whole bundle.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};

use base64::Engine as _;
use bytes::Bytes;
use flotilla_bundle::{BundleMeta, Digest, Header, KeyId, Signature, SignedBundle};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::apply::FIELD_MANAGER;
use crate::reconcile::Desired;

const DELIVERY: &str = "flotilla.dev/bundle-delivery";
const SEQUENCE: &str = "flotilla.dev/bundle-sequence";
const CHUNKS: &str = "flotilla.dev/bundle-chunks";
const INDEX: &str = "flotilla.dev/bundle-chunk";
const ORIGIN: &str = "flotilla.dev/bundle-origin";
const CHUNK_BYTES: usize = 900 * 1024;

/// Errors persisting bundles.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused a read or write.
    #[error("{action} the stored bundle of delivery {delivery}")]
    Kube {
        /// What was being done.
        action: &'static str,
        /// The delivery.
        delivery: String,
        /// The API server's answer.
        #[source]
        source: kube::Error,
    },
    /// A stored bundle could not be decoded.
    #[error("the stored bundle of delivery {delivery} is corrupt")]
    Corrupt {
        /// The delivery.
        delivery: String,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

/// A persisted bundle.
#[derive(Debug, Clone)]
pub enum StoredBundle {
    /// As the hub signed it; verified again before it is resumed.
    Signed(SignedBundle),
    /// Applied by an operator with `flotilla-agent apply --file --store`: unsigned. An agent
    /// connected to a hub never resumes one for a delivery the hub delivers.
    Operator(Desired),
}

impl StoredBundle {
    /// The delivery.
    pub fn delivery(&self) -> &str {
        match self {
            Self::Signed(b) => &b.header.meta.delivery,
            Self::Operator(d) => &d.delivery,
        }
    }

    /// The bundle's sequence.
    pub fn sequence(&self) -> u64 {
        match self {
            Self::Signed(b) => b.header.meta.sequence,
            Self::Operator(d) => d.sequence,
        }
    }

    fn origin(&self) -> &'static str {
        match self {
            Self::Signed(_) => "signed",
            Self::Operator(_) => "operator",
        }
    }
}

/// The JSON inside a stored bundle's Secret: `{"signed": {...}}` or `{"operator": {...}}`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
enum Envelope {
    Signed(SignedWire),
    Operator(Desired),
}

/// A signed bundle as JSON; bytes in standard base64.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignedWire {
    cluster: String,
    delivery: String,
    revision: String,
    sequence: u64,
    expires_at: u64,
    digest: String,
    key_id: String,
    signature: String,
    payload: String,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(s: &str) -> std::io::Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}

impl Envelope {
    fn of(bundle: &StoredBundle) -> Self {
        match bundle {
            StoredBundle::Operator(d) => Self::Operator(d.clone()),
            StoredBundle::Signed(b) => {
                let m = &b.header.meta;
                Self::Signed(SignedWire {
                    cluster: m.cluster.clone(),
                    delivery: m.delivery.clone(),
                    revision: m.revision.clone(),
                    sequence: m.sequence,
                    expires_at: m.expires_at,
                    digest: b64(&b.header.digest.0),
                    key_id: b.signature.key_id.0.clone(),
                    signature: b64(&b.signature.bytes),
                    payload: b64(&b.payload),
                })
            }
        }
    }

    fn into_stored(self) -> std::io::Result<StoredBundle> {
        match self {
            Self::Operator(d) => Ok(StoredBundle::Operator(d)),
            Self::Signed(w) => {
                let digest = Digest::from_slice(&unb64(&w.digest)?)
                    .ok_or_else(|| invalid("the digest is not 32 bytes"))?;
                let bytes: [u8; 64] = unb64(&w.signature)?
                    .try_into()
                    .map_err(|_| invalid("the signature is not 64 bytes"))?;
                Ok(StoredBundle::Signed(SignedBundle {
                    header: Header {
                        meta: BundleMeta {
                            cluster: w.cluster,
                            delivery: w.delivery,
                            revision: w.revision,
                            sequence: w.sequence,
                            expires_at: w.expires_at,
                        },
                        digest,
                    },
                    signature: Signature {
                        key_id: KeyId(w.key_id),
                        bytes,
                    },
                    payload: Bytes::from(unb64(&w.payload)?),
                }))
            }
        }
    }
}

/// Encodes a stored bundle as the JSON kept (gzip-compressed) in its Secrets.
pub fn encode(bundle: &StoredBundle) -> Vec<u8> {
    serde_json::to_vec(&Envelope::of(bundle)).expect("stored bundles serialise")
}

/// Decodes the JSON of a stored bundle. A bare `Desired` (the format of earlier releases) is
/// read as operator-applied: it carries no signature.
pub fn decode(json: &[u8]) -> std::io::Result<StoredBundle> {
    match serde_json::from_slice::<Envelope>(json) {
        Ok(e) => e.into_stored(),
        Err(e) => match serde_json::from_slice::<Desired>(json) {
            Ok(d) => Ok(StoredBundle::Operator(d)),
            Err(_) => Err(e.into()),
        },
    }
}

/// Reads and writes persisted bundles in the agent's namespace.
#[derive(Debug, Clone)]
pub struct BundleStore {
    api: Api<Secret>,
}

impl BundleStore {
    /// Bundles stored in `namespace` (which must exist).
    pub fn new(client: Client, namespace: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
        }
    }

    /// Stores `bundle` as the last verified bundle of its delivery.
    pub async fn save(&self, bundle: &StoredBundle) -> Result<(), Error> {
        let d = &bundle.delivery().to_owned();
        let err = |action, source| Error::Kube {
            action,
            delivery: d.clone(),
            source,
        };
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&encode(bundle))
            .and_then(|_| gz.flush())
            .map_err(|source| Error::Corrupt {
                delivery: d.clone(),
                source,
            })?;
        let bytes = gz.finish().map_err(|source| Error::Corrupt {
            delivery: d.clone(),
            source,
        })?;
        let chunks: Vec<&[u8]> = bytes.chunks(CHUNK_BYTES).collect();
        let seq = bundle.sequence().to_string();
        for (i, chunk) in chunks.iter().enumerate() {
            let name = format!("bundle-{d}-{seq}-{i}");
            let secret = json!({
                "apiVersion": "v1", "kind": "Secret", "type": "flotilla.dev/bundle",
                "metadata": { "name": name, "labels": {
                    DELIVERY: d, SEQUENCE: seq, CHUNKS: chunks.len().to_string(), INDEX: i.to_string(),
                    ORIGIN: bundle.origin(),
                    "app.kubernetes.io/managed-by": "flotilla",
                }},
                "data": { "bundle.json.gz": ByteString(chunk.to_vec()) },
            });
            self.api
                .patch(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&secret),
                )
                .await
                .map_err(|e| err("writing", e))?;
        }
        // Only now that the new bundle is whole, drop older ones.
        let old = self
            .api
            .list(&ListParams::default().labels(&format!("{DELIVERY}={d},{SEQUENCE}!={seq}")))
            .await
            .map_err(|e| err("listing", e))?;
        for s in old.items {
            let name = s.metadata.name.unwrap_or_default();
            match self.api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(err("deleting an older copy of", e)),
            }
        }
        Ok(())
    }

    /// Every delivery's last complete bundle, or why it cannot be read.
    pub async fn load_all(&self) -> Result<Vec<(String, Result<StoredBundle, Error>)>, Error> {
        let list = self
            .api
            .list(&ListParams::default().labels(DELIVERY))
            .await
            .map_err(|source| Error::Kube {
                action: "listing",
                delivery: "*".into(),
                source,
            })?;
        // delivery -> sequence -> (chunk count, index -> bytes)
        type Chunks = (usize, BTreeMap<usize, Vec<u8>>);
        let mut found: BTreeMap<String, BTreeMap<u64, Chunks>> = BTreeMap::new();
        for s in list.items {
            let labels = s.metadata.labels.clone().unwrap_or_default();
            let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
            let (Ok(seq), Ok(count), Ok(idx)) = (
                get(SEQUENCE).parse::<u64>(),
                get(CHUNKS).parse::<usize>(),
                get(INDEX).parse::<usize>(),
            ) else {
                continue;
            };
            let data = s
                .data
                .and_then(|mut d| d.remove("bundle.json.gz"))
                .map(|b| b.0)
                .unwrap_or_default();
            let entry = found
                .entry(get(DELIVERY))
                .or_default()
                .entry(seq)
                .or_insert((count, BTreeMap::new()));
            entry.1.insert(idx, data);
        }
        let mut out = Vec::new();
        for (delivery, seqs) in found {
            let Some((_, (_, chunks))) = seqs
                .into_iter()
                .rev()
                .find(|(_, (count, chunks))| chunks.len() == *count)
            else {
                continue;
            };
            let bytes: Vec<u8> = chunks.into_values().flatten().collect();
            let mut json = Vec::new();
            let loaded = flate2::read::GzDecoder::new(&bytes[..])
                .read_to_end(&mut json)
                .and_then(|_| decode(&json))
                .map_err(|source| Error::Corrupt {
                    delivery: delivery.clone(),
                    source,
                });
            out.push((delivery, loaded));
        }
        Ok(out)
    }

    /// Deletes every stored copy of `delivery`'s bundle.
    pub async fn remove(&self, delivery: &str) -> Result<(), Error> {
        self.api
            .delete_collection(
                &DeleteParams::default(),
                &ListParams::default().labels(&format!("{DELIVERY}={delivery}")),
            )
            .await
            .map_err(|source| Error::Kube {
                action: "deleting",
                delivery: delivery.into(),
                source,
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use flotilla_bundle::SigningKey;
    use serde_json::json;

    use super::*;

    #[test]
    fn signed_and_operator_bundles_round_trip_and_old_stores_read_as_operator() {
        let key = SigningKey::from_seed([3; 32]);
        let signed = key.seal(
            BundleMeta {
                cluster: "eu-1".into(),
                delivery: "apps".into(),
                revision: "r1".into(),
                sequence: 9,
                expires_at: 100,
            },
            flotilla_bundle::encode_payload(&[json!({"kind": "ConfigMap"})], &Default::default()),
        );
        match decode(&encode(&StoredBundle::Signed(signed.clone()))).unwrap() {
            StoredBundle::Signed(b) => assert_eq!(b, signed),
            other => panic!("{other:?}"),
        }
        let desired = Desired {
            delivery: "local".into(),
            revision: "r".into(),
            sequence: 1,
            objects: vec![],
            options: Default::default(),
        };
        let json = encode(&StoredBundle::Operator(desired.clone()));
        assert!(String::from_utf8_lossy(&json).starts_with("{\"operator\":"));
        assert!(
            matches!(decode(&json).unwrap(), StoredBundle::Operator(d) if d.delivery == "local")
        );
        let legacy = serde_json::to_vec(&desired).unwrap();
        assert!(matches!(decode(&legacy).unwrap(), StoredBundle::Operator(d) if d.sequence == 1));
        assert!(decode(b"{\"signed\": {\"cluster\": 1}}").is_err());
    }
}
