//! Fetching sources into the cache and resolving references to snapshots.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use git2::{
    AutotagOption, CertificateCheckStatus, Cred, CredentialType, FetchOptions, FetchPrune, Oid,
    RemoteCallbacks, Repository,
};
use sha2::Digest as _;

use super::auth::{Auth, redact_url, ssh_target, url_password};
use super::known_hosts::KnownHosts;
use super::snapshot::{Snapshot, SnapshotParts};
use super::verify::{VerifyMode, verify_commit, verify_tag};
use super::{Error, GitRef, GitSource, Result};

/// A directory of bare repositories, one per source URL, that fetches update in place.
///
/// Fetches of the same URL are serialised; fetches of different URLs may run in parallel on
/// different threads. All methods block: call them from a blocking thread
/// (`tokio::task::spawn_blocking`), as [`super::SourcePoller`] does.
#[derive(Debug)]
pub struct GitCache {
    dir: PathBuf,
    locks: Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>,
}

/// What the credential callback saw, to explain an authentication failure afterwards.
#[derive(Debug, Default)]
struct AuthState {
    /// Credentials were handed to libgit2 at least once.
    offered: Cell<bool>,
    /// libgit2 asked again after we offered: the server refused them.
    rejected: Cell<bool>,
    /// The server wanted credentials we do not have.
    missing: RefCell<Option<String>>,
}

impl GitCache {
    /// Uses (and creates if needed) `dir` as the cache directory.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|source| Error::Cache {
            path: dir.clone(),
            source,
        })?;
        Ok(Self {
            dir,
            locks: Mutex::new(HashMap::new()),
        })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the bare repository for `url` lives: a readable prefix of the URL (without
    /// credentials) and a hash of the full URL, so distinct URLs never share a repository.
    pub fn repo_path(&self, url: &str) -> PathBuf {
        let redacted = redact_url(url);
        let tail = redacted
            .rsplit(['/', ':'])
            .find(|s| !s.is_empty())
            .unwrap_or("repo");
        let readable: String = tail
            .trim_end_matches(".git")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        let digest = sha2::Sha256::digest(url.as_bytes());
        let hash: String = digest[..10].iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{readable}-{hash}.git"))
    }

    /// Fetches `source` and resolves its reference to a [`Snapshot`], verifying signatures and
    /// enforcing limits. On any error nothing is returned; the caller keeps its previous
    /// snapshot.
    pub fn fetch(&self, source: &GitSource) -> Result<Snapshot> {
        let url = redact_url(&source.url);
        let path = self.repo_path(&source.url);
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(path.clone()).or_default().clone()
        };
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());

        // Log lines here run inside the poller's `fetch` span (source, URL, reference).
        let repo = open_or_init(&path).map_err(|e| Error::Repository {
            url: url.clone(),
            path: path.clone(),
            source: e,
        })?;

        // An exact commit already in the cache needs no network round trip.
        let commit_id = match &source.reference {
            GitRef::Commit(id) => Some(parse_commit_id(id)?),
            _ => None,
        };
        let cached = commit_id.is_some_and(|id| repo.find_commit(id).is_ok());
        if !cached {
            self.download(&repo, source, &url, commit_id)?;
            let size = dir_size(&path);
            if size > source.limits.max_repo_bytes {
                return Err(Error::RepositoryTooLarge {
                    url,
                    size,
                    limit: source.limits.max_repo_bytes,
                });
            }
        }

        let resolved = resolve(&repo, &source.reference, &url)?;
        let commit = repo
            .find_commit(resolved.commit)
            .map_err(|e| Error::Resolve {
                url: url.clone(),
                reference: source.reference.clone(),
                message: e.message().to_string(),
            })?;
        let tree = commit.tree_id();
        let revision = match &resolved.name {
            Some(n) => format!("{n}@sha1:{}", resolved.commit),
            None => format!("sha1:{}", resolved.commit),
        };

        let verified_by = match &source.verify {
            None => None,
            Some(v) => {
                let outcome = match v.mode {
                    VerifyMode::Commit => verify_commit(&repo, resolved.commit, &v.keys),
                    VerifyMode::Tag => {
                        match (&source.reference, resolved.tag_object, &resolved.name) {
                            (GitRef::Tag(_) | GitRef::Semver(_), Some(tag), Some(name)) => {
                                verify_tag(&repo, tag, name, &v.keys)
                            }
                            (GitRef::Tag(_) | GitRef::Semver(_), None, Some(name)) => Err(format!(
                                "tag {name} is a lightweight tag, which carries no signature"
                            )),
                            (GitRef::Branch(_), ..) => Err(
                                "tag verification needs a tag or semver reference, not a branch"
                                    .into(),
                            ),
                            _ => Err(
                                "tag verification needs a tag or semver reference, not a commit"
                                    .into(),
                            ),
                        }
                    }
                };
                match outcome {
                    Ok(key) => Some(key),
                    Err(reason) => {
                        tracing::warn!(%revision, %reason, "refusing unverified revision");
                        return Err(Error::Verification {
                            url,
                            revision,
                            reason,
                        });
                    }
                }
            }
        };
        tracing::info!(%revision, verified_by = verified_by.as_deref().unwrap_or("-"), "fetched");
        drop(commit);
        Ok(Snapshot::new(
            SnapshotParts {
                source: source.name.clone(),
                url,
                reference: source.reference.clone(),
                resolved_ref: resolved.name,
                commit: resolved.commit,
                tree,
                verified_by,
                repo_path: path,
                max_file_bytes: source.limits.max_file_bytes,
            },
            repo,
        ))
    }

    /// Runs the network fetch with credentials, host key checking and the size limit.
    fn download(
        &self,
        repo: &Repository,
        source: &GitSource,
        url: &str,
        commit: Option<Oid>,
    ) -> Result<()> {
        let ssh = ssh_target(&source.url);
        let known_hosts = match (&ssh, &source.auth) {
            (Some(_), Auth::SshKey { known_hosts, .. }) => Some(KnownHosts::parse(known_hosts)?),
            (Some(_), _) => {
                return Err(Error::Config {
                    url: url.to_string(),
                    reason: "an SSH URL needs SSH key authentication with known_hosts".into(),
                });
            }
            (None, Auth::SshKey { .. }) => {
                return Err(Error::Config {
                    url: url.to_string(),
                    reason: "SSH key authentication needs an ssh:// or user@host:path URL".into(),
                });
            }
            (None, _) => None,
        };

        let auth_state = AuthState::default();
        let host_key_refusal = RefCell::new(None);
        let too_large = Cell::new(None);
        let limit = source.limits.max_repo_bytes;

        let mut callbacks = RemoteCallbacks::new();
        callbacks.credentials(|_url, username_from_url, allowed| {
            credentials(
                &source.auth,
                ssh.as_ref().and_then(|t| t.user.as_deref()),
                username_from_url,
                allowed,
                &auth_state,
            )
        });
        callbacks.certificate_check(|cert, host| {
            let Some(hostkey) = cert.as_hostkey() else {
                // HTTPS: keep libgit2's own certificate verification.
                return Ok(CertificateCheckStatus::CertificatePassthrough);
            };
            let (Some(known), Some(target)) = (&known_hosts, &ssh) else {
                return Err(git2::Error::from_str("no known_hosts configured"));
            };
            let check = match hostkey.hostkey() {
                Some(key) => known.check(host, target.port, key),
                None => Err(super::HostKeyCheck::Missing {
                    host: host.to_string(),
                }),
            };
            match check {
                Ok(()) => Ok(CertificateCheckStatus::CertificateOk),
                Err(refusal) => {
                    let message = refusal.to_string();
                    *host_key_refusal.borrow_mut() = Some(refusal);
                    Err(git2::Error::from_str(&message))
                }
            }
        });
        callbacks.transfer_progress(|progress| {
            let received = progress.received_bytes() as u64;
            if received > limit {
                too_large.set(Some(received));
                return false;
            }
            true
        });

        let mut options = FetchOptions::new();
        options.remote_callbacks(callbacks);
        options.download_tags(AutotagOption::None);
        let header;
        if let Auth::Bearer { token } = &source.auth {
            header = format!("Authorization: Bearer {}", token.expose());
            options.custom_headers(&[header.as_str()]);
        }

        let refspecs: Vec<String> = match &source.reference {
            GitRef::Branch(b) => vec![format!("+refs/heads/{b}:refs/heads/{b}")],
            GitRef::Tag(t) => vec![format!("+refs/tags/{t}:refs/tags/{t}")],
            GitRef::Semver(_) => {
                options.prune(FetchPrune::On);
                vec!["+refs/tags/*:refs/tags/*".into()]
            }
            GitRef::Commit(_) => vec![
                "+refs/heads/*:refs/heads/*".into(),
                "+refs/tags/*:refs/tags/*".into(),
            ],
        };

        let mut remote = repo
            .remote_anonymous(&source.url)
            .map_err(|e| Error::Fetch {
                url: url.to_string(),
                message: e.message().to_string(),
            })?;
        let result = remote.fetch(&refspecs, Some(&mut options), None);
        drop(options);
        let result = match (result, commit) {
            // The commit may be reachable only from a ref we did not fetch; ask for it by id
            // (servers that allow it: GitHub, GitLab, `uploadpack.allowReachableSHA1InWant`).
            (Ok(()), Some(id)) if repo.find_commit(id).is_err() => {
                let mut options = FetchOptions::new();
                options.download_tags(AutotagOption::None);
                let _ = remote.fetch(&[id.to_string()], Some(&mut options), None);
                Ok(())
            }
            (r, _) => r,
        };
        let Err(e) = result else {
            return Ok(());
        };

        if let Some(size) = too_large.get() {
            return Err(Error::RepositoryTooLarge {
                url: url.to_string(),
                size,
                limit,
            });
        }
        if let Some(check) = host_key_refusal.into_inner() {
            return Err(Error::HostKey {
                url: url.to_string(),
                check,
            });
        }
        if let Some(reason) = auth_state.missing.into_inner() {
            return Err(Error::Auth {
                url: url.to_string(),
                reason,
            });
        }
        if auth_state.rejected.get()
            || (auth_state.offered.get() && e.code() == git2::ErrorCode::Auth)
            || (matches!(source.auth, Auth::Bearer { .. }) && is_unauthorized(&e))
        {
            return Err(Error::Auth {
                url: url.to_string(),
                reason: "the server rejected the credentials".into(),
            });
        }
        let message = scrub(e.message(), source);
        if let GitRef::Branch(_) | GitRef::Tag(_) = &source.reference
            && (message.contains("couldn't find remote ref") || message.contains("not found"))
            && !message.contains("repository")
        {
            return Err(Error::RefNotFound {
                url: url.to_string(),
                reference: source.reference.clone(),
            });
        }
        Err(Error::Fetch {
            url: url.to_string(),
            message,
        })
    }
}

fn is_unauthorized(e: &git2::Error) -> bool {
    e.code() == git2::ErrorCode::Auth
        || e.message().contains("401")
        || e.message().contains("authentication")
}

/// Removes any secret of `source` from a message coming from libgit2 or the server.
fn scrub(message: &str, source: &GitSource) -> String {
    let mut out = message.to_string();
    let mut secrets = source.auth.secrets();
    if let Some(pw) = url_password(&source.url) {
        secrets.push(pw);
    }
    for secret in secrets {
        out = out.replace(secret, "***");
    }
    out.replace(&source.url, &redact_url(&source.url))
}

/// The credential callback. libgit2 calls it again after a refusal, so a second request for the
/// same kind of credential means the server said no.
fn credentials(
    auth: &Auth,
    user_in_target: Option<&str>,
    username_from_url: Option<&str>,
    allowed: CredentialType,
    state: &AuthState,
) -> std::result::Result<Cred, git2::Error> {
    let refuse = |state: &AuthState| {
        state.rejected.set(true);
        Err(git2::Error::from_str("credentials were rejected"))
    };
    match auth {
        Auth::Basic { username, password }
            if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) =>
        {
            if state.offered.replace(true) {
                return refuse(state);
            }
            Cred::userpass_plaintext(username, password.expose())
        }
        Auth::SshKey {
            username,
            private_key,
            passphrase,
            ..
        } => {
            let user = if username.is_empty() {
                username_from_url.or(user_in_target).unwrap_or("git")
            } else {
                username.as_str()
            };
            if allowed.contains(CredentialType::USERNAME) {
                return Cred::username(user);
            }
            if allowed.contains(CredentialType::SSH_KEY) {
                if state.offered.replace(true) {
                    return refuse(state);
                }
                return Cred::ssh_key_from_memory(
                    user,
                    None,
                    private_key.expose(),
                    passphrase.as_ref().map(|p| p.expose()),
                );
            }
            *state.missing.borrow_mut() = Some(format!(
                "the server does not accept SSH keys (it asked for {allowed:?})"
            ));
            Err(git2::Error::from_str("unsupported credential type"))
        }
        Auth::Bearer { .. } => {
            // The token went as a header and the server still asks: it refused the token.
            state.offered.set(true);
            refuse(state)
        }
        Auth::None => {
            *state.missing.borrow_mut() =
                Some("the server requires credentials and none are configured".into());
            Err(git2::Error::from_str("no credentials configured"))
        }
        Auth::Basic { .. } => {
            *state.missing.borrow_mut() = Some(format!(
                "the server does not accept a user name and password (it asked for {allowed:?})"
            ));
            Err(git2::Error::from_str("unsupported credential type"))
        }
    }
}

fn open_or_init(path: &Path) -> std::result::Result<Repository, git2::Error> {
    match Repository::open_bare(path) {
        Ok(repo) => Ok(repo),
        Err(_) if !path.exists() => Repository::init_bare(path),
        Err(e) => Err(e),
    }
}

fn parse_commit_id(id: &str) -> Result<Oid> {
    if id.len() != 40 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::InvalidCommitId { id: id.to_string() });
    }
    Oid::from_str(id).map_err(|_| Error::InvalidCommitId { id: id.to_string() })
}

/// Total size of the files under `path` (the cached repository), in bytes.
fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// A reference resolved in the cache.
struct Resolved {
    /// Branch or tag name (for semver, the chosen tag).
    name: Option<String>,
    commit: Oid,
    /// The annotated tag object, when the reference is a tag that has one.
    tag_object: Option<Oid>,
}

fn resolve(repo: &Repository, reference: &GitRef, url: &str) -> Result<Resolved> {
    let not_found = || Error::RefNotFound {
        url: url.to_string(),
        reference: reference.clone(),
    };
    let resolve_err = |message: String| Error::Resolve {
        url: url.to_string(),
        reference: reference.clone(),
        message,
    };
    match reference {
        GitRef::Branch(b) => {
            let r = repo
                .find_reference(&format!("refs/heads/{b}"))
                .map_err(|_| not_found())?;
            let commit = r
                .peel_to_commit()
                .map_err(|e| resolve_err(e.message().to_string()))?;
            Ok(Resolved {
                name: Some(b.clone()),
                commit: commit.id(),
                tag_object: None,
            })
        }
        GitRef::Tag(t) => resolve_tag(repo, t).map_err(|e| match e {
            None => not_found(),
            Some(m) => resolve_err(m),
        }),
        GitRef::Semver(range) => {
            let req = SemverRange::parse(range)?;
            let mut best: Option<(semver::Version, String)> = None;
            let names = repo
                .tag_names(None)
                .map_err(|e| resolve_err(e.message().to_string()))?;
            for name in names.iter() {
                let Ok(Some(name)) = name else { continue };
                let Ok(version) = semver::Version::parse(name.strip_prefix('v').unwrap_or(name))
                else {
                    continue;
                };
                if req.matches(&version) && best.as_ref().is_none_or(|(b, _)| version > *b) {
                    best = Some((version, name.to_string()));
                }
            }
            let Some((_, name)) = best else {
                return Err(Error::RefNotFound {
                    url: url.to_string(),
                    reference: reference.clone(),
                });
            };
            resolve_tag(repo, &name)
                .map_err(|e| resolve_err(e.unwrap_or_else(|| format!("tag {name} vanished"))))
        }
        GitRef::Commit(id) => {
            let oid = parse_commit_id(id)?;
            repo.find_commit(oid).map_err(|_| not_found())?;
            Ok(Resolved {
                name: None,
                commit: oid,
                tag_object: None,
            })
        }
    }
}

/// Resolves tag `name`; `Err(None)` when it does not exist.
fn resolve_tag(repo: &Repository, name: &str) -> std::result::Result<Resolved, Option<String>> {
    let r = repo
        .find_reference(&format!("refs/tags/{name}"))
        .map_err(|_| None)?;
    let target = r
        .target()
        .ok_or_else(|| Some(format!("tag {name} is symbolic")))?;
    let tag_object = repo.find_tag(target).ok().map(|t| t.id());
    let commit = r.peel_to_commit().map_err(|e| {
        Some(format!(
            "tag {name} does not point at a commit: {}",
            e.message()
        ))
    })?;
    Ok(Resolved {
        name: Some(name.to_string()),
        commit: commit.id(),
        tag_object,
    })
}

/// A semver range in the syntax Flux and Helm users write: comparators separated by spaces or
/// commas (`>=1.2.0 <2.0.0`, `>= 1.2, < 2`), alternatives separated by `||`.
#[derive(Debug)]
struct SemverRange(Vec<semver::VersionReq>);

impl SemverRange {
    fn parse(range: &str) -> Result<Self> {
        let mut alternatives = Vec::new();
        for alternative in range.split("||") {
            // Glue operators written apart from their version (`>= 1.2`) back on, then join
            // the comparators with the commas the semver crate wants.
            let mut comparators: Vec<String> = Vec::new();
            let mut pending_op = String::new();
            for token in alternative
                .split([' ', ',', '\t'])
                .filter(|t| !t.is_empty())
            {
                if token.chars().all(|c| "<>=~^".contains(c)) {
                    pending_op.push_str(token);
                } else {
                    comparators.push(format!("{pending_op}{token}"));
                    pending_op.clear();
                }
            }
            let text = comparators.join(", ");
            let req = semver::VersionReq::parse(if text.is_empty() { "*" } else { &text })
                .map_err(|source| Error::InvalidRange {
                    range: range.to_string(),
                    source,
                })?;
            alternatives.push(req);
        }
        Ok(Self(alternatives))
    }

    fn matches(&self, version: &semver::Version) -> bool {
        self.0.iter().any(|r| r.matches(version))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> semver::Version {
        semver::Version::parse(s).unwrap()
    }

    #[test]
    fn semver_ranges_accept_flux_syntax() {
        let r = SemverRange::parse(">=1.2.0 <2.0.0").unwrap();
        assert!(r.matches(&v("1.2.0")) && r.matches(&v("1.9.9")));
        assert!(!r.matches(&v("2.0.0")) && !r.matches(&v("1.1.9")));
        let r = SemverRange::parse(">= 1.2, < 2").unwrap();
        assert!(r.matches(&v("1.5.0")) && !r.matches(&v("2.1.0")));
        let r = SemverRange::parse("~1.2 || >=3").unwrap();
        assert!(r.matches(&v("1.2.7")) && r.matches(&v("3.1.0")) && !r.matches(&v("2.0.0")));
        let err = SemverRange::parse(">=banana").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid semver range \">=banana\""),
            "{err}"
        );
    }

    #[test]
    fn commit_ids_must_be_full() {
        assert!(parse_commit_id("abc123").is_err());
        assert!(parse_commit_id(&"g".repeat(40)).is_err());
        assert!(parse_commit_id(&"a".repeat(40)).is_ok());
    }

    #[test]
    fn repo_paths_are_distinct_and_free_of_secrets() {
        let cache = GitCache::new(tempfile::tempdir().unwrap().path().join("c")).unwrap();
        let a = cache.repo_path("https://bot:s3cret@git.example.com/org/fleet.git");
        let b = cache.repo_path("https://git.example.com/org/fleet.git");
        assert_ne!(a, b);
        let name = a.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with("fleet-") && name.ends_with(".git"),
            "{name}"
        );
        assert!(!name.contains("s3cret"));
    }
}
