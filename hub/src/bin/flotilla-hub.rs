use clap::Parser as _;

/// mimalloc: the hub and agent hold many small, short-lived buffers per connection and
/// object, where glibc's allocator spent a sixth of the CPU time in `bench fanout`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    flotilla_hub::server::Args::parse().run().await
}
