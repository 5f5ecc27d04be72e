//! Renders a directory and prints the YAML stream: `cargo run --example render -- DIR [SUBDIR]`.
//! A quick way to compare with `kubectl kustomize` while working on the engine.

#![allow(clippy::print_stdout)]

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let root = args.next().ok_or("usage: render DIR [SUBDIR]")?;
    let sub = args.next().unwrap_or_else(|| ".".into());
    let tree = flotilla_render::FsTree::new(&root)?;
    let path = flotilla_render::RelPath::new(&sub)?;
    match flotilla_render::render(
        &tree,
        &path,
        &Default::default(),
        &flotilla_render::Options::default(),
    ) {
        Ok(objs) => {
            print!("{}", flotilla_render::to_yaml(&objs));
            Ok(())
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
