use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    flotilla_hub::server::Args::parse().run().await
}
