//! Whether the suite runs at all, and against what.

use std::path::PathBuf;

use kube::Client;

use crate::tools::Tools;

/// The variable that turns the suite on. Unset, every test passes without doing
/// anything and says so; set, every test runs and fails loudly on any problem.
pub const ENABLE_VAR: &str = "TASKCLUSTER_E2E";

/// Set (to anything) when the cluster has no storage provisioner, as the local provider
/// does not: TaskClusters then get the CRD's ephemeral ZooKeeper storage.
pub const EPHEMERAL_STORAGE_VAR: &str = "TASKCLUSTER_E2E_EPHEMERAL_STORAGE";

/// The release of an operator build, loaded on the cluster's node beside the current one,
/// that the upgrade scenario installs first (e2e/cluster/ci.sh builds it); unset, that
/// scenario is skipped and says so.
pub const UPGRADE_FROM_VAR: &str = "TASKCLUSTER_E2E_UPGRADE_FROM";

/// One test's view of the cluster.
#[derive(Clone)]
pub struct E2e {
    pub client: Client,
    pub tools: Tools,
    pub repo_root: PathBuf,
    pub ephemeral_storage: bool,
    pub upgrade_from: Option<String>,
}

impl E2e {
    /// `None` (and a note on stderr) when the suite is off. Panics when it is on but
    /// cannot reach the cluster: a skipped suite must never pass for a green one.
    pub async fn from_env(test: &str) -> Option<Self> {
        if std::env::var_os(ENABLE_VAR).is_none_or(|v| v.is_empty()) {
            eprintln!(
                "skipping {test}: {ENABLE_VAR} is unset; set {ENABLE_VAR}=1 and KUBECONFIG to run it \
                 against a cluster (e2e/cluster/local.sh up or kind.sh up)"
            );
            return None;
        }
        let client = match Client::try_default().await {
            Ok(client) => client,
            Err(err) => panic!(
                "{ENABLE_VAR} is set but no cluster is reachable through KUBECONFIG={:?}: {err}",
                std::env::var("KUBECONFIG").unwrap_or_default()
            ),
        };
        if let Err(err) = client.apiserver_version().await {
            panic!("{ENABLE_VAR} is set but the API server does not answer: {err}");
        }
        let repo_root =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
        Some(Self {
            client,
            tools: Tools::from_env(),
            repo_root,
            ephemeral_storage: std::env::var_os(EPHEMERAL_STORAGE_VAR).is_some_and(|v| !v.is_empty()),
            upgrade_from: std::env::var(UPGRADE_FROM_VAR).ok().filter(|v| !v.is_empty()),
        })
    }
}
