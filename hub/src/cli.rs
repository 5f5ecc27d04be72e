//! The `flotilla` command-line tool used by platform engineers.

use std::io::Write as _;

use clap::{Parser, Subcommand};

/// flotilla: GitOps for fleets of Kubernetes clusters.
///
/// Register clusters, preview what each cluster would receive, and read fleet status.
#[derive(Debug, Parser)]
#[command(name = "flotilla", version, about, long_about)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,

    #[command(flatten)]
    pub log: flotilla_telemetry::LogArgs,
}

/// The `flotilla` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the version of this CLI and of the wire protocol it speaks.
    Version,
}

impl Args {
    /// Runs the chosen subcommand; output goes to stdout, logs to stderr.
    pub async fn run(self) -> anyhow::Result<()> {
        self.log.init()?;
        let mut out = std::io::stdout().lock();
        match self.command {
            Command::Version => {
                let p = flotilla_proto::PROTOCOL_VERSION;
                writeln!(
                    out,
                    "flotilla {} (protocol flotilla.v1 {}.{})",
                    crate::VERSION,
                    p.major,
                    p.minor
                )?;
            }
        }
        Ok(())
    }
}
