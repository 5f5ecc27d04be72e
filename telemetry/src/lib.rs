//! Logging set-up shared by every flotilla binary.
//!
//! Each binary flattens [`LogArgs`] into its clap arguments and calls [`LogArgs::init`] once at
//! start-up, so `--log-level`/`FLOTILLA_LOG` and `--log-format`/`FLOTILLA_LOG_FORMAT` mean the
//! same thing everywhere. Logs go to stderr; stdout is left to command output.

use clap::{Args, ValueEnum};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines for a terminal.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Logging options common to all flotilla binaries.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log filter: a level (`info`, `debug`, ...) or a tracing directive list such as
    /// `flotilla_hub=debug,kube=info`.
    #[arg(long, env = "FLOTILLA_LOG", default_value = "info", global = true)]
    pub log_level: String,

    /// Log line format.
    #[arg(long, env = "FLOTILLA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// Installs the global tracing subscriber. Call once, before any work starts.
    pub fn init(&self) -> anyhow::Result<()> {
        let filter = EnvFilter::try_new(&self.log_level)
            .map_err(|e| anyhow::anyhow!("invalid --log-level {:?}: {e}", self.log_level))?;
        let registry = tracing_subscriber::registry().with(filter);
        let result = match self.log_format {
            LogFormat::Text => registry
                .with(fmt::layer().with_writer(std::io::stderr))
                .try_init(),
            LogFormat::Json => registry
                .with(fmt::layer().json().with_writer(std::io::stderr))
                .try_init(),
        };
        result.map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_an_invalid_filter_with_its_text() {
        let args = LogArgs {
            log_level: "flotilla=notalevel".into(),
            log_format: LogFormat::Text,
        };
        let err = args.init().unwrap_err().to_string();
        assert!(err.contains("flotilla=notalevel"), "{err}");
    }
}
