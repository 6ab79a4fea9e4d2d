//! What the tests that run real ZooKeeper servers share: loopback ports.
#![allow(dead_code)] // each test binary uses its own part

/// A loopback port that this test process was not handed before (`taskcluster::localzk::free_port`).
pub fn free_port() -> u16 {
    taskcluster::localzk::free_port().expect("a free loopback port")
}

/// Loopback ports of one ensemble member.
#[derive(Clone, Copy)]
pub struct Ports {
    pub client: u16,
    pub peer: u16,
    pub election: u16,
}

impl Ports {
    pub fn new() -> Self {
        Self { client: free_port(), peer: free_port(), election: free_port() }
    }

    /// The member's entry after `server.<id>=` in a dynamic membership, as the operator's
    /// `server_address` writes it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}:{}:participant;127.0.0.1:{}", self.peer, self.election, self.client)
    }
}
