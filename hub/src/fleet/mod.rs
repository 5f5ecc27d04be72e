//! The fleet registry: which clusters exist, whether they are accepted, and the bootstrap tokens
//! they may register with.
//!
//! The registry sits behind the [`Registry`] trait so that delivery and registration do not care
//! where it is kept. [`MemoryRegistry`] keeps it in memory; the durable implementation keeps it in
//! `Cluster` custom resources and Secrets on the management cluster.

mod kube_registry;

pub use self::kube_registry::{
    CLUSTER_LABEL, FIELD_MANAGER, KubeRegistry, TOKEN_SECRET_TYPE, USED_ANNOTATION, cluster_state,
    create_token, token_secret_name,
};

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use sha2::{Digest as _, Sha256};
use tokio::sync::broadcast;

/// Errors of the registry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No token with this hash exists.
    #[error("bootstrap token is not known")]
    UnknownToken,
    /// The token's expiry has passed.
    #[error("bootstrap token for cluster {cluster} expired")]
    ExpiredToken {
        /// The cluster the token was for.
        cluster: String,
    },
    /// The token was already exchanged for a certificate.
    #[error("bootstrap token for cluster {cluster} was already used")]
    UsedToken {
        /// The cluster the token was for.
        cluster: String,
    },
    /// The cluster exists but an operator has not accepted it (or has revoked it).
    #[error("cluster {cluster} is {state}, not accepted")]
    NotAccepted {
        /// The cluster.
        cluster: String,
        /// Its state.
        state: ClusterState,
    },
    /// No cluster with this id is registered.
    #[error("cluster {cluster} is not registered")]
    UnknownCluster {
        /// The cluster.
        cluster: String,
    },
    /// The management cluster's API refused or failed a request.
    #[error("{what}")]
    Store {
        /// What was being done.
        what: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The operating system's random number generator failed.
    #[error("generating a bootstrap token")]
    Random(#[source] getrandom::Error),
}

/// A convenient result type for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where a cluster stands with the hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    /// Known, waiting for an operator to accept it.
    Pending,
    /// Accepted: its agent may register and receive bundles.
    Accepted,
    /// Revoked: its stream is closed and it may not connect or register again.
    Revoked,
}

impl std::fmt::Display for ClusterState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Pending => "pending",
            Self::Accepted => "accepted",
            Self::Revoked => "revoked",
        })
    }
}

/// A change to the registry that running connections must react to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The cluster was revoked: close its stream now.
    Revoked(String),
}

/// A bootstrap token in clear, as handed to an operator once. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken(String);

impl std::fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BootstrapToken(***)")
    }
}

impl BootstrapToken {
    /// A fresh random token.
    pub fn generate() -> Result<Self> {
        let mut secret = [0u8; 32];
        getrandom::getrandom(&mut secret).map_err(Error::Random)?;
        Ok(Self(format!("flt1.{}", hex::encode(secret))))
    }

    /// Wraps a token received from an agent.
    pub fn from_secret(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The token in clear, to hand out once. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The hash the registry stores instead of the token.
    pub fn hash(&self) -> TokenHash {
        TokenHash(Sha256::digest(self.0.as_bytes()).into())
    }
}

/// The sha256 of a bootstrap token: all the registry keeps of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

/// The registry of clusters and bootstrap tokens.
#[async_trait::async_trait]
pub trait Registry: Send + Sync + std::fmt::Debug + 'static {
    /// The state of a cluster, `None` when unknown.
    async fn state(&self, cluster: &str) -> Option<ClusterState>;
    /// Creates or updates a cluster's state; revoking publishes [`Event::Revoked`].
    async fn set_state(&self, cluster: &str, state: ClusterState);
    /// Stores a token's hash for `cluster`, valid until `expires_at`.
    async fn add_token(&self, hash: TokenHash, cluster: &str, expires_at: SystemTime);
    /// Exchanges a token for its cluster, exactly once, and only if the cluster is accepted.
    /// A token for a not-yet-accepted cluster is left unused, so the agent can retry once an
    /// operator accepts the cluster.
    async fn redeem_token(&self, hash: TokenHash, now: SystemTime) -> Result<String>;
    /// Subscribes to registry events.
    fn subscribe(&self) -> broadcast::Receiver<Event>;
}

/// Issues a bootstrap token for `cluster`, valid for `ttl`; only its hash is stored.
pub async fn issue_token(
    registry: &dyn Registry,
    cluster: &str,
    ttl: Duration,
) -> Result<BootstrapToken> {
    let token = BootstrapToken::generate()?;
    registry
        .add_token(token.hash(), cluster, SystemTime::now() + ttl)
        .await;
    Ok(token)
}

#[derive(Debug)]
struct TokenRecord {
    cluster: String,
    expires_at: SystemTime,
    used: bool,
}

#[derive(Debug, Default)]
struct State {
    clusters: HashMap<String, ClusterState>,
    tokens: HashMap<TokenHash, TokenRecord>,
}

/// The registry kept in memory, for tests, benchmarks and a hub without a management cluster.
#[derive(Debug)]
pub struct MemoryRegistry {
    state: Mutex<State>,
    events: broadcast::Sender<Event>,
}

impl Default for MemoryRegistry {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            events: broadcast::channel(1024).0,
        }
    }
}

impl MemoryRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait::async_trait]
impl Registry for MemoryRegistry {
    async fn state(&self, cluster: &str) -> Option<ClusterState> {
        self.lock().clusters.get(cluster).copied()
    }

    async fn set_state(&self, cluster: &str, state: ClusterState) {
        self.lock().clusters.insert(cluster.to_owned(), state);
        if state == ClusterState::Revoked {
            // No receiver is fine: nothing is connected.
            let _ = self.events.send(Event::Revoked(cluster.to_owned()));
        }
    }

    async fn add_token(&self, hash: TokenHash, cluster: &str, expires_at: SystemTime) {
        self.lock().tokens.insert(
            hash,
            TokenRecord {
                cluster: cluster.to_owned(),
                expires_at,
                used: false,
            },
        );
    }

    async fn redeem_token(&self, hash: TokenHash, now: SystemTime) -> Result<String> {
        let mut state = self.lock();
        let State { clusters, tokens } = &mut *state;
        let record = tokens.get_mut(&hash).ok_or(Error::UnknownToken)?;
        let cluster = record.cluster.clone();
        if record.used {
            return Err(Error::UsedToken { cluster });
        }
        if record.expires_at <= now {
            return Err(Error::ExpiredToken { cluster });
        }
        match clusters.get(&cluster) {
            Some(ClusterState::Accepted) => {}
            Some(&state) => return Err(Error::NotAccepted { cluster, state }),
            None => return Err(Error::UnknownCluster { cluster }),
        }
        record.used = true;
        Ok(cluster)
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn token_is_single_use_expiring_and_needs_acceptance() {
        let r = MemoryRegistry::default();
        r.set_state("eu-1", ClusterState::Pending).await;
        let token = issue_token(&r, "eu-1", Duration::from_secs(60))
            .await
            .unwrap();
        let now = SystemTime::now();
        let err = r.redeem_token(token.hash(), now).await.unwrap_err();
        assert!(matches!(err, Error::NotAccepted { .. }), "{err}");
        r.set_state("eu-1", ClusterState::Accepted).await;
        assert_eq!(r.redeem_token(token.hash(), now).await.unwrap(), "eu-1");
        let err = r.redeem_token(token.hash(), now).await.unwrap_err();
        assert!(matches!(err, Error::UsedToken { .. }), "{err}");
        let late = issue_token(&r, "eu-1", Duration::from_secs(1))
            .await
            .unwrap();
        let err = r
            .redeem_token(late.hash(), now + Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::ExpiredToken { .. }), "{err}");
        assert!(format!("{token:?}").contains("***"));
        assert!(!format!("{token:?}").contains(token.expose()));
    }
}
