//! `flotilla bootstrap` embeds `charts/` (include_dir): rebuild when a chart changes.

fn main() {
    println!("cargo:rerun-if-changed=../charts");
}
