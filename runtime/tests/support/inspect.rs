//! A plain ZooKeeper session for looking at (and, as a foreign client, scribbling into) the
//! znodes of a test's chroot.

use std::time::Duration;

use zookeeper_client::{Acls, Client, CreateMode, Error as ZkError, Stat};

pub struct Inspector {
    pub client: Client,
}

impl Inspector {
    /// Connects to `hosts[/chroot]`; retries until `timeout` because servers may still be
    /// electing a leader.
    pub async fn connect(connect: &str, timeout: Duration) -> Inspector {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let attempt = Client::connector()
                .with_session_timeout(Duration::from_secs(10))
                .with_connection_timeout(Duration::from_secs(2))
                .connect(connect);
            match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                Ok(Ok(client)) => return Inspector { client },
                Ok(Err(e)) if tokio::time::Instant::now() >= deadline => {
                    panic!("inspector cannot connect to ZooKeeper at {connect}: {e}")
                },
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    panic!("inspector cannot connect to ZooKeeper at {connect}: timed out")
                },
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Children of `path`; a missing znode has none.
    pub async fn children(&self, path: &str) -> Vec<String> {
        match self.client.list_children(path).await {
            Ok(children) => children,
            Err(ZkError::NoNode) => Vec::new(),
            Err(e) => panic!("list children of {path}: {e}"),
        }
    }

    /// Children of `path`, or None if ZooKeeper does not answer (e.g. no quorum).
    pub async fn try_children(&self, path: &str) -> Option<Vec<String>> {
        match self.client.list_children(path).await {
            Ok(children) => Some(children),
            Err(ZkError::NoNode) => Some(Vec::new()),
            Err(_) => None,
        }
    }

    pub async fn data(&self, path: &str) -> Option<Vec<u8>> {
        match self.client.get_data(path).await {
            Ok((data, _)) => Some(data),
            Err(ZkError::NoNode) => None,
            Err(e) => panic!("read {path}: {e}"),
        }
    }

    pub async fn stat(&self, path: &str) -> Option<Stat> {
        match self.client.check_stat(path).await {
            Ok(stat) => stat,
            Err(e) => panic!("stat {path}: {e}"),
        }
    }

    pub async fn exists(&self, path: &str) -> bool {
        self.stat(path).await.is_some()
    }

    /// Creates `path` (parents included) holding `data`; `ephemeral` ties it to this session.
    pub async fn put(&self, path: &str, data: &[u8], ephemeral: bool) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            if !parent.is_empty() {
                let options = CreateMode::Persistent.with_acls(Acls::anyone_all());
                match self.client.mkdir(parent, &options).await {
                    Ok(()) => {},
                    Err(e) => panic!("create parents of {path}: {e}"),
                }
            }
        }
        let mode = if ephemeral { CreateMode::Ephemeral } else { CreateMode::Persistent };
        match self.client.create(path, data, &mode.with_acls(Acls::anyone_all())).await {
            Ok(_) => {},
            Err(ZkError::NodeExists) => {
                self.client.set_data(path, data, None).await.unwrap_or_else(|e| panic!("write {path}: {e}"));
            },
            Err(e) => panic!("create {path}: {e}"),
        }
    }

    /// Overwrites an existing znode.
    pub async fn set(&self, path: &str, data: &[u8]) {
        self.client.set_data(path, data, None).await.unwrap_or_else(|e| panic!("write {path}: {e}"));
    }

    /// Makes sure this session sees every write committed before the call.
    pub async fn sync(&self, path: &str) {
        let _ = self.client.sync(path).await;
    }
}
