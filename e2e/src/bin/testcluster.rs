//! `testcluster`: the command behind `e2e/cluster.sh`.

use anyhow::Result;
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use flotilla_e2e::controlplane;

/// Start and stop real Kubernetes control planes (etcd, kube-apiserver, kube-controller-manager,
/// kube-scheduler, kwok) on 127.0.0.1 for tests and the local demo.
#[derive(Debug, Parser)]
#[command(name = "cluster.sh", version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,

    #[command(flatten)]
    log: flotilla_telemetry::LogArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start cluster NAME (or keep it if it is running) and print its kubeconfig path last.
    Up {
        /// Cluster name: lowercase letters, digits and '-'.
        name: String,
    },
    /// Stop cluster NAME, or every cluster with --all, leaving no process or port behind.
    Down {
        /// Cluster name.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        /// Stop every cluster.
        #[arg(long)]
        all: bool,
    },
    /// List clusters with their API server URL, state and resident memory.
    List,
    /// Build the control-plane tools if needed and print the directory that holds them.
    Tools,
}

#[tokio::main]
async fn main() -> Result<()> {
    // The API server refuses connections while it starts, and the client logs each refusal as
    // an error: hide those unless the user asks for a filter of their own.
    let matches = Args::command()
        .mut_arg("log_level", |a| a.default_value("info,kube_client=off"))
        .get_matches();
    let args = Args::from_arg_matches(&matches)?;
    args.log.init()?;
    match args.command {
        Command::Up { name } => {
            let state = controlplane::up(&name, None).await?;
            emit(&state.kubeconfig.display().to_string());
        }
        Command::Down { all: true, .. } => controlplane::down_all()?,
        Command::Down { name, .. } => controlplane::down(&name.expect("clap requires NAME"))?,
        Command::List => {
            for name in controlplane::list()? {
                let line = match controlplane::ClusterState::load(&name)? {
                    Some(s) => format!(
                        "{name}\thttps://127.0.0.1:{}\t{}\t{} MiB\t{}",
                        s.api_port,
                        if s.all_running() {
                            "running"
                        } else {
                            "stopped"
                        },
                        s.rss_kib() / 1024,
                        s.kubeconfig.display()
                    ),
                    None => format!("{name}\t-\tincomplete"),
                };
                emit(&line);
            }
        }
        Command::Tools => emit(&controlplane::tools_bin()?.display().to_string()),
    }
    Ok(())
}

#[allow(clippy::print_stdout)]
fn emit(line: &str) {
    println!("{line}");
}
