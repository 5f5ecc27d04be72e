//! Notifications of failure and recovery: a generic JSON webhook and Slack-compatible incoming
//! webhooks.
//!
//! The controller calls [`Notifier::observe`] with each (cluster, delivery)'s readiness whenever
//! it computes it. The notifier keeps, per (cluster, delivery), the failure last notified and
//! sends:
//!
//! - a **failure** when the pair becomes not ready, or stays not ready with another reason or
//!   at another revision;
//! - a **recovery** when it becomes ready after a notified failure;
//! - nothing for repeats: the same (cluster, delivery, reason, revision) is notified once.
//!
//! Sending never blocks the caller: each provider has a bounded queue and its own task, which
//! posts with a timeout and retries with exponential backoff (connection errors, timeouts, `429`
//! and `5xx`). A message that does not fit the queue, or that fails every attempt, is logged as
//! dropped. Messages to one provider are sent in order, so a recovery never overtakes its
//! failure; a slow provider does not delay another.
//!
//! Webhook URLs are secrets (a Slack incoming-webhook URL is its own credential): they come
//! from the configuration inline or from a file (`urlFile`, e.g. a mounted Kubernetes Secret),
//! and neither they nor header values appear in logs, errors or `Debug` output; a provider is
//! named by its `name`.
//!
//! The state is in memory: a restarted hub notifies a failure that is still going on once more.

use crate::controller::util::error_chain;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Deserializer};
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::source::Secret;

/// Errors of loading the notification configuration and of sending one notification.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration file cannot be read.
    #[error("reading notification config {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The configuration is not valid YAML of the expected shape (the cause names line and
    /// column).
    #[error("parsing notification config {}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        #[source]
        source: serde_yaml::Error,
    },
    /// A provider's settings cannot work.
    #[error("notification config {}: provider {provider:?}: {problem}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The provider's name (or its index when it has none).
        provider: String,
        /// What is wrong; never the URL or a header value.
        problem: String,
    },
    /// A provider's `urlFile` cannot be read.
    #[error("notification provider {provider:?}: reading urlFile {}", path.display())]
    ReadUrlFile {
        /// The provider.
        provider: String,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The request could not be made or got no answer in time (retried).
    #[error("notification provider {provider:?}: request failed")]
    Request {
        /// The provider.
        provider: String,
        /// The cause, with the URL scrubbed from its message.
        #[source]
        source: Scrubbed,
    },
    /// No answer within the timeout (retried).
    #[error("notification provider {provider:?}: no answer within {timeout:?}")]
    Timeout {
        /// The provider.
        provider: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The receiver answered with an error status (`429` and `5xx` are retried).
    #[error("notification provider {provider:?}: receiver answered {status}")]
    Status {
        /// The provider.
        provider: String,
        /// The HTTP status.
        status: StatusCode,
    },
}

/// Shorthand for results of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    fn retryable(&self) -> bool {
        match self {
            Error::Request { .. } | Error::Timeout { .. } => true,
            Error::Status { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }
}

/// An error message from the HTTP stack with the webhook URL removed, so it can be logged.
#[derive(Debug)]
pub struct Scrubbed(String);

impl fmt::Display for Scrubbed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Scrubbed {}

/// The file given to the hub with `--notifications FILE`.
///
/// ```yaml
/// providers:
///   - name: ops-slack
///     type: slack
///     urlFile: /etc/flotilla/slack-url   # or url: https://hooks.slack.com/services/...
///     events: [failure, recovery]        # default: both
///   - name: pager
///     type: generic
///     url: https://alerts.example.com/flotilla
///     headers: { Authorization: "Bearer ..." }
/// retry: { attempts: 6, initialBackoff: 1s, maxBackoff: 60s }
/// timeout: 10s
/// queueCapacity: 256
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NotifyConfig {
    /// Where notifications go.
    #[serde(default)]
    pub providers: Vec<ProviderConfig>,
    /// How often and how patiently to retry a failed send.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Time allowed for one request, connection included. Default 10 s.
    #[serde(default = "default_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Messages waiting per provider before new ones are dropped. Default 256.
    #[serde(default = "default_capacity")]
    pub queue_capacity: usize,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            providers: Vec::new(),
            retry: RetryConfig::default(),
            timeout: default_timeout(),
            queue_capacity: default_capacity(),
        }
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_capacity() -> usize {
    256
}

/// Retries of a failed send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in all, the first included. Default 6.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Wait after the first failed attempt; doubled after each further one. Default 1 s.
    #[serde(default = "default_initial", deserialize_with = "de_duration")]
    pub initial_backoff: Duration,
    /// Upper bound of the wait. Default 60 s.
    #[serde(default = "default_max", deserialize_with = "de_duration")]
    pub max_backoff: Duration,
}

fn default_attempts() -> u32 {
    6
}
fn default_initial() -> Duration {
    Duration::from_secs(1)
}
fn default_max() -> Duration {
    Duration::from_secs(60)
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: default_attempts(),
            initial_backoff: default_initial(),
            max_backoff: default_max(),
        }
    }
}

/// One receiver of notifications.
#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderConfig {
    /// Names the provider in logs and errors (its URL never appears there).
    pub name: String,
    /// The body format.
    #[serde(rename = "type")]
    pub kind: ProviderKind,
    /// The webhook URL, inline. Exactly one of `url` and `urlFile`.
    #[serde(default)]
    pub url: Option<Secret>,
    /// A file holding the webhook URL (trailing newline ignored), read when the configuration
    /// is loaded; relative to the configuration file's directory.
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    /// Extra request headers (e.g. `Authorization`); their values are treated as secrets.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Which events to send. Default: failure and recovery.
    #[serde(default = "all_events")]
    pub events: Vec<EventKind>,
}

fn all_events() -> Vec<EventKind> {
    vec![EventKind::Failure, EventKind::Recovery]
}

impl fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("url", &self.url.as_ref().map(|_| "***"))
            .field("url_file", &self.url_file)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("events", &self.events)
            .finish()
    }
}

/// The body format of a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// A JSON object with cluster, delivery, revision, reason, message, severity, time.
    Generic,
    /// A Slack incoming webhook (also understood by Mattermost and Rocket.Chat): `text` and a
    /// coloured attachment with the same fields.
    Slack,
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A (cluster, delivery) became not ready, or failed anew.
    Failure,
    /// A (cluster, delivery) became ready after a failure.
    Recovery,
}

impl EventKind {
    fn as_str(self) -> &'static str {
        match self {
            EventKind::Failure => "failure",
            EventKind::Recovery => "recovery",
        }
    }

    fn severity(self) -> &'static str {
        match self {
            EventKind::Failure => "error",
            EventKind::Recovery => "info",
        }
    }
}

// Secrets deserialise from plain strings; only their Debug/Display are redacted.
impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret::new)
    }
}

fn de_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_duration(&text).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "invalid duration {text:?} (expected e.g. 500ms, 10s, 2m)"
        ))
    })
}

/// `500ms`, `10s`, `2m`, `1h`.
fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
        "h" => Some(Duration::from_secs(n.checked_mul(3600)?)),
        _ => None,
    }
}

impl NotifyConfig {
    /// Reads, parses and checks the file, and reads each provider's `urlFile` (relative paths
    /// from the file's directory), so that [`Notifier::new`] cannot fail.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml(&text, path)
    }

    /// Parses and checks `text`, read from `path` (named in errors; `urlFile`s are relative to
    /// its directory).
    pub fn from_yaml(text: &str, path: &Path) -> Result<Self> {
        let mut config: NotifyConfig =
            serde_yaml::from_str(text).map_err(|source| Error::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve(path, base)?;
        Ok(config)
    }

    fn resolve(&mut self, path: &Path, base: &Path) -> Result<()> {
        let invalid = |provider: &str, problem: String| Error::Invalid {
            path: path.to_path_buf(),
            provider: provider.to_string(),
            problem,
        };
        if self.retry.attempts == 0 {
            return Err(invalid("-", "retry.attempts must be at least 1".into()));
        }
        if self.queue_capacity == 0 {
            return Err(invalid("-", "queueCapacity must be at least 1".into()));
        }
        let mut names = std::collections::HashSet::new();
        for (index, provider) in self.providers.iter_mut().enumerate() {
            if provider.name.trim().is_empty() {
                return Err(invalid(&format!("#{index}"), "name is empty".into()));
            }
            let name = provider.name.clone();
            if !names.insert(name.clone()) {
                return Err(invalid(&name, "name is used twice".into()));
            }
            match (&provider.url, &provider.url_file) {
                (Some(_), Some(_)) => {
                    return Err(invalid(&name, "set url or urlFile, not both".into()));
                }
                (None, None) => return Err(invalid(&name, "url or urlFile is required".into())),
                (None, Some(file)) => {
                    let file = base.join(file);
                    let text =
                        std::fs::read_to_string(&file).map_err(|source| Error::ReadUrlFile {
                            provider: name.clone(),
                            path: file.clone(),
                            source,
                        })?;
                    provider.url = Some(Secret::new(text.trim()));
                }
                (Some(_), None) => {}
            }
            let url = provider.url.as_ref().expect("set above").expose();
            let uri: Option<http::Uri> = url.parse().ok();
            let scheme_ok = uri
                .as_ref()
                .and_then(|u| u.scheme_str())
                .is_some_and(|s| s == "http" || s == "https");
            if !scheme_ok || uri.as_ref().and_then(|u| u.host()).is_none() {
                let from = provider
                    .url_file
                    .as_ref()
                    .map_or("url".to_string(), |f| format!("the URL in {}", f.display()));
                return Err(invalid(
                    &name,
                    format!("{from} is not an http:// or https:// URL"),
                ));
            }
            for (header, value) in &provider.headers {
                if HeaderName::from_bytes(header.as_bytes()).is_err() {
                    return Err(invalid(&name, format!("invalid header name {header:?}")));
                }
                if HeaderValue::from_str(value.expose()).is_err() {
                    return Err(invalid(
                        &name,
                        format!("invalid value of header {header:?}"),
                    ));
                }
            }
            if provider.events.is_empty() {
                return Err(invalid(&name, "events is empty".into()));
            }
        }
        Ok(())
    }
}

/// The readiness of one delivery on one cluster, as the controller last computed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// The cluster's name.
    pub cluster: String,
    /// The delivery's name (`namespace/name` when deliveries are namespaced).
    pub delivery: String,
    /// The source revision concerned.
    pub revision: String,
    /// Whether the delivery is ready on the cluster.
    pub ready: bool,
    /// The condition's reason, e.g. `BuildFailed`, `ApplyFailed`.
    pub reason: String,
    /// The condition's message.
    pub message: String,
}

/// One notification, as queued for a provider.
#[derive(Debug, Clone)]
struct Message {
    event: EventKind,
    observation: Arc<Observation>,
    time: time::OffsetDateTime,
}

type Key = (String, String);

/// What was last notified for a (cluster, delivery): the failure (reason, revision).
type Failed = (String, String);

/// Sends failure and recovery notifications. Cheap to clone; all clones share state and
/// queues. The sending tasks stop when the last clone is dropped and their queues are empty.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

struct Inner {
    failed: Mutex<HashMap<Key, Failed>>,
    providers: Vec<ProviderHandle>,
}

struct ProviderHandle {
    name: String,
    events: Vec<EventKind>,
    queue: mpsc::Sender<Message>,
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifier")
            .field(
                "providers",
                &self
                    .inner
                    .providers
                    .iter()
                    .map(|p| &p.name)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

fn http_client() -> HttpClient {
    let provider = rustls::crypto::ring::default_provider();
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match builder.with_provider_and_native_roots(provider) {
        Ok(builder) => builder,
        Err(error) => {
            warn!(%error, "no system CA certificates: https notification receivers will fail");
            let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls)
        }
    };
    let connector = builder.https_or_http().enable_http1().build();
    Client::builder(TokioExecutor::new()).build(connector)
}

impl Notifier {
    /// Starts one sending task per provider. Must be called within a Tokio runtime. A config
    /// without providers gives a notifier that only tracks state.
    pub fn new(config: NotifyConfig) -> Notifier {
        let client = http_client();
        let mut providers = Vec::new();
        for provider in config.providers {
            let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
            let Some(url) = provider.url.clone() else {
                // `NotifyConfig::load` guarantees a URL; a hand-built config may lack one.
                error!(provider = %provider.name, "notification provider has no url: disabled");
                continue;
            };
            providers.push(ProviderHandle {
                name: provider.name.clone(),
                events: provider.events.clone(),
                queue: tx,
            });
            let sender = Sender {
                name: provider.name,
                kind: provider.kind,
                url,
                headers: provider.headers,
                client: client.clone(),
                retry: RetryConfig {
                    attempts: config.retry.attempts.max(1),
                    ..config.retry
                },
                timeout: config.timeout,
            };
            tokio::spawn(sender.run(rx));
        }
        Notifier {
            inner: Arc::new(Inner {
                failed: Mutex::new(HashMap::new()),
                providers,
            }),
        }
    }

    /// Records the readiness of a (cluster, delivery) and queues a notification if it failed
    /// anew or recovered. Never blocks on the network.
    pub fn observe(&self, observation: Observation) {
        let key = (observation.cluster.clone(), observation.delivery.clone());
        let event = {
            let mut failed = self.inner.failed.lock().expect("notifier state poisoned");
            if observation.ready {
                failed.remove(&key).map(|_| EventKind::Recovery)
            } else {
                let now = (observation.reason.clone(), observation.revision.clone());
                match failed.get(&key) {
                    Some(previous) if *previous == now => None,
                    _ => {
                        failed.insert(key, now);
                        Some(EventKind::Failure)
                    }
                }
            }
        };
        let Some(event) = event else { return };
        let message = Message {
            event,
            observation: Arc::new(observation),
            time: time::OffsetDateTime::now_utc(),
        };
        for provider in &self.inner.providers {
            if !provider.events.contains(&event) {
                continue;
            }
            if let Err(err) = provider.queue.try_send(message.clone()) {
                let why = match err {
                    mpsc::error::TrySendError::Full(_) => "queue full",
                    mpsc::error::TrySendError::Closed(_) => "sender stopped",
                };
                warn!(
                    provider = %provider.name,
                    event = event.as_str(),
                    cluster = %message.observation.cluster,
                    delivery = %message.observation.delivery,
                    why,
                    "notification dropped"
                );
            }
        }
    }

    /// Forgets a (cluster, delivery) that no longer exists, so a later one of the same name
    /// starts afresh.
    pub fn forget(&self, cluster: &str, delivery: &str) {
        self.inner
            .failed
            .lock()
            .expect("notifier state poisoned")
            .remove(&(cluster.to_string(), delivery.to_string()));
    }
}

struct Sender {
    name: String,
    kind: ProviderKind,
    url: Secret,
    headers: BTreeMap<String, Secret>,
    client: HttpClient,
    retry: RetryConfig,
    timeout: Duration,
}

impl Sender {
    async fn run(self, mut queue: mpsc::Receiver<Message>) {
        while let Some(message) = queue.recv().await {
            self.deliver(&message).await;
        }
        debug!(provider = %self.name, "notification sender stopped");
    }

    async fn deliver(&self, message: &Message) {
        let body = Bytes::from(body(self.kind, message).to_string());
        let o = &message.observation;
        let mut backoff = self.retry.initial_backoff;
        for attempt in 1..=self.retry.attempts {
            match self.post(body.clone()).await {
                Ok(()) => {
                    info!(
                        provider = %self.name,
                        event = message.event.as_str(),
                        cluster = %o.cluster,
                        delivery = %o.delivery,
                        attempt,
                        "notification sent"
                    );
                    return;
                }
                Err(error) if error.retryable() && attempt < self.retry.attempts => {
                    let error = error_chain(&error);
                    warn!(%error, attempt, retry_in = ?backoff, "notification not sent, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.retry.max_backoff);
                }
                Err(error) => {
                    let error = error_chain(&error);
                    error!(
                        %error,
                        attempt,
                        event = message.event.as_str(),
                        cluster = %o.cluster,
                        delivery = %o.delivery,
                        "notification dropped"
                    );
                    return;
                }
            }
        }
    }

    async fn post(&self, body: Bytes) -> Result<()> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.url.expose())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("flotilla-hub/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in &self.headers {
            request = request.header(name.as_str(), value.expose());
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| self.request_error(&e))?;
        let response = tokio::time::timeout(self.timeout, self.client.request(request))
            .await
            .map_err(|_| Error::Timeout {
                provider: self.name.clone(),
                timeout: self.timeout,
            })?
            .map_err(|e| self.request_error(&e))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(Error::Status {
                provider: self.name.clone(),
                status,
            })
        }
    }

    /// Wraps an HTTP error, its causes joined and any trace of the URL or header values
    /// replaced by `***`.
    fn request_error(&self, error: &(dyn std::error::Error + 'static)) -> Error {
        let mut text = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        let url = self.url.expose();
        text = text.replace(url, "***");
        if let Ok(uri) = url.parse::<http::Uri>()
            && let Some(pq) = uri
                .path_and_query()
                .map(|p| p.as_str())
                .filter(|p| p.len() > 1)
        {
            text = text.replace(pq, "/***");
        }
        for value in self.headers.values() {
            if !value.expose().is_empty() {
                text = text.replace(value.expose(), "***");
            }
        }
        Error::Request {
            provider: self.name.clone(),
            source: Scrubbed(text),
        }
    }
}

fn rfc3339(time: time::OffsetDateTime) -> String {
    time.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| time.unix_timestamp().to_string())
}

fn short(revision: &str) -> &str {
    // `main@sha1:0123456789ab…` or a bare hash: keep it readable in a chat line.
    let hash = revision.rsplit([':', '@']).next().unwrap_or(revision);
    if hash.len() > 12 && hash.chars().all(|c| c.is_ascii_hexdigit()) {
        &revision[..revision.len() - hash.len() + 12]
    } else {
        revision
    }
}

/// The JSON body for a provider.
fn body(kind: ProviderKind, message: &Message) -> serde_json::Value {
    let o = &message.observation;
    let time = rfc3339(message.time);
    match kind {
        ProviderKind::Generic => json!({
            "source": "flotilla",
            "event": message.event.as_str(),
            "severity": message.event.severity(),
            "cluster": o.cluster,
            "delivery": o.delivery,
            "revision": o.revision,
            "ready": o.ready,
            "reason": o.reason,
            "message": o.message,
            "time": time,
        }),
        ProviderKind::Slack => {
            let (headline, color) = match message.event {
                EventKind::Failure => (
                    format!(
                        ":x: *{}* failed on cluster *{}* at `{}`: {}",
                        o.delivery,
                        o.cluster,
                        short(&o.revision),
                        o.reason
                    ),
                    "danger",
                ),
                EventKind::Recovery => (
                    format!(
                        ":white_check_mark: *{}* recovered on cluster *{}* at `{}`",
                        o.delivery,
                        o.cluster,
                        short(&o.revision)
                    ),
                    "good",
                ),
            };
            let field = |title: &str, value: &str, short: bool| json!({ "title": title, "value": value, "short": short });
            json!({
                "text": headline,
                "attachments": [{
                    "color": color,
                    "fallback": headline,
                    "text": o.message,
                    "fields": [
                        field("Cluster", &o.cluster, true),
                        field("Delivery", &o.delivery, true),
                        field("Revision", &o.revision, true),
                        field("Reason", &o.reason, true),
                        field("Severity", message.event.severity(), true),
                        field("Time", &time, true),
                    ],
                    "footer": "flotilla",
                    "ts": message.time.unix_timestamp(),
                }],
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn loads_a_full_config() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "slack-url",
            "https://hooks.example.com/services/T0/B0/zzz\n",
        );
        let path = write(
            dir.path(),
            "notifications.yaml",
            "providers:\n\
             - name: ops\n  type: slack\n  urlFile: slack-url\n\
             - name: pager\n  type: generic\n  url: http://127.0.0.1:9/x\n  headers:\n    Authorization: Bearer abc\n  events: [failure]\n\
             retry:\n  attempts: 3\n  initialBackoff: 200ms\n\
             timeout: 2s\n",
        );
        let config = NotifyConfig::load(&path).unwrap();
        assert_eq!(config.providers.len(), 2);
        assert_eq!(
            config.providers[0].url.as_ref().unwrap().expose(),
            "https://hooks.example.com/services/T0/B0/zzz"
        );
        assert_eq!(config.providers[0].events, all_events());
        assert_eq!(config.providers[1].events, [EventKind::Failure]);
        assert_eq!(config.retry.attempts, 3);
        assert_eq!(config.retry.initial_backoff, Duration::from_millis(200));
        assert_eq!(config.retry.max_backoff, Duration::from_secs(60));
        assert_eq!(config.timeout, Duration::from_secs(2));
        let shown = format!("{config:?}");
        assert!(!shown.contains("zzz") && !shown.contains("abc"), "{shown}");
    }

    #[test]
    fn bad_configs_name_file_line_and_provider() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.yaml");
        let err = |text: &str| {
            let e = NotifyConfig::from_yaml(text, &path).unwrap_err();
            error_chain(&e)
        };
        let e = err("providers:\n- name: a\n  type: teams\n  url: http://x/\n");
        assert!(e.contains("n.yaml") && e.contains("line 3"), "{e}");
        assert!(e.contains("unknown variant `teams`"), "{e}");
        let e = err("providers:\n- name: a\n  type: slack\n  uri: http://x/\n");
        assert!(e.contains("unknown field `uri`"), "{e}");
        let e = err("providers:\n- name: a\n  type: slack\n");
        assert!(
            e.contains("\"a\"") && e.contains("url or urlFile is required"),
            "{e}"
        );
        let e = err("providers:\n- name: a\n  type: slack\n  url: ftp://secret-host/token\n");
        assert!(e.contains("not an http"), "{e}");
        assert!(!e.contains("secret-host"), "{e}");
        let e = err(
            "providers:\n- {name: a, type: slack, url: 'http://h/'}\n- {name: a, type: generic, url: 'http://h/'}\n",
        );
        assert!(e.contains("used twice"), "{e}");
        let e = err("providers:\n- {name: a, type: slack, urlFile: nowhere}\n");
        assert!(
            e.contains("reading urlFile") && e.contains("nowhere"),
            "{e}"
        );
        let e = err("timeout: soon\n");
        assert!(e.contains("invalid duration \"soon\""), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("3s"), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("1d"), None);
    }

    #[test]
    fn bodies_name_everything() {
        let message = Message {
            event: EventKind::Failure,
            observation: Arc::new(Observation {
                cluster: "prod-eu".into(),
                delivery: "apps".into(),
                revision: "main@sha1:0123456789abcdef0123456789abcdef01234567".into(),
                ready: false,
                reason: "BuildFailed".into(),
                message: "kustomization.yaml:3: unknown field".into(),
            }),
            time: time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
        };
        let generic = body(ProviderKind::Generic, &message);
        assert_eq!(generic["cluster"], "prod-eu");
        assert_eq!(generic["delivery"], "apps");
        assert_eq!(generic["reason"], "BuildFailed");
        assert_eq!(generic["severity"], "error");
        assert_eq!(generic["event"], "failure");
        assert_eq!(generic["time"], "2023-11-14T22:13:20Z");
        let slack = body(ProviderKind::Slack, &message);
        let text = slack["text"].as_str().unwrap();
        assert!(text.contains("apps") && text.contains("prod-eu"), "{text}");
        assert!(text.contains("main@sha1:0123456789ab`"), "{text}");
        assert_eq!(slack["attachments"][0]["color"], "danger");
        assert_eq!(
            slack["attachments"][0]["text"],
            "kustomization.yaml:3: unknown field"
        );
    }
}
