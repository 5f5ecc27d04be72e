//! Git webhook receiver: a push on GitHub or GitLab makes the hub fetch at once instead of at
//! the next poll.
//!
//! [`router`] serves two endpoints, to be mounted on the hub's HTTP listener:
//!
//! - `POST /hooks/github`: the body must carry `X-Hub-Signature-256: sha256=<hex>`, the
//!   HMAC-SHA256 of the raw body under a configured secret, checked in constant time.
//!   `X-GitHub-Event: push` becomes a [`PushEvent`]; `ping` is answered `200`; every other event
//!   is answered `202` and ignored.
//! - `POST /hooks/gitlab`: `X-Gitlab-Token` must equal a configured token (compared in constant
//!   time). `X-Gitlab-Event: Push Hook` and `Tag Push Hook` become a [`PushEvent`]; other events
//!   are answered `202` and ignored.
//!
//! A provider without a configured secret refuses every request (`403`): an unauthenticated
//! endpoint would let anyone make the hub fetch at will. A bad or missing signature or token is
//! `401`, logged at `warn` with the provider and remote address (never the secret nor the
//! signature); malformed JSON is `400` naming what is wrong; a body over the limit is `413`.
//!
//! The receiver only says *that* a repository moved; the controller matches
//! [`PushEvent::repository_urls`] to each `GitSource`'s URL with [`same_repository`] and fetches.
//! Nothing in a payload is trusted beyond that: the revision applied is the one the hub fetches.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{Extensions, HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hmac::{Hmac, Mac as _};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tracing::{debug, info, warn};

use crate::source::Secret;

/// The default limit of a request body: 1 MiB (GitHub caps its payloads at 25 MB, but a push
/// payload of a normal push is a few kilobytes; a large one only lists many commits, which the
/// hub does not read).
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// Errors of the webhook receiver: refusing a request, or loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The provider has no secret configured, so its endpoint accepts nothing.
    #[error("{provider} webhooks are not enabled on this hub (no secret configured)")]
    NotConfigured {
        /// The provider.
        provider: Provider,
    },
    /// A header the provider always sends is missing.
    #[error("missing header {header}")]
    MissingHeader {
        /// The header's name.
        header: &'static str,
    },
    /// `X-Hub-Signature-256` is not `sha256=` followed by 64 hex digits.
    #[error("malformed X-Hub-Signature-256 (expected sha256=<64 hex digits>)")]
    MalformedSignature,
    /// The signature or token does not match any configured secret.
    #[error("{what} does not match")]
    Unauthenticated {
        /// `signature` or `token`.
        what: &'static str,
    },
    /// The body is not JSON (GitHub can be told to send form-encoded payloads).
    #[error(
        "unsupported content type {content_type:?}: configure the webhook to send application/json"
    )]
    UnsupportedContentType {
        /// The content type received.
        content_type: String,
    },
    /// The body is not a push payload of the provider.
    #[error("malformed {provider} {event} payload")]
    MalformedPayload {
        /// The provider.
        provider: Provider,
        /// The event named in the header.
        event: String,
        /// What serde_json found wrong, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// A push payload names no repository URL to match.
    #[error("{provider} push payload names no repository URL")]
    NoRepositoryUrl {
        /// The provider.
        provider: Provider,
    },
    /// A secret file cannot be read.
    #[error("reading webhook secret file {}", path.display())]
    ReadSecret {
        /// The file.
        path: PathBuf,
        /// Why it cannot be read.
        #[source]
        source: std::io::Error,
    },
    /// A secret file is empty (after trimming the trailing newline).
    #[error("webhook secret file {} is empty", path.display())]
    EmptySecret {
        /// The file.
        path: PathBuf,
    },
}

/// Shorthand for results of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::NotConfigured { .. } => StatusCode::FORBIDDEN,
            Error::MissingHeader { .. } | Error::MalformedSignature => StatusCode::UNAUTHORIZED,
            Error::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            Error::UnsupportedContentType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::MalformedPayload { .. } | Error::NoRepositoryUrl { .. } => {
                StatusCode::BAD_REQUEST
            }
            Error::ReadSecret { .. } | Error::EmptySecret { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        // The message and its causes: "malformed github push payload: missing field `ref` at
        // line 1 column 42". Nothing here carries a secret or a signature.
        let mut text = self.to_string();
        let mut source = std::error::Error::source(&self);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text.push('\n');
        (self.status(), text).into_response()
    }
}

/// Where a push came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    /// GitHub (github.com or GitHub Enterprise Server).
    GitHub,
    /// GitLab (gitlab.com or self-managed).
    GitLab,
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Provider::GitHub => "github",
            Provider::GitLab => "gitlab",
        })
    }
}

/// A push to a repository, as the provider reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushEvent {
    /// Who sent it.
    pub provider: Provider,
    /// Every URL of the repository in the payload (web, HTTPS clone, SSH, `git://`), without
    /// duplicates; match them to a source URL with [`same_repository`].
    pub repository_urls: Vec<String>,
    /// The full reference pushed, e.g. `refs/heads/main` or `refs/tags/v1.2.0`.
    pub reference: String,
    /// The commit the reference points to after the push (all zeros when it was deleted).
    pub after: String,
}

impl PushEvent {
    /// Whether the push is to the repository at `url` (see [`same_repository`]).
    pub fn is_for(&self, url: &str) -> bool {
        self.repository_urls
            .iter()
            .any(|candidate| same_repository(candidate, url))
    }
}

/// The receiver's configuration. `Debug` shows how many secrets there are, never them.
#[derive(Clone)]
pub struct WebhookConfig {
    /// Secrets GitHub signs payloads with. More than one lets a secret be rotated without a
    /// window in which pushes are refused. Empty: `/hooks/github` refuses everything.
    pub github_secrets: Vec<Secret>,
    /// Tokens GitLab sends in `X-Gitlab-Token`. Empty: `/hooks/gitlab` refuses everything.
    pub gitlab_tokens: Vec<Secret>,
    /// The largest body accepted, in bytes; a larger one is answered `413`.
    pub body_limit: usize,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            github_secrets: Vec::new(),
            gitlab_tokens: Vec::new(),
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field(
                "github_secrets",
                &format_args!("{} x ***", self.github_secrets.len()),
            )
            .field(
                "gitlab_tokens",
                &format_args!("{} x ***", self.gitlab_tokens.len()),
            )
            .field("body_limit", &self.body_limit)
            .finish()
    }
}

impl WebhookConfig {
    /// Reads secrets from files (one secret per file, a trailing newline ignored), as mounted
    /// from Kubernetes Secrets. A provider without a file stays disabled.
    pub fn from_files(github: Option<&Path>, gitlab: Option<&Path>) -> Result<Self> {
        let mut config = Self::default();
        if let Some(path) = github {
            config.github_secrets.push(read_secret(path)?);
        }
        if let Some(path) = gitlab {
            config.gitlab_tokens.push(read_secret(path)?);
        }
        Ok(config)
    }
}

fn read_secret(path: &Path) -> Result<Secret> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadSecret {
        path: path.to_path_buf(),
        source,
    })?;
    let trimmed = text.trim_end_matches(['\n', '\r']);
    if trimmed.is_empty() {
        return Err(Error::EmptySecret {
            path: path.to_path_buf(),
        });
    }
    Ok(Secret::new(trimmed))
}

/// What the controller does with a push. Called on the request's task: it should only note the
/// push (wake a poller), not fetch.
pub type OnPush = Arc<dyn Fn(PushEvent) + Send + Sync>;

struct Shared {
    config: WebhookConfig,
    on_push: OnPush,
}

/// The routes `POST /hooks/github` and `POST /hooks/gitlab`. To log remote addresses, serve it
/// with `into_make_service_with_connect_info::<SocketAddr>()`.
pub fn router(config: WebhookConfig, on_push: OnPush) -> Router {
    let limit = config.body_limit;
    let shared = Arc::new(Shared { config, on_push });
    Router::new()
        .route("/hooks/github", post(github))
        .route("/hooks/gitlab", post(gitlab))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(shared)
}

fn remote(extensions: &Extensions) -> String {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_string(), |info| info.0.to_string())
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn require_json(headers: &HeaderMap) -> Result<()> {
    match header_str(headers, header::CONTENT_TYPE.as_str()) {
        None => Ok(()),
        Some(ct) => {
            let essence = ct.split(';').next().unwrap_or("").trim();
            if essence.eq_ignore_ascii_case("application/json") {
                Ok(())
            } else {
                Err(Error::UnsupportedContentType {
                    content_type: ct.to_string(),
                })
            }
        }
    }
}

/// Logs a refused request: provider, remote, reason. The reason is one of this module's error
/// messages, none of which holds a secret or a signature.
fn refused(provider: Provider, remote: &str, error: Error) -> Response {
    if error.status() == StatusCode::UNAUTHORIZED || error.status() == StatusCode::FORBIDDEN {
        warn!(%provider, %remote, reason = %error, "webhook refused");
    } else {
        info!(%provider, %remote, reason = %error, "webhook rejected");
    }
    error.into_response()
}

async fn github(
    State(shared): State<Arc<Shared>>,
    extensions: Extensions,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let remote = remote(&extensions);
    match handle_github(&shared, &headers, &body) {
        Ok(response) => response,
        Err(error) => refused(Provider::GitHub, &remote, error),
    }
}

fn handle_github(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Result<Response> {
    let provider = Provider::GitHub;
    if shared.config.github_secrets.is_empty() {
        return Err(Error::NotConfigured { provider });
    }
    let signature = header_str(headers, "x-hub-signature-256").ok_or(Error::MissingHeader {
        header: "X-Hub-Signature-256",
    })?;
    verify_github_signature(&shared.config.github_secrets, signature, body)?;
    let event = header_str(headers, "x-github-event").ok_or(Error::MissingHeader {
        header: "X-GitHub-Event",
    })?;
    let delivery = header_str(headers, "x-github-delivery").unwrap_or("-");
    match event {
        "ping" => {
            info!(%provider, %delivery, "webhook ping");
            Ok((StatusCode::OK, "pong\n").into_response())
        }
        "push" => {
            require_json(headers)?;
            let push = parse_github_push(body)?;
            Ok(accept(shared, push, delivery))
        }
        other => {
            debug!(%provider, event = %other, %delivery, "webhook event ignored");
            Ok((StatusCode::ACCEPTED, format!("event {other} ignored\n")).into_response())
        }
    }
}

async fn gitlab(
    State(shared): State<Arc<Shared>>,
    extensions: Extensions,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let remote = remote(&extensions);
    match handle_gitlab(&shared, &headers, &body) {
        Ok(response) => response,
        Err(error) => refused(Provider::GitLab, &remote, error),
    }
}

fn handle_gitlab(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Result<Response> {
    let provider = Provider::GitLab;
    if shared.config.gitlab_tokens.is_empty() {
        return Err(Error::NotConfigured { provider });
    }
    let token = header_str(headers, "x-gitlab-token").ok_or(Error::MissingHeader {
        header: "X-Gitlab-Token",
    })?;
    if !shared
        .config
        .gitlab_tokens
        .iter()
        .any(|known| constant_time_eq(known.expose(), token))
    {
        return Err(Error::Unauthenticated { what: "token" });
    }
    let event = header_str(headers, "x-gitlab-event").ok_or(Error::MissingHeader {
        header: "X-Gitlab-Event",
    })?;
    let delivery = header_str(headers, "x-gitlab-event-uuid").unwrap_or("-");
    match event {
        "Push Hook" | "Tag Push Hook" => {
            require_json(headers)?;
            let push = parse_gitlab_push(event, body)?;
            Ok(accept(shared, push, delivery))
        }
        other => {
            debug!(%provider, event = %other, %delivery, "webhook event ignored");
            Ok((StatusCode::ACCEPTED, format!("event {other} ignored\n")).into_response())
        }
    }
}

fn accept(shared: &Shared, push: PushEvent, delivery: &str) -> Response {
    info!(
        provider = %push.provider,
        repository = %push.repository_urls[0],
        reference = %push.reference,
        after = %push.after,
        %delivery,
        "push received"
    );
    let text = format!("push to {} accepted\n", push.reference);
    (shared.on_push)(push);
    (StatusCode::OK, text).into_response()
}

/// Checks `sha256=<hex>` against the HMAC-SHA256 of `body` under each secret; the comparison is
/// constant-time (`Mac::verify_slice`).
fn verify_github_signature(secrets: &[Secret], header: &str, body: &[u8]) -> Result<()> {
    let hex_digest = header
        .strip_prefix("sha256=")
        .ok_or(Error::MalformedSignature)?;
    let expected = hex::decode(hex_digest.trim()).map_err(|_| Error::MalformedSignature)?;
    if expected.len() != 32 {
        return Err(Error::MalformedSignature);
    }
    for secret in secrets {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(body);
        if mac.verify_slice(&expected).is_ok() {
            return Ok(());
        }
    }
    Err(Error::Unauthenticated { what: "signature" })
}

/// Compares two strings in time independent of where they differ and of their lengths (both are
/// hashed first, so only equal digests match).
fn constant_time_eq(a: &str, b: &str) -> bool {
    let a = Sha256::digest(a.as_bytes());
    let b = Sha256::digest(b.as_bytes());
    a.ct_eq(&b).into()
}

#[derive(Deserialize)]
struct GitHubPush {
    #[serde(rename = "ref")]
    reference: String,
    after: String,
    repository: GitHubRepository,
}

#[derive(Deserialize)]
struct GitHubRepository {
    html_url: Option<String>,
    clone_url: Option<String>,
    ssh_url: Option<String>,
    git_url: Option<String>,
}

#[derive(Deserialize)]
struct GitLabPush {
    #[serde(rename = "ref")]
    reference: String,
    after: String,
    #[serde(default)]
    project: Option<GitLabUrls>,
    #[serde(default)]
    repository: Option<GitLabUrls>,
}

#[derive(Deserialize)]
struct GitLabUrls {
    web_url: Option<String>,
    homepage: Option<String>,
    git_http_url: Option<String>,
    git_ssh_url: Option<String>,
}

fn collect_urls<'a>(urls: impl IntoIterator<Item = &'a Option<String>>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for url in urls.into_iter().flatten() {
        let url = url.trim();
        if !url.is_empty() && !out.iter().any(|u| u == url) {
            out.push(url.to_string());
        }
    }
    out
}

fn parse_github_push(body: &[u8]) -> Result<PushEvent> {
    let provider = Provider::GitHub;
    let push: GitHubPush =
        serde_json::from_slice(body).map_err(|source| Error::MalformedPayload {
            provider,
            event: "push".into(),
            source,
        })?;
    let r = &push.repository;
    let repository_urls = collect_urls([&r.clone_url, &r.ssh_url, &r.html_url, &r.git_url]);
    if repository_urls.is_empty() {
        return Err(Error::NoRepositoryUrl { provider });
    }
    Ok(PushEvent {
        provider,
        repository_urls,
        reference: push.reference,
        after: push.after,
    })
}

fn parse_gitlab_push(event: &str, body: &[u8]) -> Result<PushEvent> {
    let provider = Provider::GitLab;
    let push: GitLabPush =
        serde_json::from_slice(body).map_err(|source| Error::MalformedPayload {
            provider,
            event: event.to_string(),
            source,
        })?;
    let mut urls = Vec::new();
    for part in [&push.project, &push.repository].into_iter().flatten() {
        urls.extend([
            &part.git_http_url,
            &part.git_ssh_url,
            &part.web_url,
            &part.homepage,
        ]);
    }
    let repository_urls = collect_urls(urls);
    if repository_urls.is_empty() {
        return Err(Error::NoRepositoryUrl { provider });
    }
    Ok(PushEvent {
        provider,
        repository_urls,
        reference: push.reference,
        after: push.after,
    })
}

/// Whether two Git URLs name the same repository. Both are reduced to host and path: the
/// scheme (`https`, `http`, `ssh`, `git`), the user (`git@`), the port, a trailing `.git` and
/// trailing slashes are dropped, the scp-like form `git@host:org/repo` equals
/// `ssh://git@host/org/repo`, and host and path compare without regard to case (GitHub and
/// GitLab resolve paths case-insensitively). Local paths compare as written, less a trailing
/// slash or `.git`.
///
/// ```
/// use flotilla_hub::webhook::same_repository;
/// assert!(same_repository("git@GitHub.com:org/fleet.git", "https://github.com/org/fleet/"));
/// assert!(!same_repository("https://github.com/org/fleet", "https://github.com/org/fleet-2"));
/// ```
pub fn same_repository(a: &str, b: &str) -> bool {
    match (normalise(a), normalise(b)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// (host, path) in lower case, or (empty host, path) for a local path.
fn normalise(url: &str) -> Option<(String, String)> {
    let url = url.trim();
    if url.is_empty() {
        return None;
    }
    let (host, path) = if let Some((_scheme, rest)) = url.split_once("://") {
        // The path keeps its leading `/`, so `file:///srv/x` is the absolute path `/srv/x`.
        let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        (strip_port(host_port), path)
    } else if let Some((before, path)) = scp_like(url) {
        let host = before.rsplit_once('@').map_or(before, |(_, h)| h);
        (host, path)
    } else {
        ("", url)
    };
    let mut path = path.trim_end_matches('/');
    path = path.strip_suffix(".git").unwrap_or(path);
    path = path.trim_end_matches('/');
    if host.is_empty() {
        // A local path (or `file:///path`): keep it absolute or relative as written.
        if path.is_empty() {
            return None;
        }
        return Some((String::new(), path.to_string()));
    }
    let path = path.trim_start_matches('/');
    if path.is_empty() {
        return None;
    }
    Some((host.to_ascii_lowercase(), path.to_lowercase()))
}

/// `[user@]host:path` where no `/` comes before the `:` (git's rule for scp-like syntax).
fn scp_like(url: &str) -> Option<(&str, &str)> {
    let colon = url.find(':')?;
    if url[..colon].contains('/') || colon == 0 {
        return None;
    }
    Some((&url[..colon], &url[colon + 1..]))
}

fn strip_port(host_port: &str) -> &str {
    if let Some(rest) = host_port.strip_prefix('[') {
        // [::1]:8080
        return rest.split_once(']').map_or(rest, |(h, _)| h);
    }
    match host_port.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => host_port,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_repository_across_url_forms() {
        let forms = [
            "https://github.com/Org/Fleet",
            "https://github.com/org/fleet.git",
            "https://github.com/org/fleet/",
            "http://GITHUB.com/org/fleet.git/",
            "git@github.com:org/fleet.git",
            "github.com:org/fleet",
            "ssh://git@github.com/org/fleet.git",
            "ssh://git@github.com:22/org/fleet",
            "git://github.com/org/fleet.git",
            "https://token:x-oauth@github.com/org/fleet.git",
        ];
        for a in forms {
            for b in forms {
                assert!(same_repository(a, b), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn different_repositories_differ() {
        let pairs = [
            (
                "https://github.com/org/fleet",
                "https://github.com/org/fleet-2",
            ),
            (
                "https://github.com/org/fleet",
                "https://gitlab.com/org/fleet",
            ),
            (
                "https://github.com/org/fleet",
                "https://github.com/other/fleet",
            ),
            (
                "git@github.com:org/fleet.git",
                "git@github.com:org/fleet/sub.git",
            ),
            (
                "https://gitlab.com/group/sub/project",
                "https://gitlab.com/group/project",
            ),
            ("/srv/git/fleet", "/srv/git/other"),
            ("", ""),
            ("https://github.com/", "https://github.com"),
        ];
        for (a, b) in pairs {
            assert!(!same_repository(a, b), "{a} vs {b}");
        }
    }

    #[test]
    fn local_paths_compare_as_written() {
        assert!(same_repository("/srv/git/fleet.git", "/srv/git/fleet/"));
        assert!(same_repository(
            "file:///srv/git/fleet",
            "/srv/git/fleet.git"
        ));
        assert!(!same_repository("/srv/git/fleet", "srv/git/fleet"));
    }

    #[test]
    fn github_signature() {
        let secrets = [Secret::new("It's a Secret to Everybody")];
        let body = b"Hello, World!";
        // HMAC-SHA256 of the body under the secret, as GitHub's documentation gives it.
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        verify_github_signature(&secrets, good, body).unwrap();
        let err = verify_github_signature(&secrets, good, b"Hello, World?").unwrap_err();
        assert!(matches!(err, Error::Unauthenticated { .. }), "{err}");
        let err = verify_github_signature(&secrets, "sha1=abc", body).unwrap_err();
        assert!(matches!(err, Error::MalformedSignature), "{err}");
        let err = verify_github_signature(&secrets, "sha256=zz", body).unwrap_err();
        assert!(matches!(err, Error::MalformedSignature), "{err}");
        // Rotation: the old secret first, the new one second.
        let rotated = [Secret::new("old"), secrets[0].clone()];
        verify_github_signature(&rotated, good, body).unwrap();
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "abcd"));
        assert!(!constant_time_eq("", "a"));
    }

    #[test]
    fn config_debug_hides_secrets() {
        let config = WebhookConfig {
            github_secrets: vec![Secret::new("gh-hunter2")],
            gitlab_tokens: vec![Secret::new("gl-hunter2")],
            ..WebhookConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("1 x ***"), "{shown}");
    }

    #[test]
    fn secrets_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let gh = dir.path().join("github");
        std::fs::write(&gh, "s3cret\n").unwrap();
        let config = WebhookConfig::from_files(Some(&gh), None).unwrap();
        assert_eq!(config.github_secrets[0].expose(), "s3cret");
        assert!(config.gitlab_tokens.is_empty());

        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let err = WebhookConfig::from_files(None, Some(&empty)).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        let missing = dir.path().join("missing");
        let err = WebhookConfig::from_files(Some(&missing), None).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
