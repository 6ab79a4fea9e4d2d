//! Harness of the end-to-end suite: runs against the cluster `KUBECONFIG` names, and
//! only when `TASKCLUSTER_E2E` is set. Set, every problem is a loud failure: an
//! unreachable cluster, a missing tool, an operator that does not install.
//!
//! The tests live in `tests/`; `e2e/cluster/ci.sh` brings up the local cluster and
//! runs them. See docs/e2e.md.

pub mod diagnostics;
pub mod env;
pub mod error;
pub mod jobs;
pub mod partition;
pub mod pods;
pub mod taskcluster;
pub mod tools;
pub mod wait;

pub use env::E2e;
pub use error::{Error, Result};

use std::future::Future;

/// Runs one scenario in a namespace of its own: skips when the suite is off, installs
/// the operator, and on failure prints the diagnostics before failing the test.
pub async fn scenario<F, Fut>(test: &str, body: F)
where
    F: FnOnce(E2e, String) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let Some(e2e) = E2e::from_env(test).await else {
        return;
    };
    if let Err(err) = e2e.install_operator().await {
        diagnostics::dump(&e2e, taskcluster::OPERATOR_NAMESPACE).await;
        panic!("{test}: installing the operator failed: {err}");
    }
    let namespace = match e2e.create_namespace(test).await {
        Ok(namespace) => namespace,
        Err(err) => panic!("{test}: {err}"),
    };
    let result = body(e2e.clone(), namespace.clone()).await;
    if let Err(err) = result {
        diagnostics::dump(&e2e, &namespace).await;
        if std::env::var_os("TASKCLUSTER_E2E_KEEP").is_none() {
            let _ = e2e.delete_namespace(&namespace).await;
        }
        panic!("{test} failed: {err}");
    }
    if let Err(err) = e2e.delete_namespace(&namespace).await {
        panic!("{test}: cleaning up: {err}");
    }
}

/// Fails with `message` unless `condition` holds.
pub fn ensure(condition: bool, message: impl FnOnce() -> String) -> Result<()> {
    if condition {
        Ok(())
    } else {
        Err(Error::Invalid { context: "invariant violated".into(), message: message() })
    }
}
