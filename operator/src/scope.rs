//! Which TaskClusters the operator sees: those of every namespace, or of one (`WATCH_NAMESPACE`),
//! where a Role is all it needs.

use k8s_openapi::NamespaceResourceScope;
use kube::{Api, Client, Resource};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace, under a ClusterRole.
    #[default]
    Cluster,
    /// This namespace only, under a Role there.
    Namespace(String),
}

impl Scope {
    /// From the value of `WATCH_NAMESPACE`: unset or blank means every namespace.
    pub fn from_env_value(value: Option<&str>) -> Self {
        match value.map(str::trim) {
            Some(namespace) if !namespace.is_empty() => Self::Namespace(namespace.into()),
            _ => Self::Cluster,
        }
    }

    /// The API of every list and watch: a cluster-wide one would be refused under a Role.
    pub fn api<K>(&self, client: Client) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match self {
            Self::Cluster => Api::all(client),
            Self::Namespace(namespace) => Api::namespaced(client, namespace),
        }
    }

    /// The RBAC objects that grant the operator its permissions, for error messages.
    pub fn rbac(&self) -> String {
        match self {
            Self::Cluster => "ClusterRole and ClusterRoleBinding".into(),
            Self::Namespace(namespace) => format!("Role and RoleBinding in namespace {namespace}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use http::{Request, Response};
    use k8s_openapi::api::apps::v1::Deployment;
    use kube::client::Body;

    use super::*;
    use crate::crd::TaskCluster;

    #[test]
    fn blank_means_every_namespace() {
        assert_eq!(Scope::from_env_value(None), Scope::Cluster);
        assert_eq!(Scope::from_env_value(Some("")), Scope::Cluster);
        assert_eq!(Scope::from_env_value(Some("  ")), Scope::Cluster);
        assert_eq!(Scope::from_env_value(Some(" team-a\n")), Scope::Namespace("team-a".into()));
    }

    #[tokio::test]
    async fn one_namespace_lists_and_watches_there_only() {
        let (service, _handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let one = Scope::Namespace("team-a".into());
        assert_eq!(
            one.api::<TaskCluster>(client.clone()).resource_url(),
            "/apis/taskcluster.dev/v1alpha1/namespaces/team-a/taskclusters"
        );
        assert_eq!(one.api::<Deployment>(client.clone()).resource_url(), "/apis/apps/v1/namespaces/team-a/deployments");
        assert_eq!(Scope::Cluster.api::<Deployment>(client).resource_url(), "/apis/apps/v1/deployments");
    }
}
