//! Prints the TaskCluster CRD as YAML: `cargo run -p taskcluster-operator --bin crdgen > crds/taskcluster.yaml`.

use kube::CustomResourceExt;
use taskcluster_operator::crd::TaskCluster;

fn main() {
    match serde_yaml::to_string(&TaskCluster::crd()) {
        Ok(yaml) => print!("{yaml}"),
        Err(err) => {
            eprintln!("cannot render the CRD: {err}");
            std::process::exit(1);
        },
    }
}
