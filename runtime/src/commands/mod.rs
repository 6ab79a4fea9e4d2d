//! One module per subcommand; each returns an exit status with a message for the user.

pub mod bench;
pub mod demo;
pub mod failover;
pub mod serve;
pub mod status;
pub mod submit;

use tokio_util::sync::CancellationToken;

/// A failed command: what to tell the user and how to exit.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

/// Exit status of bad flags or bad input.
pub const EXIT_USAGE: u8 = 2;
/// Exit status when ZooKeeper cannot be reached or errs.
pub const EXIT_ZOOKEEPER: u8 = 3;
/// Exit status when some task failed.
pub const EXIT_TASK_FAILED: u8 = 1;

impl Failure {
    pub fn usage(message: impl Into<String>) -> Self {
        Self { code: EXIT_USAGE, message: message.into() }
    }

    pub fn zookeeper(message: impl std::fmt::Display) -> Self {
        Self { code: EXIT_ZOOKEEPER, message: message.to_string() }
    }
}

impl From<crate::connect::ConnectError> for Failure {
    fn from(error: crate::connect::ConnectError) -> Self {
        use crate::connect::ConnectError::*;
        match error {
            BadAddress { .. } | BadDigest(_) => Failure::usage(error.to_string()),
            other => Failure::zookeeper(other),
        }
    }
}

/// Cancelled on the first SIGTERM or SIGINT; a second one exits at once.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        trigger.cancel();
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
    token
}

/// The identity of this process: `--id`, else the host name in Kubernetes (the pod name, unique
/// there), else the host name and the process id, so that several masters and workers started
/// on one machine without `--id` never share a name.
pub fn default_id(explicit: Option<String>) -> String {
    explicit.unwrap_or_else(|| {
        let host = host_name();
        if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() && !host.is_empty() {
            host
        } else if host.is_empty() {
            format!("node-{}", std::process::id())
        } else {
            format!("{host}-{}", std::process::id())
        }
    })
}

fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
