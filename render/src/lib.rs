//! flotilla's render engine: from a source tree and a cluster's variables to the exact, ordered
//! list of Kubernetes objects that cluster must run.
//!
//! The engine is pure: it does no network I/O, writes nothing, and reads only through a
//! [`Tree`], which never yields anything outside the source root.

pub mod tree;

pub use tree::{DirEntry, EntryKind, FsTree, RelPath, Tree, TreeError};
pub mod patch;
pub mod subst;
