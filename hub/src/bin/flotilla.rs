use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    flotilla_hub::cli::Args::parse().run().await
}
