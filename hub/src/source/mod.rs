//! Git sources: fetch a repository into a local cache and hand out immutable snapshots of one
//! revision that the renderer reads straight from the object database.
//!
//! The pieces, in data-flow order:
//! - [`GitSource`] says what to fetch: URL, [`GitRef`], [`Auth`], optional [`Verification`] and
//!   [`Limits`].
//! - [`GitCache`] keeps one bare repository per URL under a cache directory and turns a
//!   `GitSource` into a [`Snapshot`] (blocking; run it on a blocking thread).
//! - [`Snapshot`] is one resolved, possibly verified revision; it implements
//!   [`flotilla_render::Tree`] without checking anything out.
//! - [`SourcePoller`] fetches on an interval with jitter and exponential backoff, publishes the
//!   latest good snapshot on a `watch` channel and a [`SourceStatus`] beside it, and can be told to
//!   fetch now. A failed or unverified fetch never replaces the last good snapshot.
//!
//! Secrets (passwords, tokens, private keys) live in [`Secret`], whose `Debug` prints `***`;
//! URLs in errors and statuses have their password removed (see [`redact_url`]).

mod auth;
mod fetch;
mod known_hosts;
mod poller;
mod snapshot;
mod verify;

use std::fmt;
use std::path::PathBuf;

pub(crate) use auth::ssh_target;
pub use auth::{Auth, Secret, redact_url};
pub use fetch::GitCache;
pub use known_hosts::{HostKeyCheck, KnownHosts};
pub use poller::{FailureReason, PollOptions, SourcePoller, SourceStatus};
pub use snapshot::Snapshot;
pub use verify::{TrustedKey, Verification, VerifyMode};

/// Which revision of a repository a source follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GitRef {
    /// The tip of a branch, e.g. `main`.
    Branch(String),
    /// A tag, e.g. `v1.2.3` (annotated or lightweight).
    Tag(String),
    /// The highest tag whose name (with an optional leading `v`) is a semantic version matching
    /// this range, e.g. `>=1.2.0 <2.0.0`, `^1.4`, `~1.2 || >=3`.
    Semver(String),
    /// An exact commit, as 40 hexadecimal digits.
    Commit(String),
}

impl fmt::Display for GitRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GitRef::Branch(b) => write!(f, "branch {b}"),
            GitRef::Tag(t) => write!(f, "tag {t}"),
            GitRef::Semver(r) => write!(f, "semver range {r}"),
            GitRef::Commit(c) => write!(f, "commit {c}"),
        }
    }
}

/// Bounds on what a source may bring into the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest size of the cached bare repository on disk, in bytes (also enforced on the bytes
    /// received while fetching, so an oversized fetch is stopped early).
    pub max_repo_bytes: u64,
    /// Largest file (blob) a snapshot will read, in bytes.
    pub max_file_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_repo_bytes: 1 << 30,
            max_file_bytes: 10 << 20,
        }
    }
}

/// One Git source: where to fetch from and what to accept.
#[derive(Debug, Clone)]
pub struct GitSource {
    /// The source's name (the `GitSource` object's name on the hub); used in logs and status.
    pub name: String,
    /// Repository URL: `https://…`, `http://…`, `ssh://user@host[:port]/path`, `user@host:path`,
    /// or a local path / `file://` URL.
    pub url: String,
    /// The revision to follow.
    pub reference: GitRef,
    /// Credentials.
    pub auth: Auth,
    /// Signature verification; `None` accepts any revision.
    pub verify: Option<Verification>,
    /// Size limits.
    pub limits: Limits,
}

impl GitSource {
    /// A source with no credentials, no verification and default limits.
    pub fn new(name: impl Into<String>, url: impl Into<String>, reference: GitRef) -> Self {
        Self {
            name: name.into(),
            url: url.into(),
            reference,
            auth: Auth::None,
            verify: None,
            limits: Limits::default(),
        }
    }
}

/// Errors of the source module. Every variant that concerns a repository names its URL, with
/// any password removed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cache directory could not be created or read.
    #[error("using cache directory {path}")]
    Cache {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The cached bare repository could not be created or opened.
    #[error("opening the cached repository {path} of {url}")]
    Repository {
        /// The source URL.
        url: String,
        /// The cached repository.
        path: PathBuf,
        /// What libgit2 said.
        #[source]
        source: git2::Error,
    },
    /// The source is configured in a way that cannot work.
    #[error("source {url}: {reason}")]
    Config {
        /// The source URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// Talking to the remote failed (network, protocol, server error).
    #[error("fetching {url}: {message}")]
    Fetch {
        /// The source URL.
        url: String,
        /// What libgit2 said, with secrets removed.
        message: String,
    },
    /// The server asked for credentials and refused the ones given (or none were configured).
    #[error("authentication to {url} failed: {reason}")]
    Auth {
        /// The source URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The SSH server's host key was refused by the known_hosts check.
    #[error("refusing SSH host key of {url}: {check}")]
    HostKey {
        /// The source URL.
        url: String,
        /// The failed check, naming host, key type and fingerprint.
        check: HostKeyCheck,
    },
    /// The known_hosts data given for a source does not parse.
    #[error("known_hosts line {line}: {reason}")]
    KnownHosts {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The reference does not exist on the remote.
    #[error("{reference} not found in {url}")]
    RefNotFound {
        /// The source URL.
        url: String,
        /// The reference.
        reference: GitRef,
    },
    /// A semver range does not parse.
    #[error("invalid semver range {range:?}")]
    InvalidRange {
        /// The range as written.
        range: String,
        /// The parser's complaint.
        #[source]
        source: semver::Error,
    },
    /// A commit reference is not a full hexadecimal object id.
    #[error("invalid commit id {id:?}: expected 40 hexadecimal digits")]
    InvalidCommitId {
        /// The id as written.
        id: String,
    },
    /// Resolving the reference to a commit failed (e.g. a tag pointing at a tree).
    #[error("resolving {reference} in {url}: {message}")]
    Resolve {
        /// The source URL.
        url: String,
        /// The reference.
        reference: GitRef,
        /// What went wrong.
        message: String,
    },
    /// A revision asked for in a local repository is not there.
    #[error("revision {revision:?} not found in the Git repository at {path} (fetch it first?)")]
    Revision {
        /// Where the repository was looked for.
        path: PathBuf,
        /// The revision as asked for.
        revision: String,
        /// What libgit2 said.
        #[source]
        source: git2::Error,
    },
    /// The repository exceeds [`Limits::max_repo_bytes`].
    #[error("repository {url} is {size} bytes, over the limit of {limit} bytes")]
    RepositoryTooLarge {
        /// The source URL.
        url: String,
        /// Bytes received or on disk when the limit was hit.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Signature verification refused the revision.
    #[error("{url} at {revision} failed verification: {reason}")]
    Verification {
        /// The source URL.
        url: String,
        /// The refused revision.
        revision: String,
        /// Why it was refused.
        reason: String,
    },
    /// A trusted key given for verification does not parse.
    #[error("invalid trusted key ({what}): {reason}")]
    InvalidKey {
        /// Which key (line number or block).
        what: String,
        /// The parser's complaint.
        reason: String,
    },
    /// The blocking fetch task panicked or was cancelled.
    #[error("fetch task of {url} did not finish: {message}")]
    Task {
        /// The source URL.
        url: String,
        /// What the runtime said.
        message: String,
    },
}

/// Result with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
