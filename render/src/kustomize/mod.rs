//! flotilla's native Kustomize engine.
//!
//! The build follows Kustomize v5.5's order so that the output is the same object for object:
//! for each kustomization, resources (recursively), then generators, then components, then the
//! transformers (strategic-merge patches, patches, namespace, prefix, suffix, labels,
//! annotations, JSON 6902 patches, replicas, images). Once, at the top: content-hash suffixes
//! on generated names, name-reference fix-ups, the output order.

pub(crate) mod fieldspec;
mod generators;
mod nameref;
mod order;
mod patches;
mod replacements;
mod resource;
mod transform;
mod types;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::Value;

use crate::source::Source;
use crate::yaml::Doc;
use crate::{EntryKind, Error, RelPath, TreeError};

use resource::Resource;
use types::Kustomization;

/// The file names Kustomize recognises as a kustomization, in its order of preference.
pub(crate) const KUSTOMIZATION_FILES: [&str; 3] =
    ["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// The kustomization file of `dir`, if it has one. Several is an error, as in Kustomize.
pub(crate) fn find_kustomization(
    src: &Source<'_>,
    dir: &RelPath,
) -> Result<Option<RelPath>, Error> {
    let mut found = Vec::new();
    for name in KUSTOMIZATION_FILES {
        let p = dir.join(name)?;
        if src.tree.kind(&p)? == Some(EntryKind::File) {
            found.push(p);
        }
    }
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(Error::Invalid {
            file: dir.clone(),
            message: format!(
                "found multiple kustomization files: {}",
                found
                    .iter()
                    .map(|p| p.file_name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// Kustomizations built as resources of another, kept for reuse by later builds of the same
/// tree: such a build depends only on its directory (and the tree and options it was built
/// with), never on the kustomization that includes it.
#[derive(Default)]
pub(crate) struct BuildCache {
    inner: Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    builds: HashMap<RelPath, Arc<CachedBuild>>,
    /// Objects held by `builds`, to bound the memory the cache takes.
    objects: usize,
}

/// Past this many cached objects, new builds are no longer cached.
const CACHE_MAX_OBJECTS: usize = 200_000;

/// One cached build of a kustomization directory.
struct CachedBuild {
    /// The resources it produced, before any transformation by an including kustomization.
    resources: Vec<Resource>,
    /// Every file it read, to count against [`crate::Options::max_files`] on reuse.
    files: Vec<RelPath>,
    /// How many kustomizations deep it nests, itself included, to check
    /// [`crate::Options::max_depth`] on reuse.
    depth: usize,
}

impl BuildCache {
    fn get(&self, dir: &RelPath) -> Option<Arc<CachedBuild>> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .builds
            .get(dir)
            .cloned()
    }

    fn insert(&self, dir: &RelPath, build: CachedBuild) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let n = build.resources.len().max(1);
        if inner.objects + n > CACHE_MAX_OBJECTS || inner.builds.contains_key(dir) {
            return;
        }
        inner.objects += n;
        inner.builds.insert(dir.clone(), Arc::new(build));
    }
}

/// Runs the Kustomize build of `dir`, reusing and filling `cache`.
pub(crate) fn build(
    src: &Source<'_>,
    dir: &RelPath,
    cache: &BuildCache,
) -> Result<Vec<Value>, Error> {
    let mut b = Builder {
        src,
        stack: Vec::new(),
        cache,
        peaks: Vec::new(),
    };
    let (file, k) = b.load(dir)?;
    if k.kind.as_deref() == Some("Component") {
        return Err(Error::Invalid {
            file,
            message: "a Component cannot be built on its own; list it under `components` of a kustomization".into(),
        });
    }
    let mut ra = Vec::new();
    b.stack.push(dir.clone());
    b.accumulate(dir, &file, &k, &mut ra)?;
    generators::add_hash_suffixes(&mut ra)?;
    nameref::fix(&mut ra).map_err(|message| Error::Invalid {
        file: file.clone(),
        message,
    })?;
    order::sort(&mut ra, k.sort_options.as_ref()).map_err(|message| Error::Invalid {
        file: file.clone(),
        message,
    })?;
    Ok(ra
        .into_iter()
        .map(|mut r| {
            r.normalize_annotations();
            r.obj
        })
        .collect())
}

/// Compiles `pattern`, reusing an earlier compilation (patch targets and image names repeat
/// across overlays). Shared, not cloned: a clone of a `Regex` starts with empty matching
/// caches, which would be rebuilt on every use.
pub(crate) fn regex(pattern: &str) -> Result<Arc<regex::Regex>, regex::Error> {
    use std::sync::OnceLock;
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<regex::Regex>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(r) = cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(pattern)
    {
        return Ok(r.clone());
    }
    let r = Arc::new(regex::Regex::new(pattern)?);
    let mut c = cache.lock().unwrap_or_else(PoisonError::into_inner);
    if c.len() > 4096 {
        c.clear();
    }
    c.insert(pattern.to_string(), r.clone());
    Ok(r)
}

/// The state of one build: the source and the chain of kustomizations being built (for cycle
/// detection).
struct Builder<'s, 'a> {
    src: &'s Source<'a>,
    stack: Vec<RelPath>,
    /// Builds of included kustomizations, shared with other renders.
    cache: &'s BuildCache,
    /// For each build being recorded for the cache: the deepest `stack` it reached.
    peaks: Vec<usize>,
}

/// Whether a resource entry names something remote (URL or Git reference).
fn is_remote(entry: &str) -> bool {
    entry.contains("://")
        || entry.starts_with("git@")
        || entry.starts_with("github.com/")
        || entry.starts_with("gitlab.com/")
        || entry.starts_with("bitbucket.org/")
        || entry.contains("?ref=")
        || entry.contains("?version=")
        || entry.contains(".git//")
}

impl Builder<'_, '_> {
    /// Reads and checks the kustomization of `dir`.
    fn load(&self, dir: &RelPath) -> Result<(RelPath, Kustomization), Error> {
        let file = find_kustomization(self.src, dir)?.ok_or_else(|| Error::Invalid {
            file: dir.clone(),
            message: format!(
                "directory has no kustomization (expected one of {})",
                KUSTOMIZATION_FILES.join(", ")
            ),
        })?;
        let docs = self.src.docs(&file)?;
        let docs: Vec<&Doc> = docs.iter().filter(|d| !d.value.is_null()).collect();
        let doc = match docs.as_slice() {
            [] => {
                return Err(Error::Invalid {
                    file,
                    message: "kustomization is empty".into(),
                });
            }
            [d] => *d,
            _ => {
                return Err(Error::Invalid {
                    file,
                    message: "a kustomization must be a single YAML document".into(),
                });
            }
        };
        let Value::Object(map) = &doc.value else {
            return Err(Error::Invalid {
                file,
                message: format!("line {}: a kustomization must be a mapping", doc.line),
            });
        };
        let text = self.src.read_text(&file)?;
        for (key, value) in map {
            if types::KNOWN_FIELDS.contains(&key.as_str()) {
                continue;
            }
            let line = key_line(&text, key).unwrap_or(doc.line);
            if types::UNSUPPORTED_FIELDS.contains(&key.as_str()) {
                let empty = match value {
                    Value::Null => true,
                    Value::Array(a) => a.is_empty(),
                    Value::Object(o) => o.is_empty(),
                    _ => false,
                };
                if !empty {
                    return Err(Error::Unsupported {
                        file,
                        field: key.clone(),
                    });
                }
                continue;
            }
            return Err(Error::UnknownField {
                file,
                line,
                field: key.clone(),
                context: "kustomization".into(),
            });
        }
        let k = <Kustomization as serde::Deserialize>::deserialize(&doc.value).map_err(|e| {
            Error::Invalid {
                file: file.clone(),
                message: format!("line {}: {e}", doc.line),
            }
        })?;
        if let Some(kind) = &k.kind
            && kind != "Kustomization"
            && kind != "Component"
        {
            return Err(Error::Invalid {
                file,
                message: format!("kind {kind:?} is neither Kustomization nor Component"),
            });
        }
        if !k.build_metadata.is_empty() {
            return Err(Error::Unsupported {
                file,
                field: "buildMetadata".into(),
            });
        }
        Ok((file, k))
    }

    /// Resolves an entry of a kustomization relative to its directory.
    fn entry_path(
        &self,
        file: &RelPath,
        dir: &RelPath,
        what: &'static str,
        entry: &str,
    ) -> Result<RelPath, Error> {
        if is_remote(entry) {
            let reason = if self.src.opts.allow_remote {
                "remote fetching is not implemented by flotilla's renderer"
            } else {
                "remote resources are disabled"
            };
            return Err(Error::Remote {
                file: file.clone(),
                what,
                entry: entry.to_string(),
                reason,
            });
        }
        dir.join(entry).map_err(|_| Error::OutsideRoot {
            file: file.clone(),
            what,
            entry: entry.to_string(),
        })
    }

    /// Builds the kustomization `k` of `dir` into `ra` (which holds the parent's resources when
    /// `k` is a component).
    fn accumulate(
        &mut self,
        dir: &RelPath,
        file: &RelPath,
        k: &Kustomization,
        ra: &mut Vec<Resource>,
    ) -> Result<(), Error> {
        if self.stack.len() > self.src.opts.max_depth {
            return Err(Error::TooDeep {
                file: file.clone(),
                limit: self.src.opts.max_depth,
            });
        }
        let mut ids: HashMap<String, usize> = ra
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id_key(), i))
            .collect();
        for entry in k.resources.iter().chain(&k.bases) {
            let path = self.entry_path(file, dir, "resource", entry)?;
            match self.src.tree.kind(&path) {
                Ok(Some(EntryKind::File)) => {
                    let docs = self.src.docs(&path)?;
                    let mut objs = Vec::new();
                    for d in docs.iter() {
                        crate::plain::push_objects(&path, d.line, &d.value, &mut objs)?;
                    }
                    for obj in objs {
                        check_object(&path, &obj)?;
                        let mut r = Resource::new(obj, path.clone());
                        r.normalize_annotations();
                        append(ra, &mut ids, r, file)?;
                    }
                }
                Ok(Some(EntryKind::Dir)) => {
                    if let Some(hit) = self.reusable(&path) {
                        self.src.count_reused(&hit.files)?;
                        self.note_depth(self.stack.len() + hit.depth);
                        for r in &hit.resources {
                            append(ra, &mut ids, r.clone(), file)?;
                        }
                        continue;
                    }
                    let sub_ra = self.build_resource_dir(&path, file, entry)?;
                    for r in sub_ra {
                        append(ra, &mut ids, r, file)?;
                    }
                }
                Ok(None) => {
                    return Err(Error::Missing {
                        file: file.clone(),
                        what: "resource",
                        entry: entry.clone(),
                    });
                }
                Err(TreeError::SymlinkEscape { .. }) | Err(TreeError::OutsideRoot { .. }) => {
                    return Err(Error::OutsideRoot {
                        file: file.clone(),
                        what: "resource",
                        entry: entry.clone(),
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }

        generators::run(self.src, dir, file, k, ra)?;

        for entry in &k.components {
            let path = self.entry_path(file, dir, "component", entry)?;
            match self.src.tree.kind(&path)? {
                Some(EntryKind::Dir) => {}
                Some(EntryKind::File) => {
                    return Err(Error::Invalid {
                        file: file.clone(),
                        message: format!("component {entry:?} must be a directory"),
                    });
                }
                None => {
                    return Err(Error::Missing {
                        file: file.clone(),
                        what: "component",
                        entry: entry.clone(),
                    });
                }
            }
            let (sub_file, sub) = self.enter(&path, file)?;
            if sub.kind.as_deref() != Some("Component") {
                return Err(Error::Invalid {
                    file: file.clone(),
                    message: format!(
                        "component {entry:?} must have `kind: Component` in {sub_file}"
                    ),
                });
            }
            self.accumulate(&path, &sub_file, &sub, ra)?;
            self.stack.pop();
        }

        patches::strategic_merge_list(self.src, dir, file, k, ra)?;
        patches::patches(self.src, dir, file, k, ra)?;
        transform::namespace(file, k, ra)?;
        transform::prefix_suffix(k, ra);
        transform::labels(file, k, ra)?;
        transform::annotations(file, k, ra)?;
        patches::json6902_list(self.src, dir, file, k, ra)?;
        transform::replicas(file, k, ra)?;
        transform::images(file, k, ra)?;
        if !k.replacements.is_empty() {
            let reps = replacements::load(self.src, dir, file, &k.replacements)?;
            replacements::apply(file, &reps, ra)?;
        }
        Ok(())
    }

    /// A cached build of `path` that gives what building it here would: it fits the depth and
    /// file limits from here, and `path` is not being built already (a cycle).
    fn reusable(&self, path: &RelPath) -> Option<Arc<CachedBuild>> {
        let hit = self.cache.get(path)?;
        let fits = self.stack.len() + hit.depth <= self.src.opts.max_depth
            && !self.stack.contains(path)
            && self.src.files_fit(&hit.files);
        fits.then_some(hit)
    }

    /// Notes that the build reached `depth` nested kustomizations, for the builds recorded.
    fn note_depth(&mut self, depth: usize) {
        for p in &mut self.peaks {
            *p = (*p).max(depth);
        }
    }

    /// Builds the kustomization of directory `path`, listed as `entry` under `resources` of
    /// `file`, and caches the result for later builds.
    fn build_resource_dir(
        &mut self,
        path: &RelPath,
        file: &RelPath,
        entry: &str,
    ) -> Result<Vec<Resource>, Error> {
        let start = self.stack.len();
        self.src.start_recording();
        self.peaks.push(start);
        let built = self.build_resource_dir_uncached(path, file, entry);
        let peak = self.peaks.pop().unwrap_or(start);
        let files = self.src.stop_recording();
        let sub_ra = built?;
        self.cache.insert(
            path,
            CachedBuild {
                resources: sub_ra.clone(),
                files,
                depth: peak - start,
            },
        );
        Ok(sub_ra)
    }

    fn build_resource_dir_uncached(
        &mut self,
        path: &RelPath,
        file: &RelPath,
        entry: &str,
    ) -> Result<Vec<Resource>, Error> {
        let (sub_file, sub) = self.enter(path, file)?;
        if sub.kind.as_deref() == Some("Component") {
            return Err(Error::Invalid {
                file: file.clone(),
                message: format!("resource {entry:?} is a Component; list it under `components`"),
            });
        }
        let mut sub_ra = Vec::new();
        self.accumulate(path, &sub_file, &sub, &mut sub_ra)?;
        self.stack.pop();
        Ok(sub_ra)
    }

    /// Enters the kustomization of directory `path` (cycle check), returning it.
    fn enter(
        &mut self,
        path: &RelPath,
        parent: &RelPath,
    ) -> Result<(RelPath, Kustomization), Error> {
        if let Some(pos) = self.stack.iter().position(|p| p == path) {
            let mut chain: Vec<String> = self.stack[pos..].iter().map(|p| p.to_string()).collect();
            chain.push(path.to_string());
            return Err(Error::Cycle {
                chain: chain.join(" -> "),
            });
        }
        if self.stack.len() >= self.src.opts.max_depth {
            return Err(Error::TooDeep {
                file: parent.clone(),
                limit: self.src.opts.max_depth,
            });
        }
        let loaded = self.load(path)?;
        self.stack.push(path.clone());
        self.note_depth(self.stack.len());
        Ok(loaded)
    }
}

/// The line of a top-level `key:` in a kustomization's text.
fn key_line(text: &str, key: &str) -> Option<usize> {
    text.lines().enumerate().find_map(|(i, l)| {
        let rest = l.strip_prefix(key).or_else(|| {
            l.strip_prefix('"')
                .and_then(|l| l.strip_prefix(key))
                .and_then(|l| l.strip_prefix('"'))
        })?;
        rest.trim_start().starts_with(':').then_some(i + 1)
    })
}

/// Kustomize requires a name on every resource it reads.
fn check_object(file: &RelPath, obj: &Value) -> Result<(), Error> {
    let name = obj.get("metadata").and_then(|m| m.get("name"));
    match name {
        Some(Value::String(s)) if !s.is_empty() => Ok(()),
        _ => Err(Error::Invalid {
            file: file.clone(),
            message: format!(
                "{} has no metadata.name",
                obj.get("kind").and_then(Value::as_str).unwrap_or("object")
            ),
        }),
    }
}

/// Adds a resource, refusing a second one with the same identity.
fn append(
    ra: &mut Vec<Resource>,
    ids: &mut HashMap<String, usize>,
    r: Resource,
    file: &RelPath,
) -> Result<(), Error> {
    let key = r.id_key();
    if let Some(&i) = ids.get(&key) {
        let other = &ra[i];
        return Err(Error::Conflict {
            file: file.clone(),
            message: format!(
                "{} is defined twice (in {} and in {})",
                r.describe(),
                other.source,
                r.source
            ),
        });
    }
    ids.insert(key, ra.len());
    ra.push(r);
    Ok(())
}

#[cfg(test)]
mod tests;
