use std::process::ExitCode;

use clap::Parser;
use taskcluster::cli::{Cli, Command};
use taskcluster::commands::{self, Failure};
use taskcluster::telemetry::logging;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        // Interactive commands: only what needs attention.
        Command::Demo(_) | Command::Bench(_) | Command::Submit(_) | Command::Status(_) => "warn,zookeeper_client=error",
        Command::Master(_) | Command::Worker(_) => "info,zookeeper_client=warn",
    };
    logging::init(cli.log_format, default_filter);
    // A worker is one task at a time: a single thread keeps its footprint small.
    let runtime = match cli.command {
        Command::Worker(_) => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        _ => tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build(),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        },
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Master(args) => commands::serve::master(args).await,
            Command::Worker(args) => commands::serve::worker(args).await,
            Command::Submit(args) => commands::submit::run(args).await,
            Command::Status(args) => commands::status::run(args).await,
            Command::Bench(args) => commands::bench::run(args).await,
            Command::Demo(args) => commands::demo::run(args).await,
        }
    });
    // Background tasks (HTTP server, session tasks) must not hold up the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, message }) => {
            eprintln!("error: {message}");
            ExitCode::from(code)
        },
    }
}
