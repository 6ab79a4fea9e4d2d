//! Requests for containers whose spec sets no resources: enough for the scheduler to place
//! them where they fit and to keep them off an overcommitted node. No limits by default: a
//! worker's `exec` command or a ZooKeeper snapshot may need more for a while, and an
//! unexpected OOM kill costs more than the memory.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::quantity;

/// Memory a ZooKeeper JVM uses beyond its heap (metaspace, threads, buffers) at rest.
const JVM_OVERHEAD: u128 = 128 << 20;

fn requests(cpu: &str, memory: String) -> ResourceRequirements {
    let requests =
        BTreeMap::from([("cpu".to_string(), Quantity(cpu.into())), ("memory".to_string(), Quantity(memory))]);
    ResourceRequirements { requests: Some(requests), ..Default::default() }
}

/// `given`, or the default requests of a master or worker (a few MB of RSS, idle CPU).
pub fn node(given: Option<&ResourceRequirements>) -> ResourceRequirements {
    given.cloned().unwrap_or_else(|| requests("50m", "32Mi".into()))
}

/// `given`, or the default requests of a ZooKeeper server: its heap plus the JVM's own.
pub fn zookeeper(given: Option<&ResourceRequirements>, heap: &str) -> ResourceRequirements {
    given.cloned().unwrap_or_else(|| {
        let heap = quantity::jvm_bytes(heap).unwrap_or(256 << 20);
        requests("100m", quantity::mebibytes(heap + JVM_OVERHEAD))
    })
}
