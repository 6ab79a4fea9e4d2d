//! Test harness: real ZooKeeper servers, our binary as child processes, and the helpers the
//! scenario tests share (polling with deadlines, metrics, znode inspection, the exec journal).
//!
//! Every child process gets `PR_SET_PDEATHSIG` and is killed on drop, so a failing test leaves
//! no stray `java` or `taskcluster` behind.
#![allow(dead_code, unused_imports)]

pub mod chaos;
pub mod cluster;
pub mod inspect;
pub mod journal;
pub mod metrics;
pub mod poll;
pub mod process;
pub mod proxy;
pub mod python;
pub mod results;
pub mod zk_server;

pub use cluster::{
    all_tasks_have_results, assert_tree_drained, is_leader, scrape, wait_http_ok, wait_ready, wait_single_leader,
    MasterOpts, TestCluster, WorkerOpts,
};
pub use inspect::Inspector;
pub use journal::Journal;
pub use metrics::Metrics;
pub use poll::{eventually, eventually_async, settle};
pub use process::{now_ns, Proc};
pub use proxy::Proxy;
pub use results::{
    assert_client_succeeded, assert_exactly_one_ok_result_each, payloads, seed_result, seed_results, ResultLine,
};
pub use zk_server::{free_port, shared_standalone, ZkCluster};

use std::time::Duration;

/// Failure timeout for things that normally happen within a second or two.
pub const SHORT: Duration = Duration::from_secs(20);
/// Failure timeout for things that wait on session expiry, elections or whole batches of work.
pub const LONG: Duration = Duration::from_secs(90);

/// Session timeout given to our masters and workers: the servers run with tickTime=500, so
/// anything from 1 s to 10 s is allowed.
pub const SESSION_TIMEOUT: &str = "4s";
