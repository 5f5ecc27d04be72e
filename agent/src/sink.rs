//! The connection to the hub hands verified bundles to the [`Reconciler`].

use tracing::warn;

use crate::apply::Action;
use crate::connect::{ApplyResult, BundleSink, ObjectResult};
use crate::reconcile::{Desired, Reconciler, Status};
use crate::verify::{self, VerifiedBundle};

impl BundleSink for Reconciler {
    async fn apply(&self, bundle: VerifiedBundle) -> ApplyResult {
        let objects = match bundle.objects() {
            Ok(objects) => objects,
            Err(e) => {
                return ApplyResult {
                    applied: false,
                    message: format!("bundle payload is not a list of objects: {e}"),
                    objects: Vec::new(),
                };
            }
        };
        let desired = Desired {
            delivery: bundle.meta.delivery.clone(),
            revision: bundle.meta.revision.clone(),
            sequence: bundle.meta.sequence,
            objects,
            options: Default::default(),
        };
        match Reconciler::apply(self, desired).await {
            Ok(outcome) => ApplyResult {
                applied: outcome.status == Status::Applied,
                message: outcome.message,
                objects: outcome
                    .results
                    .into_iter()
                    .map(|r| ObjectResult {
                        api_version: r.object.api_version(),
                        kind: r.object.kind.clone(),
                        namespace: r.object.namespace.clone(),
                        name: r.object.name.clone(),
                        ok: r.action != Action::Failed,
                        message: r.message.unwrap_or_default(),
                    })
                    .collect(),
            },
            Err(e) => ApplyResult {
                applied: false,
                message: crate::apply::error_chain(&e),
                objects: Vec::new(),
            },
        }
    }

    fn rejected(&self, error: &verify::Error) {
        warn!(error = %error, "refused a bundle from the hub; nothing of it was applied");
    }
}
