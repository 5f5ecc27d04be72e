//! flotilla's native Kustomize engine.

use serde_json::Value;

use crate::source::Source;
use crate::{EntryKind, Error, RelPath};

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

/// Runs the Kustomize build of `dir`.
pub(crate) fn build(src: &Source<'_>, dir: &RelPath) -> Result<Vec<Value>, Error> {
    let file = find_kustomization(src, dir)?.unwrap_or_else(|| dir.clone());
    Err(Error::Unsupported {
        file,
        field: "kustomize build".into(),
    })
}
