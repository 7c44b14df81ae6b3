//! Downward API values, shared by downwardAPI volumes and container env:
//! `fieldRef` (the Pod's metadata and spec) and `resourceFieldRef` (a
//! container's requests and limits, limits defaulting to the node's
//! allocatable, as the kubelet does).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, ResourceFieldSelector};

/// The pod's (and host's) IP on the sandbox node.
pub const POD_IP: &str = "127.0.0.1";

/// Node facts a `resourceFieldRef` falls back to.
#[derive(Clone, Copy, Debug)]
pub struct NodeResources {
    pub cpus: u64,
    pub memory_bytes: u64,
}

/// A downward API reference the sandbox node cannot resolve.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `fieldRef` path that is not one the kubelet supports either.
    #[error("unsupported fieldRef {0:?}")]
    UnsupportedField(String),
    /// A `resourceFieldRef` naming a container the Pod does not have.
    #[error("resourceFieldRef: no container {0:?}")]
    NoContainer(Option<String>),
    /// A `resourceFieldRef` resource other than `limits.*`/`requests.*` of
    /// cpu, memory or ephemeral-storage.
    #[error("unsupported resource {0:?}")]
    UnsupportedResource(String),
}

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
pub fn field_value(pod: &Pod, path: &str) -> Result<String, Error> {
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
                return Err(Error::UnsupportedField(p.to_string()));
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
) -> Result<String, Error> {
    let c = match r.container_name.as_deref() {
        Some(n) if !n.is_empty() => container_named(pod, n),
        _ => pod.spec.as_ref().and_then(|s| s.containers.first()),
    }
    .ok_or_else(|| Error::NoContainer(r.container_name.clone()))?;
    let res = c.resources.clone().unwrap_or_default();
    let unsupported = || Error::UnsupportedResource(r.resource.clone());
    let (kind, resource) = r.resource.split_once('.').ok_or_else(unsupported)?;
    let from = match kind {
        "limits" => res.limits.unwrap_or_default(),
        "requests" => res.requests.unwrap_or_default(),
        _ => return Err(unsupported()),
    };
    let node_value = match resource {
        "cpu" => node.cpus as f64,
        "memory" => node.memory_bytes as f64,
        "ephemeral-storage" => 0.0,
        _ => return Err(unsupported()),
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
        assert!(matches!(
            field_value(&pod, "spec.bogus"),
            Err(Error::UnsupportedField(p)) if p == "spec.bogus"
        ));
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
        assert!(matches!(
            resource_value(&pod, &sel("limits.gpu", None), node),
            Err(Error::UnsupportedResource(_))
        ));
    }
}
