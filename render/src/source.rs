//! Reading files for one render: limits on count and size, and a cache of parsed YAML so a
//! base shared by many overlays is read and parsed once per render — and, since parsing is
//! a pure function of the text, parsed once per process while its text stays the same.
//!
//! A render also keeps a record of the files each kustomization build reads (see
//! [`Source::start_recording`]), so that a build reused from a [`crate::Renderer`]'s cache is
//! counted against the limits as if it had been read again.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use crate::yaml::{self, Doc};
use crate::{Error, Options, RelPath, Tree, TreeError};

/// The tree and limits of one render, with its caches.
pub(crate) struct Source<'a> {
    /// The tree being rendered.
    pub tree: &'a dyn Tree,
    /// The render's limits.
    pub opts: &'a Options,
    /// Every file read so far (each counts once against [`Options::max_files`]).
    files_read: RefCell<HashSet<RelPath>>,
    /// The files read by each build being recorded, innermost last.
    recorders: RefCell<Vec<HashSet<RelPath>>>,
    texts: RefCell<HashMap<RelPath, Rc<str>>>,
    docs: RefCell<HashMap<RelPath, Arc<Vec<Doc>>>>,
}

/// Parsed documents by file text, shared by all renders of the process.
struct ParseCache {
    bytes: usize,
    map: HashMap<Arc<str>, Arc<Vec<Doc>>>,
}

/// Past this much cached text the cache starts over (bounds memory on huge repositories).
const PARSE_CACHE_BYTES: usize = 64 * 1024 * 1024;

fn parse_cache() -> &'static Mutex<ParseCache> {
    static CACHE: OnceLock<Mutex<ParseCache>> = OnceLock::new();
    CACHE.get_or_init(|| {
        Mutex::new(ParseCache {
            bytes: 0,
            map: HashMap::new(),
        })
    })
}

/// Parses `text`, or returns the documents of an identical text parsed before.
fn parse_cached(text: &str) -> Result<Arc<Vec<Doc>>, yaml::YamlError> {
    if let Some(d) = parse_cache()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .map
        .get(text)
    {
        return Ok(d.clone());
    }
    let docs = Arc::new(yaml::parse_stream(text)?);
    let mut cache = parse_cache().lock().unwrap_or_else(PoisonError::into_inner);
    if cache.bytes + text.len() > PARSE_CACHE_BYTES {
        cache.map.clear();
        cache.bytes = 0;
    }
    cache.bytes += text.len();
    cache.map.insert(Arc::from(text), docs.clone());
    Ok(docs)
}

impl<'a> Source<'a> {
    pub fn new(tree: &'a dyn Tree, opts: &'a Options) -> Self {
        Self {
            tree,
            opts,
            files_read: RefCell::default(),
            recorders: RefCell::default(),
            texts: RefCell::default(),
            docs: RefCell::default(),
        }
    }

    /// Counts `path` against [`Options::max_files`] (once per render) and notes it in every
    /// build being recorded.
    fn count(&self, path: &RelPath) -> Result<(), Error> {
        for r in self.recorders.borrow_mut().iter_mut() {
            if !r.contains(path) {
                r.insert(path.clone());
            }
        }
        let mut read = self.files_read.borrow_mut();
        if read.contains(path) {
            return Ok(());
        }
        if read.len() >= self.opts.max_files {
            return Err(Error::TooManyFiles {
                file: path.clone(),
                limit: self.opts.max_files,
            });
        }
        read.insert(path.clone());
        Ok(())
    }

    /// Whether counting `files` would stay within [`Options::max_files`].
    pub fn files_fit(&self, files: &[RelPath]) -> bool {
        let read = self.files_read.borrow();
        let new = files.iter().filter(|f| !read.contains(*f)).count();
        read.len() + new <= self.opts.max_files
    }

    /// Counts files read by a build reused from a cache, as if they had been read now. The
    /// caller checks [`Source::files_fit`] first.
    pub fn count_reused(&self, files: &[RelPath]) -> Result<(), Error> {
        files.iter().try_for_each(|f| self.count(f))
    }

    /// Starts recording the files read, for a build that may be cached.
    pub fn start_recording(&self) {
        self.recorders.borrow_mut().push(HashSet::new());
    }

    /// Stops the innermost recording and returns the files it saw.
    pub fn stop_recording(&self) -> Vec<RelPath> {
        let mut files: Vec<RelPath> = self
            .recorders
            .borrow_mut()
            .pop()
            .unwrap_or_default()
            .into_iter()
            .collect();
        files.sort();
        files
    }

    /// Raw bytes of a file, counted against the limits (not cached).
    pub fn read_bytes(&self, path: &RelPath) -> Result<Vec<u8>, Error> {
        self.count(path)?;
        let bytes = self.tree.read(path)?;
        if bytes.len() as u64 > self.opts.max_file_bytes {
            return Err(TreeError::TooLarge {
                path: path.clone(),
                size: bytes.len() as u64,
                limit: self.opts.max_file_bytes,
            }
            .into());
        }
        Ok(bytes)
    }

    /// A file as UTF-8 text, cached.
    pub fn read_text(&self, path: &RelPath) -> Result<Rc<str>, Error> {
        if let Some(t) = self.texts.borrow().get(path) {
            self.count(path)?;
            return Ok(t.clone());
        }
        let bytes = self.read_bytes(path)?;
        let text: Rc<str> = String::from_utf8(bytes)
            .map_err(|_| Error::Invalid {
                file: path.clone(),
                message: "not valid UTF-8".into(),
            })?
            .into();
        self.texts.borrow_mut().insert(path.clone(), text.clone());
        Ok(text)
    }

    /// A file's YAML documents, parsed once per render.
    pub fn docs(&self, path: &RelPath) -> Result<Arc<Vec<Doc>>, Error> {
        if let Some(d) = self.docs.borrow().get(path) {
            self.count(path)?;
            return Ok(d.clone());
        }
        let text = self.read_text(path)?;
        let docs = parse_cached(&text).map_err(|e| Error::Yaml {
            file: path.clone(),
            line: e.line,
            message: e.message,
        })?;
        self.docs.borrow_mut().insert(path.clone(), docs.clone());
        Ok(docs)
    }
}
