use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    flotilla_hub::cli::Args::parse().run().await
}
