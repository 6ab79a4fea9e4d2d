//! A master: contends for leadership under `/master` and leads until it loses it.

pub mod board;
#[cfg(test)]
mod board_properties;
mod core;
mod leader;
mod writes;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use zookeeper_client::{Client, Error as ZkError, LockOptions, LockPrefix};

use self::core::LeadEnd;
use crate::connect::{self, ConnectError, ZkTarget};
use crate::paths;
use crate::records::{self, ContenderRecord, TaskSettings};
use crate::telemetry::http::Probes;
use crate::telemetry::metrics::MasterMetrics;

pub struct MasterContext {
    pub id: String,
    pub target: ZkTarget,
    pub settings: TaskSettings,
    pub metrics: MasterMetrics,
    pub probes: Arc<Probes>,
}

#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
}

/// Runs until `shutdown`: connect, contend, lead, and start over with a new session whenever
/// the old one is lost. Only a configuration error ends it early.
pub async fn run(ctx: &MasterContext, shutdown: &CancellationToken) -> Result<(), MasterError> {
    ctx.target.validate()?;
    while let Some(client) = ctx.target.connect_until_up(shutdown).await? {
        ctx.probes.set_ready(true);
        let end = contend_and_lead(&client, ctx, shutdown).await;
        ctx.probes.set_ready(false);
        connect::close(client).await;
        if end == LeadEnd::Shutdown {
            break;
        }
    }
    Ok(())
}

/// How often a contender that waits looks for persistent leftovers ahead of it.
const LEFTOVER_SWEEP: Duration = Duration::from_secs(5);

/// `/master` holds ephemeral proposals only (the recipe's rule). A persistent znode with a
/// sequence number there (a tool's leftover) has no session that could ever end, so it would
/// block every election for good: it is removed, and the log says which.
async fn remove_persistent_proposals(client: &Client) {
    let Ok(names) = client.list_children(paths::MASTER).await else { return };
    for name in names.into_iter().filter(|n| paths::is_contender(n)) {
        let path = format!("{}/{name}", paths::MASTER);
        if let Ok(Some(stat)) = client.check_stat(&path).await {
            if stat.ephemeral_owner == 0 {
                match client.delete(&path, Some(stat.version)).await {
                    Ok(()) => tracing::warn!(%path, "removed a persistent znode that blocked the election"),
                    Err(error) => {
                        tracing::warn!(%path, %error, "cannot remove a persistent znode that blocks the election")
                    },
                }
            }
        }
    }
}

async fn sweep_while_contending(client: &Client) {
    loop {
        remove_persistent_proposals(client).await;
        tokio::time::sleep(LEFTOVER_SWEEP).await;
    }
}

async fn contend_and_lead(client: &Client, ctx: &MasterContext, shutdown: &CancellationToken) -> LeadEnd {
    let record = records::encode(&ContenderRecord { id: ctx.id.clone() });
    // Our names keep Curator's shape; the empty lock name makes every sequential proposal
    // under /master count (the seed's `n_…` too), ordered by sequence number alone.
    let prefix = match LockPrefix::new_custom(paths::contender_prefix(client.session_id().0), "") {
        Ok(prefix) => prefix,
        Err(error) => {
            tracing::error!(%error, "invalid election path");
            return LeadEnd::Shutdown;
        },
    };
    tracing::info!(id = %ctx.id, session = %client.session_id(), "contending for leadership");
    let lock = tokio::select! {
        _ = shutdown.cancelled() => return LeadEnd::Shutdown,
        lock = client.lock(prefix, &record, LockOptions::new(ctx.target.acls())) => lock,
        // The sweep never ends; were it to, contending again is the safe way on.
        () = sweep_while_contending(client) => return LeadEnd::LeadershipLost,
    };
    match lock {
        Ok(lock) => {
            let lock = lock.into_owned();
            let end = leader::lead(&lock, ctx, shutdown).await;
            // Dropping the lock deletes our election znode at once, so a standby takes over
            // without waiting for the session to expire.
            drop(lock);
            end
        },
        Err(ZkError::SessionExpired | ZkError::ClientClosed) => LeadEnd::SessionLost,
        Err(error) => {
            tracing::warn!(%error, "election interrupted; contending again");
            tokio::time::sleep(Duration::from_millis(200)).await;
            LeadEnd::LeadershipLost
        },
    }
}
