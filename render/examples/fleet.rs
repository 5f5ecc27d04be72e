//! Renders every `clusters/*` directory of a tree and reports the time taken:
//! `cargo run --release --example fleet -- ROOT [ROUNDS] [--no-reuse]`. A quick profile target;
//! the benchmark that compares with kubectl is `bench render`. Each round renders every cluster
//! with a fresh [`flotilla_render::Renderer`] (as `bench render` times it; `--no-reuse` calls
//! `flotilla_render::render` per cluster instead), then prints them as YAML (timed apart).

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let root = args.next().ok_or("usage: fleet ROOT [ROUNDS]")?;
    let rest: Vec<String> = args.collect();
    let reuse = !rest.iter().any(|a| a == "--no-reuse");
    let rounds: usize = rest
        .iter()
        .find(|a| !a.starts_with("--"))
        .map(|r| r.parse())
        .transpose()?
        .unwrap_or(1);
    let tree = flotilla_render::FsTree::new(&root)?;
    let clusters = flotilla_render::RelPath::new("clusters")?;
    let dirs: Vec<_> = flotilla_render::Tree::list(&tree, &clusters)?;
    let paths = dirs
        .iter()
        .map(|d| clusters.join(&d.name))
        .collect::<Result<Vec<_>, _>>()?;
    let mut times = Vec::new();
    for _ in 0..rounds {
        let start = Instant::now();
        let mut all = Vec::new();
        let renderer = flotilla_render::Renderer::new(&tree, Default::default());
        for path in &paths {
            all.push(if reuse {
                renderer.render(path, &Default::default())?
            } else {
                flotilla_render::render(
                    &tree,
                    path,
                    &Default::default(),
                    &flotilla_render::Options::default(),
                )?
            });
        }
        let rendered = start.elapsed();
        let docs: usize = all.iter().map(Vec::len).sum();
        let start = Instant::now();
        let bytes: usize = all.iter().map(|o| flotilla_render::to_yaml(o).len()).sum();
        let printed = start.elapsed();
        println!(
            "{} clusters, {docs} documents rendered in {:.1} ms; {bytes} bytes of YAML printed in {:.1} ms",
            paths.len(),
            ms(rendered),
            ms(printed)
        );
        times.push(rendered);
    }
    times.sort();
    println!("median render {:.1} ms", ms(times[times.len() / 2]));
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
