//! `sa-lab status`: each component of a local cluster and its health.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use serde::Serialize;

use super::{Error, load, read_status, supervisor_alive};

/// One cluster's health.
#[derive(Serialize, Debug)]
pub struct HealthReport {
    pub name: String,
    pub server: String,
    pub kubeconfig: String,
    /// Supervisor phase ("ready", "stopping", ...) or "not running".
    pub phase: String,
    pub components: Vec<ComponentHealth>,
    pub healthy: bool,
}

/// One component's health.
#[derive(Serialize, Debug)]
pub struct ComponentHealth {
    pub name: String,
    pub pid: Option<u32>,
    pub running: bool,
    pub restarts: u32,
    /// What the health probe said ("ok", "/readyz 200", "Ready, lease renewed 3s ago", ...).
    pub health: String,
    pub healthy: bool,
}

/// Probes every component of cluster `name`.
pub async fn health(name: &str) -> Result<HealthReport, Error> {
    let info = load(name)?;
    let st = read_status(&info.dir).unwrap_or_default();
    let alive = supervisor_alive(st.supervisor_pid);
    let client = if alive {
        info.client().await.ok()
    } else {
        None
    };
    let mut components = Vec::new();
    for c in &st.components {
        let running = alive && c.running;
        let (health, healthy) = if !running {
            ("not running".to_string(), false)
        } else {
            probe(&c.name, &info, client.as_ref()).await
        };
        components.push(ComponentHealth {
            name: c.name.clone(),
            pid: c.pid,
            running,
            restarts: c.restarts,
            health,
            healthy,
        });
    }
    let healthy = alive && st.ready && components.iter().all(|c| c.healthy);
    Ok(HealthReport {
        name: info.name.clone(),
        server: info.server.clone(),
        kubeconfig: info.kubeconfig.display().to_string(),
        phase: if alive {
            st.phase
        } else {
            "not running".into()
        },
        components,
        healthy,
    })
}

async fn probe(
    name: &str,
    info: &super::ClusterInfo,
    client: Option<&kube::Client>,
) -> (String, bool) {
    let timeout = Duration::from_secs(3);
    match name {
        "etcd" => {
            let ok = super::supervisor_etcd_health(info.etcd_port);
            (if ok { "/health ok" } else { "/health failing" }.into(), ok)
        }
        "kube-apiserver" => {
            let Some(c) = client else {
                return ("no client".into(), false);
            };
            let req = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("valid request");
            match tokio::time::timeout(timeout, c.request_text(req)).await {
                Ok(Ok(_)) => ("/readyz ok".into(), true),
                Ok(Err(e)) => (format!("/readyz: {e}"), false),
                Err(_) => ("/readyz timed out".into(), false),
            }
        }
        "sandbox-node" | "kubelet" => {
            let Some(c) = client else {
                return ("no client".into(), false);
            };
            node_health(c, &info.node_name).await
        }
        _ => ("running".into(), true),
    }
}

async fn node_health(client: &kube::Client, node: &str) -> (String, bool) {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let ready = match nodes.get_opt(node).await {
        Ok(Some(n)) => n
            .status
            .and_then(|s| s.conditions)
            .and_then(|cs| cs.into_iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status == "True")
            .unwrap_or(false),
        _ => return ("Node not registered".into(), false),
    };
    let renewed = leases
        .get_opt(node)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.renew_time)
        .map(|t| {
            let now = jiff::Timestamp::now();
            let age = now.as_second() - t.0.as_second();
            format!("lease renewed {age}s ago")
        })
        .unwrap_or_else(|| "no lease".into());
    let word = if ready { "Ready" } else { "NotReady" };
    (format!("{word}, {renewed}"), ready)
}

impl HealthReport {
    /// A table for humans.
    pub fn render(&self) -> String {
        let mut t = comfy_table::Table::new();
        t.load_style(comfy_table::presets::NOTHING);
        t.set_header(vec!["COMPONENT", "PID", "RESTARTS", "HEALTH"]);
        for c in &self.components {
            let mark = if c.healthy { "✓" } else { "✗" };
            t.add_row(vec![
                format!("{mark} {}", c.name),
                c.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                c.restarts.to_string(),
                c.health.clone(),
            ]);
        }
        format!(
            "cluster {} ({}): {}\nkubeconfig: {}\n{t}",
            self.name, self.server, self.phase, self.kubeconfig
        )
    }
}
