//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several hub replicas
//! exactly one writes to the management cluster.
//!
//! The rules (those of client-go's leader election, written for this hub):
//!
//! - A candidate takes the Lease when it is free (no holder: never held, or released) or
//!   expired. A Lease is expired when its record (resourceVersion) has not changed for
//!   `lease_duration` as measured by the candidate's own monotonic clock since it first saw
//!   that record, so clock skew between machines does not matter.
//! - Every write is a `replace` carrying the resourceVersion that was read, or a `create`: the
//!   API server refuses a write based on a stale read (409), so two candidates that race for
//!   the same Lease cannot both win.
//! - The leader renews every `retry_period`. If no renewal has succeeded within
//!   `renew_deadline` (counted from the start of the last successful renewal request), it stops
//!   leading at once — before `lease_duration` runs out and another candidate may take over —
//!   and becomes a candidate again.
//! - On shutdown the leader first stops leading, then releases the Lease (empties the holder),
//!   so another replica takes over on its next try instead of after `lease_duration`.
//!
//! Whether this replica leads is published on a [`watch`] channel; a replica must only write
//! while it reads `true`.

use crate::controller::util::error_chain;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use rand::Rng as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Errors of leader election.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The timings cannot give safe leader election.
    #[error("invalid lease config: {0}")]
    InvalidConfig(String),
    /// An API request about the Lease failed.
    #[error("{action} Lease {namespace}/{name}")]
    Kube {
        /// What was being done: `reading`, `creating`, `updating`.
        action: &'static str,
        /// The Lease's namespace.
        namespace: String,
        /// The Lease's name.
        name: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// The API request took longer than allowed.
    #[error("{action} Lease {namespace}/{name}: no answer within {timeout:?}")]
    Timeout {
        /// What was being done.
        action: &'static str,
        /// The Lease's namespace.
        namespace: String,
        /// The Lease's name.
        name: String,
        /// The time allowed.
        timeout: Duration,
    },
}

/// Shorthand for results of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which Lease, who we are, and the timings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    /// The Lease's namespace (the hub's own).
    pub namespace: String,
    /// The Lease's name, e.g. `flotilla-hub`.
    pub name: String,
    /// This replica's identity, unique among replicas (the Pod name).
    pub identity: String,
    /// How long a Lease that is not renewed stays held. Whole seconds, at least 1 s.
    pub lease_duration: Duration,
    /// How long the leader keeps leading without a successful renewal. Less than
    /// `lease_duration`.
    pub renew_deadline: Duration,
    /// Time between attempts, to acquire or to renew. Less than `renew_deadline`.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry period.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    fn validate(&self) -> Result<()> {
        let fail = |why: &str| Err(Error::InvalidConfig(why.to_string()));
        if self.identity.is_empty() {
            return fail("identity is empty");
        }
        if self.name.is_empty() || self.namespace.is_empty() {
            return fail("lease name and namespace are required");
        }
        if self.lease_duration < Duration::from_secs(1)
            || self.lease_duration.subsec_nanos() != 0
            || self.lease_duration.as_secs() > i32::MAX as u64
        {
            return fail("lease duration must be a whole number of seconds, at least 1 s");
        }
        if self.renew_deadline >= self.lease_duration {
            return fail("renew deadline must be shorter than the lease duration");
        }
        if self.retry_period.is_zero() || self.retry_period >= self.renew_deadline {
            return fail("retry period must be positive and shorter than the renew deadline");
        }
        Ok(())
    }
}

/// Runs leader election for one replica.
#[derive(Clone)]
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
}

impl std::fmt::Debug for LeaderElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElector")
            .field("config", &self.config)
            .finish()
    }
}

/// A running election: whether this replica leads, and its task.
#[derive(Debug)]
pub struct Leadership {
    /// `true` while this replica leads.
    pub is_leader: watch::Receiver<bool>,
    /// The election task. It ends after `shutdown` is cancelled and the Lease is released;
    /// aborting it stops the election without releasing (as a crash would).
    pub task: JoinHandle<()>,
}

impl Leadership {
    /// Whether this replica leads now. `false` once the task has ended, however it ended.
    pub fn is_leader(&self) -> bool {
        *self.is_leader.borrow() && self.is_leader.has_changed().is_ok()
    }
}

/// What was last seen of the Lease, to tell when it expires without trusting other clocks.
struct Observed {
    resource_version: Option<String>,
    since: Instant,
}

enum Attempt {
    /// We hold the Lease (acquired or renewed).
    Held,
    /// Someone else holds it (or won the race).
    Other(Option<String>),
}

impl LeaderElector {
    /// An elector for the Lease `config.namespace/config.name`; checks the timings.
    pub fn new(client: Client, config: LeaseConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            api: Api::namespaced(client, &config.namespace),
            config,
        })
    }

    /// Starts the election on its own task. Cancel `shutdown` to stop leading and release the
    /// Lease; the task ends once that is done (at most `renew_deadline` later).
    pub fn run(self, shutdown: CancellationToken) -> Leadership {
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(self.elect(shutdown, tx));
        Leadership {
            is_leader: rx,
            task,
        }
    }

    /// The election loop, for callers that spawn it themselves; publishes leadership on
    /// `leading` and returns after `shutdown` once the Lease is released.
    pub async fn elect(self, shutdown: CancellationToken, leading: watch::Sender<bool>) {
        let c = &self.config;
        let mut observed = Observed {
            resource_version: None,
            since: Instant::now(),
        };
        // When the current leadership ends unless renewed; `None` while not leading.
        let mut deadline: Option<Instant> = None;
        let mut last_holder: Option<Option<String>> = None;
        loop {
            let started = Instant::now();
            let budget = match deadline {
                Some(deadline) => deadline.saturating_duration_since(started),
                None => c.renew_deadline,
            };
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(deadline.unwrap_or(started + budget)), if deadline.is_some() => {
                    Err(Error::Timeout {
                        action: "renewing",
                        namespace: c.namespace.clone(),
                        name: c.name.clone(),
                        timeout: c.renew_deadline,
                    })
                }
                result = self.try_acquire_or_renew(&mut observed, budget) => result,
            };
            match attempt {
                Ok(Attempt::Held) => {
                    if deadline.is_none() {
                        info!(lease = %c.name, identity = %c.identity, "became leader");
                    }
                    deadline = Some(started + c.renew_deadline);
                    leading.send_replace(true);
                    last_holder = None;
                }
                Ok(Attempt::Other(holder)) => {
                    if deadline.take().is_some() {
                        leading.send_replace(false);
                        warn!(lease = %c.name, identity = %c.identity, holder = ?holder, "lost the lease to another replica");
                    }
                    if last_holder.as_ref() != Some(&holder) {
                        info!(lease = %c.name, identity = %c.identity, holder = ?holder, "not leader");
                        last_holder = Some(holder);
                    }
                }
                Err(error) => {
                    if let Some(d) = deadline {
                        if Instant::now() >= d {
                            leading.send_replace(false);
                            deadline = None;
                            warn!(lease = %c.name, identity = %c.identity, error = %error_chain(&error), "stopped leading: no renewal within the deadline");
                        } else {
                            warn!(lease = %c.name, error = %error_chain(&error), "renewing the lease failed, retrying");
                        }
                    } else {
                        warn!(lease = %c.name, error = %error_chain(&error), "acquiring the lease failed, retrying");
                    }
                }
            }
            let pause = jittered(c.retry_period, deadline.is_none());
            let wake = started + pause;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(wake) => {}
                _ = tokio::time::sleep_until(deadline.unwrap_or(wake)), if deadline.is_some() => {}
            }
            if let Some(d) = deadline
                && Instant::now() >= d
            {
                // Renewal failed right up to the deadline and the next try has not even
                // started: stop now rather than after it.
                leading.send_replace(false);
                deadline = None;
                warn!(lease = %c.name, identity = %c.identity, "stopped leading: no renewal within the deadline");
            }
        }
        let was_leading = *leading.borrow();
        leading.send_replace(false);
        if was_leading {
            match self.release().await {
                Ok(()) => info!(lease = %c.name, identity = %c.identity, "released the lease"),
                Err(error) => {
                    warn!(lease = %c.name, error = %error_chain(&error), "releasing the lease failed; it expires after the lease duration")
                }
            }
        }
        debug!(lease = %c.name, identity = %c.identity, "leader election stopped");
    }

    fn kube_error(&self, action: &'static str, source: kube::Error) -> Error {
        Error::Kube {
            action,
            namespace: self.config.namespace.clone(),
            name: self.config.name.clone(),
            source: Box::new(source),
        }
    }

    async fn timed<T>(
        &self,
        action: &'static str,
        budget: Duration,
        call: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T> {
        match tokio::time::timeout(budget, call).await {
            Ok(result) => result.map_err(|e| self.kube_error(action, e)),
            Err(_) => Err(Error::Timeout {
                action,
                namespace: self.config.namespace.clone(),
                name: self.config.name.clone(),
                timeout: budget,
            }),
        }
    }

    fn spec(&self, now: Timestamp, transitions: i32, acquired: Option<MicroTime>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(self.config.lease_duration.as_secs() as i32),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    async fn try_acquire_or_renew(
        &self,
        observed: &mut Observed,
        budget: Duration,
    ) -> Result<Attempt> {
        let c = &self.config;
        let now = Timestamp::now();
        let current = self
            .timed("reading", budget, self.api.get_opt(&c.name))
            .await?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(c.name.clone()),
                    namespace: Some(c.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, 0, None)),
            };
            return match self
                .timed(
                    "creating",
                    budget,
                    self.api.create(&PostParams::default(), &lease),
                )
                .await
            {
                Ok(_) => Ok(Attempt::Held),
                Err(e) if is_conflict(&e) => Ok(Attempt::Other(None)),
                Err(e) => Err(e),
            };
        };

        let rv = lease.metadata.resource_version.clone();
        if rv != observed.resource_version {
            observed.resource_version = rv;
            observed.since = Instant::now();
        }
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(c.identity.as_str());
        if !ours && let Some(holder) = &holder {
            let duration = spec
                .lease_duration_seconds
                .filter(|s| *s > 0)
                .map_or(c.lease_duration, |s| Duration::from_secs(s as u64));
            if observed.since.elapsed() < duration {
                return Ok(Attempt::Other(Some(holder.clone())));
            }
            info!(lease = %c.name, identity = %c.identity, previous = %holder, "lease expired, taking over");
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        lease.spec = Some(if ours {
            self.spec(now, transitions, spec.acquire_time.clone())
        } else {
            self.spec(now, transitions.saturating_add(1), None)
        });
        // `lease` still carries the resourceVersion read above: a write by anyone since then
        // makes this one fail with 409.
        match self
            .timed(
                "updating",
                budget,
                self.api.replace(&c.name, &PostParams::default(), &lease),
            )
            .await
        {
            Ok(written) => {
                observed.resource_version = written.metadata.resource_version;
                observed.since = Instant::now();
                Ok(Attempt::Held)
            }
            Err(e) if is_conflict(&e) => Ok(Attempt::Other(holder)),
            Err(e) => Err(e),
        }
    }

    /// Empties the holder if it is still us, so the next candidate need not wait.
    async fn release(&self) -> Result<()> {
        let c = &self.config;
        let budget = c.renew_deadline;
        let Some(mut lease) = self
            .timed("reading", budget, self.api.get_opt(&c.name))
            .await?
        else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(c.identity.as_str()) {
            return Ok(());
        }
        let now = MicroTime(Timestamp::now());
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now.clone());
        spec.acquire_time = Some(now);
        lease.spec = Some(spec);
        self.timed(
            "releasing",
            budget,
            self.api.replace(&c.name, &PostParams::default(), &lease),
        )
        .await?;
        Ok(())
    }
}

fn is_conflict(error: &Error) -> bool {
    matches!(error, Error::Kube { source, .. }
        if matches!(source.as_ref(), kube::Error::Api(status) if status.code == 409))
}

/// A candidate's pause is spread by up to +20 % so replicas do not retry in lockstep; the
/// leader renews on the beat.
fn jittered(period: Duration, candidate: bool) -> Duration {
    if !candidate {
        return period;
    }
    period.mul_f64(1.0 + rand::rng().random_range(0.0..0.2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(lease: u64, renew: u64, retry: u64) -> LeaseConfig {
        LeaseConfig {
            lease_duration: Duration::from_millis(lease),
            renew_deadline: Duration::from_millis(renew),
            retry_period: Duration::from_millis(retry),
            ..LeaseConfig::new("flotilla-system", "flotilla-hub", "hub-0")
        }
    }

    #[test]
    fn timings_are_checked() {
        config(15_000, 10_000, 2_000).validate().unwrap();
        config(2_000, 1_000, 200).validate().unwrap();
        for (c, why) in [
            (config(1_500, 1_000, 200), "whole number"),
            (config(500, 400, 100), "whole number"),
            (config(2_000, 2_000, 200), "renew deadline"),
            (config(2_000, 1_000, 1_000), "retry period"),
            (config(2_000, 1_000, 0), "retry period"),
        ] {
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
        let mut c = config(15_000, 10_000, 2_000);
        c.identity.clear();
        assert!(c.validate().is_err());
    }

    #[test]
    fn candidates_jitter_leaders_do_not() {
        let period = Duration::from_millis(1000);
        assert_eq!(jittered(period, false), period);
        for _ in 0..100 {
            let j = jittered(period, true);
            assert!(j >= period && j < Duration::from_millis(1200), "{j:?}");
        }
    }
}
