//! flotilla's render engine: from a source tree and a cluster's variables to the exact, ordered
//! list of Kubernetes objects that cluster must run.
//!
//! The engine is pure: it does no network I/O, writes nothing, and reads only through a
//! [`Tree`], which never yields anything outside the source root.
//!
//! [`render`] looks at the directory it is given: with a `kustomization.yaml`,
//! `kustomization.yml` or `Kustomization` file it runs flotilla's native Kustomize engine, whose
//! output matches `kubectl kustomize` (v5.5); without one it reads the directory as plain YAML.
//! Post-build `${var}` substitution then runs on every object when variables are given.
//! [`to_yaml`] prints the result as the `---`-separated stream `kubectl kustomize` prints.
//!
//! To render many paths of one tree (every cluster of a fleet from one Git snapshot), use a
//! [`Renderer`]: it gives the same objects as [`render`] but builds each kustomization that
//! other kustomizations include (`apps/base`, `infrastructure/`, ...) once, not once per
//! cluster.

pub mod patch;
pub mod subst;
pub mod tree;

mod kustomize;
mod plain;
mod source;
mod yaml;

use std::collections::BTreeMap;

pub use kustomize::fieldspec::is_cluster_scoped_kind;
pub use tree::{DirEntry, EntryKind, FsTree, RelPath, Tree, TreeError};

/// Post-build substitution variables (`${name}` → value).
pub type Variables = BTreeMap<String, String>;

/// Bounds on what one render may read.
#[derive(Debug, Clone)]
pub struct Options {
    /// Most files one render may read.
    pub max_files: usize,
    /// Largest file one render may read, in bytes.
    pub max_file_bytes: u64,
    /// Deepest nesting of kustomizations (and of directories for plain YAML).
    pub max_depth: usize,
    /// Whether remote resources (URLs, Git references) may be used. Even when allowed, this
    /// engine does not fetch them and reports so: rendering stays free of network I/O.
    pub allow_remote: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_files: 20_000,
            max_file_bytes: 16 * 1024 * 1024,
            max_depth: 32,
            allow_remote: false,
        }
    }
}

/// Why a render failed. Every variant names the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The source tree could not be read (missing path, symlink escape, I/O failure).
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// A file is not valid YAML.
    #[error("{file}:{line}: invalid YAML: {message}")]
    Yaml {
        /// The file.
        file: RelPath,
        /// The 1-based line of the problem.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A kustomization (or one of its entries) has a field flotilla does not know.
    #[error("{file}:{line}: unknown field {field:?} in {context}")]
    UnknownField {
        /// The kustomization file.
        file: RelPath,
        /// The 1-based line of the document holding the field.
        line: usize,
        /// The field's name (dotted path for nested entries).
        field: String,
        /// Where the field was found (e.g. `kustomization`, `configMapGenerator entry`).
        context: String,
    },
    /// A known Kustomize field that this engine does not implement.
    #[error("{file}: kustomization field {field:?} is not supported by flotilla's renderer")]
    Unsupported {
        /// The kustomization file.
        file: RelPath,
        /// The field.
        field: String,
    },
    /// A file's content is well-formed YAML but not what it must be.
    #[error("{file}: {message}")]
    Invalid {
        /// The file.
        file: RelPath,
        /// What is wrong.
        message: String,
    },
    /// A kustomization refers to a file or directory that does not exist.
    #[error("{file}: {what} {entry:?} does not exist")]
    Missing {
        /// The kustomization file.
        file: RelPath,
        /// What kind of entry (`resource`, `component`, `patch`, ...).
        what: &'static str,
        /// The entry as written.
        entry: String,
    },
    /// A kustomization refers to a path outside the source root.
    #[error("{file}: {what} {entry:?} is outside the source root")]
    OutsideRoot {
        /// The kustomization file.
        file: RelPath,
        /// What kind of entry.
        what: &'static str,
        /// The entry as written.
        entry: String,
    },
    /// A kustomization refers to a remote resource (URL or Git reference).
    #[error("{file}: remote {what} {entry:?} refused: {reason}")]
    Remote {
        /// The kustomization file.
        file: RelPath,
        /// What kind of entry.
        what: &'static str,
        /// The entry as written.
        entry: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// Kustomizations include each other in a cycle.
    #[error("kustomization cycle: {chain}")]
    Cycle {
        /// The cycle, as `a -> b -> a`.
        chain: String,
    },
    /// Kustomizations nest deeper than [`Options::max_depth`].
    #[error("{file}: nesting deeper than the limit of {limit}")]
    TooDeep {
        /// The kustomization or directory that went over the limit.
        file: RelPath,
        /// The limit.
        limit: usize,
    },
    /// The render read more files than [`Options::max_files`].
    #[error("{file}: reading more than the limit of {limit} files")]
    TooManyFiles {
        /// The file that went over the limit.
        file: RelPath,
        /// The limit.
        limit: usize,
    },
    /// A patch selects no resource.
    #[error("{file}: patch {patch} matches no resource")]
    PatchNoMatch {
        /// The kustomization file.
        file: RelPath,
        /// The patch (file name, or target/inline description).
        patch: String,
    },
    /// Post-build substitution failed on an object.
    #[error("substituting variables in {object}")]
    Subst {
        /// The object, as `Kind namespace/name`.
        object: String,
        /// The cause.
        #[source]
        source: subst::Error,
    },
    /// Two resources end up with the same kind, namespace and name.
    #[error("{file}: {message}")]
    Conflict {
        /// The kustomization file.
        file: RelPath,
        /// What collides.
        message: String,
    },
}

/// Renders `path` of `tree`: a Kustomize build when the directory holds a kustomization, the
/// directory's YAML files otherwise, then `${var}` substitution when `vars` is not empty.
///
/// Rendering several paths of the same tree is faster with a [`Renderer`].
pub fn render(
    tree: &dyn Tree,
    path: &RelPath,
    vars: &Variables,
    opts: &Options,
) -> Result<Vec<serde_json::Value>, Error> {
    render_with(tree, path, vars, opts, &kustomize::BuildCache::default())
}

fn render_with(
    tree: &dyn Tree,
    path: &RelPath,
    vars: &Variables,
    opts: &Options,
    cache: &kustomize::BuildCache,
) -> Result<Vec<serde_json::Value>, Error> {
    let src = source::Source::new(tree, opts);
    let objects = match tree.kind(path)? {
        None => return Err(TreeError::NotFound { path: path.clone() }.into()),
        Some(EntryKind::File) => plain::render_file(&src, path)?,
        Some(EntryKind::Dir) => {
            if kustomize::find_kustomization(&src, path)?.is_some() {
                kustomize::build(&src, path, cache)?
            } else {
                plain::render_dir(&src, path)?
            }
        }
    };
    if !vars.is_empty() {
        substitute(objects, vars)
    } else {
        Ok(objects)
    }
}

/// Renders many paths of one tree, reusing work between them.
///
/// A kustomization included by others as a resource (a base such as `apps/base/web`, or
/// `infrastructure/`) builds to the same resources whichever kustomization includes it; the
/// including kustomization's transformations (namespace, prefix, labels, patches, ...) apply to
/// a copy afterwards. A `Renderer` keeps each such build and reuses it, so rendering 200
/// cluster overlays of one snapshot builds every shared base once. Results are identical to
/// [`render`]'s, errors and limits included: a reused build still counts its files against
/// [`Options::max_files`] and its nesting against [`Options::max_depth`]; only failed builds
/// are never kept.
///
/// The tree must not change while the renderer is in use: make one `Renderer` per snapshot
/// (per Git revision) and drop it with the snapshot. It is `Send + Sync`; renders may run on
/// several threads at once. Memory is bounded (past 200,000 cached objects nothing more is
/// kept).
///
/// ```no_run
/// use flotilla_render::{FsTree, Options, RelPath, Renderer, Variables};
///
/// let tree = FsTree::new("fleet")?;
/// let renderer = Renderer::new(tree, Options::default());
/// for cluster in ["clusters/eu-1", "clusters/us-1"] {
///     let objects = renderer.render(&RelPath::new(cluster)?, &Variables::new())?;
///     print!("{}", flotilla_render::to_yaml(&objects));
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Renderer<T> {
    tree: T,
    opts: Options,
    cache: kustomize::BuildCache,
}

impl<T: Tree> Renderer<T> {
    /// A renderer of `tree` (owned, or a reference: `&T` is a [`Tree`] too) with limits `opts`.
    pub fn new(tree: T, opts: Options) -> Self {
        Self {
            tree,
            opts,
            cache: kustomize::BuildCache::default(),
        }
    }

    /// Renders `path` as [`render`] does, reusing builds kept from earlier renders.
    pub fn render(
        &self,
        path: &RelPath,
        vars: &Variables,
    ) -> Result<Vec<serde_json::Value>, Error> {
        render_with(&self.tree, path, vars, &self.opts, &self.cache)
    }

    /// The tree being rendered.
    pub fn tree(&self) -> &T {
        &self.tree
    }

    /// The limits every render uses.
    pub fn options(&self) -> &Options {
        &self.opts
    }
}

impl<T> std::fmt::Debug for Renderer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renderer")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

fn substitute(
    mut objects: Vec<serde_json::Value>,
    vars: &Variables,
) -> Result<Vec<serde_json::Value>, Error> {
    for obj in &mut objects {
        let describe = |o: &serde_json::Value| {
            let s = |p: &str| {
                o.pointer(p)
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_string()
            };
            let ns = s("/metadata/namespace");
            if ns.is_empty() {
                format!("{} {}", s("/kind"), s("/metadata/name"))
            } else {
                format!("{} {}/{}", s("/kind"), ns, s("/metadata/name"))
            }
        };
        let object = describe(obj);
        subst::substitute(obj, vars).map_err(|source| Error::Subst { object, source })?;
    }
    Ok(objects)
}

/// Prints objects as the `---`-separated YAML stream `kubectl kustomize` prints: keys sorted,
/// block style, the same quoting and line folding.
pub fn to_yaml(objects: &[serde_json::Value]) -> String {
    yaml::to_yaml(objects)
}
