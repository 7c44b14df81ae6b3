//! The Node object, its status and its Lease in `kube-node-lease`.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeStatus,
    NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};

use super::Ctx;
use super::downward::NodeResources;

pub const LEASE_NAMESPACE: &str = "kube-node-lease";
pub const LEASE_DURATION_SECS: i32 = 40;
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
pub const STATUS_EVERY: Duration = Duration::from_secs(30);

pub fn node_resources() -> NodeResources {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1);
    let memory_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(4 << 30);
    NodeResources { cpus, memory_bytes }
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| "Linux".into())
}

fn arch() -> String {
    match std::env::consts::ARCH {
        "x86_64" => "amd64".into(),
        "aarch64" => "arm64".into(),
        other => other.into(),
    }
}

fn conditions(ready_since: Time) -> Vec<NodeCondition> {
    let now = Time(jiff::Timestamp::now());
    let c = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(ready_since.clone()),
    };
    vec![
        c(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        c(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure",
        ),
        c(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
        ),
        c(
            "Ready",
            "True",
            "KubeletReady",
            "sa-lab sandbox node is posting ready status",
        ),
    ]
}

pub fn node_status(ctx: &Ctx, ready_since: Time) -> NodeStatus {
    let r = node_resources();
    let mut res = BTreeMap::new();
    res.insert("cpu".to_string(), Quantity(r.cpus.to_string()));
    res.insert(
        "memory".to_string(),
        Quantity(format!("{}Ki", r.memory_bytes / 1024)),
    );
    res.insert("pods".to_string(), Quantity("110".into()));
    res.insert("ephemeral-storage".to_string(), Quantity("10Gi".into()));
    let boot = read_trim("/proc/sys/kernel/random/boot_id");
    let machine = read_trim("/etc/machine-id");
    NodeStatus {
        capacity: Some(res.clone()),
        allocatable: Some(res),
        conditions: Some(conditions(ready_since)),
        addresses: Some(vec![NodeAddress {
            type_: "InternalIP".into(),
            address: ctx.opts.api_host.clone(),
        }]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: ctx.opts.kubelet_port as i32,
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: arch(),
            boot_id: boot,
            container_runtime_version: format!("sa-lab://{}", env!("CARGO_PKG_VERSION")),
            kernel_version: read_trim("/proc/sys/kernel/osrelease"),
            kube_proxy_version: String::new(),
            kubelet_version: crate::KUBERNETES_VERSION.into(),
            machine_id: machine.clone(),
            operating_system: "linux".into(),
            os_image: os_image(),
            system_uuid: machine,
            ..Default::default()
        }),
        phase: Some("Running".into()),
        ..Default::default()
    }
}

/// Creates the Node (status included, as the kubelet does) or refreshes an
/// existing one. Returns the Node's UID.
pub async fn register(ctx: &Ctx, ready_since: Time) -> Result<String, kube::Error> {
    let api: Api<Node> = Api::all(ctx.client.clone());
    let name = &ctx.opts.name;
    let mut labels = BTreeMap::new();
    for (k, v) in [
        ("kubernetes.io/hostname", name.clone()),
        ("kubernetes.io/os", "linux".to_string()),
        ("kubernetes.io/arch", arch()),
        ("beta.kubernetes.io/os", "linux".to_string()),
        ("beta.kubernetes.io/arch", arch()),
    ] {
        labels.insert(k.to_string(), v);
    }
    let node = Node {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        status: Some(node_status(ctx, ready_since.clone())),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &node).await {
        Ok(n) => {
            tracing::info!(node = %name, "registered the Node");
            Ok(n.metadata.uid.unwrap_or_default())
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let n = patch_status(ctx, ready_since).await?;
            tracing::info!(node = %name, "the Node exists; status refreshed");
            Ok(n.metadata.uid.unwrap_or_default())
        }
        Err(e) => Err(e),
    }
}

pub async fn patch_status(ctx: &Ctx, ready_since: Time) -> Result<Node, kube::Error> {
    let api: Api<Node> = Api::all(ctx.client.clone());
    let status = node_status(ctx, ready_since);
    api.patch_status(
        &ctx.opts.name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "status": status })),
    )
    .await
}

pub async fn renew_lease(ctx: &Ctx, node_uid: &str) -> Result<(), kube::Error> {
    let api: Api<Lease> = Api::namespaced(ctx.client.clone(), LEASE_NAMESPACE);
    let name = &ctx.opts.name;
    let owner = OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: name.clone(),
        uid: node_uid.to_string(),
        ..Default::default()
    };
    let spec = LeaseSpec {
        holder_identity: Some(name.clone()),
        lease_duration_seconds: Some(LEASE_DURATION_SECS),
        renew_time: Some(MicroTime(jiff::Timestamp::now())),
        ..Default::default()
    };
    match api.get_opt(name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(LEASE_NAMESPACE.into()),
                    owner_references: Some(vec![owner]),
                    ..Default::default()
                },
                spec: Some(spec),
            };
            api.create(&PostParams::default(), &lease).await?;
        }
        Some(mut lease) => {
            let mut s = lease.spec.take().unwrap_or_default();
            s.holder_identity = spec.holder_identity;
            s.lease_duration_seconds = spec.lease_duration_seconds;
            s.renew_time = spec.renew_time;
            lease.spec = Some(s);
            let has_owner = lease
                .metadata
                .owner_references
                .as_ref()
                .is_some_and(|o| o.iter().any(|o| o.uid == node_uid));
            if !has_owner {
                lease.metadata.owner_references = Some(vec![owner]);
            }
            api.replace(name, &PostParams::default(), &lease).await?;
        }
    }
    Ok(())
}

/// Renews the Lease every 10 s and the Node's status every 30 s; re-registers
/// the Node if someone deleted it.
pub async fn heartbeat_loop(ctx: std::sync::Arc<Ctx>, mut node_uid: String, ready_since: Time) {
    let mut lease_tick = tokio::time::interval(LEASE_RENEW);
    let mut status_tick = tokio::time::interval(STATUS_EVERY);
    status_tick.tick().await;
    loop {
        tokio::select! {
            _ = lease_tick.tick() => {
                if let Err(e) = renew_lease(&ctx, &node_uid).await {
                    tracing::warn!(error = %e, "renewing the node Lease failed");
                }
            }
            _ = status_tick.tick() => {
                match patch_status(&ctx, ready_since.clone()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {
                        tracing::warn!("the Node was deleted; registering it again");
                        match register(&ctx, ready_since.clone()).await {
                            Ok(uid) => node_uid = uid,
                            Err(e) => tracing::warn!(error = %e, "re-registering the Node failed"),
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "updating the Node status failed"),
                }
            }
        }
    }
}
