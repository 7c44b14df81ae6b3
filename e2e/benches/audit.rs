//! Benchmark (not a test): `sa-lab audit` on a generated cluster.
//!
//! Starts a local cluster, creates NAMESPACES namespaces with 10
//! ServiceAccounts, 2 Roles and 20 RoleBindings each (one binding in ten
//! hands out Secrets, so there are findings to confirm), then runs the
//! built `sa-lab audit --kubeconfig ... -o json` RUNS times and prints the
//! median wall time and the peak resident memory of the audit process
//! (getrusage of the waited children, so no tool is needed besides the
//! kernel). Run through `scripts/bench.sh`, or
//! `cargo bench -p sa-lab-e2e --bench audit -- [NAMESPACES] [RUNS]`.

use std::process::Command;
use std::time::Instant;

use futures::StreamExt as _;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use sa_lab::local::{self, UpOptions};
use serde_json::json;

const SAS_PER_NS: usize = 10;
const BINDINGS_PER_NS: usize = 20;

fn objects(ns: &str) -> Vec<serde_json::Value> {
    let mut out = vec![json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})];
    for i in 0..SAS_PER_NS {
        out.push(json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": format!("sa-{i}"), "namespace": ns}}));
    }
    let rule =
        |res: &str| json!([{"apiGroups": [""], "resources": [res], "verbs": ["get", "list"]}]);
    for (name, res) in [("reader", "configmaps"), ("secrets", "secrets")] {
        out.push(
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": name, "namespace": ns}, "rules": rule(res)}),
        );
    }
    for i in 0..BINDINGS_PER_NS {
        let role = if i % 10 == 0 { "secrets" } else { "reader" };
        out.push(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": format!("b-{i}"), "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": format!("sa-{}", i % SAS_PER_NS), "namespace": ns}]}));
    }
    out
}

fn api_for(client: &kube::Client, obj: &serde_json::Value) -> Api<DynamicObject> {
    let (group, version) = match obj["apiVersion"].as_str().unwrap().split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), "v1".to_string()),
    };
    let kind = obj["kind"].as_str().unwrap();
    let plural = match kind {
        "Namespace" => "namespaces",
        "ServiceAccount" => "serviceaccounts",
        "Role" => "roles",
        _ => "rolebindings",
    };
    let ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(&group, &version, kind), plural);
    match obj["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    }
}

fn peak_children_rss_mib() -> f64 {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .expect("getrusage");
    usage.max_rss() as f64 / 1024.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let namespaces = args.first().copied().unwrap_or(200);
    let runs = args.get(1).copied().unwrap_or(3);
    let name = format!("bench-audit-{}", std::process::id());
    let info = local::up(&UpOptions {
        name: name.clone(),
        ..UpOptions::default()
    })
    .await?;
    let result = async {
        let client = info.client().await?;
        let t = Instant::now();
        // Namespaces first, then everything in them, 16 requests at a time.
        let all: Vec<Vec<serde_json::Value>> = (0..namespaces)
            .map(|i| objects(&format!("bench-{i:03}")))
            .collect();
        for phase in [0usize, 1] {
            let batch: Vec<serde_json::Value> = all
                .iter()
                .flat_map(|objs| {
                    if phase == 0 {
                        objs[..1].to_vec()
                    } else {
                        objs[1..].to_vec()
                    }
                })
                .collect();
            let created: Vec<anyhow::Result<()>> = futures::stream::iter(batch)
                .map(|obj| {
                    let client = client.clone();
                    async move {
                        let o: DynamicObject = serde_json::from_value(obj.clone())?;
                        api_for(&client, &obj)
                            .create(&PostParams::default(), &o)
                            .await?;
                        Ok(())
                    }
                })
                .buffer_unordered(16)
                .collect()
                .await;
            created.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
        }
        println!(
            "generated {namespaces} namespaces, {} ServiceAccounts, {} RoleBindings in {:.1} s",
            namespaces * SAS_PER_NS,
            namespaces * BINDINGS_PER_NS,
            t.elapsed().as_secs_f64()
        );
        let exe = std::env::var("SA_LAB_BIN").unwrap_or_else(|_| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/../target/debug/sa-lab").to_string()
        });
        let mut walls = Vec::new();
        let mut findings = 0;
        for _ in 0..runs {
            let t = Instant::now();
            let out = Command::new(&exe)
                .args(["audit", "--kubeconfig"])
                .arg(&info.kubeconfig)
                .args(["-o", "json"])
                .output()?;
            walls.push(t.elapsed().as_secs_f64());
            anyhow::ensure!(
                out.status.success(),
                "sa-lab audit failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            findings = v["findings"].as_array().map_or(0, Vec::len);
        }
        let mut sorted = walls.clone();
        sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let median = sorted[sorted.len() / 2];
        let runs_txt: Vec<String> = walls.iter().map(|w| format!("{w:.2}")).collect();
        println!(
            "sa-lab audit, {} ServiceAccounts / {} bindings ({findings} findings), {runs} runs: \
             median {median:.2} s (runs: {}), peak RSS {:.0} MiB",
            namespaces * SAS_PER_NS,
            namespaces * BINDINGS_PER_NS,
            runs_txt.join(" "),
            peak_children_rss_mib()
        );
        anyhow::Ok(())
    }
    .await;
    local::down(&name)?;
    result
}
