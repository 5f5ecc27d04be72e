//! Renders every `clusters/*` directory of a tree and reports the time taken:
//! `cargo run --release --example fleet -- ROOT`. A quick profile target; the benchmark that
//! compares with kubectl is `bench render`.

#![allow(clippy::print_stdout)]

use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::env::args().nth(1).ok_or("usage: fleet ROOT")?;
    let tree = flotilla_render::FsTree::new(&root)?;
    let clusters = flotilla_render::RelPath::new("clusters")?;
    let dirs: Vec<_> = flotilla_render::Tree::list(&tree, &clusters)?;
    let start = Instant::now();
    let mut docs = 0;
    let mut bytes = 0;
    for d in &dirs {
        let path = clusters.join(&d.name)?;
        let objs = flotilla_render::render(
            &tree,
            &path,
            &Default::default(),
            &flotilla_render::Options::default(),
        )?;
        docs += objs.len();
        bytes += flotilla_render::to_yaml(&objs).len();
    }
    let el = start.elapsed();
    println!(
        "{} clusters, {docs} documents, {bytes} bytes of YAML in {:.1} ms",
        dirs.len(),
        el.as_secs_f64() * 1000.0
    );
    Ok(())
}
