//! Helm charts on the hub: chart repositories ([`repo`]) and `helm template` ([`template`]).
//!
//! A `HelmRelease` is rendered here, per cluster, into plain objects that travel in the same
//! signed bundles as a `Delivery`'s, so agents need no Helm. The hub runs the `helm` binary only
//! for `helm template` of an archive on disk (no network: dependencies must be vendored in the
//! chart) and for `helm pull` from OCI registries; HTTP repositories are read by the hub itself.

pub mod repo;
pub mod template;

use std::path::PathBuf;

/// How the hub runs Helm.
#[derive(Debug, Clone)]
pub struct HelmConfig {
    /// The `helm` binary (`--helm-binary`).
    pub binary: PathBuf,
    /// Default `--kube-version` for `helm template` (`--helm-kube-version`).
    pub kube_version: String,
    /// Where chart archives are cached by digest.
    pub cache: PathBuf,
}

impl HelmConfig {
    /// `helm` on `PATH`, Kubernetes 1.34, archives under `<cache_dir>/charts`.
    pub fn new(cache_dir: &std::path::Path) -> Self {
        Self {
            binary: "helm".into(),
            kube_version: DEFAULT_KUBE_VERSION.into(),
            cache: cache_dir.join("charts"),
        }
    }
}

/// The Kubernetes version charts are rendered for unless told otherwise.
pub const DEFAULT_KUBE_VERSION: &str = "v1.34.0";
