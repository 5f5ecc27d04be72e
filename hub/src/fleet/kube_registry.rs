//! The registry kept in the management cluster: `Cluster` custom resources say which clusters
//! exist and whether they are accepted or revoked; bootstrap tokens are Secrets that hold only
//! the token's sha256 and its expiry.
//!
//! A token Secret is named after its hash (`flotilla-token-<first 20 hex digits>`), so redeeming
//! is one GET; it is marked used with an update conditional on its `resourceVersion`, so two
//! agents racing with the same token cannot both win.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt as _};
use serde_json::json;
use tokio::sync::broadcast;
use tracing::warn;

use super::{BootstrapToken, ClusterState, Error, Event, Registry, Result, TokenHash};
use crate::api::Cluster;

/// Secret type of bootstrap token Secrets.
pub const TOKEN_SECRET_TYPE: &str = "flotilla.dev/bootstrap-token";
/// Label naming the cluster a token Secret is for.
pub const CLUSTER_LABEL: &str = "flotilla.dev/cluster";
/// Field manager of the hub's writes.
pub const FIELD_MANAGER: &str = "flotilla-hub";

/// The name of the Secret that stores a token's hash.
pub fn token_secret_name(hash: &TokenHash) -> String {
    format!("flotilla-token-{}", &hex::encode(hash.0)[..20])
}

/// The state of a `Cluster` resource.
pub fn cluster_state(cluster: &Cluster) -> ClusterState {
    if cluster.spec.revoked {
        ClusterState::Revoked
    } else if cluster.spec.accepted {
        ClusterState::Accepted
    } else {
        ClusterState::Pending
    }
}

/// Creates a bootstrap token Secret for `cluster` in `namespace`, valid for `ttl`, and returns the
/// token in clear (to be shown once). Only its hash is stored.
pub async fn create_token(
    client: &Client,
    namespace: &str,
    cluster: &str,
    ttl: Duration,
) -> Result<BootstrapToken> {
    let token = BootstrapToken::generate()?;
    let hash = token.hash();
    let expires = SystemTime::now() + ttl;
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": token_secret_name(&hash),
            "namespace": namespace,
            "labels": {CLUSTER_LABEL: cluster},
        },
        "type": TOKEN_SECRET_TYPE,
        "stringData": {
            "cluster": cluster,
            "tokenHash": hex::encode(hash.0),
            "expiresAt": unix(expires).to_string(),
        },
    }))
    .expect("a Secret literal is a Secret");
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &secret)
        .await
        .map_err(|source| Error::Store {
            what: format!(
                "storing a bootstrap token for cluster {cluster} in namespace {namespace}"
            ),
            source,
        })?;
    Ok(token)
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

fn data_str<'a>(secret: &'a Secret, key: &str) -> Option<&'a str> {
    secret
        .data
        .as_ref()?
        .get(key)
        .and_then(|v: &ByteString| std::str::from_utf8(&v.0).ok())
}

/// The registry backed by the management cluster's API.
#[derive(Clone)]
pub struct KubeRegistry {
    client: Client,
    namespace: String,
    clusters: Store<Cluster>,
    events: broadcast::Sender<Event>,
}

impl std::fmt::Debug for KubeRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeRegistry")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl KubeRegistry {
    /// A registry reading clusters from a reflector `Store` and token Secrets from `namespace`.
    pub fn new(client: Client, namespace: impl Into<String>, clusters: Store<Cluster>) -> Self {
        Self {
            client,
            namespace: namespace.into(),
            clusters,
            events: broadcast::channel(1024).0,
        }
    }

    /// Tells running connections that `cluster` was revoked (or removed).
    pub fn announce_revoked(&self, cluster: &str) {
        let _ = self.events.send(Event::Revoked(cluster.to_owned()));
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
}

#[async_trait::async_trait]
impl Registry for KubeRegistry {
    async fn state(&self, cluster: &str) -> Option<ClusterState> {
        self.clusters
            .get(&ObjectRef::new(cluster))
            .map(|c| cluster_state(&c))
    }

    async fn set_state(&self, cluster: &str, state: ClusterState) {
        let spec = match state {
            ClusterState::Pending => json!({"accepted": false, "revoked": false}),
            ClusterState::Accepted => json!({"accepted": true, "revoked": false}),
            ClusterState::Revoked => json!({"revoked": true}),
        };
        let api = Api::<Cluster>::all(self.client.clone());
        if let Err(e) = api
            .patch(
                cluster,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": spec})),
            )
            .await
        {
            warn!(cluster, error = %e, "could not record the cluster's state");
        }
        if state == ClusterState::Revoked {
            self.announce_revoked(cluster);
        }
    }

    async fn add_token(&self, hash: TokenHash, cluster: &str, expires_at: SystemTime) {
        let secret = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": token_secret_name(&hash), "labels": {CLUSTER_LABEL: cluster}},
            "type": TOKEN_SECRET_TYPE,
            "stringData": {
                "cluster": cluster,
                "tokenHash": hex::encode(hash.0),
                "expiresAt": unix(expires_at).to_string(),
            },
        });
        if let Err(e) = self
            .secrets()
            .patch(
                &token_secret_name(&hash),
                &PatchParams::apply(FIELD_MANAGER),
                &Patch::Apply(secret),
            )
            .await
        {
            warn!(cluster, error = %e, "could not store a bootstrap token");
        }
    }

    async fn redeem_token(&self, hash: TokenHash, now: SystemTime) -> Result<String> {
        let name = token_secret_name(&hash);
        let secret = match self.secrets().get_opt(&name).await {
            Ok(Some(s)) => s,
            Ok(None) => return Err(Error::UnknownToken),
            Err(e) => {
                warn!(error = %e, "reading bootstrap tokens from the management cluster");
                return Err(Error::UnknownToken);
            }
        };
        // The name carries only part of the hash: compare all of it.
        if secret.type_.as_deref() != Some(TOKEN_SECRET_TYPE)
            || data_str(&secret, "tokenHash") != Some(hex::encode(hash.0).as_str())
        {
            return Err(Error::UnknownToken);
        }
        let cluster = data_str(&secret, "cluster").unwrap_or_default().to_owned();
        if secret.annotations().contains_key(USED_ANNOTATION) {
            return Err(Error::UsedToken { cluster });
        }
        let expires = data_str(&secret, "expiresAt")
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        if expires <= unix(now) {
            return Err(Error::ExpiredToken { cluster });
        }
        match self.state(&cluster).await {
            Some(ClusterState::Accepted) => {}
            Some(state) => return Err(Error::NotAccepted { cluster, state }),
            None => return Err(Error::UnknownCluster { cluster }),
        }
        // Mark it used, only if nobody else did since we read it.
        let patch = json!({"metadata": {
            "resourceVersion": secret.resource_version(),
            "annotations": {USED_ANNOTATION: unix(now).to_string()},
        }});
        match self
            .secrets()
            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => Ok(cluster),
            Err(kube::Error::Api(e)) if e.code == 409 => Err(Error::UsedToken { cluster }),
            Err(e) => {
                warn!(cluster, error = %e, "could not mark a bootstrap token used");
                Err(Error::UsedToken { cluster })
            }
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }
}

/// Annotation set on a token Secret when it is redeemed (its value: unix seconds).
pub const USED_ANNOTATION: &str = "flotilla.dev/used-at";
