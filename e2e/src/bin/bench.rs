//! `bench`: flotilla's benchmarks. Each prints flotilla next to a reference run and ends with
//! one `RESULT ...` line; see docs/benchmarks.md.

use clap::{Parser, Subcommand};
use flotilla_e2e::bench::fanout;

/// Run a flotilla benchmark.
#[derive(Debug, Parser)]
#[command(name = "bench", version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Time from publishing a revision until N agents verified and acknowledged it.
    Fanout(fanout::FanoutArgs),
    /// The hub child process of `fanout` (internal).
    #[command(hide = true)]
    FanoutHub(fanout::FanoutHubArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Fanout(a) => fanout::run(a).await,
        Command::FanoutHub(a) => fanout::run_hub(a).await,
    }
}
