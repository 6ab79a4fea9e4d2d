//! One error type for the harness; each variant says what was being done.

use std::time::Duration;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Kube {
        context: String,
        #[source]
        source: kube::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command { command: String, status: String, stderr: String },
    #[error("cannot run `{command}`: {source}; set {variable} to its path")]
    Tool {
        command: String,
        variable: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out after {waited:?} waiting for {what}; last seen: {last}")]
    Timeout { what: String, waited: Duration, last: String },
    #[error("{context}: {message}")]
    Invalid { context: String, message: String },
}

/// Adds what was being done to a kube error.
pub trait KubeContext<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> KubeContext<T> for std::result::Result<T, kube::Error> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Kube { context: context(), source })
    }
}
