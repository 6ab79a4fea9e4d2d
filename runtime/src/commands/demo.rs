//! `taskcluster demo`: a local ZooKeeper, two masters and three workers as real processes;
//! submits tasks, stops the leader half-way, and shows the failover and the results.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};

use super::Failure;
use crate::cli::DemoArgs;
use crate::client::Submitter;
use crate::connect::ZkTarget;
use crate::localzk::LocalZk;
use crate::records::TaskOutcome;
use crate::status::read_status;

/// Child processes killed on drop, so an interrupted demo leaves nothing behind.
struct Processes(Vec<(String, Child)>);

impl Processes {
    fn spawn(&mut self, zk: &str, role: &str, id: &str) -> Result<(), Failure> {
        let exe = std::env::current_exe().map_err(|e| Failure::usage(format!("cannot find our own binary: {e}")))?;
        let child = Command::new(exe)
            .args([role, "--zk", zk, "--id", id, "--listen", "off", "--session-timeout", "4s"])
            .env("RUST_LOG", "warn,zookeeper_client=error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| Failure::usage(format!("cannot start {role} {id}: {e}")))?;
        self.0.push((id.to_string(), child));
        Ok(())
    }

    /// Sends SIGTERM; the process exits on its own (reaped on drop).
    fn terminate(&mut self, id: &str) {
        if let Some((_, child)) = self.0.iter_mut().find(|(name, _)| name == id) {
            // SAFETY: kill(2) on a child we spawned and have not reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn leader_of(client: &zookeeper_client::Client) -> Option<String> {
    read_status(client).await.ok().and_then(|s| s.leader).map(|l| l.id)
}

pub async fn run(args: DemoArgs) -> Result<(), Failure> {
    let local;
    let zk = match &args.zk {
        Some(zk) => zk.clone(),
        None => {
            println!("starting a local ZooKeeper ...");
            local = tokio::task::spawn_blocking(LocalZk::start)
                .await
                .map_err(|e| Failure::usage(e.to_string()))?
                .map_err(|e| Failure::zookeeper(e.to_string()))?;
            local.connect_string()
        },
    };
    let target = ZkTarget::new(zk.clone());
    let mut processes = Processes(Vec::new());
    for id in ["master-a", "master-b"] {
        processes.spawn(&zk, "master", id)?;
    }
    for id in ["worker-1", "worker-2", "worker-3"] {
        processes.spawn(&zk, "worker", id)?;
    }
    let submitter = Arc::new(Submitter::connect(&target).await.map_err(Failure::zookeeper)?);
    let watch = submitter.client().clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    let first_leader = loop {
        if let Some(leader) = leader_of(&watch).await {
            break leader;
        }
        if Instant::now() > deadline {
            return Err(Failure::zookeeper("no master became leader within 20 s"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("masters master-a, master-b; workers worker-1..3; leader: {first_leader}");
    println!("submitting {} tasks (the seed computation: words reversed, upper-cased) ...", args.tasks);

    let mut inflight = FuturesUnordered::new();
    let (mut done, mut failed, mut next) = (0u64, 0u64, 0u64);
    let mut sample = Vec::new();
    let mut failover_at = None;
    while done < args.tasks {
        while next < args.tasks && inflight.len() < 8 {
            let submitter = submitter.clone();
            let payload = format!("task number {next} from the demo");
            next += 1;
            inflight.push(async move { (payload.clone(), submitter.run(payload.as_bytes()).await) });
        }
        let Some((payload, result)) = inflight.next().await else { break };
        done += 1;
        match result {
            Ok((_, TaskOutcome::Succeeded(out))) => {
                if sample.len() < 3 {
                    sample.push((payload, String::from_utf8_lossy(&out).into_owned()));
                }
            },
            Ok((_, TaskOutcome::Failed(message))) => {
                failed += 1;
                println!("  task failed: {message}");
            },
            Err(error) => return Err(Failure::zookeeper(error)),
        }
        if done == args.tasks / 2 && failover_at.is_none() {
            let leader = leader_of(&watch).await.unwrap_or_default();
            println!("{done} tasks done; stopping the leader {leader} (SIGTERM) while tasks flow ...");
            processes.terminate(&leader);
            failover_at = Some((Instant::now(), leader));
        }
        if let Some((at, old)) = &failover_at {
            if let Some(new) = leader_of(&watch).await.filter(|l| l != old) {
                println!("  failover: {new} leads, {} ms after the signal", at.elapsed().as_millis());
                failover_at = Some((Instant::now() + Duration::from_secs(3600), new));
            }
        }
    }
    for (payload, result) in sample {
        println!("  {payload:?} -> {result:?}");
    }
    // Let the leader publish its latest counters (every 500 ms).
    tokio::time::sleep(Duration::from_millis(700)).await;
    let status = read_status(&watch).await.map_err(Failure::zookeeper)?;
    println!("{} tasks completed, {failed} failed; cluster status:", done - failed);
    print!("{}", super::status::table(&status));
    if status.completed < done - failed {
        println!("(COMPLETED counts the results the leaders saw; those that landed during the failover");
        println!(" were delivered but not counted: the counters are best-effort across a leader change)");
    }
    Ok(())
}
