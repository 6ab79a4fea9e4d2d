//! The apply step: server-side apply of the built children under one field manager, skipping
//! every write whose result is already in place.
//!
//! Each child carries the hash of what was applied. A child is rewritten when the desired
//! hash differs, when someone else wrote it (its generation moved past the one our last
//! write produced or, for kinds without one, its resourceVersion differs), when it is
//! missing, or at the periodic resync; not when only the watch cache has yet to catch up
//! with our own last write.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::build::labels::{stable_hash, APPLIED_HASH};

/// The one field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "taskcluster-operator";

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("cannot apply {kind} {namespace}/{name}: {}", api_message(.source))]
    Apply { kind: String, namespace: String, name: String, source: kube::Error },
    #[error("cannot serialize {kind} {name}: {source}")]
    Serialize { kind: String, name: String, source: serde_json::Error },
    #[error("cannot create or release Secret {namespace}/{name}: {}", api_message(.source))]
    Credentials { namespace: String, name: String, source: kube::Error },
}

/// The API server's own words for a refused request (its message, reason and code), or the
/// client's error when no answer came.
pub fn api_message(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) if !status.message.is_empty() => {
            format!("{} ({} {})", status.message, status.code, status.reason)
        },
        other => other.to_string(),
    }
}

/// The children one reconcile could not apply; the others were applied regardless.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct ApplyFailures(pub Vec<ApplyError>);

impl ApplyFailures {
    /// True when only the credentials Secret failed.
    pub fn only_credentials(&self) -> bool {
        self.0.iter().all(|e| matches!(e, ApplyError::Credentials { .. }))
    }
}

/// What one apply did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    Unchanged,
    Created,
    Updated,
}

/// How long the watch caches may lag behind our own writes. Within it, a child we just
/// wrote with the same content is not written again even if the cache still shows the old
/// version (or nothing, right after creation).
const CACHE_LAG: Duration = Duration::from_secs(30);

/// Our last write of one child.
#[derive(Clone, Debug)]
struct Written {
    hash: String,
    /// The generation it produced: a larger one in the cache means another writer changed
    /// the spec, and ours must be put back.
    generation: Option<i64>,
    /// The resourceVersion it produced, for kinds without a generation (Service,
    /// ConfigMap): nothing but writes changes theirs, so a different one is someone else's.
    resource_version: Option<String>,
    at: Instant,
}

/// What the operator last wrote, per child.
#[derive(Default)]
pub struct Ledger {
    written: Mutex<HashMap<String, Written>>,
}

impl Ledger {
    pub(crate) fn key<K: Resource<DynamicType = ()>>(namespace: &str, name: &str) -> String {
        format!("{}/{namespace}/{name}", K::kind(&()))
    }

    fn get(&self, key: &str) -> Option<Written> {
        self.written.lock().ok()?.get(key).cloned()
    }

    pub(crate) fn record(&self, key: String, hash: String, meta: &ObjectMeta) {
        if let Ok(mut written) = self.written.lock() {
            let entry = Written {
                hash,
                generation: meta.generation,
                resource_version: meta.resource_version.clone(),
                at: Instant::now(),
            };
            written.insert(key, entry);
        }
    }

    /// Forgets every child of a namespace/name prefix (the TaskCluster is gone).
    pub fn forget_instance(&self, namespace: &str, prefix: &str) {
        if let Ok(mut written) = self.written.lock() {
            let needle = format!("/{namespace}/{prefix}-");
            written.retain(|key, _| !key.contains(&needle));
        }
    }
}

/// Whether someone else wrote the object since our last write (unknown after a restart).
fn overwritten_since(last: Option<&Written>, current: &ObjectMeta) -> bool {
    let Some(last) = last else { return false };
    match (last.generation, current.generation) {
        (Some(ours), Some(seen)) => seen > ours,
        (None, None) => matches!(
            (&last.resource_version, &current.resource_version),
            (Some(ours), Some(seen)) if ours != seen
        ),
        _ => false,
    }
}

/// Stamps `desired` with the hash of its content and returns the hash.
pub fn annotate<K: Resource + Serialize>(desired: &mut K) -> Result<String, serde_json::Error> {
    let hash = stable_hash(&serde_json::to_vec(&*desired)?);
    desired.annotations_mut().insert(APPLIED_HASH.into(), hash.clone());
    Ok(hash)
}

/// Everything the apply step needs: the client, the caches of current children, the ledger.
pub struct Applier<'a> {
    pub client: &'a Client,
    pub ledger: &'a Ledger,
    /// Apply even when the hashes match (periodic resync).
    pub force: bool,
}

impl Applier<'_> {
    /// Applies `desired` unless the cached `current` already is what we would write.
    pub async fn apply<K>(&self, store: &Store<K>, mut desired: K) -> Result<Applied, ApplyError>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + Debug
            + Serialize
            + DeserializeOwned
            + Send
            + Sync
            + 'static,
    {
        let kind = K::kind(&()).to_string();
        let name = desired.name_any();
        let namespace = desired.namespace().unwrap_or_default();
        let hash = annotate(&mut desired).map_err(|source| ApplyError::Serialize {
            kind: kind.clone(),
            name: name.clone(),
            source,
        })?;

        let key = Ledger::key::<K>(&namespace, &name);
        let current = store.get(&ObjectRef::new(&name).within(&namespace));
        let last = self.ledger.get(&key);
        if !self.force {
            let recent = last.as_ref().filter(|l| l.hash == hash && l.at.elapsed() < CACHE_LAG);
            if let Some(last) = recent {
                // The cache may still show the version before our write; only a newer
                // generation proves another writer.
                let seen = current.as_ref().and_then(|c| c.meta().generation);
                let overwritten = matches!((seen, last.generation), (Some(seen), Some(ours)) if seen > ours);
                if !overwritten {
                    return Ok(Applied::Unchanged);
                }
            } else if let Some(current) = &current {
                let same_hash = current.annotations().get(APPLIED_HASH) == Some(&hash);
                if same_hash && !overwritten_since(last.as_ref(), current.meta()) {
                    return Ok(Applied::Unchanged);
                }
            }
        }
        let api: Api<K> = Api::namespaced(self.client.clone(), &namespace);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let written = api.patch(&name, &params, &Patch::Apply(&desired)).await.map_err(|source| ApplyError::Apply {
            kind: kind.clone(),
            namespace: namespace.clone(),
            name: name.clone(),
            source,
        })?;
        self.ledger.record(key, hash, written.meta());
        Ok(if current.is_some() { Applied::Updated } else { Applied::Created })
    }
}

/// Makes sure the credentials Secret exists, creating it with `make`. Its data is never
/// updated: the ACLs in ZooKeeper name the identity it holds, so an existing Secret wins.
/// It is created rather than read first, so the operator needs no `get` on Secrets. When
/// `make` gives no owner (the data is retained) an existing Secret must outlive the
/// TaskCluster too: its owner goes, by a merge patch that changes nothing when it has none.
pub async fn ensure_secret(
    client: &Client,
    namespace: &str,
    name: &str,
    make: impl FnOnce() -> Secret,
) -> Result<Applied, ApplyError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let failed = |source| ApplyError::Credentials { namespace: namespace.into(), name: name.into(), source };
    let secret = make();
    let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() };
    match api.create(&params, &secret).await {
        Ok(_) => return Ok(Applied::Created),
        Err(kube::Error::Api(status)) if status.code == 409 && status.reason == "AlreadyExists" => {},
        Err(source) => return Err(failed(source)),
    }
    if secret.metadata.owner_references.is_some() {
        return Ok(Applied::Unchanged);
    }
    let release = serde_json::json!({"metadata": {"ownerReferences": null}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&release)).await.map_err(failed)?;
    Ok(Applied::Updated)
}
