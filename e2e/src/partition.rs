//! A network partition of ZooKeeper's peer ports, forced from the host whose kernel forwards
//! the pods' traffic (the local provider's node is the machine the suite runs on; its pod
//! bridge passes every frame through iptables' FORWARD hook). The chain hangs off the mangle
//! table's FORWARD, which runs before the filter table's: there the NetworkPolicy engine
//! accepts what its policies allow and keeps its own jump first, so a drop after it would
//! never see the peers' traffic.
//!
//! Only the pods whose addresses are listed may reach a peer port (quorum 2888, election
//! 3888); every other source is cut off from them. Listing the addresses that are allowed,
//! rather than the one that is not, cuts off a pod that does not exist yet: the replacement
//! of a server that is being restarted is isolated from its first packet, whatever address
//! it gets and however soon its server starts. Clients (2181) pass everywhere.

use std::process::Command;

use crate::error::{Error, Result};

/// The chain's name starts like every chain of the local cluster's, so `local.sh down`
/// sweeps it if a killed run left it behind.
const CHAIN: &str = "TASKCLUSTER-E2E-PARTITION";
const PEER_PORTS: [u16; 2] = [2888, 3888];

/// The partition, in force until [`Partition::heal`] or drop.
pub struct Partition {
    healed: bool,
}

impl Partition {
    /// Cuts every source but `allowed` off the peer ports.
    pub fn isolate_all_but(allowed: &[String]) -> Result<Self> {
        remove();
        let mut rules = vec![vec!["-N", CHAIN]];
        for address in allowed {
            rules.push(vec!["-A", CHAIN, "-s", address, "-j", "RETURN"]);
        }
        let ports: Vec<String> = PEER_PORTS.iter().map(u16::to_string).collect();
        for port in &ports {
            rules.push(vec!["-A", CHAIN, "-p", "tcp", "--dport", port, "-j", "DROP"]);
        }
        rules.push(vec!["-I", "FORWARD", "1", "-j", CHAIN]);
        let partition = Self { healed: false };
        for rule in rules {
            iptables(&rule)?;
        }
        Ok(partition)
    }

    /// Ends the partition.
    pub fn heal(mut self) {
        remove();
        self.healed = true;
    }
}

impl Drop for Partition {
    /// A failed scenario must not leave the next one's ensembles cut off.
    fn drop(&mut self) {
        if !self.healed {
            remove();
        }
    }
}

fn remove() {
    while iptables(&["-D", "FORWARD", "-j", CHAIN]).is_ok() {}
    let _ = iptables(&["-F", CHAIN]);
    let _ = iptables(&["-X", CHAIN]);
}

fn iptables(args: &[&str]) -> Result<()> {
    let command = format!("iptables -w -t mangle {}", args.join(" "));
    let output = Command::new("iptables")
        .args(["-w", "-t", "mangle"])
        .args(args)
        .output()
        .map_err(|source| Error::Tool { command: command.clone(), variable: "PATH", source })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::Command {
            command,
            status: output.status.to_string(),
            stderr: format!(
                "{} (the partition needs root on the host that forwards the pods' traffic: the local provider)",
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        })
    }
}
