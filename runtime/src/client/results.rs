//! Group read of results: reads queued while one is in flight go out together as one
//! multi-read, one request for many tasks under load and no added latency when idle.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use zookeeper_client::{Client, Error as ZkError, MultiReadResult};

use super::batch::gather;
use super::session::{CallError, Session};

/// Reads per multi-read: results can be large, and the reply is one message.
const MAX_READS: usize = 32;

pub struct Read {
    pub path: String,
    pub reply: oneshot::Sender<Result<Vec<u8>, CallError>>,
}

/// Starts the reader; it ends when every sender is dropped.
pub fn start(session: Arc<Session>) -> mpsc::UnboundedSender<Read> {
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(read_loop(session, receiver));
    sender
}

async fn read_loop(session: Arc<Session>, mut queue: mpsc::UnboundedReceiver<Read>) {
    let mut carried = None;
    while let Some(group) = gather(&mut queue, &mut carried, MAX_READS, usize::MAX, |_| 0).await {
        if group.len() > 1 {
            let paths: Vec<&str> = group.iter().map(|read| read.path.as_str()).collect();
            let results = session.call(|client, _| multi_read(client, &paths)).await;
            if let Some(results) = results.ok().filter(|results| results.len() == group.len()) {
                for (read, result) in group.into_iter().zip(results) {
                    let _ = read.reply.send(result.map_err(CallError::Zk));
                }
                continue;
            }
        }
        // One read, or a multi-read that failed as a whole: read one by one.
        let singles = group.into_iter().map(|read| {
            let session = &session;
            async move {
                let result = session.call(|client, _| single_read(client, &read.path)).await;
                let _ = read.reply.send(result);
            }
        });
        futures::future::join_all(singles).await;
    }
}

async fn single_read(client: Client, path: &str) -> Result<Vec<u8>, ZkError> {
    client.get_data(path).await.map(|(data, _)| data)
}

async fn multi_read(client: Client, paths: &[&str]) -> Result<Vec<Result<Vec<u8>, ZkError>>, ZkError> {
    let mut reader = client.new_multi_reader();
    for path in paths {
        reader.add_get_data(path)?;
    }
    let results = reader.commit().await?;
    Ok(results
        .into_iter()
        .map(|result| match result {
            MultiReadResult::Data { data, .. } => Ok(data),
            MultiReadResult::Error { err } => Err(err),
            _ => Err(ZkError::UnexpectedError("not data in reply to a data read".to_string())),
        })
        .collect())
}
