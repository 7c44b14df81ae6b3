//! Volume set-up, the kubelet's way: projected (serviceAccountToken through a
//! TokenRequest bound to the Pod, configMap, secret, downwardAPI), secret,
//! configMap, downwardAPI, emptyDir and hostPath. Files are written atomically
//! ([`super::atomic`]) and tokens are refreshed at 80 % of their lifetime.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use futures::future::try_join_all;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, Pod, ResourceFieldSelector, Secret,
    ServiceAccount, ServiceAccountTokenProjection, Volume, VolumeProjection,
};
use kube::Api;
use kube::api::PostParams;

use super::atomic::{self, FileProjection, Payload};

/// A volume that could not be set up; the message reads like the kubelet's.
#[derive(Debug, Clone, thiserror::Error)]
#[error("MountVolume.SetUp failed for volume {volume:?} : {message}")]
pub struct MountError {
    pub volume: String,
    pub message: String,
}

#[derive(Clone, Debug)]
struct CachedToken {
    token: String,
    expires: jiff::Timestamp,
    ttl_secs: i64,
}

impl CachedToken {
    /// The kubelet's rule: refresh when older than 80 % of the TTL or 24 h.
    fn needs_refresh(&self, now: jiff::Timestamp) -> bool {
        let exp = self.expires.as_second();
        let iat = exp - self.ttl_secs;
        let now = now.as_second();
        now > iat + 24 * 3600 || now > exp - self.ttl_secs * 20 / 100
    }
}

/// Per-pod token cache: key is `volume/path`.
#[derive(Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<String, CachedToken>>,
}

/// Node facts a downward-API resourceFieldRef can fall back to.
#[derive(Clone, Copy, Debug)]
pub struct NodeResources {
    pub cpus: u64,
    pub memory_bytes: u64,
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
            .map_err(|message| MountError {
                volume: v.name.clone(),
                message,
            })?;
        Ok::<_, MountError>((v.name.clone(), dir))
    }))
    .await?;
    Ok(done.into_iter().collect())
}

async fn setup_one(vctx: &VolumeCtx<'_>, v: &Volume, dir: &Path) -> Result<(), String> {
    let payload = if let Some(p) = &v.projected {
        let mode = p.default_mode.unwrap_or(0o644) as u32;
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
        let mode = s.default_mode.unwrap_or(0o644) as u32;
        secret_payload(
            vctx,
            &name,
            s.items.as_deref(),
            s.optional.unwrap_or(false),
            mode,
        )
        .await?
    } else if let Some(c) = &v.config_map {
        let mode = c.default_mode.unwrap_or(0o644) as u32;
        configmap_payload(
            vctx,
            &c.name,
            c.items.as_deref(),
            c.optional.unwrap_or(false),
            mode,
        )
        .await?
    } else if let Some(d) = &v.downward_api {
        let mode = d.default_mode.unwrap_or(0o644) as u32;
        downward_payload(vctx, d.items.as_deref().unwrap_or_default(), mode)?
    } else if v.empty_dir.is_some() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
            .map_err(|e| e.to_string())?;
        return Ok(());
    } else if let Some(h) = &v.host_path {
        let path = Path::new(&h.path);
        let ty = h.type_.as_deref().unwrap_or("");
        if ty == "DirectoryOrCreate" {
            std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        } else if !path.exists() && !ty.is_empty() {
            return Err(format!(
                "hostPath type check failed: {} does not exist",
                h.path
            ));
        }
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        let _ = std::fs::remove_file(dir);
        std::os::unix::fs::symlink(path, dir).map_err(|e| e.to_string())?;
        return Ok(());
    } else {
        return Err("this volume type is not supported by the sa-lab sandbox node".into());
    };
    atomic::write(dir, &payload).map_err(|e| format!("writing the volume: {e}"))?;
    Ok(())
}

async fn projection(
    vctx: &VolumeCtx<'_>,
    vol: &str,
    s: &VolumeProjection,
    mode: u32,
) -> Result<Payload, String> {
    if let Some(tp) = &s.service_account_token {
        let mode = if pod_has_fs_group(vctx.pod) {
            0o600
        } else {
            mode
        };
        let token = token(vctx, vol, tp).await?;
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
        configmap_payload(
            vctx,
            &c.name,
            c.items.as_deref(),
            c.optional.unwrap_or(false),
            mode,
        )
        .await
    } else if let Some(sec) = &s.secret {
        secret_payload(
            vctx,
            &sec.name,
            sec.items.as_deref(),
            sec.optional.unwrap_or(false),
            mode,
        )
        .await
    } else if let Some(d) = &s.downward_api {
        downward_payload(vctx, d.items.as_deref().unwrap_or_default(), mode)
    } else {
        Err("this projected volume source is not supported by the sa-lab sandbox node".into())
    }
}

fn pod_has_fs_group(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .and_then(|sc| sc.fs_group)
        .is_some()
}

async fn token(
    vctx: &VolumeCtx<'_>,
    vol: &str,
    tp: &ServiceAccountTokenProjection,
) -> Result<String, String> {
    let key = format!("{vol}/{}", tp.path);
    let now = jiff::Timestamp::now();
    let cached = vctx
        .tokens
        .tokens
        .lock()
        .expect("token cache")
        .get(&key)
        .cloned();
    if let Some(c) = cached.as_ref().filter(|c| !c.needs_refresh(now)) {
        return Ok(c.token.clone());
    }
    let pod = vctx.pod;
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into());
    let audiences: Vec<String> = tp
        .audience
        .iter()
        .filter(|a| !a.is_empty())
        .cloned()
        .collect();
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: (!audiences.is_empty()).then_some(audiences),
            expiration_seconds: Some(tp.expiration_seconds.unwrap_or(3600)),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let api: Api<ServiceAccount> = Api::namespaced(vctx.client.clone(), &ns);
    match api
        .create_token_request(&sa, &PostParams::default(), &req)
        .await
    {
        Ok(tr) => {
            let status = tr.status.ok_or("the token request returned no status")?;
            let token = status.token.ok_or("the token request returned no token")?;
            let ttl = tr.spec.and_then(|s| s.expiration_seconds).unwrap_or(3600);
            let expires = status.expiration_timestamp.map(|t| t.0).unwrap_or_else(|| {
                jiff::Timestamp::from_second(now.as_second() + ttl).unwrap_or(now)
            });
            vctx.tokens.tokens.lock().expect("token cache").insert(
                key,
                CachedToken {
                    token: token.clone(),
                    expires,
                    ttl_secs: ttl,
                },
            );
            Ok(token)
        }
        Err(e) => match cached {
            // The kubelet keeps a token that has not expired yet when a refresh fails.
            Some(c) if c.expires > now => {
                tracing::warn!(pod = ?pod.metadata.name, error = %e, "token refresh failed; keeping the current token");
                Ok(c.token)
            }
            _ => Err(format!("failed to fetch token: {}", api_message(&e))),
        },
    }
}

/// The API server's message for an error response, else the error.
pub fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

fn select(
    kind: &str,
    name: &str,
    all: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    optional: bool,
    mode: u32,
) -> Result<Payload, String> {
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
                        return Err(format!(
                            "configuration error: {kind} {name:?} has no key {:?}",
                            it.key
                        ));
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
    kind: &str,
    name: &str,
    optional: bool,
) -> Result<Option<K>, String>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let ns = vctx.pod.metadata.namespace.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(vctx.client.clone(), &ns);
    match api.get(name).await {
        Ok(obj) => Ok(Some(obj)),
        Err(e) if optional && is_not_found(&e) => Ok(None),
        Err(e) if is_not_found(&e) => Err(format!("{kind} {name:?} not found")),
        Err(e) => Err(format!(
            "failed to fetch {kind} {name:?}: {}",
            api_message(&e)
        )),
    }
}

async fn configmap_payload(
    vctx: &VolumeCtx<'_>,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: bool,
    mode: u32,
) -> Result<Payload, String> {
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
) -> Result<Payload, String> {
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
) -> Result<Payload, String> {
    let mut p = Payload::new();
    for it in items {
        let value = if let Some(f) = &it.field_ref {
            field_value(vctx.pod, &f.field_path)?
        } else if let Some(r) = &it.resource_field_ref {
            resource_value(vctx.pod, r, vctx.node)?
        } else {
            return Err(format!("downwardAPI item {:?} has no source", it.path));
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

/// The pod's (and hosts's) IP on the sandbox node.
pub const POD_IP: &str = "127.0.0.1";

fn quote_go(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn format_map(m: &BTreeMap<String, String>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={}", quote_go(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn subscript<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path
        .strip_prefix(prefix)?
        .strip_prefix("['")?
        .strip_suffix("']")?;
    Some(rest)
}

/// A downward-API `fieldRef` value (volumes and env).
pub fn field_value(pod: &Pod, path: &str) -> Result<String, String> {
    let md = &pod.metadata;
    let spec = pod.spec.clone().unwrap_or_default();
    let labels = md.labels.clone().unwrap_or_default();
    let annotations = md.annotations.clone().unwrap_or_default();
    Ok(match path {
        "metadata.name" => md.name.clone().unwrap_or_default(),
        "metadata.namespace" => md.namespace.clone().unwrap_or_default(),
        "metadata.uid" => md.uid.clone().unwrap_or_default(),
        "metadata.labels" => format_map(&labels),
        "metadata.annotations" => format_map(&annotations),
        "spec.nodeName" => spec.node_name.unwrap_or_default(),
        "spec.serviceAccountName" => spec.service_account_name.unwrap_or_default(),
        "status.hostIP" | "status.podIP" | "status.hostIPs" | "status.podIPs" => POD_IP.into(),
        p => {
            if let Some(k) = subscript(p, "metadata.labels") {
                labels.get(k).cloned().unwrap_or_default()
            } else if let Some(k) = subscript(p, "metadata.annotations") {
                annotations.get(k).cloned().unwrap_or_default()
            } else {
                return Err(format!("unsupported fieldRef {p:?}"));
            }
        }
    })
}

/// Parses a Kubernetes quantity into a number (base units).
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    Some(n * mult)
}

fn container_named<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
}

/// A downward-API `resourceFieldRef` value; limits default to the node's allocatable.
pub fn resource_value(
    pod: &Pod,
    r: &ResourceFieldSelector,
    node: NodeResources,
) -> Result<String, String> {
    let c = match r.container_name.as_deref() {
        Some(n) if !n.is_empty() => container_named(pod, n),
        _ => pod.spec.as_ref().and_then(|s| s.containers.first()),
    }
    .ok_or_else(|| format!("resourceFieldRef: no container {:?}", r.container_name))?;
    let res = c.resources.clone().unwrap_or_default();
    let (kind, resource) = r
        .resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported resource {:?}", r.resource))?;
    let from = match kind {
        "limits" => res.limits.unwrap_or_default(),
        "requests" => res.requests.unwrap_or_default(),
        _ => return Err(format!("unsupported resource {:?}", r.resource)),
    };
    let node_value = match resource {
        "cpu" => node.cpus as f64,
        "memory" => node.memory_bytes as f64,
        "ephemeral-storage" => 0.0,
        _ => return Err(format!("unsupported resource {:?}", r.resource)),
    };
    let value = match from.get(resource).and_then(|q| parse_quantity(&q.0)) {
        Some(v) => v,
        None if kind == "limits" => node_value,
        None if kind == "requests" && resource == "cpu" => 0.0,
        None => node_value,
    };
    let divisor = r
        .divisor
        .as_ref()
        .and_then(|d| parse_quantity(&d.0))
        .filter(|d| *d > 0.0)
        .unwrap_or(1.0);
    Ok(format!("{}", (value / divisor).ceil() as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_at_80_percent() {
        let now = jiff::Timestamp::now();
        let t = |secs_left: i64, ttl: i64| CachedToken {
            token: String::new(),
            expires: jiff::Timestamp::from_second(now.as_second() + secs_left).unwrap(),
            ttl_secs: ttl,
        };
        assert!(!t(3600, 3607).needs_refresh(now));
        assert!(!t(800, 3600).needs_refresh(now));
        assert!(t(700, 3600).needs_refresh(now));
        assert!(t(100, 600).needs_refresh(now));
        assert!(!t(500, 600).needs_refresh(now));
        // Tokens older than 24 h are refreshed whatever their TTL.
        assert!(t(365 * 86400 - 25 * 3600, 365 * 86400).needs_refresh(now));
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("1Gi"), Some(1073741824.0));
        assert_eq!(parse_quantity("128M"), Some(128e6));
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
        assert_eq!(parse_quantity("x"), None);
    }

    #[test]
    fn field_refs() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u-1",
                          "labels": {"b": "2", "a": "x\"y"}, "annotations": {"k": "v"}},
            "spec": {"nodeName": "n", "serviceAccountName": "sa", "containers": [
                {"name": "c", "resources": {"limits": {"memory": "64Mi"}}}]}
        }))
        .unwrap();
        assert_eq!(field_value(&pod, "metadata.name").unwrap(), "p");
        assert_eq!(field_value(&pod, "metadata.uid").unwrap(), "u-1");
        assert_eq!(field_value(&pod, "spec.nodeName").unwrap(), "n");
        assert_eq!(field_value(&pod, "spec.serviceAccountName").unwrap(), "sa");
        assert_eq!(field_value(&pod, "status.podIP").unwrap(), "127.0.0.1");
        assert_eq!(
            field_value(&pod, "metadata.labels").unwrap(),
            "a=\"x\\\"y\"\nb=\"2\""
        );
        assert_eq!(field_value(&pod, "metadata.annotations['k']").unwrap(), "v");
        assert!(field_value(&pod, "spec.bogus").is_err());
        let node = NodeResources {
            cpus: 2,
            memory_bytes: 1 << 30,
        };
        let sel = |res: &str, div: Option<&str>| ResourceFieldSelector {
            container_name: Some("c".into()),
            resource: res.into(),
            divisor: div.map(|d| k8s_openapi::apimachinery::pkg::api::resource::Quantity(d.into())),
        };
        assert_eq!(
            resource_value(&pod, &sel("limits.memory", Some("1Mi")), node).unwrap(),
            "64"
        );
        assert_eq!(
            resource_value(&pod, &sel("limits.cpu", None), node).unwrap(),
            "2"
        );
    }
}
