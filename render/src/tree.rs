//! The read-only, sandboxed view of a source tree that rendering works on.
//!
//! The renderer never touches the filesystem or Git directly: it reads through [`Tree`], so the
//! same engine renders a directory on disk ([`FsTree`], used by `flotilla render` and the
//! conformance tests) and a Git snapshot (implemented by the hub's source module over a git2
//! tree, without checking the repository out).
//!
//! Paths given to a [`Tree`] are [`RelPath`]s: relative to the source root, `/`-separated,
//! normalised, never escaping the root. Building a `RelPath` is where `..` escapes and absolute
//! paths are refused; a `Tree` implementation is where symlinks that leave the root are refused.

use std::fmt;
use std::path::{Path, PathBuf};

/// A normalised path inside a source root: no leading `/`, no `.` or `..` components, `/` as
/// separator. The root itself is the empty path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct RelPath(String);

impl RelPath {
    /// The source root.
    pub fn root() -> Self {
        Self(String::new())
    }

    /// Parses a path relative to the root. Fails if it is absolute or climbs above the root.
    pub fn new(path: &str) -> Result<Self, TreeError> {
        Self::root().join(path)
    }

    /// Resolves `rel` (which may contain `.` and `..`) against this directory. Fails if the
    /// result would be outside the root, or if `rel` is absolute or a URL.
    pub fn join(&self, rel: &str) -> Result<Self, TreeError> {
        if rel.starts_with('/') || rel.contains("://") {
            return Err(TreeError::OutsideRoot {
                path: rel.to_string(),
            });
        }
        let mut parts: Vec<&str> = self.0.split('/').filter(|p| !p.is_empty()).collect();
        for part in rel.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    if parts.pop().is_none() {
                        return Err(TreeError::OutsideRoot {
                            path: if self.0.is_empty() {
                                rel.to_string()
                            } else {
                                format!("{}/{rel}", self.0)
                            },
                        });
                    }
                }
                p => parts.push(p),
            }
        }
        Ok(Self(parts.join("/")))
    }

    /// The path as a string (`""` for the root).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The parent directory, or `None` for the root.
    pub fn parent(&self) -> Option<Self> {
        if self.0.is_empty() {
            return None;
        }
        Some(Self(
            self.0
                .rsplit_once('/')
                .map(|(p, _)| p.to_string())
                .unwrap_or_default(),
        ))
    }

    /// The last component (`""` for the root).
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or_default()
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str(".")
        } else {
            f.write_str(&self.0)
        }
    }
}

/// What a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file (or a symlink to one inside the root).
    File,
    /// A directory (or a symlink to one inside the root).
    Dir,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's name within its directory.
    pub name: String,
    /// File or directory, after following symlinks that stay inside the root.
    pub kind: EntryKind,
}

/// Errors reading a source tree.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// The path is absolute, a URL, or climbs above the source root.
    #[error("path {path} is outside the source root")]
    OutsideRoot {
        /// The path as written.
        path: String,
    },
    /// A symlink inside the tree points outside the source root.
    #[error("{path} is a symlink that leaves the source root")]
    SymlinkEscape {
        /// The symlink.
        path: RelPath,
    },
    /// Nothing exists at the path.
    #[error("{path} does not exist")]
    NotFound {
        /// The missing path.
        path: RelPath,
    },
    /// The file is larger than the configured limit.
    #[error("{path} is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// The file.
        path: RelPath,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Reading failed.
    #[error("reading {path}")]
    Io {
        /// The path being read.
        path: RelPath,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The backing store (for example a Git object database) failed.
    #[error("reading {path}: {message}")]
    Backend {
        /// The path being read.
        path: RelPath,
        /// What the backend said.
        message: String,
    },
}

/// A read-only source tree. Implementations must refuse symlinks that leave the root.
pub trait Tree: Send + Sync {
    /// What `path` names, or `None` if nothing exists there.
    fn kind(&self, path: &RelPath) -> Result<Option<EntryKind>, TreeError>;

    /// The entries of directory `path`, sorted by name (byte order).
    fn list(&self, path: &RelPath) -> Result<Vec<DirEntry>, TreeError>;

    /// The contents of file `path`.
    fn read(&self, path: &RelPath) -> Result<Vec<u8>, TreeError>;
}

impl<T: Tree + ?Sized> Tree for &T {
    fn kind(&self, path: &RelPath) -> Result<Option<EntryKind>, TreeError> {
        (**self).kind(path)
    }

    fn list(&self, path: &RelPath) -> Result<Vec<DirEntry>, TreeError> {
        (**self).list(path)
    }

    fn read(&self, path: &RelPath) -> Result<Vec<u8>, TreeError> {
        (**self).read(path)
    }
}

impl<T: Tree + ?Sized> Tree for std::sync::Arc<T> {
    fn kind(&self, path: &RelPath) -> Result<Option<EntryKind>, TreeError> {
        (**self).kind(path)
    }

    fn list(&self, path: &RelPath) -> Result<Vec<DirEntry>, TreeError> {
        (**self).list(path)
    }

    fn read(&self, path: &RelPath) -> Result<Vec<u8>, TreeError> {
        (**self).read(path)
    }
}

/// A directory on disk seen as a [`Tree`].
#[derive(Debug, Clone)]
pub struct FsTree {
    root: PathBuf,
    /// Canonical paths of directories already resolved (and checked to be inside the root),
    /// so that reading a file costs one `lstat` rather than a `readlink` per component.
    dirs: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<RelPath, PathBuf>>>,
}

impl FsTree {
    /// Uses `root` (which must exist) as the source root.
    pub fn new(root: impl AsRef<Path>) -> std::io::Result<Self> {
        Ok(Self {
            root: std::fs::canonicalize(root)?,
            dirs: Default::default(),
        })
    }

    /// The canonical root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Maps `path` to disk, refusing any symlink on the way that resolves outside the root.
    fn resolve(&self, path: &RelPath) -> Result<Option<PathBuf>, TreeError> {
        Ok(self.resolve_meta(path)?.map(|(p, _)| p))
    }

    /// Canonicalises `path` (checking it stays inside the root); `None` if it does not exist.
    fn canonical(&self, path: &RelPath) -> Result<Option<PathBuf>, TreeError> {
        let full = self.root.join(path.as_str());
        match std::fs::canonicalize(&full) {
            Ok(real) => {
                if real.starts_with(&self.root) {
                    Ok(Some(real))
                } else {
                    Err(TreeError::SymlinkEscape { path: path.clone() })
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(TreeError::Io {
                path: path.clone(),
                source,
            }),
        }
    }

    /// The canonical directory `dir`, cached.
    fn canonical_dir(&self, dir: &RelPath) -> Result<Option<PathBuf>, TreeError> {
        let cached = self
            .dirs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(dir)
            .cloned();
        if cached.is_some() {
            return Ok(cached);
        }
        let real = self.canonical(dir)?;
        if let Some(r) = &real {
            self.dirs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(dir.clone(), r.clone());
        }
        Ok(real)
    }

    /// Resolves `path` and reads the metadata of what it names (following a symlink that
    /// stays inside the root).
    fn resolve_meta(
        &self,
        path: &RelPath,
    ) -> Result<Option<(PathBuf, std::fs::Metadata)>, TreeError> {
        let io = |source| TreeError::Io {
            path: path.clone(),
            source,
        };
        let Some(parent) = path.parent() else {
            let meta = std::fs::metadata(&self.root).map_err(io)?;
            return Ok(Some((self.root.clone(), meta)));
        };
        let Some(dir) = self.canonical_dir(&parent)? else {
            return Ok(None);
        };
        let full = dir.join(path.file_name());
        let meta = match std::fs::symlink_metadata(&full) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        if !meta.file_type().is_symlink() {
            return Ok(Some((full, meta)));
        }
        let Some(real) = self.canonical(path)? else {
            return Ok(None);
        };
        let meta = std::fs::metadata(&real).map_err(io)?;
        Ok(Some((real, meta)))
    }
}

impl Tree for FsTree {
    fn kind(&self, path: &RelPath) -> Result<Option<EntryKind>, TreeError> {
        let Some((_, meta)) = self.resolve_meta(path)? else {
            return Ok(None);
        };
        Ok(Some(if meta.is_dir() {
            EntryKind::Dir
        } else {
            EntryKind::File
        }))
    }

    fn list(&self, path: &RelPath) -> Result<Vec<DirEntry>, TreeError> {
        let real = self
            .resolve(path)?
            .ok_or_else(|| TreeError::NotFound { path: path.clone() })?;
        let io = |source| TreeError::Io {
            path: path.clone(),
            source,
        };
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(&real).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let child = path.join(&name)?;
            // Symlinks are followed (and checked) by `kind`; dangling ones are skipped.
            if let Some(kind) = self.kind(&child)? {
                entries.push(DirEntry { name, kind });
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    fn read(&self, path: &RelPath) -> Result<Vec<u8>, TreeError> {
        let real = self
            .resolve(path)?
            .ok_or_else(|| TreeError::NotFound { path: path.clone() })?;
        std::fs::read(&real).map_err(|source| TreeError::Io {
            path: path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relpath_normalises_and_refuses_escapes() {
        let base = RelPath::new("apps/base").unwrap();
        assert_eq!(
            base.join("../overlay/./x.yaml").unwrap().as_str(),
            "apps/overlay/x.yaml"
        );
        assert_eq!(base.join("../..").unwrap(), RelPath::root());
        let err = base.join("../../../etc/passwd").unwrap_err();
        assert_eq!(
            err.to_string(),
            "path apps/base/../../../etc/passwd is outside the source root"
        );
        assert!(matches!(
            RelPath::new("/etc/passwd"),
            Err(TreeError::OutsideRoot { .. })
        ));
        assert!(matches!(
            RelPath::new("https://example.com/x"),
            Err(TreeError::OutsideRoot { .. })
        ));
        assert_eq!(base.parent().unwrap().as_str(), "apps");
        assert_eq!(base.file_name(), "base");
        assert_eq!(RelPath::root().to_string(), ".");
    }

    #[test]
    fn fs_tree_lists_sorted_and_refuses_escaping_symlinks() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "x").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("b.yaml"), "b").unwrap();
        std::fs::write(dir.path().join("a.yaml"), "a").unwrap();
        std::os::unix::fs::symlink("a.yaml", dir.path().join("inside-link")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("escape"))
            .unwrap();
        let tree = FsTree::new(dir.path()).unwrap();

        let read = tree.read(&RelPath::new("inside-link").unwrap()).unwrap();
        assert_eq!(read, b"a");
        let err = tree.read(&RelPath::new("escape").unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "escape is a symlink that leaves the source root"
        );
        assert!(matches!(
            tree.list(&RelPath::root()),
            Err(TreeError::SymlinkEscape { .. })
        ));

        std::fs::remove_file(dir.path().join("escape")).unwrap();
        let names: Vec<_> = tree
            .list(&RelPath::root())
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.kind))
            .collect();
        assert_eq!(
            names,
            vec![
                ("a.yaml".into(), EntryKind::File),
                ("b.yaml".into(), EntryKind::File),
                ("inside-link".into(), EntryKind::File),
                ("sub".into(), EntryKind::Dir),
            ]
        );
        assert!(
            tree.kind(&RelPath::new("missing").unwrap())
                .unwrap()
                .is_none()
        );
    }
}
