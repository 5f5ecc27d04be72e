//! Each delivery's inventory — what it applied — persisted in the workload cluster.
//!
//! The inventory is a ConfigMap `inventory-<delivery>` in the agent's namespace. It is written
//! *before* an apply as the union of the previous inventory and the new bundle, and narrowed to
//! the new bundle only after the apply succeeded and pruning finished. So an agent killed in the
//! middle of an apply still knows every object it may have created, and never prunes an object
//! of the new bundle.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use crate::apply::FIELD_MANAGER;
use crate::object::ObjectRef;

/// Errors reading or writing an inventory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused the read or write.
    #[error("{action} inventory of delivery {delivery} in namespace {namespace}")]
    Kube {
        /// `reading` or `writing`.
        action: &'static str,
        /// The delivery.
        delivery: String,
        /// The agent's namespace.
        namespace: String,
        /// The API server's answer.
        #[source]
        source: kube::Error,
    },
    /// The stored inventory is not valid JSON of object references.
    #[error("inventory of delivery {delivery} is corrupt")]
    Corrupt {
        /// The delivery.
        delivery: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
}

/// Reads and writes inventories in one namespace.
#[derive(Debug, Clone)]
pub struct InventoryStore {
    api: Api<ConfigMap>,
    namespace: String,
}

const KEY: &str = "objects.json";

impl InventoryStore {
    /// Inventories stored in `namespace` (which must exist).
    pub fn new(client: Client, namespace: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.into(),
        }
    }

    fn name(delivery: &str) -> String {
        format!("inventory-{delivery}")
    }

    /// The inventory of `delivery`; empty if none was ever written.
    pub async fn load(&self, delivery: &str) -> Result<BTreeSet<ObjectRef>, Error> {
        let cm = self
            .api
            .get_opt(&Self::name(delivery))
            .await
            .map_err(|source| self.kube_err("reading", delivery, source))?;
        let Some(text) = cm.and_then(|c| c.data).and_then(|mut d| d.remove(KEY)) else {
            return Ok(BTreeSet::new());
        };
        serde_json::from_str(&text).map_err(|source| Error::Corrupt {
            delivery: delivery.into(),
            source,
        })
    }

    /// Replaces the inventory of `delivery`.
    pub async fn save(&self, delivery: &str, objects: &BTreeSet<ObjectRef>) -> Result<(), Error> {
        let cm = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": Self::name(delivery),
                "labels": { "app.kubernetes.io/managed-by": "flotilla", "flotilla.dev/inventory": delivery },
            },
            "data": { KEY: serde_json::to_string(objects).expect("refs serialise") },
        });
        self.api
            .patch(
                &Self::name(delivery),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&cm),
            )
            .await
            .map_err(|source| self.kube_err("writing", delivery, source))?;
        Ok(())
    }

    /// Deletes the inventory of `delivery` (when the delivery itself is deleted).
    pub async fn remove(&self, delivery: &str) -> Result<(), Error> {
        match self
            .api
            .delete(&Self::name(delivery), &Default::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(source) => Err(self.kube_err("writing", delivery, source)),
        }
    }

    fn kube_err(&self, action: &'static str, delivery: &str, source: kube::Error) -> Error {
        Error::Kube {
            action,
            delivery: delivery.into(),
            namespace: self.namespace.clone(),
            source,
        }
    }
}
