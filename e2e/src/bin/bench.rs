//! `bench`: flotilla's benchmarks, each reported against a reference run on the same machine in
//! the same run (see `docs/benchmarks.md`). The benchmarks themselves live in
//! `flotilla_e2e::bench`.

use anyhow::Result;
use clap::{Parser, Subcommand};
use flotilla_e2e::bench;

/// flotilla benchmarks. Each prints a table and ends with one `RESULT ...` line.
/// mimalloc: the hub and agent hold many small, short-lived buffers per connection and
/// object, where glibc's allocator spent a sixth of the CPU time in `bench fanout`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "bench", version, about)]
struct Args {
    #[command(subcommand)]
    command: Cmd,

    #[command(flatten)]
    log: flotilla_telemetry::LogArgs,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Apply N Flux-benchmark app units with the agent binary and with `kubectl apply
    /// --server-side` on fresh control planes; agent memory idle and holding them.
    Apply(bench::apply::ApplyArgs),
    /// Edit and delete applied objects; time the agent's drift detection and correction against
    /// a periodic `kubectl apply --server-side` loop.
    Drift(bench::drift::DriftArgs),
    /// Publish a revision to N simulated agents over mTLS; time until all verified and acked,
    /// against the same agents polling over HTTPS.
    Fanout(bench::fanout::FanoutArgs),
    /// Commit to applied-and-available on two workload clusters through the real hub and agents,
    /// via webhook and via polling, against kubectl kustomize + server-side apply per cluster.
    Loop(bench::loop_::LoopArgs),
    /// The hub child process of `fanout` (internal).
    #[command(hide = true)]
    FanoutHub(bench::fanout::FanoutHubArgs),
    /// Render a generated 200-cluster fleet (and the conformance trees) with flotilla and with
    /// `kubectl kustomize`; check both agree; report the ratio and flotilla's peak memory.
    Render(bench::render::RenderArgs),
    /// Internal: render every cluster of an existing tree once and print the peak RSS (KiB).
    #[command(hide = true)]
    RenderChild {
        /// The generated tree.
        #[arg(long)]
        dir: std::path::PathBuf,
        /// How many clusters it holds.
        #[arg(long)]
        clusters: usize,
    },
}

fn main() -> Result<()> {
    let args = Args::parse();
    args.log.init()?;
    match args.command {
        Cmd::Apply(a) => runtime()?.block_on(bench::apply::run(&a)),
        Cmd::Drift(a) => runtime()?.block_on(bench::drift::run(&a)),
        Cmd::Fanout(a) => runtime()?.block_on(bench::fanout::run(a)),
        Cmd::Loop(a) => runtime()?.block_on(bench::loop_::run(&a)),
        Cmd::FanoutHub(a) => runtime()?.block_on(bench::fanout::run_hub(a)),
        Cmd::Render(a) => bench::render::run(&a),
        Cmd::RenderChild { dir, clusters } => bench::render::run_child(&dir, clusters),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
