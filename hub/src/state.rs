//! The hub's own durable state in the management cluster: its CA and bundle-signing key in
//! Secrets, and a public `flotilla-hub` ConfigMap (CA certificate and advertised addresses) that
//! `flotilla cluster add` reads to tell a new agent where and whom to trust.
//!
//! Each is created on first start and read back afterwards, so a restarted (or second) hub keeps
//! the identity every registered agent trusts. Creation uses `create`, so two replicas starting
//! together end up with the same one.

use std::collections::BTreeMap;

use flotilla_bundle::SigningKey;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tracing::info;

use crate::delivery::HubCa;
use crate::fleet::FIELD_MANAGER;

/// Secret holding the hub CA (`tls.crt`, `tls.key`).
pub const CA_SECRET: &str = "flotilla-hub-ca";
/// Secret holding the bundle-signing key seed (`seed`, 32 bytes).
pub const SIGNING_KEY_SECRET: &str = "flotilla-hub-signing-key";
/// Public ConfigMap with `ca.crt`, `registrationUrl` and `deliveryUrl` for agents.
pub const HUB_INFO_CONFIGMAP: &str = "flotilla-hub";

/// Errors reading or writing the hub's state.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The management cluster's API failed.
    #[error("{what} in namespace {namespace}")]
    Api {
        /// What was being done.
        what: &'static str,
        /// The hub's namespace.
        namespace: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A stored Secret is malformed.
    #[error("Secret {namespace}/{name} is not valid: {why}")]
    Corrupt {
        /// Namespace.
        namespace: String,
        /// Name.
        name: &'static str,
        /// What is wrong (never the content).
        why: String,
    },
}

type Result<T, E = Error> = std::result::Result<T, E>;

fn data<'a>(secret: &'a Secret, key: &str) -> Option<&'a [u8]> {
    secret
        .data
        .as_ref()?
        .get(key)
        .map(|v: &ByteString| v.0.as_slice())
}

async fn get_or_create(
    api: &Api<Secret>,
    namespace: &str,
    name: &'static str,
    make: impl FnOnce() -> BTreeMap<String, ByteString>,
) -> Result<Secret> {
    let err = |what| {
        move |source| Error::Api {
            what,
            namespace: namespace.to_owned(),
            source,
        }
    };
    if let Some(s) = api
        .get_opt(name)
        .await
        .map_err(err("reading the hub's Secrets"))?
    {
        return Ok(s);
    }
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "flotilla"}},
        "type": "Opaque",
    }))
    .expect("a Secret literal is a Secret");
    let secret = Secret {
        data: Some(make()),
        ..secret
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(s) => {
            info!(namespace, name, "created the hub's Secret");
            Ok(s)
        }
        // Another replica was first: use its.
        Err(kube::Error::Api(e)) if e.code == 409 => api
            .get(name)
            .await
            .map_err(err("reading the hub's Secrets")),
        Err(e) => Err(err("creating the hub's Secrets")(e)),
    }
}

/// Loads the hub CA from its Secret, creating it on first start.
pub async fn load_or_create_ca(client: &Client, namespace: &str) -> Result<HubCa> {
    let api = Api::<Secret>::namespaced(client.clone(), namespace);
    let secret = get_or_create(&api, namespace, CA_SECRET, || {
        let ca = HubCa::generate("flotilla hub CA").expect("generating a CA key");
        BTreeMap::from([
            (
                "tls.crt".into(),
                ByteString(ca.cert_pem().as_bytes().to_vec()),
            ),
            (
                "tls.key".into(),
                ByteString(ca.key_pem().as_bytes().to_vec()),
            ),
        ])
    })
    .await?;
    let corrupt = |why: &str| Error::Corrupt {
        namespace: namespace.to_owned(),
        name: CA_SECRET,
        why: why.to_owned(),
    };
    let cert = data(&secret, "tls.crt").ok_or_else(|| corrupt("no tls.crt"))?;
    let key = data(&secret, "tls.key").ok_or_else(|| corrupt("no tls.key"))?;
    let (cert, key) = (
        std::str::from_utf8(cert).map_err(|_| corrupt("tls.crt is not PEM"))?,
        std::str::from_utf8(key).map_err(|_| corrupt("tls.key is not PEM"))?,
    );
    HubCa::from_pem(cert, key).map_err(|e| corrupt(&format!("{e}")))
}

/// Loads the bundle-signing key from its Secret, creating it on first start.
pub async fn load_or_create_signing_key(client: &Client, namespace: &str) -> Result<SigningKey> {
    let api = Api::<Secret>::namespaced(client.clone(), namespace);
    let secret = get_or_create(&api, namespace, SIGNING_KEY_SECRET, || {
        let key = SigningKey::generate().expect("generating a signing key");
        BTreeMap::from([("seed".into(), ByteString(key.to_seed().to_vec()))])
    })
    .await?;
    let seed: [u8; 32] = data(&secret, "seed")
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| Error::Corrupt {
            namespace: namespace.to_owned(),
            name: SIGNING_KEY_SECRET,
            why: "seed is not 32 bytes".into(),
        })?;
    Ok(SigningKey::from_seed(seed))
}

/// Publishes the CA certificate and the addresses agents dial (registration and delivery), for
/// `flotilla cluster add`.
pub async fn publish_hub_info(
    client: &Client,
    namespace: &str,
    ca_pem: &str,
    registration_url: &str,
    delivery_url: &str,
) -> Result<()> {
    let cm = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": HUB_INFO_CONFIGMAP, "labels": {"app.kubernetes.io/part-of": "flotilla"}},
        "data": {"ca.crt": ca_pem, "registrationUrl": registration_url, "deliveryUrl": delivery_url},
    });
    Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .patch(
            HUB_INFO_CONFIGMAP,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(cm),
        )
        .await
        .map_err(|source| Error::Api {
            what: "publishing the hub's address and CA",
            namespace: namespace.to_owned(),
            source,
        })?;
    Ok(())
}
