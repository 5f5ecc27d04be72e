//! An immutable, resolved revision of a source, read straight from the object database.

use std::collections::VecDeque;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use flotilla_render::{DirEntry, EntryKind, RelPath, Tree, TreeError};
use git2::{ObjectType, Oid, Repository};

use super::GitRef;

/// Symlink hops allowed while resolving one path (Linux allows 40).
const MAX_SYMLINK_HOPS: usize = 40;

const MODE_TREE: i32 = 0o040000;
const MODE_LINK: i32 = 0o120000;
const MODE_COMMIT: i32 = 0o160000;

/// One revision of a source: which commit, which tree, and how it was obtained. Cheap to clone;
/// it implements [`Tree`] by reading Git objects from the cache, without a checkout.
///
/// The objects it reads are never removed from the cache while the hub runs (fetches only add
/// objects), so a snapshot stays readable after newer fetches.
#[derive(Clone)]
pub struct Snapshot {
    inner: Arc<Inner>,
}

struct Inner {
    source: String,
    url: String,
    reference: GitRef,
    resolved_ref: Option<String>,
    commit: Oid,
    tree: Oid,
    verified_by: Option<String>,
    fetched_at: SystemTime,
    repo_path: PathBuf,
    max_file_bytes: u64,
    /// W3C trace context of the fetch that found this revision (set only when traces are
    /// exported), so that its renders, publishes and applies join the fetch's trace.
    traceparent: std::sync::OnceLock<String>,
    /// Open handles to the cached repository (git2 handles are `Send` but not `Sync`, so each
    /// reader takes one, and returns it afterwards).
    pool: Mutex<Vec<Repository>>,
}

/// Everything a snapshot records about how it was made.
#[derive(Debug)]
pub(crate) struct SnapshotParts {
    pub source: String,
    pub url: String,
    pub reference: GitRef,
    pub resolved_ref: Option<String>,
    pub commit: Oid,
    pub tree: Oid,
    pub verified_by: Option<String>,
    pub repo_path: PathBuf,
    pub max_file_bytes: u64,
}

impl Snapshot {
    pub(crate) fn new(parts: SnapshotParts, repo: Repository) -> Self {
        Self {
            inner: Arc::new(Inner {
                source: parts.source,
                url: parts.url,
                reference: parts.reference,
                resolved_ref: parts.resolved_ref,
                commit: parts.commit,
                tree: parts.tree,
                verified_by: parts.verified_by,
                fetched_at: SystemTime::now(),
                repo_path: parts.repo_path,
                max_file_bytes: parts.max_file_bytes,
                traceparent: std::sync::OnceLock::new(),
                pool: Mutex::new(vec![repo]),
            }),
        }
    }

    /// A snapshot of `revision` (anything `git rev-parse` understands: a commit, `HEAD~1`, a
    /// branch or tag, or a Flux revision `main@sha1:<commit>`) in the local repository that
    /// contains `path`, read from its object database as the hub reads its cache. Used by
    /// `flotilla diff` to render a revision exactly as the hub does.
    pub fn open_local(path: &Path, revision: &str, max_file_bytes: u64) -> super::Result<Self> {
        let repo = Repository::discover(path).map_err(|source| super::Error::Repository {
            url: path.display().to_string(),
            path: path.to_owned(),
            source,
        })?;
        // Flux-style revisions name the commit after `sha1:`.
        let spec = revision.rsplit_once("sha1:").map_or(revision, |(_, c)| c);
        let commit = repo
            .revparse_single(spec)
            .and_then(|o| o.peel_to_commit())
            .map_err(|source| super::Error::Revision {
                path: path.to_owned(),
                revision: revision.to_owned(),
                source,
            })?;
        let (commit_id, tree) = (commit.id(), commit.tree_id());
        drop(commit);
        let repo_path = repo.path().to_owned();
        Ok(Self::new(
            SnapshotParts {
                source: "local".to_owned(),
                url: path.display().to_string(),
                reference: super::GitRef::Commit(commit_id.to_string()),
                resolved_ref: None,
                commit: commit_id,
                tree,
                verified_by: None,
                repo_path,
                max_file_bytes,
            },
            repo,
        ))
    }

    /// The W3C trace context of the fetch that found this revision, when traces are exported.
    pub fn traceparent(&self) -> Option<&str> {
        self.inner.traceparent.get().map(String::as_str)
    }

    /// Records the trace context of the fetch that found this revision (first one wins).
    pub(crate) fn set_traceparent(&self, traceparent: String) {
        let _ = self.inner.traceparent.set(traceparent);
    }

    /// The source's name.
    pub fn source(&self) -> &str {
        &self.inner.source
    }

    /// The source URL, password removed.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// The reference as configured.
    pub fn reference(&self) -> &GitRef {
        &self.inner.reference
    }

    /// The branch or tag name the reference resolved to (for a semver range, the chosen tag);
    /// `None` for an exact commit.
    pub fn resolved_ref(&self) -> Option<&str> {
        self.inner.resolved_ref.as_deref()
    }

    /// The commit id, 40 hexadecimal digits.
    pub fn commit(&self) -> String {
        self.inner.commit.to_string()
    }

    /// The id of the commit's root tree.
    pub fn tree_id(&self) -> String {
        self.inner.tree.to_string()
    }

    /// The revision as Flux writes it: `main@sha1:<commit>`, `v1.2.0@sha1:<commit>`, or
    /// `sha1:<commit>` for an exact commit.
    pub fn revision(&self) -> String {
        match &self.inner.resolved_ref {
            Some(r) => format!("{r}@sha1:{}", self.inner.commit),
            None => format!("sha1:{}", self.inner.commit),
        }
    }

    /// Which trusted key verified this revision (`None` when verification is off).
    pub fn verified_by(&self) -> Option<&str> {
        self.inner.verified_by.as_deref()
    }

    /// When the fetch that produced this snapshot finished.
    pub fn fetched_at(&self) -> SystemTime {
        self.inner.fetched_at
    }

    /// The cached bare repository this snapshot reads from.
    pub fn cache_path(&self) -> &Path {
        &self.inner.repo_path
    }

    /// Runs `f` with a repository handle from the pool (opening another one if all are in use).
    fn with_repo<T>(
        &self,
        path: &RelPath,
        f: impl FnOnce(&Repository) -> Result<T, TreeError>,
    ) -> Result<T, TreeError> {
        let taken = self.inner.pool.lock().ok().and_then(|mut p| p.pop());
        let repo = match taken {
            Some(repo) => repo,
            None => Repository::open_bare(&self.inner.repo_path).map_err(|e| backend(path, e))?,
        };
        let result = f(&repo);
        if let Ok(mut pool) = self.inner.pool.lock() {
            pool.push(repo);
        }
        result
    }

    /// Follows `path` from the root tree, resolving symlinks that stay inside the root.
    /// `Ok(None)` when nothing is there (including dangling symlinks and submodules).
    fn resolve(&self, repo: &Repository, path: &RelPath) -> Result<Option<Found>, TreeError> {
        let root = repo
            .find_tree(self.inner.tree)
            .map_err(|e| backend(path, e))?;
        let mut pending: VecDeque<String> = components(path.as_str()).collect();
        let mut dir: Vec<String> = Vec::new();
        let mut tree = root.clone();
        let mut hops = 0;
        while let Some(name) = pending.pop_front() {
            let (id, mode) = match tree.get_name(&name) {
                Some(entry) => (entry.id(), entry.filemode()),
                None => return Ok(None),
            };
            match mode {
                MODE_TREE => {
                    tree = repo.find_tree(id).map_err(|e| backend(path, e))?;
                    dir.push(name);
                }
                MODE_LINK => {
                    hops += 1;
                    let mut link_path = dir.clone();
                    link_path.push(name);
                    let link = RelPath::new(&link_path.join("/"))?;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(TreeError::Backend {
                            path: path.clone(),
                            message: format!("too many levels of symbolic links at {link}"),
                        });
                    }
                    let blob = repo.find_blob(id).map_err(|e| backend(path, e))?;
                    let target = String::from_utf8_lossy(blob.content()).into_owned();
                    let base = RelPath::new(&dir.join("/"))?;
                    let resolved = base
                        .join(&target)
                        .map_err(|_| TreeError::SymlinkEscape { path: link })?;
                    let mut next: VecDeque<String> = components(resolved.as_str()).collect();
                    next.extend(pending.drain(..));
                    pending = next;
                    dir.clear();
                    tree = root.clone();
                }
                MODE_COMMIT => return Ok(None),
                _ => {
                    // A regular or executable file: it must be the last component.
                    if !pending.is_empty() {
                        return Ok(None);
                    }
                    dir.push(name);
                    return Ok(Some(Found::File {
                        id,
                        real: dir.join("/"),
                    }));
                }
            }
        }
        Ok(Some(Found::Dir(tree.id())))
    }
}

enum Found {
    Dir(Oid),
    File { id: Oid, real: String },
}

fn components(path: &str) -> impl Iterator<Item = String> + '_ {
    path.split('/')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
}

fn backend(path: &RelPath, e: git2::Error) -> TreeError {
    TreeError::Backend {
        path: path.clone(),
        message: e.message().to_string(),
    }
}

impl Tree for Snapshot {
    fn kind(&self, path: &RelPath) -> Result<Option<EntryKind>, TreeError> {
        self.with_repo(path, |repo| {
            Ok(self.resolve(repo, path)?.map(|found| match found {
                Found::Dir(_) => EntryKind::Dir,
                Found::File { .. } => EntryKind::File,
            }))
        })
    }

    fn list(&self, path: &RelPath) -> Result<Vec<DirEntry>, TreeError> {
        self.with_repo(path, |repo| {
            let id = match self.resolve(repo, path)? {
                Some(Found::Dir(id)) => id,
                Some(Found::File { .. }) => {
                    return Err(TreeError::Backend {
                        path: path.clone(),
                        message: "not a directory".into(),
                    });
                }
                None => return Err(TreeError::NotFound { path: path.clone() }),
            };
            let tree = repo.find_tree(id).map_err(|e| backend(path, e))?;
            let mut entries = Vec::with_capacity(tree.len());
            for entry in tree.iter() {
                let name = String::from_utf8_lossy(entry.name_bytes()).into_owned();
                let kind = match entry.filemode() {
                    MODE_TREE => Some(EntryKind::Dir),
                    MODE_COMMIT => None,
                    MODE_LINK => {
                        let child = path.join(&name)?;
                        self.resolve(repo, &child)?.map(|f| match f {
                            Found::Dir(_) => EntryKind::Dir,
                            Found::File { .. } => EntryKind::File,
                        })
                    }
                    _ => Some(EntryKind::File),
                };
                if let Some(kind) = kind {
                    entries.push(DirEntry { name, kind });
                }
            }
            // Git orders trees with directories as if they ended in `/`; the contract is plain
            // byte order.
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(entries)
        })
    }

    fn read(&self, path: &RelPath) -> Result<Vec<u8>, TreeError> {
        self.with_repo(path, |repo| {
            let (id, real) = match self.resolve(repo, path)? {
                Some(Found::File { id, real }) => (id, real),
                Some(Found::Dir(_)) => {
                    return Err(TreeError::Backend {
                        path: path.clone(),
                        message: "is a directory".into(),
                    });
                }
                None => return Err(TreeError::NotFound { path: path.clone() }),
            };
            let odb = repo.odb().map_err(|e| backend(path, e))?;
            let (size, kind) = odb.read_header(id).map_err(|e| backend(path, e))?;
            if kind != ObjectType::Blob {
                return Err(TreeError::Backend {
                    path: path.clone(),
                    message: format!("{real} is a {kind}, not a file"),
                });
            }
            let size = size as u64;
            if size > self.inner.max_file_bytes {
                return Err(TreeError::TooLarge {
                    path: path.clone(),
                    size,
                    limit: self.inner.max_file_bytes,
                });
            }
            let blob = repo.find_blob(id).map_err(|e| backend(path, e))?;
            Ok(blob.content().to_vec())
        })
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("source", &self.inner.source)
            .field("url", &self.inner.url)
            .field("reference", &self.inner.reference)
            .field("revision", &self.revision())
            .field("verified_by", &self.inner.verified_by)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Snapshot {
    /// Two snapshots are equal when they name the same source, URL, reference and commit.
    fn eq(&self, other: &Self) -> bool {
        self.inner.source == other.inner.source
            && self.inner.url == other.inner.url
            && self.inner.reference == other.inner.reference
            && self.inner.commit == other.inner.commit
    }
}
