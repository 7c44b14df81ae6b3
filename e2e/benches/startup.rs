//! Benchmarks (not tests): prints medians over several runs.
//!
//! - `sa-lab up` to ready, and each component's resident memory once ready;
//! - Pod create to `Succeeded` for a trivial lab Pod on the sandbox node.
//!
//! Run through `scripts/bench.sh` (which also times `sa-lab tour`), or
//! `cargo bench -p sa-lab-e2e --bench startup -- [UP_RUNS] [POD_RUNS]`.

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use sa_lab::local::{self, UpOptions};
use serde_json::json;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

async fn bench_up(runs: usize) {
    let mut walls = Vec::new();
    let mut rss: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for i in 0..runs {
        let name = format!("bench-up-{}-{i}", std::process::id());
        let t = Instant::now();
        let info = local::up(&UpOptions {
            name: name.clone(),
            api_port: None,
        })
        .await
        .expect("sa-lab up");
        walls.push(t.elapsed().as_secs_f64());
        // Memory once the cluster has settled for a moment.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let st = local::read_status(&info.dir).expect("status");
        let mut total = 0.0;
        for c in &st.components {
            let m = rss_mib(c.pid.unwrap_or(0));
            total += m;
            rss.entry(c.name.clone()).or_default().push(m);
        }
        let sup = rss_mib(st.supervisor_pid);
        total += sup;
        rss.entry("supervisor".into()).or_default().push(sup);
        rss.entry("TOTAL".into()).or_default().push(total);
        local::down(&name).expect("sa-lab down");
    }
    println!(
        "sa-lab up -> ready, {runs} runs: median {:.2} s (min {:.2}, max {:.2})",
        median(&mut walls.clone()),
        walls.iter().cloned().fold(f64::MAX, f64::min),
        walls.iter().cloned().fold(0.0, f64::max)
    );
    println!("resident memory 3 s after ready (median of {runs} runs):");
    for (name, mut v) in rss {
        println!("  {name:<24} {:>7.1} MiB", median(&mut v));
    }
}

async fn bench_pods(runs: usize) {
    let name = format!("bench-pods-{}", std::process::id());
    let info = local::up(&UpOptions {
        name: name.clone(),
        api_port: None,
    })
    .await
    .expect("up");
    let client = info.client().await.expect("client");
    let ns = "bench";
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
    )
    .await
    .expect("namespace");
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    // Wait for the namespace's default ServiceAccount (created by the KCM).
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), ns);
    while sas.get_opt("default").await.ok().flatten().is_none() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut times = Vec::new();
    for i in 0..runs {
        let pod_name = format!("trivial-{i}");
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": pod_name},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{
                    "name": "main",
                    "image": sa_lab::LAB_IMAGE,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["lab-toolbox", "exit", "0"]
                }]
            }
        }))
        .unwrap();
        let wp = WatchParams::default().fields(&format!("metadata.name={pod_name}"));
        let mut stream = pods.watch(&wp, "0").await.expect("watch").boxed();
        let t = Instant::now();
        pods.create(&PostParams::default(), &pod)
            .await
            .expect("create pod");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ev = tokio::time::timeout_at(deadline.into(), stream.next())
                .await
                .expect("pod did not finish within 60 s");
            match ev {
                Some(Ok(WatchEvent::Added(p) | WatchEvent::Modified(p))) => {
                    let phase = p.status.and_then(|s| s.phase).unwrap_or_default();
                    if phase == "Succeeded" {
                        times.push(t.elapsed().as_secs_f64());
                        break;
                    }
                    assert_ne!(phase, "Failed", "trivial pod failed");
                }
                Some(_) => {}
                None => {
                    stream = pods.watch(&wp, "0").await.expect("watch").boxed();
                }
            }
        }
    }
    println!(
        "Pod create -> Succeeded (trivial lab Pod), {runs} runs: median {:.3} s, p95 {:.3} s",
        median(&mut times.clone()),
        percentile(&mut times, 95.0)
    );
    local::down(&name).expect("down");
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let up_runs = args.first().and_then(|a| a.parse().ok()).unwrap_or(5);
    let pod_runs = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        bench_up(up_runs).await;
        bench_pods(pod_runs).await;
    });
}
