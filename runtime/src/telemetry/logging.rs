use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines look (`--log-format`).
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    /// For people.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Logs to stderr; `RUST_LOG` filters (default: our info, the ZooKeeper client's warnings).
/// Text is coloured only on a terminal: in a file or a pod's log, colour codes would wrap
/// every field.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // A second init (tests, bench) keeps the first subscriber.
    let _ = result;
}
