//! Benchmarks on real control planes, run by the `bench` binary (`cargo run --release -p
//! flotilla-e2e --bin bench -- NAME`). Each prints a table and ends with one `RESULT ...` line;
//! results are recorded in `docs/benchmarks.md`.

pub mod apply;
pub mod drift;
pub mod fanout;
pub mod loop_;
pub mod render;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

/// Writes one line of benchmark output to stdout.
#[allow(clippy::print_stdout)]
pub fn out(line: &str) {
    println!("{line}");
}

/// CPU cores this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Median of `v` (the lower middle for an even count); 0 for an empty slice.
pub fn median(v: &[u64]) -> u64 {
    let mut s = v.to_vec();
    s.sort_unstable();
    if s.is_empty() {
        0
    } else {
        s[(s.len() - 1) / 2]
    }
}

/// The `p`th percentile of `v` by nearest rank (p in 0..=100); 0 for an empty slice.
pub fn percentile(v: &[u64], p: f64) -> u64 {
    let mut s = v.to_vec();
    s.sort_unstable();
    if s.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// The `flotilla-agent` binary: `explicit` if given, else the one next to the running binary
/// (the same cargo target directory).
pub fn agent_binary(explicit: Option<&Path>) -> Result<PathBuf> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()
            .context("finding the bench binary")?
            .with_file_name("flotilla-agent"),
    };
    if !path.is_file() {
        bail!(
            "the agent binary {} does not exist: build it with `cargo build --release -p flotilla-agent` \
             (or pass --agent PATH)",
            path.display()
        );
    }
    Ok(path)
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS:`, `VmHWM:`).
pub fn proc_status_kib(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in {path}"))
}

/// Runs `kubectl --kubeconfig K ARGS...` and returns its stdout; fails with its stderr.
pub fn kubectl(kubectl: &str, kubeconfig: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .with_context(|| format!("running {kubectl}"))?;
    if !out.status.success() {
        bail!(
            "{kubectl} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Objects as a multi-document YAML stream, for `kubectl apply -f`.
pub fn to_yaml_stream(objects: &[serde_json::Value]) -> Result<String> {
    let mut s = String::new();
    for o in objects {
        s.push_str("---\n");
        s.push_str(&serde_yaml::to_string(o).context("serialising a manifest as YAML")?);
    }
    Ok(s)
}

/// Milliseconds of `d`.
pub fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 99.0), 0);
        assert_eq!(median(&[5, 1, 3]), 3);
        assert_eq!(median(&[4, 1, 3, 2]), 2);
    }
}
