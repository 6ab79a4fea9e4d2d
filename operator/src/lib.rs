//! The TaskCluster operator: reconciles a ZooKeeper ensemble and the master/worker
//! Deployments of each `TaskCluster`, and reports leader and backlog in its status.

pub mod crd;
pub mod build;
pub mod duration;
pub mod validate;

#[cfg(test)]
pub mod fixtures;
pub mod apply;
pub mod controller;
pub mod metrics;
pub mod status;
pub mod zk;
pub mod http;
#[cfg(test)]
mod mock;
