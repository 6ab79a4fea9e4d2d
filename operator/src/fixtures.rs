//! Test fixtures: TaskClusters as users write them, with chainable tweaks.

use kube::core::ObjectMeta;

use crate::crd::TaskCluster;

pub const EXAMPLE: &str = include_str!("../../examples/taskcluster.yaml");

pub fn from_yaml(yaml: &str) -> TaskCluster {
    serde_yaml::from_str(yaml).expect("fixture is a TaskCluster")
}

/// The documented example, as the API server returns it (uid and generation set).
pub fn example() -> TaskCluster {
    from_yaml(EXAMPLE).test()
}

impl TaskCluster {
    /// Gives the object the metadata the API server would have assigned.
    pub fn test(mut self) -> Self {
        let name = self.metadata.name.clone().unwrap_or_else(|| "demo".into());
        self.metadata = ObjectMeta {
            name: Some(name),
            namespace: Some(self.metadata.namespace.clone().unwrap_or_else(|| "default".into())),
            uid: Some("5b4c7d1e-0000-4000-8000-000000000001".into()),
            generation: Some(1),
            resource_version: Some("100".into()),
            ..self.metadata
        };
        self
    }

    pub fn with_workers(mut self, workers: i32) -> Self {
        self.spec.workers = workers;
        self
    }

    pub fn with_generation(mut self, generation: i64) -> Self {
        self.metadata.generation = Some(generation);
        self
    }

    /// Sets `spec.autoscaling` from its YAML.
    pub fn with_autoscaling(mut self, yaml: &str) -> Self {
        self.spec.autoscaling = Some(serde_yaml::from_str(yaml).expect("autoscaling fixture"));
        self
    }

    pub fn with_exec(mut self, exec: &str) -> Self {
        self.spec.exec = Some(exec.into());
        self
    }
}
