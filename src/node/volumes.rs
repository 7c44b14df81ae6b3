//! Volume set-up, the kubelet's way: projected (serviceAccountToken through
//! [`super::tokens`], configMap, secret, downwardAPI), secret, configMap,
//! downwardAPI, emptyDir and hostPath. Files are written atomically
//! ([`super::atomic`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use futures::future::try_join_all;
use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, Volume, VolumeProjection,
};
use kube::Api;

use super::atomic::{self, FileProjection, Payload};
use super::downward::{self, NodeResources};
use super::tokens::{self, TokenCache};

/// A volume that could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("MountVolume.SetUp failed for volume {volume:?}")]
pub struct MountError {
    pub volume: String,
    #[source]
    pub source: Error,
}

/// Why a volume could not be set up; the messages read like the kubelet's.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configMap or secret the volume names does not exist (and the volume
    /// does not say optional).
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    /// Reading a configMap or secret the volume names failed.
    #[error("failed to fetch {kind} {name:?}")]
    Fetch {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    /// An item names a key the configMap or secret does not have.
    #[error("configuration error: {kind} {name:?} has no key {key:?}")]
    MissingKey {
        kind: &'static str,
        name: String,
        key: String,
    },
    /// The projected ServiceAccount token could not be had.
    #[error(transparent)]
    Token(#[from] tokens::Error),
    /// A downwardAPI item the node cannot resolve.
    #[error(transparent)]
    Downward(#[from] downward::Error),
    /// A downwardAPI item with neither `fieldRef` nor `resourceFieldRef`.
    #[error("downwardAPI item {0:?} has no source")]
    NoDownwardSource(String),
    /// A `hostPath` with a type that requires the path to exist, and it does not.
    #[error("hostPath type check failed: {0} does not exist")]
    HostPathMissing(String),
    /// Creating the volume's directory (emptyDir, hostPath) failed.
    #[error("creating {}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writing the volume's files failed (a full disk names itself in the
    /// source: "No space left on device").
    #[error("writing the volume to {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A volume type the sandbox node does not implement.
    #[error("this volume type is not supported by the sa-lab sandbox node")]
    UnsupportedVolume,
    /// A projected source the sandbox node does not implement.
    #[error("this projected volume source is not supported by the sa-lab sandbox node")]
    UnsupportedProjection,
}

/// The configMaps and secrets a Pod's volumes read: a change to one of
/// them is a reason to set the volumes up again.
#[derive(Debug, Default, PartialEq)]
pub struct Sources {
    pub configmaps: BTreeSet<String>,
    pub secrets: BTreeSet<String>,
}

/// The configMaps and secrets named by `pod`'s volumes (projected sources included).
pub fn sources(pod: &Pod) -> Sources {
    let mut out = Sources::default();
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
    for v in volumes.into_iter().flatten() {
        if let Some(c) = &v.config_map {
            out.configmaps.insert(c.name.clone());
        }
        if let Some(s) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            out.secrets.insert(s);
        }
        let projected = v.projected.as_ref().and_then(|p| p.sources.as_ref());
        for p in projected.into_iter().flatten() {
            if let Some(c) = &p.config_map {
                out.configmaps.insert(c.name.clone());
            }
            if let Some(s) = &p.secret {
                out.secrets.insert(s.name.clone());
            }
        }
    }
    out
}

pub struct VolumeCtx<'a> {
    pub client: &'a kube::Client,
    pub pod: &'a Pod,
    pub tokens: &'a TokenCache,
    pub node: NodeResources,
}

/// Sets up every volume of the pod under `volumes_dir`; returns name -> host path.
pub async fn setup_all(
    vctx: &VolumeCtx<'_>,
    volumes_dir: &Path,
) -> Result<BTreeMap<String, PathBuf>, MountError> {
    let vols = vctx
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    let done = try_join_all(vols.iter().map(|v| async move {
        let dir = volumes_dir.join(&v.name);
        setup_one(vctx, v, &dir)
            .await
            .map_err(|source| MountError {
                volume: v.name.clone(),
                source,
            })?;
        Ok::<_, MountError>((v.name.clone(), dir))
    }))
    .await?;
    Ok(done.into_iter().collect())
}

fn mode_or_default(mode: Option<i32>) -> u32 {
    mode.unwrap_or(0o644) as u32
}

async fn setup_one(vctx: &VolumeCtx<'_>, v: &Volume, dir: &Path) -> Result<(), Error> {
    let payload = if let Some(p) = &v.projected {
        let mode = mode_or_default(p.default_mode);
        let sources = p.sources.clone().unwrap_or_default();
        let parts =
            try_join_all(sources.iter().map(|s| projection(vctx, &v.name, s, mode))).await?;
        let mut all = Payload::new();
        for part in parts {
            all.extend(part);
        }
        all
    } else if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let mode = mode_or_default(s.default_mode);
        let optional = s.optional.unwrap_or(false);
        secret_payload(vctx, &name, s.items.as_deref(), optional, mode).await?
    } else if let Some(c) = &v.config_map {
        let mode = mode_or_default(c.default_mode);
        let optional = c.optional.unwrap_or(false);
        configmap_payload(vctx, &c.name, c.items.as_deref(), optional, mode).await?
    } else if let Some(d) = &v.downward_api {
        let mode = mode_or_default(d.default_mode);
        downward_payload(vctx, d.items.as_deref().unwrap_or_default(), mode)?
    } else if v.empty_dir.is_some() {
        return empty_dir(dir);
    } else if let Some(h) = &v.host_path {
        return host_path(&h.path, h.type_.as_deref().unwrap_or(""), dir);
    } else {
        return Err(Error::UnsupportedVolume);
    };
    atomic::write(dir, &payload).map_err(|source| Error::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(())
}

fn create_dir(path: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(path).map_err(|source| Error::Create {
        path: path.to_path_buf(),
        source,
    })
}

fn empty_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    create_dir(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).map_err(|source| {
        Error::Create {
            path: dir.to_path_buf(),
            source,
        }
    })
}

/// A hostPath volume is a symlink to the host path.
fn host_path(path: &str, ty: &str, dir: &Path) -> Result<(), Error> {
    let host = Path::new(path);
    if ty == "DirectoryOrCreate" {
        create_dir(host)?;
    } else if !host.exists() && !ty.is_empty() {
        return Err(Error::HostPathMissing(path.to_string()));
    }
    if let Some(parent) = dir.parent() {
        create_dir(parent)?;
    }
    let _ = std::fs::remove_file(dir);
    std::os::unix::fs::symlink(host, dir).map_err(|source| Error::Create {
        path: dir.to_path_buf(),
        source,
    })
}

async fn projection(
    vctx: &VolumeCtx<'_>,
    vol: &str,
    s: &VolumeProjection,
    mode: u32,
) -> Result<Payload, Error> {
    if let Some(tp) = &s.service_account_token {
        let mode = if pod_has_fs_group(vctx.pod) {
            0o600
        } else {
            mode
        };
        let token = tokens::token(vctx.client, vctx.pod, vctx.tokens, vol, tp).await?;
        let mut p = Payload::new();
        p.insert(
            tp.path.clone(),
            FileProjection {
                data: token.into_bytes(),
                mode,
            },
        );
        Ok(p)
    } else if let Some(c) = &s.config_map {
        let optional = c.optional.unwrap_or(false);
        configmap_payload(vctx, &c.name, c.items.as_deref(), optional, mode).await
    } else if let Some(sec) = &s.secret {
        let optional = sec.optional.unwrap_or(false);
        secret_payload(vctx, &sec.name, sec.items.as_deref(), optional, mode).await
    } else if let Some(d) = &s.downward_api {
        downward_payload(vctx, d.items.as_deref().unwrap_or_default(), mode)
    } else {
        Err(Error::UnsupportedProjection)
    }
}

fn pod_has_fs_group(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .and_then(|sc| sc.fs_group)
        .is_some()
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

fn select(
    kind: &'static str,
    name: &str,
    all: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    optional: bool,
    mode: u32,
) -> Result<Payload, Error> {
    let mut p = Payload::new();
    match items {
        Some(items) if !items.is_empty() => {
            for it in items {
                match all.get(&it.key) {
                    Some(d) => {
                        let m = it.mode.map(|m| m as u32).unwrap_or(mode);
                        p.insert(
                            it.path.clone(),
                            FileProjection {
                                data: d.clone(),
                                mode: m,
                            },
                        );
                    }
                    None if optional => {}
                    None => {
                        return Err(Error::MissingKey {
                            kind,
                            name: name.to_string(),
                            key: it.key.clone(),
                        });
                    }
                }
            }
        }
        _ => {
            for (k, d) in all {
                p.insert(k, FileProjection { data: d, mode });
            }
        }
    }
    Ok(p)
}

/// Fetches the `kind` object a volume names from the Pod's namespace, as the
/// kubelet does: `Ok(None)` when it is missing and the volume says optional.
async fn fetch_source<K>(
    vctx: &VolumeCtx<'_>,
    kind: &'static str,
    name: &str,
    optional: bool,
) -> Result<Option<K>, Error>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let ns = vctx.pod.metadata.namespace.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(vctx.client.clone(), &ns);
    let name = name.to_string();
    match api.get(&name).await {
        Ok(obj) => Ok(Some(obj)),
        Err(e) if optional && is_not_found(&e) => Ok(None),
        Err(e) if is_not_found(&e) => Err(Error::NotFound { kind, name }),
        Err(source) => Err(Error::Fetch { kind, name, source }),
    }
}

async fn configmap_payload(
    vctx: &VolumeCtx<'_>,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: bool,
    mode: u32,
) -> Result<Payload, Error> {
    let Some(cm) = fetch_source::<ConfigMap>(vctx, "configmap", name, optional).await? else {
        return Ok(Payload::new());
    };
    let mut all: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (k, v) in cm.data.unwrap_or_default() {
        all.insert(k, v.into_bytes());
    }
    for (k, v) in cm.binary_data.unwrap_or_default() {
        all.insert(k, v.0);
    }
    select("configmap", name, all, items, optional, mode)
}

async fn secret_payload(
    vctx: &VolumeCtx<'_>,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: bool,
    mode: u32,
) -> Result<Payload, Error> {
    let Some(s) = fetch_source::<Secret>(vctx, "secret", name, optional).await? else {
        return Ok(Payload::new());
    };
    let all = s
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    select("secret", name, all, items, optional, mode)
}

fn downward_payload(
    vctx: &VolumeCtx<'_>,
    items: &[DownwardAPIVolumeFile],
    mode: u32,
) -> Result<Payload, Error> {
    let mut p = Payload::new();
    for it in items {
        let value = if let Some(f) = &it.field_ref {
            downward::field_value(vctx.pod, &f.field_path)?
        } else if let Some(r) = &it.resource_field_ref {
            downward::resource_value(vctx.pod, r, vctx.node)?
        } else {
            return Err(Error::NoDownwardSource(it.path.clone()));
        };
        let m = it.mode.map(|m| m as u32).unwrap_or(mode);
        p.insert(
            it.path.clone(),
            FileProjection {
                data: value.into_bytes(),
                mode: m,
            },
        );
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn items_select_keys_and_modes() {
        let items = [KeyToPath {
            key: "a".into(),
            path: "dir/a.txt".into(),
            mode: Some(0o600),
            ..Default::default()
        }];
        let p = select(
            "configmap",
            "cm",
            all(&[("a", "1"), ("b", "2")]),
            Some(&items),
            false,
            0o644,
        )
        .unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p["dir/a.txt"].mode, 0o600);
        // Without items every key is a file with the default mode.
        let p = select(
            "secret",
            "s",
            all(&[("a", "1"), ("b", "2")]),
            None,
            false,
            0o644,
        )
        .unwrap();
        assert_eq!(p.keys().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn sources_are_the_objects_volumes_read() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [], "volumes": [
                {"name": "a", "configMap": {"name": "cm1"}},
                {"name": "b", "secret": {"secretName": "s1"}},
                {"name": "c", "projected": {"sources": [
                    {"serviceAccountToken": {"path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt"}},
                    {"secret": {"name": "s2"}}]}},
                {"name": "d", "emptyDir": {}}]}
        }))
        .unwrap();
        let s = sources(&pod);
        assert_eq!(
            s.configmaps.into_iter().collect::<Vec<_>>(),
            ["cm1", "kube-root-ca.crt"]
        );
        assert_eq!(s.secrets.into_iter().collect::<Vec<_>>(), ["s1", "s2"]);
    }

    #[test]
    fn a_missing_key_is_an_error_unless_optional() {
        let items = [KeyToPath {
            key: "nope".into(),
            path: "x".into(),
            mode: None,
            ..Default::default()
        }];
        let select_nope = |optional| {
            select(
                "configmap",
                "cm",
                all(&[("a", "1")]),
                Some(&items),
                optional,
                0o644,
            )
        };
        let err = select_nope(false).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"configuration error: configmap "cm" has no key "nope""#
        );
        assert!(select_nope(true).unwrap().is_empty());
    }
}
