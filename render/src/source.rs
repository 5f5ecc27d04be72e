//! Reading files for one render: limits on count and size, and a cache of parsed YAML so a
//! base shared by many overlays is read and parsed once per render — and, since parsing is
//! a pure function of the text, parsed once per process while its text stays the same.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
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
    files_read: Cell<usize>,
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
            files_read: Cell::new(0),
            texts: RefCell::default(),
            docs: RefCell::default(),
        }
    }

    /// Raw bytes of a file, counted against the limits (not cached).
    pub fn read_bytes(&self, path: &RelPath) -> Result<Vec<u8>, Error> {
        let n = self.files_read.get() + 1;
        if n > self.opts.max_files {
            return Err(Error::TooManyFiles {
                file: path.clone(),
                limit: self.opts.max_files,
            });
        }
        self.files_read.set(n);
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
