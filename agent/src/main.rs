use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    flotilla_agent::Args::parse().run().await
}
