//! Conformance: flotilla's renderer against `kubectl kustomize` on every fixture tree under
//! `tests/conformance/`.
//!
//! For each fixture, at test time, this runs `kubectl kustomize` and `flotilla_render::render` on
//! the same tree and compares the parsed documents in order. Nothing expected is stored: the
//! reference is always the installed `kubectl` (v1.32, kustomize v5.5.0 in CI).
//!
//! Conventions (see `docs/render.md`, "Conformance suite"):
//! - A fixture is a directory `NNN-short-name/`; it is the source root.
//! - What to build is the fixture's root, or the paths listed one per line in a `BUILD` file
//!   (`#` starts a comment); every listed path must match.
//! - A build path without a kustomization is a plain YAML directory. `kubectl kustomize` cannot
//!   build those, so the runner builds a copy with a generated kustomization listing every
//!   `.yaml`/`.yml`/`.json` file in byte order of its path, with `sortOptions.order: fifo`:
//!   the order flotilla documents for plain directories.
//! - `KNOWN_FAILING` lists fixtures the engine does not pass yet. A listed fixture that passes
//!   fails the run (so the list only shrinks); an unlisted fixture that fails fails the run.
//!
//! Environment: `KUBECTL` overrides the kubectl binary; `FLOTILLA_CONFORMANCE_ONLY=substring`
//! restricts the run to matching fixtures; `FLOTILLA_CONFORMANCE_VERBOSE=1` prints the full diff
//! of known-failing fixtures too.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use flotilla_render::{FsTree, Options, RelPath, Renderer, Variables};
use serde_json::Value;

/// The directory holding every fixture.
fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance")
}

/// The kubectl binary to compare with.
fn kubectl() -> String {
    std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".to_string())
}

/// The fixture directories, sorted by name.
fn fixtures() -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(fixtures_dir()).context("listing tests/conformance")? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// The paths to build inside a fixture: its `BUILD` file's lines, or the root.
fn build_paths(fixture: &Path) -> anyhow::Result<Vec<String>> {
    let build = fixture.join("BUILD");
    if !build.exists() {
        return Ok(vec![String::new()]);
    }
    let text =
        std::fs::read_to_string(&build).with_context(|| format!("reading {}", build.display()))?;
    let paths: Vec<String> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    if paths.is_empty() {
        bail!("{} lists no path", build.display());
    }
    Ok(paths)
}

/// `KNOWN_FAILING`'s fixture names.
fn known_failing() -> anyhow::Result<BTreeSet<String>> {
    let path = fixtures_dir().join("KNOWN_FAILING");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).context("reading KNOWN_FAILING"),
    };
    Ok(text
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim().to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

const KUSTOMIZATION_NAMES: [&str; 3] = ["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// Every manifest file below `dir`, as `/`-separated paths relative to `dir`, in byte order.
fn manifest_files(dir: &Path) -> anyhow::Result<Vec<String>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                walk(root, &path, out)?;
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
            {
                let rel = path.strip_prefix(root)?;
                let parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.push(parts.join("/"));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Runs `kubectl kustomize` on `fixture/path`, synthesising a kustomization for a plain
/// directory, and returns its stdout.
fn kubectl_build(fixture: &Path, path: &str) -> anyhow::Result<String> {
    let dir = fixture.join(path);
    let is_kustomization = KUSTOMIZATION_NAMES.iter().any(|n| dir.join(n).is_file());
    let scratch;
    let build_dir = if is_kustomization {
        dir
    } else {
        scratch = tempfile::tempdir()?;
        copy_dir(&dir, scratch.path())?;
        let mut k = String::from("# generated by tests/conformance.rs for a plain directory\n");
        k.push_str("sortOptions:\n  order: fifo\nresources:\n");
        for f in manifest_files(&dir)? {
            writeln!(k, "  - {f}")?;
        }
        std::fs::write(scratch.path().join("kustomization.yaml"), k)?;
        scratch.path().to_path_buf()
    };
    let output = match Command::new(kubectl())
        .arg("kustomize")
        .arg(&build_dir)
        .output()
    {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "the conformance suite needs `kubectl` (v1.32, kustomize v5.5.0) on PATH, or KUBECTL \
             set to its path: it compares flotilla with `kubectl kustomize` at test time"
        ),
        Err(e) => return Err(e).context("running kubectl"),
    };
    if !output.status.success() {
        bail!(
            "kubectl kustomize {} failed (the fixture itself is wrong): {}",
            build_dir.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// Parses a YAML stream into documents, dropping empty ones.
fn parse_stream(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut docs = Vec::new();
    for de in serde_yaml::Deserializer::from_str(text) {
        let v: serde_yaml::Value = serde::Deserialize::deserialize(de)?;
        if v.is_null() {
            continue;
        }
        docs.push(serde_json::to_value(v)?);
    }
    Ok(docs)
}

/// `Kind namespace/name` of a document, for messages.
fn ident(doc: &Value) -> String {
    let s = |p: &str| {
        doc.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string()
    };
    let ns = doc
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .map(|n| format!("{n}/"))
        .unwrap_or_default();
    format!("{} {ns}{}", s("/kind"), s("/metadata/name"))
}

/// Appends one line per differing path between `want` (kubectl) and `got` (flotilla).
fn diff(path: &str, want: &Value, got: &Value, out: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, wv) in w {
                let p = format!("{path}/{k}");
                match g.get(k) {
                    Some(gv) => diff(&p, wv, gv, out),
                    None => out.push(format!("{p}: missing in flotilla (kubectl: {})", short(wv))),
                }
            }
            for (k, gv) in g {
                if !w.contains_key(k) {
                    out.push(format!("{path}/{k}: only in flotilla: {}", short(gv)));
                }
            }
        }
        (Value::Array(w), Value::Array(g)) => {
            for (i, (wv, gv)) in w.iter().zip(g).enumerate() {
                diff(&format!("{path}/{i}"), wv, gv, out);
            }
            if w.len() != g.len() {
                out.push(format!(
                    "{}: kubectl has {} items, flotilla {}",
                    if path.is_empty() { "/" } else { path },
                    w.len(),
                    g.len()
                ));
            }
        }
        _ if want != got => out.push(format!(
            "{}: kubectl {} / flotilla {}",
            if path.is_empty() { "/" } else { path },
            short(want),
            short(got)
        )),
        _ => {}
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 120 {
        format!("{}…", s.chars().take(120).collect::<String>())
    } else {
        s
    }
}

/// Compares two document streams; `None` when equal, else a readable report.
fn compare(want: &[Value], got: &[Value]) -> Option<String> {
    if want == got {
        return None;
    }
    let mut report = String::new();
    if want.len() != got.len() {
        let _ = writeln!(
            report,
            "    kubectl printed {} documents, flotilla {}",
            want.len(),
            got.len()
        );
        let _ = writeln!(
            report,
            "      kubectl:  {}",
            want.iter().map(ident).collect::<Vec<_>>().join(", ")
        );
        let _ = writeln!(
            report,
            "      flotilla: {}",
            got.iter().map(ident).collect::<Vec<_>>().join(", ")
        );
    }
    for (i, (w, g)) in want.iter().zip(got).enumerate() {
        if w == g {
            continue;
        }
        let mut lines = Vec::new();
        diff("", w, g, &mut lines);
        let _ = writeln!(
            report,
            "    document {i}: kubectl {} / flotilla {}",
            ident(w),
            ident(g)
        );
        for l in lines.iter().take(25) {
            let _ = writeln!(report, "      {l}");
        }
        if lines.len() > 25 {
            let _ = writeln!(
                report,
                "      ... {} more differing paths",
                lines.len() - 25
            );
        }
    }
    Some(report)
}

/// Checks one fixture: `Ok(None)` when every build path matches kubectl, `Ok(Some(report))`
/// when flotilla differs or fails, `Err` when the fixture itself cannot be built by kubectl.
fn check(fixture: &Path) -> anyhow::Result<Option<String>> {
    let mut report = String::new();
    let tree = FsTree::new(fixture)?;
    let mut wants = Vec::new();
    for path in build_paths(fixture)? {
        let shown = if path.is_empty() { "." } else { path.as_str() };
        let want =
            parse_stream(&kubectl_build(fixture, &path)?).context("parsing kubectl's output")?;
        let rel = RelPath::new(&path)?;
        wants.push((rel.clone(), want.clone()));
        let got = match flotilla_render::render(&tree, &rel, &Variables::new(), &Options::default())
        {
            Ok(objects) => objects,
            Err(e) => {
                let _ = writeln!(report, "  {shown}: flotilla failed: {e}");
                continue;
            }
        };
        if let Some(r) = compare(&want, &got) {
            let _ = writeln!(
                report,
                "  {shown}: objects differ from kubectl kustomize\n{r}"
            );
            continue;
        }
        // The printed stream must carry the same documents as the objects it prints.
        match parse_stream(&flotilla_render::to_yaml(&got)) {
            Ok(printed) => {
                if let Some(r) = compare(&want, &printed) {
                    let _ = writeln!(
                        report,
                        "  {shown}: to_yaml output differs from kubectl kustomize\n{r}"
                    );
                }
            }
            Err(e) => {
                let _ = writeln!(report, "  {shown}: to_yaml output is not valid YAML: {e}");
            }
        }
    }
    // A `Renderer` reuses the builds of included kustomizations between renders: every build
    // path of the fixture through one renderer, twice (the second time from its cache), must
    // give kubectl's objects too.
    let renderer = Renderer::new(&tree, Options::default());
    for pass in ["first", "second"] {
        for (rel, want) in &wants {
            match renderer.render(rel, &Variables::new()) {
                Ok(got) => {
                    if let Some(r) = compare(want, &got) {
                        let _ = writeln!(
                            report,
                            "  {rel}: shared Renderer ({pass} pass): objects differ from kubectl kustomize\n{r}"
                        );
                    }
                }
                Err(e) => {
                    let _ = writeln!(
                        report,
                        "  {rel}: shared Renderer ({pass} pass): flotilla failed: {e}"
                    );
                }
            }
        }
    }
    Ok(if report.is_empty() {
        None
    } else {
        Some(report)
    })
}

#[test]
fn fixtures_match_kubectl_kustomize() -> anyhow::Result<()> {
    let only = std::env::var("FLOTILLA_CONFORMANCE_ONLY").ok();
    let verbose = std::env::var("FLOTILLA_CONFORMANCE_VERBOSE").is_ok_and(|v| v == "1");
    let known = known_failing()?;
    let all = fixtures()?;
    let names: BTreeSet<String> = all
        .iter()
        .map(|p| {
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();

    let mut problems = Vec::new();
    for stale in known.difference(&names) {
        problems.push(format!(
            "KNOWN_FAILING lists {stale}, which is not a fixture"
        ));
    }

    let selected: Vec<&PathBuf> = all
        .iter()
        .filter(|p| {
            only.as_deref()
                .is_none_or(|o| p.to_string_lossy().contains(o))
        })
        .collect();
    // kubectl is the slow side: check fixtures on a few threads.
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 4);
    let results: Vec<(String, anyhow::Result<Option<String>>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let mine: Vec<&PathBuf> =
                    selected.iter().skip(t).step_by(threads).copied().collect();
                s.spawn(move || {
                    mine.into_iter()
                        .map(|p| {
                            let name = p
                                .file_name()
                                .unwrap_or_default()
                                .to_string_lossy()
                                .into_owned();
                            (name, check(p))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<_> = handles
            .into_iter()
            .flat_map(|h| h.join().expect("conformance worker panicked"))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    });

    let mut passed = 0;
    let mut still_failing = Vec::new();
    for (name, result) in results {
        let listed = known.contains(&name);
        match result {
            Err(e) => problems.push(format!("{name}: broken fixture: {e:#}")),
            Ok(None) if listed => problems.push(format!(
                "{name}: now matches kubectl kustomize; remove it from tests/conformance/KNOWN_FAILING"
            )),
            Ok(None) => passed += 1,
            Ok(Some(report)) if listed => {
                let first = report.lines().next().unwrap_or_default().trim().to_string();
                if verbose {
                    eprintln!("known failing {name}:\n{report}");
                }
                still_failing.push(format!("{name}: {first}"));
            }
            Ok(Some(report)) => problems.push(format!("{name}:\n{report}")),
        }
    }

    let total = selected.len();
    eprintln!(
        "conformance: {passed}/{total} fixtures identical to kubectl kustomize; {} known failing",
        still_failing.len()
    );
    for f in &still_failing {
        eprintln!("  known failing {f}");
    }
    // A panic (not an `Err`) so the report prints without a backtrace.
    assert!(
        problems.is_empty(),
        "{} conformance problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
    if only.is_none() {
        assert!(
            total >= 60,
            "the suite must keep at least 60 fixtures, it has {total}"
        );
    }
    Ok(())
}

#[test]
fn diff_report_names_document_and_paths() {
    let want = parse_stream(
        "kind: ConfigMap\nmetadata:\n  name: a\n  namespace: n\ndata:\n  x: \"1\"\n  y: \"2\"\n---\nkind: Service\nmetadata:\n  name: s\n",
    )
    .unwrap();
    let got = parse_stream(
        "kind: ConfigMap\nmetadata:\n  name: a\n  namespace: n\ndata:\n  x: \"3\"\n  z: \"4\"\n---\nkind: Service\nmetadata:\n  name: s\n",
    )
    .unwrap();
    let report = compare(&want, &got).expect("streams differ");
    assert_eq!(
        report,
        "    document 0: kubectl ConfigMap n/a / flotilla ConfigMap n/a\n      /data/x: kubectl \"1\" / flotilla \"3\"\n      /data/y: missing in flotilla (kubectl: \"2\")\n      /data/z: only in flotilla: \"4\"\n"
    );
    assert!(compare(&want, &want).is_none());
    let short = compare(&want, &got[..1]).expect("lengths differ");
    assert!(short.starts_with("    kubectl printed 2 documents, flotilla 1\n      kubectl:  ConfigMap n/a, Service s\n"), "{short}");
}
