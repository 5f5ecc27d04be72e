//! The connection to the hub hands verified bundles to the [`Reconciler`].

use tracing::warn;

use crate::apply::Action;
use crate::connect::{ApplyResult, BundleSink, ObjectResult};
use crate::reconcile::{Reconciler, Status};
use crate::verify::{self, VerifiedBundle};

impl BundleSink for Reconciler {
    async fn apply(&self, bundle: VerifiedBundle) -> ApplyResult {
        // The delivery options are signed into the bundle; the signed bundle is what is stored.
        match Reconciler::apply_verified(self, &bundle).await {
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
