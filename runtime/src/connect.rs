//! Connecting to ZooKeeper: the `--zk` string, optional digest credentials, and the roots.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use zookeeper_client::{Acl, Acls, Client, CreateMode, Permission};

use crate::paths;
use crate::retry::{is_transient, retrying};

/// Where and how to reach the ensemble, as given by `--zk` and `--zk-digest`.
#[derive(Clone, Debug)]
pub struct ZkTarget {
    /// `host:port[,host:port...][/chroot]`.
    pub connect: String,
    /// `user:password` for ZooKeeper's digest scheme; when set, everything we create is
    /// writable by that identity only (readable by anyone).
    pub digest: Option<String>,
    pub session_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid ZooKeeper address {connect:?}: {reason} (expected host:port[,host:port...][/chroot])")]
    BadAddress { connect: String, reason: String },
    #[error("invalid ZooKeeper credentials: {0} (expected user:password)")]
    BadDigest(&'static str),
    #[error("cannot reach ZooKeeper at {connect} within {timeout:?}: {source}; check that the servers run and --zk is right")]
    Unreachable { connect: String, timeout: Duration, source: zookeeper_client::Error },
    #[error("ZooKeeper at {connect} refused our credentials: {source}")]
    Auth { connect: String, source: zookeeper_client::Error },
    #[error("cannot create {path} on ZooKeeper: {source}")]
    Roots { path: &'static str, source: zookeeper_client::Error },
}

static CREATOR_ALL_ANYONE_READ: [Acl; 2] =
    [Acl::new_const(Permission::ALL, "auth", ""), Acl::new_const(Permission::READ, "world", "anyone")];

impl ZkTarget {
    pub fn new(connect: impl Into<String>) -> Self {
        Self { connect: connect.into(), digest: None, session_timeout: Duration::from_secs(10) }
    }

    pub fn with_session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    pub fn with_digest(mut self, digest: Option<String>) -> Self {
        self.digest = digest;
        self
    }

    /// Checks the address before any network traffic, so a typo gets a precise message.
    pub fn validate(&self) -> Result<(), ConnectError> {
        let bad = |reason: &str| ConnectError::BadAddress { connect: self.connect.clone(), reason: reason.into() };
        let (hosts, chroot) = match self.connect.find('/') {
            Some(i) => (&self.connect[..i], Some(&self.connect[i..])),
            None => (self.connect.as_str(), None),
        };
        if hosts.is_empty() {
            return Err(bad("no server given"));
        }
        for host in hosts.split(',') {
            let (name, port) = host.rsplit_once(':').ok_or_else(|| bad(&format!("{host:?} has no :port")))?;
            if name.is_empty() {
                return Err(bad(&format!("{host:?} has no host name")));
            }
            match port.parse::<u16>() {
                Ok(p) if p > 0 => {},
                _ => return Err(bad(&format!("{port:?} is not a port number"))),
            }
        }
        if let Some(chroot) = chroot {
            if chroot.len() > 1 && (chroot.ends_with('/') || chroot.contains("//")) {
                return Err(bad("the chroot must be an absolute path without a trailing slash"));
            }
        }
        if let Some(digest) = &self.digest {
            match digest.split_once(':') {
                Some((user, password)) if !user.is_empty() && !password.is_empty() => {},
                _ => return Err(ConnectError::BadDigest("user or password is empty")),
            }
        }
        Ok(())
    }

    /// ACLs for znodes we create: creator-only writes when credentials are configured.
    pub fn acls(&self) -> Acls<'static> {
        if self.digest.is_some() {
            Acls::new(&CREATOR_ALL_ANYONE_READ)
        } else {
            Acls::anyone_all()
        }
    }

    /// Opens a session. Fails after the session timeout when no server answers.
    pub async fn connect(&self) -> Result<Client, ConnectError> {
        self.validate()?;
        let mut connector = Client::connector()
            .with_session_timeout(self.session_timeout)
            .with_connection_timeout(self.session_timeout.min(Duration::from_secs(5)));
        if let Some(digest) = &self.digest {
            connector = connector.with_auth("digest", digest.as_bytes());
        }
        let attempt = connector.connect(&self.connect);
        let unreachable =
            |source| ConnectError::Unreachable { connect: self.connect.clone(), timeout: self.session_timeout, source };
        match tokio::time::timeout(self.session_timeout, attempt).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(source @ zookeeper_client::Error::AuthFailed)) => {
                Err(ConnectError::Auth { connect: self.connect.clone(), source })
            },
            Ok(Err(source)) => Err(unreachable(source)),
            Err(_) => Err(unreachable(zookeeper_client::Error::Timeout)),
        }
    }

    /// Opens a session and makes sure the roots of docs/protocol.md exist, creating the
    /// chroot itself first when it is missing. A connection lost meanwhile is ridden out
    /// while the session lives; only the session's end is an error.
    pub async fn connect_with_roots(&self) -> Result<Client, ConnectError> {
        let client = self.connect().await?;
        match ensure_roots(&client, self.acls()).await {
            Err(ConnectError::Roots { source: zookeeper_client::Error::NoNode, .. }) => {
                self.create_chroot().await?;
                ensure_roots(&client, self.acls()).await?;
            },
            other => other?,
        }
        Ok(client)
    }

    async fn create_chroot(&self) -> Result<(), ConnectError> {
        let Some(at) = self.connect.find('/') else { return Ok(()) };
        let chroot = &self.connect[at..];
        let hosts = ZkTarget { connect: self.connect[..at].to_string(), ..self.clone() };
        let client = hosts.connect().await?;
        let options = CreateMode::Persistent.with_acls(self.acls());
        // A retried mkdir meets what the lost attempt created as NodeExists, which it skips.
        match retrying(&client, is_transient, || client.mkdir(chroot, &options)).await {
            Ok(()) | Err(zookeeper_client::Error::NodeExists) => Ok(()),
            Err(source) => Err(ConnectError::Roots { path: "the chroot", source }),
        }
    }
}

impl ZkTarget {
    /// For long-running roles: opens a session with the roots, retrying with backoff while
    /// ZooKeeper is unreachable (pods may start before it). None on shutdown; an error only
    /// for a configuration mistake that no retry fixes.
    pub async fn connect_until_up(&self, shutdown: &CancellationToken) -> Result<Option<Client>, ConnectError> {
        let mut backoff = Duration::from_millis(100);
        loop {
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                client = self.connect_with_roots() => client,
            };
            match attempt {
                Ok(client) => return Ok(Some(client)),
                Err(error @ (ConnectError::BadAddress { .. } | ConnectError::BadDigest(_))) => return Err(error),
                Err(error) => {
                    tracing::error!(%error, retry_in = ?backoff, "cannot start a ZooKeeper session");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(None),
                        _ = tokio::time::sleep(backoff) => {},
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                },
            }
        }
    }
}

/// Closes the session and waits (briefly) until it is closed, so our ephemeral znodes vanish
/// now rather than after the session timeout.
pub async fn close(client: Client) {
    let mut state = client.state_watcher();
    drop(client);
    let closed = async { while !state.changed().await.is_terminated() {} };
    let _ = tokio::time::timeout(Duration::from_secs(2), closed).await;
}

/// Creates each root that is missing; another participant creating it first is fine. A
/// connection lost right after the session opened is no reason to give up: each request is
/// retried while the session lives (a create whose reply was lost then meets NodeExists).
pub async fn ensure_roots(client: &Client, acls: Acls<'static>) -> Result<(), ConnectError> {
    let options = CreateMode::Persistent.with_acls(acls);
    for path in paths::ROOTS {
        let failed = |source| ConnectError::Roots { path, source };
        if retrying(client, is_transient, || client.check_stat(path)).await.map_err(failed)?.is_some() {
            continue;
        }
        match retrying(client, is_transient, || client.create(path, b"", &options)).await {
            Ok(_) | Err(zookeeper_client::Error::NodeExists) => {},
            Err(source) => return Err(failed(source)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked_before_connecting() {
        assert!(ZkTarget::new("127.0.0.1:2181").validate().is_ok());
        assert!(ZkTarget::new("a:1,b:2/app/tc").validate().is_ok());
        for bad in ["", "/chroot", "host", "host:", ":2181", "host:99999", "host:0", "a:1/app/"] {
            let err = ZkTarget::new(bad).validate().unwrap_err().to_string();
            assert!(err.contains("invalid ZooKeeper address"), "{bad}: {err}");
        }
        let err = ZkTarget::new("a:1").with_digest(Some("nopassword".into())).validate().unwrap_err();
        assert!(matches!(err, ConnectError::BadDigest(_)));
    }
}
