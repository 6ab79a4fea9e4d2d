//! kubectl and helm, run as a user would run them.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::error::{Error, Result};

/// Paths of the command-line tools, from `KUBECTL` and `HELM` or the `PATH`.
#[derive(Clone, Debug)]
pub struct Tools {
    pub kubectl: PathBuf,
    pub helm: PathBuf,
}

impl Tools {
    pub fn from_env() -> Self {
        let path =
            |var: &str, default: &str| std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| default.into());
        Self { kubectl: path("KUBECTL", "kubectl"), helm: path("HELM", "helm") }
    }

    /// Runs kubectl; its stdout on success, its stderr in the error otherwise.
    pub async fn kubectl(&self, args: &[&str]) -> Result<String> {
        run(&self.kubectl, "KUBECTL", args, None).await
    }

    /// Runs kubectl with `input` on stdin (for `apply -f -`).
    pub async fn kubectl_stdin(&self, args: &[&str], input: &str) -> Result<String> {
        run(&self.kubectl, "KUBECTL", args, Some(input)).await
    }

    pub async fn helm(&self, args: &[&str]) -> Result<String> {
        run(&self.helm, "HELM", args, None).await
    }
}

async fn run(program: &PathBuf, variable: &'static str, args: &[&str], input: Option<&str>) -> Result<String> {
    let command = format!("{} {}", program.display(), args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| Error::Tool { command: command.clone(), variable, source })?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(input.as_bytes()).await.map_err(|source| Error::Tool {
            command: command.clone(),
            variable,
            source,
        })?;
    }
    let output =
        child.wait_with_output().await.map_err(|source| Error::Tool { command: command.clone(), variable, source })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(Error::Command {
            command,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}
