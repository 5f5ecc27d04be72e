//! Reports to the hub: what each delivery runs, whether it is healthy, what drifted.
//!
//! A [`Reporter`] follows the [`Reconciler`] (applies, drift events) and reads each delivery's
//! health — right after an apply, then every 2 s while it is progressing and every 15 s once it
//! settled — and queues a [`Report`] whenever what the hub would show changes: at most one per
//! delivery per 500 ms, the last one always sent. At every (re)connection it queues one for every
//! delivery, so the hub catches up on what happened while the stream was down.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::connect::{Health, Progress, Report, ReportQueue};
use crate::drift::{DriftEvent, DriftKind};
use crate::health::{self, HealthReport};
use crate::reconcile::{DeliveryState, Reconciler, Status};

/// Objects a report names as drifted, at most.
pub const MAX_DRIFTED: usize = 20;

/// How often reports and health checks happen.
#[derive(Debug, Clone)]
pub struct ReporterConfig {
    /// At most one report per delivery per this interval.
    pub min_interval: Duration,
    /// Health is read again this often while a delivery is progressing (or unknown).
    pub poll_progressing: Duration,
    /// ... and this often once it is healthy or degraded.
    pub poll_settled: Duration,
}

impl Default for ReporterConfig {
    fn default() -> Self {
        Self {
            min_interval: Duration::from_millis(500),
            poll_progressing: Duration::from_secs(2),
            poll_settled: Duration::from_secs(15),
        }
    }
}

/// What one drifted object's report line says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Drift {
    /// Detected; correction under way.
    Correcting(String),
    /// Detected in a report-only delivery: left as it is.
    Reported(String),
    /// Correction failed.
    Failed(String, String),
}

fn describe(e: &DriftEvent) -> String {
    match &e.kind {
        DriftKind::Deleted => format!("{} was deleted", e.object),
        DriftKind::Modified { fields, managers } => {
            let fields = match fields.as_slice() {
                [] => "fields".to_owned(),
                [one] => one.clone(),
                [first, rest @ ..] => format!("{first} and {} more fields", rest.len()),
            };
            if managers.is_empty() {
                format!("{} drifted ({fields} changed)", e.object)
            } else {
                format!(
                    "{} drifted ({fields} changed by {})",
                    e.object,
                    managers.join(", ")
                )
            }
        }
    }
}

#[derive(Debug, Default)]
struct Tracked {
    state: Option<DeliveryState>,
    health: Option<HealthReport>,
    /// Objects drifted now.
    drifted: BTreeMap<String, Drift>,
    /// The last drift put back, to say so.
    corrected: Option<String>,
    next_health: Option<Instant>,
    /// Last report queued, and when.
    last: Option<(Instant, Report)>,
    /// Queue the next report even if it says the same.
    force: bool,
}

/// Composes the report of one delivery from its last apply, health and drift.
fn compose(delivery: &str, t: &Tracked) -> Option<Report> {
    let state = t.state.as_ref()?;
    let (health, health_msg) = if state.status != Status::Applied {
        (Health::Degraded, state.message.clone())
    } else {
        match &t.health {
            None => (
                Health::Unknown,
                format!("applied revision {}; checking health", state.revision),
            ),
            Some(h) if h.healthy => (
                Health::Healthy,
                format!(
                    "revision {}: {} objects applied and ready",
                    state.revision, state.inventory
                ),
            ),
            Some(h) => {
                let failed = h
                    .not_ready
                    .values()
                    .any(|x| matches!(x, health::Health::Failed(_)));
                let mut parts: Vec<String> = h
                    .not_ready
                    .iter()
                    .filter(|(_, x)| !failed || matches!(x, health::Health::Failed(_)))
                    .take(3)
                    .map(|(obj, x)| match x {
                        health::Health::Failed(why) => format!("{obj}: {why}"),
                        health::Health::InProgress(why) => format!("{obj}: {why}"),
                        health::Health::Ready => format!("{obj}: ready"),
                    })
                    .collect();
                let more = h.not_ready_count.saturating_sub(parts.len());
                if more > 0 {
                    parts.push(format!("and {more} more not ready"));
                }
                let health = if failed {
                    Health::Degraded
                } else {
                    Health::Progressing
                };
                (health, parts.join("; "))
            }
        }
    };
    let drift_msg = match t.drifted.values().next() {
        Some(first) => {
            let line = match first {
                Drift::Correcting(what) => format!("{what}: correcting"),
                Drift::Reported(what) => {
                    format!("{what}: not corrected, the delivery's drift mode is report")
                }
                Drift::Failed(what, why) => format!("{what}: correction failed: {why}"),
            };
            match t.drifted.len() {
                1 => line,
                n => format!("{line}; {} more objects drifted", n - 1),
            }
        }
        None => t
            .corrected
            .as_ref()
            .map(|what| format!("{what}: corrected"))
            .unwrap_or_default(),
    };
    let message = [health_msg, drift_msg]
        .into_iter()
        .filter(|m| !m.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    Some(Report {
        delivery: delivery.to_owned(),
        sequence: state.sequence,
        health,
        drifted_objects: t.drifted.len() as u32,
        inventory_objects: state.inventory as u32,
        message,
        drifted: t.drifted.keys().take(MAX_DRIFTED).cloned().collect(),
    })
}

/// Follows the reconciler and queues reports for the hub.
#[derive(Debug)]
pub struct Reporter {
    reconciler: Reconciler,
    queue: ReportQueue,
    config: ReporterConfig,
    deliveries: BTreeMap<String, Tracked>,
}

impl Reporter {
    /// A reporter queueing into `queue` (from [`crate::connect::Agent::reports`]).
    pub fn new(reconciler: Reconciler, queue: ReportQueue, config: ReporterConfig) -> Self {
        Self {
            reconciler,
            queue,
            config,
            deliveries: BTreeMap::new(),
        }
    }

    /// Runs until `shutdown`. `progress` is the agent's: a new session queues a report for every
    /// delivery.
    pub async fn run(
        mut self,
        mut progress: watch::Receiver<Progress>,
        shutdown: CancellationToken,
    ) {
        let mut applied = self.reconciler.applied();
        let mut drift = self.reconciler.subscribe();
        let mut sessions = progress.borrow_and_update().sessions;
        let mut agent_alive = true;
        let mut tick = tokio::time::interval(self.config.min_interval / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.sync();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = applied.changed() => {
                    if r.is_err() {
                        return;
                    }
                    self.sync();
                }
                ev = drift.recv() => match ev {
                    Ok(e) => self.on_drift(e),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        debug!(missed = n, "drift events lagged; drift counts may be stale until the next apply");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                r = progress.changed(), if agent_alive => {
                    if r.is_err() {
                        agent_alive = false;
                        continue;
                    }
                    let now = progress.borrow_and_update().sessions;
                    if now != sessions {
                        sessions = now;
                        for t in self.deliveries.values_mut() {
                            t.force = true;
                        }
                    }
                }
                _ = tick.tick() => {
                    self.check_health().await;
                    self.flush();
                }
            }
        }
    }

    /// Takes in the reconciler's latest applies.
    fn sync(&mut self) {
        for (delivery, state) in self.reconciler.deliveries() {
            let t = self.deliveries.entry(delivery).or_default();
            if t.state.as_ref() != Some(&state) {
                // A new apply put every object back as the bundle says.
                t.drifted.clear();
                t.corrected = None;
                t.health = None;
                t.next_health = Some(Instant::now());
                t.state = Some(state);
            }
        }
        self.flush();
    }

    fn on_drift(&mut self, e: DriftEvent) {
        let Some(t) = self.deliveries.get_mut(&e.delivery) else {
            return;
        };
        let key = e.object.to_string();
        let what = describe(&e);
        if e.corrected_ms.is_some() {
            let before = t.drifted.remove(&key);
            t.corrected = match before {
                Some(Drift::Correcting(w) | Drift::Failed(w, _)) => Some(w),
                _ => Some(what),
            };
        } else if let Some(err) = &e.error {
            let w = match t.drifted.get(&key) {
                Some(Drift::Correcting(w)) => w.clone(),
                _ => what,
            };
            t.drifted.insert(key, Drift::Failed(w, err.clone()));
        } else if e.report_only {
            t.drifted.insert(key, Drift::Reported(what));
        } else {
            t.drifted.insert(key, Drift::Correcting(what));
        }
        // Drift may come with a health change (a deleted Deployment).
        t.next_health = Some(Instant::now());
        self.flush();
    }

    async fn check_health(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .deliveries
            .iter()
            .filter(|(_, t)| {
                t.state
                    .as_ref()
                    .is_some_and(|s| s.status == Status::Applied)
                    && t.next_health.is_some_and(|n| n <= now)
            })
            .map(|(d, _)| d.clone())
            .collect();
        for d in due {
            let report = self.reconciler.health_now(&d).await;
            let Some(t) = self.deliveries.get_mut(&d) else {
                continue;
            };
            let settled = report.healthy
                || report
                    .not_ready
                    .values()
                    .any(|h| matches!(h, health::Health::Failed(_)));
            let wait = if settled {
                self.config.poll_settled
            } else {
                self.config.poll_progressing
            };
            t.next_health = Some(Instant::now() + wait);
            t.health = Some(report);
        }
    }

    /// Queues the reports that changed, respecting the minimum interval.
    fn flush(&mut self) {
        let now = Instant::now();
        for (d, t) in &mut self.deliveries {
            let Some(report) = compose(d, t) else {
                continue;
            };
            let (changed, recent) = match &t.last {
                None => (true, false),
                Some((at, last)) => (*last != report, now < *at + self.config.min_interval),
            };
            if (changed || t.force) && !recent {
                debug!(delivery = %d, health = ?report.health, drifted = report.drifted_objects, message = %report.message, "report");
                self.queue.push(report.clone());
                t.last = Some((now, report));
                t.force = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::ObjectRef;
    use serde_json::json;

    fn state(status: Status) -> DeliveryState {
        DeliveryState {
            sequence: 7,
            revision: "main@1".into(),
            status,
            message: "1 of 2 objects failed, nothing pruned: ConfigMap/apps/Bad: invalid".into(),
            inventory: 2,
            drift: Default::default(),
        }
    }

    fn event(report_only: bool, corrected: bool) -> DriftEvent {
        DriftEvent {
            delivery: "apps".into(),
            object: ObjectRef::of(
                &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": "apps"}}),
                0,
            )
            .unwrap(),
            kind: DriftKind::Modified {
                fields: vec!["data.colour".into()],
                managers: vec!["kubectl-edit".into()],
            },
            detected_ms: 1,
            corrected_ms: corrected.then_some(2),
            error: None,
            report_only,
        }
    }

    #[test]
    fn health_messages_name_the_objects_that_are_not_ready() {
        let mut t = Tracked {
            state: Some(state(Status::Applied)),
            ..Tracked::default()
        };
        assert_eq!(compose("apps", &t).unwrap().health, Health::Unknown);
        let mut not_ready = BTreeMap::new();
        not_ready.insert(
            "Deployment/apps/web".to_string(),
            health::Health::InProgress("0 of 2 replicas available".into()),
        );
        t.health = Some(HealthReport {
            not_ready_count: 1,
            not_ready,
            healthy: false,
            timed_out: false,
        });
        let r = compose("apps", &t).unwrap();
        assert_eq!(r.health, Health::Progressing);
        assert_eq!(r.message, "Deployment/apps/web: 0 of 2 replicas available");
        t.health = Some(HealthReport {
            healthy: true,
            ..HealthReport::default()
        });
        let r = compose("apps", &t).unwrap();
        assert_eq!(
            (r.health, r.sequence, r.inventory_objects),
            (Health::Healthy, 7, 2)
        );
        assert_eq!(r.message, "revision main@1: 2 objects applied and ready");

        t.state = Some(state(Status::ApplyFailed));
        let r = compose("apps", &t).unwrap();
        assert_eq!(r.health, Health::Degraded);
        assert!(r.message.contains("ConfigMap/apps/Bad"), "{}", r.message);
    }

    #[tokio::test]
    async fn drift_is_counted_until_corrected_and_then_said_corrected() {
        let mut t = Tracked {
            state: Some(state(Status::Applied)),
            health: Some(HealthReport {
                healthy: true,
                ..HealthReport::default()
            }),
            ..Tracked::default()
        };
        let e = event(true, false);
        t.drifted
            .insert(e.object.to_string(), Drift::Reported(describe(&e)));
        let r = compose("apps", &t).unwrap();
        assert_eq!(r.drifted_objects, 1);
        assert_eq!(r.drifted, vec!["ConfigMap/apps/cfg".to_string()]);
        assert!(
            r.message.ends_with(
                "ConfigMap/apps/cfg drifted (data.colour changed by kubectl-edit): not corrected, the delivery's drift mode is report"
            ),
            "{}",
            r.message
        );
        t.drifted.clear();
        t.corrected = Some(describe(&event(false, true)));
        let r = compose("apps", &t).unwrap();
        assert_eq!(r.drifted_objects, 0);
        assert!(
            r.message.ends_with(
                "ConfigMap/apps/cfg drifted (data.colour changed by kubectl-edit): corrected"
            ),
            "{}",
            r.message
        );
    }
}
