//! The taskcluster runtime: leader election with fencing, the master/worker task protocol of
//! docs/protocol.md over ZooKeeper, the client that submits tasks, and the status call.

pub mod cli;
pub mod client;
pub mod commands;
pub mod connect;
pub mod localzk;
pub mod master;
pub mod paths;
pub mod records;
pub mod retry;
pub mod status;
pub mod telemetry;
pub mod worker;

pub use connect::{ConnectError, ZkTarget};
pub use status::{read_status, ClusterStatus, LeaderInfo, StatusError};
