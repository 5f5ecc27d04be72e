//! Polling a source: interval with jitter, exponential backoff on failure, fetch on demand.

use crate::controller::util::error_chain;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::Rng as _;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::{Error, GitCache, GitSource, Snapshot, redact_url};

/// When to fetch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PollOptions {
    /// Time between fetches while they succeed.
    pub interval: Duration,
    /// Delay after the first failure; it doubles with each further failure.
    pub retry_interval: Duration,
    /// Upper bound of the backoff.
    pub max_backoff: Duration,
    /// Each delay is spread by up to this fraction either way (0.1 = ±10 %), so many sources
    /// (and many hub replicas) do not fetch in lockstep.
    pub jitter: f64,
}

impl Default for PollOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
            retry_interval: Duration::from_secs(5),
            max_backoff: Duration::from_secs(300),
            jitter: 0.1,
        }
    }
}

impl PollOptions {
    /// The delay before the next attempt, given the number of consecutive failures so far, with
    /// jitter applied.
    pub fn delay(&self, consecutive_failures: u32) -> Duration {
        let base = if consecutive_failures == 0 {
            self.interval
        } else {
            let factor = 2u32.saturating_pow(consecutive_failures - 1);
            self.retry_interval
                .saturating_mul(factor)
                .min(self.max_backoff)
        };
        let jitter = self.jitter.clamp(0.0, 1.0);
        if jitter == 0.0 {
            return base;
        }
        let spread = rand::rng().random_range(-jitter..=jitter);
        base.mul_f64(1.0 + spread)
    }
}

/// Why the last attempt failed, as the hub's conditions name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// Network, protocol or server failure.
    FetchFailed,
    /// Credentials missing or refused.
    AuthenticationFailed,
    /// The SSH host key is unknown, changed or revoked.
    HostKeyRejected,
    /// The reference does not exist.
    RefNotFound,
    /// The revision's signature is missing, untrusted or wrong.
    SourceVerificationFailed,
    /// The repository is over the size limit.
    LimitExceeded,
    /// The source's configuration cannot work.
    InvalidConfig,
}

impl FailureReason {
    /// The reason for an error.
    pub fn of(error: &Error) -> Self {
        match error {
            Error::Auth { .. } => Self::AuthenticationFailed,
            Error::HostKey { .. } => Self::HostKeyRejected,
            Error::RefNotFound { .. } | Error::Revision { .. } => Self::RefNotFound,
            Error::Verification { .. } => Self::SourceVerificationFailed,
            Error::RepositoryTooLarge { .. } => Self::LimitExceeded,
            Error::Config { .. }
            | Error::KnownHosts { .. }
            | Error::InvalidRange { .. }
            | Error::InvalidCommitId { .. }
            | Error::InvalidKey { .. } => Self::InvalidConfig,
            Error::Cache { .. }
            | Error::Repository { .. }
            | Error::Fetch { .. }
            | Error::Resolve { .. }
            | Error::Task { .. } => Self::FetchFailed,
        }
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What a poller reports about its source. The snapshot it publishes and this status are
/// updated together after each attempt.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceStatus {
    /// The source's name.
    pub source: String,
    /// The source URL, password removed.
    pub url: String,
    /// Revision of the published (last good) snapshot, if any.
    pub revision: Option<String>,
    /// Key that verified the published snapshot, when verification is on.
    pub verified_by: Option<String>,
    /// Attempts made so far.
    pub attempts: u64,
    /// When the last attempt finished.
    pub last_attempt: Option<SystemTime>,
    /// When the last successful attempt finished.
    pub last_success: Option<SystemTime>,
    /// The last attempt's error with its causes, if it failed (no secrets).
    pub last_error: Option<String>,
    /// The last attempt's failure reason, if it failed.
    pub reason: Option<FailureReason>,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// The delay chosen before the next attempt.
    pub next_attempt_in: Option<Duration>,
}

/// Fetches one source in a background task and publishes the latest good snapshot.
///
/// Dropping the poller stops the task.
#[derive(Debug)]
pub struct SourcePoller {
    snapshot: watch::Receiver<Option<Snapshot>>,
    status: watch::Receiver<SourceStatus>,
    trigger: Arc<Notify>,
    task: JoinHandle<()>,
}

impl SourcePoller {
    /// Starts polling `source` into `cache` on the current Tokio runtime. The first fetch starts
    /// at once.
    pub fn spawn(cache: Arc<GitCache>, source: GitSource, options: PollOptions) -> Self {
        let (snapshot_tx, snapshot) = watch::channel(None);
        let (status_tx, status) = watch::channel(SourceStatus {
            source: source.name.clone(),
            url: redact_url(&source.url),
            ..SourceStatus::default()
        });
        let trigger = Arc::new(Notify::new());
        let task = tokio::spawn(run(
            cache,
            Arc::new(source),
            options,
            snapshot_tx,
            status_tx,
            trigger.clone(),
        ));
        Self {
            snapshot,
            status,
            trigger,
            task,
        }
    }

    /// The latest good snapshot (`None` until the first successful fetch). Subscribers are
    /// woken only when the revision changes.
    pub fn snapshot(&self) -> watch::Receiver<Option<Snapshot>> {
        self.snapshot.clone()
    }

    /// The status, updated after every attempt.
    pub fn status(&self) -> watch::Receiver<SourceStatus> {
        self.status.clone()
    }

    /// Fetches as soon as the current attempt (if any) is over, instead of waiting for the
    /// interval or backoff (for webhooks and `flotilla reconcile`). Requests made while an
    /// attempt runs collapse into one.
    pub fn fetch_now(&self) {
        self.trigger.notify_one();
    }

    /// Stops the task and waits for it to end.
    pub async fn shutdown(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for SourcePoller {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    cache: Arc<GitCache>,
    source: Arc<GitSource>,
    options: PollOptions,
    snapshot_tx: watch::Sender<Option<Snapshot>>,
    status_tx: watch::Sender<SourceStatus>,
    trigger: Arc<Notify>,
) {
    let url = redact_url(&source.url);
    loop {
        // Always created (once per poll, not a hot path): log lines of the fetch carry its
        // fields, and with traces exported it is the root of the revision's trace.
        let span = tracing::info_span!(
            "fetch",
            source = %source.name,
            url = %url,
            reference = %source.reference,
            revision = tracing::field::Empty,
            new_revision = tracing::field::Empty,
            outcome = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let result = {
            let cache = cache.clone();
            let source = source.clone();
            let span = span.clone();
            match tokio::task::spawn_blocking(move || span.in_scope(|| cache.fetch(&source))).await
            {
                Ok(result) => result,
                Err(e) => Err(Error::Task {
                    url: url.clone(),
                    message: e.to_string(),
                }),
            }
        };
        let now = SystemTime::now();
        let mut failures = status_tx.borrow().consecutive_failures;
        match result {
            Ok(snapshot) => {
                failures = 0;
                let revision = snapshot.revision();
                let verified_by = snapshot.verified_by().map(str::to_string);
                let new_revision = snapshot_tx.send_if_modified(|current| {
                    if current.as_ref() == Some(&snapshot) {
                        return false;
                    }
                    tracing::info!(source = %source.name, %revision, "new revision");
                    if let Some(tp) = flotilla_telemetry::traceparent(&span) {
                        snapshot.set_traceparent(tp);
                    }
                    *current = Some(snapshot);
                    true
                });
                span.record("revision", revision.as_str());
                span.record("new_revision", new_revision);
                span.record("outcome", "fetched");
                let delay = options.delay(failures);
                status_tx.send_modify(|s| {
                    s.revision = Some(revision);
                    s.verified_by = verified_by;
                    s.attempts += 1;
                    s.last_attempt = Some(now);
                    s.last_success = Some(now);
                    s.last_error = None;
                    s.reason = None;
                    s.consecutive_failures = 0;
                    s.next_attempt_in = Some(delay);
                });
                drop(span);
                wait(delay, &trigger).await;
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let reason = FailureReason::of(&error);
                let message = error_chain(&error);
                span.record("outcome", "failed");
                span.record("otel.status_code", "ERROR");
                let delay = options.delay(failures);
                tracing::warn!(
                    source = %source.name,
                    %reason,
                    error = %message,
                    retry_in = ?delay,
                    "fetch failed; keeping the last good snapshot"
                );
                status_tx.send_modify(|s| {
                    s.attempts += 1;
                    s.last_attempt = Some(now);
                    s.last_error = Some(message);
                    s.reason = Some(reason);
                    s.consecutive_failures = failures;
                    s.next_attempt_in = Some(delay);
                });
                drop(span);
                wait(delay, &trigger).await;
            }
        }
    }
}

async fn wait(delay: Duration, trigger: &Notify) {
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        () = trigger.notified() => {}
    }
}

/// An error and its causes, joined with `: `.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitter_stays_in_bounds() {
        let o = PollOptions {
            interval: Duration::from_secs(60),
            retry_interval: Duration::from_secs(5),
            max_backoff: Duration::from_secs(30),
            jitter: 0.0,
        };
        let delays: Vec<u64> = (0..6).map(|n| o.delay(n).as_secs()).collect();
        assert_eq!(delays, vec![60, 5, 10, 20, 30, 30]);
        assert_eq!(o.delay(u32::MAX), Duration::from_secs(30));

        let o = PollOptions { jitter: 0.2, ..o };
        let samples: Vec<Duration> = (0..200).map(|_| o.delay(0)).collect();
        assert!(
            samples
                .iter()
                .all(|d| *d >= Duration::from_secs(48) && *d <= Duration::from_secs(72))
        );
        assert!(
            samples.iter().any(|d| *d != samples[0]),
            "jitter must vary the delay"
        );
    }
}
