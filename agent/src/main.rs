use clap::Parser as _;

// The system allocator, not mimalloc as in the hub: the agent's resident memory while idle is
// what users weigh (14.5 MiB with it, 24.8 MiB with mimalloc), and the API server, not the
// agent's CPU, bounds how fast it applies (see docs/benchmarks.md, `bench apply`).
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    flotilla_agent::Args::parse().run().await
}
