//! The agent's identity with its hub, persisted in the workload cluster.
//!
//! After registering, the agent keeps what it needs to reconnect without a bootstrap token in
//! the Secret `flotilla-agent-identity` of its state namespace:
//!
//! | key | content |
//! | --- | --- |
//! | `tls.key` | the agent's private key (PEM); it never leaves the cluster |
//! | `tls.crt` | its client certificate (PEM), rewritten after every renewal |
//! | `ca.crt` | the hub CA (PEM) the hub's server certificate must chain to |
//! | `state.json` | cluster, trusted hub signing keys and their key-set sequence, held sequences |
//!
//! The trusted keys are what a stored bundle is verified against at restart, so this Secret is
//! the agent's root of trust: only the agent's service account should read or write it (see
//! docs/rbac/).

use std::collections::BTreeMap;

use base64::Engine as _;
use bytes::Bytes;
use flotilla_bundle::{PublicKey, TrustedKeys};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::apply::FIELD_MANAGER;
use crate::connect::{ClientIdentity, Snapshot, der_to_pem};

/// Name of the identity Secret in the state namespace.
pub const SECRET_NAME: &str = "flotilla-agent-identity";

/// Errors of loading and saving the identity.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused a read or write.
    #[error("{action} the identity Secret {namespace}/{SECRET_NAME}")]
    Kube {
        /// What was being done.
        action: &'static str,
        /// The state namespace.
        namespace: String,
        /// The API server's answer.
        #[source]
        source: kube::Error,
    },
    /// The Secret exists but a field is missing or unreadable.
    #[error("the identity Secret {namespace}/{SECRET_NAME} is corrupt: {field} {problem}")]
    Corrupt {
        /// The state namespace.
        namespace: String,
        /// The data key.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

/// A convenient result type for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the agent keeps of its registration. `Debug` hides the private key.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Cluster, certificate and key, trusted keys, held sequences.
    pub snapshot: Snapshot,
    /// The hub CA, PEM.
    pub ca_pem: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct State {
    cluster: String,
    key_set_sequence: u64,
    /// Raw ed25519 public keys, standard base64.
    trusted_keys: Vec<String>,
    held: BTreeMap<String, u64>,
}

impl Identity {
    /// The Secret's data.
    pub fn to_data(&self) -> BTreeMap<String, Vec<u8>> {
        let s = &self.snapshot;
        let b64 = base64::engine::general_purpose::STANDARD;
        let state = State {
            cluster: s.cluster.clone(),
            key_set_sequence: s.trusted.1,
            trusted_keys: s
                .trusted
                .0
                .keys()
                .map(|k| b64.encode(k.to_bytes()))
                .collect(),
            held: s.held.clone(),
        };
        BTreeMap::from([
            ("tls.key".into(), s.identity.key_pem.clone().into_bytes()),
            (
                "tls.crt".into(),
                der_to_pem("CERTIFICATE", &s.identity.cert_der).into_bytes(),
            ),
            ("ca.crt".into(), self.ca_pem.clone().into_bytes()),
            (
                "state.json".into(),
                serde_json::to_vec(&state).expect("identity state serialises"),
            ),
        ])
    }

    /// Reads the Secret's data back; `namespace` names it in errors.
    pub fn from_data(namespace: &str, data: &BTreeMap<String, Vec<u8>>) -> Result<Self> {
        let corrupt = |field, problem: &str| Error::Corrupt {
            namespace: namespace.to_owned(),
            field,
            problem: problem.to_owned(),
        };
        let text = |field: &'static str| -> Result<String> {
            let bytes = data
                .get(field)
                .ok_or_else(|| corrupt(field, "is missing"))?;
            String::from_utf8(bytes.clone()).map_err(|_| corrupt(field, "is not UTF-8"))
        };
        let key_pem = text("tls.key")?;
        let cert_pem = text("tls.crt")?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .map_err(|_| corrupt("tls.crt", "is not a PEM certificate"))?;
        let ca_pem = text("ca.crt")?;
        let state: State = serde_json::from_str(&text("state.json")?)
            .map_err(|e| corrupt("state.json", &format!("is not valid: {e}")))?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let keys = state
            .trusted_keys
            .iter()
            .map(|k| {
                b64.decode(k)
                    .ok()
                    .and_then(|b| PublicKey::from_bytes(&b).ok())
                    .ok_or_else(|| corrupt("state.json", "holds a malformed trusted key"))
            })
            .collect::<Result<Vec<_>>>()?;
        if keys.is_empty() {
            return Err(corrupt("state.json", "trusts no hub key"));
        }
        Ok(Self {
            snapshot: Snapshot {
                cluster: state.cluster,
                identity: ClientIdentity {
                    cert_der: Bytes::from(pem.contents),
                    key_pem,
                },
                trusted: (TrustedKeys::new(keys), state.key_set_sequence),
                held: state.held,
            },
            ca_pem,
        })
    }
}

/// Reads and writes the identity Secret.
#[derive(Debug, Clone)]
pub struct IdentityStore {
    api: Api<Secret>,
    namespace: String,
}

impl IdentityStore {
    /// The identity Secret in `namespace` (which must exist).
    pub fn new(client: Client, namespace: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
        }
    }

    /// The stored identity, if the agent registered before.
    pub async fn load(&self) -> Result<Option<Identity>> {
        let secret = self
            .api
            .get_opt(SECRET_NAME)
            .await
            .map_err(|source| Error::Kube {
                action: "reading",
                namespace: self.namespace.clone(),
                source,
            })?;
        let Some(secret) = secret else {
            return Ok(None);
        };
        let data: BTreeMap<String, Vec<u8>> = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        Identity::from_data(&self.namespace, &data).map(Some)
    }

    /// Writes `identity` (server-side apply, so it creates or replaces).
    pub async fn save(&self, identity: &Identity) -> Result<()> {
        let data: BTreeMap<String, ByteString> = identity
            .to_data()
            .into_iter()
            .map(|(k, v)| (k, ByteString(v)))
            .collect();
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret", "type": "flotilla.dev/agent-identity",
            "metadata": {"name": SECRET_NAME, "labels": {
                "app.kubernetes.io/managed-by": "flotilla",
                "flotilla.dev/cluster": identity.snapshot.cluster,
            }},
            "data": data,
        });
        self.api
            .patch(
                SECRET_NAME,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await
            .map_err(|source| Error::Kube {
                action: "writing",
                namespace: self.namespace.clone(),
                source,
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use flotilla_bundle::SigningKey;

    use super::*;

    #[test]
    fn identity_round_trips_through_the_secret_data() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["agent".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let signing = SigningKey::from_seed([9; 32]);
        let identity = Identity {
            snapshot: Snapshot {
                cluster: "eu-1".into(),
                identity: ClientIdentity {
                    cert_der: Bytes::from(cert.der().to_vec()),
                    key_pem: key.serialize_pem(),
                },
                trusted: (TrustedKeys::new([signing.public_key()]), 3),
                held: BTreeMap::from([("apps".to_string(), 17)]),
            },
            ca_pem: cert.pem(),
        };
        let data = identity.to_data();
        let back = Identity::from_data("flotilla-system", &data).unwrap();
        assert_eq!(back.snapshot.cluster, "eu-1");
        assert_eq!(
            back.snapshot.identity.cert_der,
            identity.snapshot.identity.cert_der
        );
        assert_eq!(
            back.snapshot.identity.key_pem,
            identity.snapshot.identity.key_pem
        );
        assert_eq!(back.snapshot.trusted, identity.snapshot.trusted);
        assert_eq!(back.snapshot.held, identity.snapshot.held);
        assert_eq!(back.to_data(), data);
        // Debug never shows the private key.
        assert!(!format!("{back:?}").contains("PRIVATE KEY"));

        let mut broken = data.clone();
        broken.remove("tls.key");
        let err = Identity::from_data("flotilla-system", &broken).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the identity Secret flotilla-system/flotilla-agent-identity is corrupt: tls.key is missing"
        );
    }
}
