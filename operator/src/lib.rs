//! The TaskCluster operator: reconciles a ZooKeeper ensemble and the master/worker
//! Deployments of each `TaskCluster`, and reports leader and backlog in its status.

pub mod autoscale;
pub mod build;
pub mod crd;
pub mod duration;
pub mod ensemble;
pub mod validate;

pub mod apply;
pub mod controller;
#[cfg(test)]
pub mod fixtures;
pub mod http;
pub mod lease;
pub mod metrics;
#[cfg(test)]
mod mock;
pub mod quantity;
pub mod scope;
pub mod status;
pub mod zk;
