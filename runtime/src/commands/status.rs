//! `taskcluster status`: the cluster at a glance, or JSON for scripts.

use super::Failure;
use crate::cli::StatusArgs;
use crate::status::{read_status, ClusterStatus};

pub async fn run(args: StatusArgs) -> Result<(), Failure> {
    let target = args.zk.target();
    let client = target.connect().await?;
    let status = read_status(&client).await.map_err(Failure::zookeeper)?;
    if args.json {
        let json = serde_json::to_string(&status).map_err(|e| Failure::zookeeper(e.to_string()))?;
        println!("{json}");
    } else {
        print!("{}", table(&status));
    }
    Ok(())
}

fn age(since_ms: u64) -> String {
    if since_ms == 0 {
        return "-".into();
    }
    let secs = crate::records::now_ms().saturating_sub(since_ms) / 1000;
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

pub fn table(s: &ClusterStatus) -> String {
    let (leader, since) = match &s.leader {
        Some(l) => (l.id.as_str(), age(l.since_ms)),
        None => ("(none)", "-".into()),
    };
    let rows = [
        ("LEADER", leader.to_string()),
        ("LEADING FOR", since),
        ("EPOCH", s.epoch.to_string()),
        ("MASTERS", s.masters.to_string()),
        ("WORKERS", format!("{} registered, {} busy", s.workers_registered, s.workers_busy)),
        ("BACKLOG", s.backlog.to_string()),
        ("RUNNING", s.running.to_string()),
        ("IN /tasks", s.tasks_in_tree.to_string()),
        ("COMPLETED", s.completed.to_string()),
        ("FAILED ATTEMPTS", s.failed.to_string()),
        ("DEAD-LETTERED", s.dead_lettered.to_string()),
        ("UPDATED", if s.updated_ms == 0 { "never".into() } else { format!("{} ago", age(s.updated_ms)) }),
    ];
    rows.iter().map(|(k, v)| format!("{k:<16}{v}\n")).collect()
}
