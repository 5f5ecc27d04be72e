//! The last verified bundle of each delivery, persisted in the workload cluster.
//!
//! An agent restarted while the hub is unreachable resumes from these: it re-applies them and
//! keeps correcting drift. They are Secrets (bundles may contain Secrets), gzip-compressed and
//! split into chunks of under 1 MiB: `bundle-<delivery>-<sequence>-<i>`, labelled with the
//! delivery, sequence and chunk count. A new bundle's chunks are all written before the old
//! ones are deleted, and loading takes the highest sequence whose chunks are complete, so an
//! agent killed half-way through a write still finds a whole bundle.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use crate::apply::FIELD_MANAGER;
use crate::reconcile::Desired;

const DELIVERY: &str = "flotilla.dev/bundle-delivery";
const SEQUENCE: &str = "flotilla.dev/bundle-sequence";
const CHUNKS: &str = "flotilla.dev/bundle-chunks";
const INDEX: &str = "flotilla.dev/bundle-chunk";
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

    /// Stores `desired` as the last verified bundle of its delivery.
    pub async fn save(&self, desired: &Desired) -> Result<(), Error> {
        let d = &desired.delivery;
        let err = |action, source| Error::Kube {
            action,
            delivery: d.clone(),
            source,
        };
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&serde_json::to_vec(desired).expect("desired serialises"))
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
        let seq = desired.sequence.to_string();
        for (i, chunk) in chunks.iter().enumerate() {
            let name = format!("bundle-{d}-{seq}-{i}");
            let secret = json!({
                "apiVersion": "v1", "kind": "Secret", "type": "flotilla.dev/bundle",
                "metadata": { "name": name, "labels": {
                    DELIVERY: d, SEQUENCE: seq, CHUNKS: chunks.len().to_string(), INDEX: i.to_string(),
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

    /// Every delivery's last complete bundle.
    pub async fn load_all(&self) -> Result<Vec<Desired>, Error> {
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
            let corrupt = |source| Error::Corrupt {
                delivery: delivery.clone(),
                source,
            };
            flate2::read::GzDecoder::new(&bytes[..])
                .read_to_end(&mut json)
                .map_err(corrupt)?;
            out.push(serde_json::from_slice(&json).map_err(|e| corrupt(e.into()))?);
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
