//! Benchmarks (not tests): prints medians over several runs.
//!
//! - `sa-lab up` to ready beside the floor (etcd and kube-apiserver alone
//!   to `/readyz`, interleaved with it), where `up`'s time goes by the
//!   supervisor's phases, and each component's resident memory once ready;
//! - Pod create to `Succeeded` for a trivial lab Pod, a graceful delete
//!   (the program handles SIGTERM) to the Pod gone, and the interval
//!   between the node's Lease renewals;
//!
//! each with the sandbox node, then (as root) with the kubelet node;
//! - the kubelet node's Pod start with each way its kubelet learns of
//!   container exits (`SA_LAB_KUBELET_PLEG`: evented, generic);
//! - audit logging's cost: `up` and Pod start with and without it.
//!
//! With `SA_LAB_BENCH_KIND=<cluster>`, only Pod create to `Succeeded`, on
//! that kind cluster (made by `scripts/kind-up.sh`, lab image loaded): the
//! kind node's figure beside the local nodes'.
//!
//! These are the timings the e2e tests do not assert (they assert what
//! happens, not how fast). Run through `scripts/bench.sh` (which also times
//! `sa-lab tour` and kind's create -> ready), or `cargo bench -p sa-lab-e2e
//! --bench startup -- [UP_RUNS] [POD_RUNS] [DELETE_RUNS] [LEASE_RENEWALS]`
//! (`POD_RUNS` 0: `up` and its floor only).

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, LogParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::wait::{await_condition, conditions};
use sa_lab::kubelet::NodeKind;
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

/// Resident memory of `pid` in MiB: all of it (VmRSS), its proportional
/// share (Pss: a page that n processes map counts 1/n in each, so the sum
/// over processes is what the machine holds for them) and its anonymous
/// part (RssAnon: heaps, stacks); the rest is file-backed, mostly the pages
/// of the program's own binary it has touched.
fn mem_mib(pid: u32) -> [f64; 3] {
    let read =
        |file: &str| std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default();
    let field = |text: &str, key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    let (status, rollup) = (read("status"), read("smaps_rollup"));
    [
        field(&status, "VmRSS:"),
        field(&rollup, "Pss:"),
        field(&status, "RssAnon:"),
    ]
}

/// The machine the figures were measured on.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, {mem_gib:.1} GiB, Linux {}", kernel.trim())
}

/// The floor: etcd and kube-apiserver alone, both started at once from a
/// cluster directory `up` would make (same binaries, same command lines as
/// the supervisor's), to `/readyz` 200, polled every 10 ms. Seconds from
/// their start (certificates are made before the clock starts).
async fn floor_once(name: &str) -> f64 {
    use sa_lab::local::Component;
    use std::process::{Command, Stdio};
    let info = local::prepare(&UpOptions {
        name: name.to_owned(),
        ..Default::default()
    })
    .expect("prepare a cluster directory");
    let client = info.client().await.expect("client");
    let readyz = || {
        let req = http::Request::get("/readyz").body(Vec::new()).unwrap();
        client.request_text(req)
    };
    let t = Instant::now();
    let mut children = Vec::new();
    for c in [Component::Etcd, Component::ApiServer] {
        let (program, args) = c.command(&info);
        let log =
            std::fs::File::create(info.logs_dir().join(format!("{}.log", c.name()))).expect("log");
        let child = Command::new(&program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start");
        children.push(child);
    }
    let deadline = t + Duration::from_secs(90);
    while readyz().await.is_err() {
        assert!(Instant::now() < deadline, "floor: no /readyz within 90 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    for mut c in children.into_iter().rev() {
        let _ = c.kill();
        let _ = c.wait();
    }
    local::down(name).expect("remove the floor's cluster directory");
    secs
}

/// `sa-lab up` to ready, interleaved run by run with the floor (etcd and
/// kube-apiserver alone to `/readyz`), against the goals; where `up`'s time
/// goes, by the supervisor's phases; each component's memory once ready.
async fn bench_up(runs: usize, node: NodeKind) {
    let mut walls = Vec::new();
    let mut floors = Vec::new();
    let mut phases: Vec<(String, Vec<f64>)> = Vec::new();
    let mut rss: std::collections::BTreeMap<String, Vec<[f64; 3]>> = Default::default();
    for i in 0..runs {
        let name = format!("bench-up-{}-{i}", std::process::id());
        // The floor before `up` in even runs, after it in odd ones.
        if i % 2 == 0 {
            floors.push(floor_once(&format!("bench-floor-{}-{i}", std::process::id())).await);
        }
        let t = Instant::now();
        let info = local::up(&UpOptions {
            name: name.clone(),
            node: Some(node),
            ..Default::default()
        })
        .await
        .expect("sa-lab up");
        let wall = t.elapsed().as_secs_f64();
        walls.push(wall);
        let st = local::read_status(&info.dir).expect("status");
        // Each phase lasts until the next one begins; what comes before
        // the supervisor is the rest of the wall time.
        let at_ready = st.timeline.last().map_or(wall, |m| m.at);
        let mut parts = vec![(
            "certificates, kubeconfigs, supervisor start".to_string(),
            wall - at_ready,
        )];
        for w in st.timeline.windows(2) {
            parts.push((format!("phase {}", w[0].what), w[1].at - w[0].at));
        }
        for (what, secs) in parts {
            match phases.iter_mut().find(|(w, _)| *w == what) {
                Some((_, v)) => v.push(secs),
                None => phases.push((what, vec![secs])),
            }
        }
        // Memory once the cluster has settled for a moment.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let st = local::read_status(&info.dir).expect("status");
        let mut total = [0.0; 3];
        let pids = st
            .components
            .iter()
            .map(|c| (c.name.clone(), c.pid.unwrap_or(0)))
            .chain([("supervisor".to_string(), st.supervisor_pid)]);
        for (name, pid) in pids {
            let m = mem_mib(pid);
            total = [0, 1, 2].map(|k| total[k] + m[k]);
            rss.entry(name).or_default().push(m);
        }
        rss.entry("TOTAL".into()).or_default().push(total);
        local::down(&name).expect("sa-lab down");
        if i % 2 == 1 {
            floors.push(floor_once(&format!("bench-floor-{}-{i}", std::process::id())).await);
        }
    }
    let up = median(&mut walls.clone());
    println!(
        "sa-lab up --node {} -> ready, {runs} runs: median {up:.2} s (min {:.2}, max {:.2})",
        node.as_str(),
        walls.iter().cloned().fold(f64::MAX, f64::min),
        walls.iter().cloned().fold(0.0, f64::max)
    );
    let floor = median(&mut floors.clone());
    println!(
        "floor: etcd + kube-apiserver alone -> /readyz, {runs} runs interleaved: median {floor:.2} s \
         (min {:.2}, max {:.2})",
        floors.iter().cloned().fold(f64::MAX, f64::min),
        floors.iter().cloned().fold(0.0, f64::max)
    );
    let ratio = up / floor;
    // Each run's `up` over the floor beside it: steadier on a busy machine.
    let mut paired: Vec<f64> = walls.iter().zip(&floors).map(|(u, f)| u / f).collect();
    let met = |ok: bool| if ok { "met" } else { "not met" };
    // The goals: the default cluster's (issue 17); the kubelet node's `up`
    // (issue 12), which also starts containerd, the kubelet and kube-proxy.
    let goals = match node {
        NodeKind::Sandbox => format!(
            "up <= 3.0 s ({}), up / floor <= 1.1 ({})",
            met(up <= 3.0),
            met(ratio <= 1.1)
        ),
        NodeKind::Kubelet => format!("up <= 10 s ({})", met(up <= 10.0)),
    };
    println!(
        "up / floor: {ratio:.2} (run by run: median {:.2}); goals: {goals}; machine: {}",
        median(&mut paired),
        machine()
    );
    println!("where up's time goes (median of {runs} runs, each phase until the next begins):");
    for (what, mut v) in phases {
        println!("  {what:<46} {:>6.2} s", median(&mut v));
    }
    println!(
        "resident memory 3 s after ready (median of {runs} runs, MiB; proportional: pages \
         several components map, such as one binary's, split among them, so the total is \
         what the machine holds; anonymous: heaps and stacks):"
    );
    let mut total = 0.0;
    for (name, v) in rss {
        let [all, pss, anon] =
            [0, 1, 2].map(|k| median(&mut v.iter().map(|m| m[k]).collect::<Vec<_>>()));
        if name == "TOTAL" {
            total = pss;
        }
        println!(
            "  {name:<24} resident {all:>6.1}, proportional {pss:>6.1}, anonymous {anon:>6.1}"
        );
    }
    if node == NodeKind::Sandbox {
        println!(
            "goal: whole cluster (proportional) <= 400 MiB ({})",
            met(total <= 400.0)
        );
    }
}

/// Waits (watching, at most `secs`) until `cond` holds for object `name`.
async fn wait<K>(
    api: &Api<K>,
    name: &str,
    secs: u64,
    cond: impl kube::runtime::wait::Condition<K>,
) -> Option<K>
where
    K: Clone + std::fmt::Debug + Send + serde::de::DeserializeOwned + kube::Resource + 'static,
{
    tokio::time::timeout(
        Duration::from_secs(secs),
        await_condition(api.clone(), name, cond),
    )
    .await
    .unwrap_or_else(|_| panic!("{name}: not there within {secs} s"))
    .expect("watch")
}

fn phase(p: Option<&Pod>) -> String {
    p.and_then(|p| p.status.as_ref())
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

fn toolbox_pod(name: &str, args: &[&str]) -> Pod {
    let mut command = vec!["lab-toolbox"];
    command.extend_from_slice(args);
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 30,
            "containers": [{
                "name": "main",
                "image": sa_lab::LAB_IMAGE,
                "imagePullPolicy": "IfNotPresent",
                "command": command
            }]
        }
    }))
    .unwrap()
}

/// Creates `pod_runs` trivial lab Pods one after another in `pods`'
/// namespace and prints the median and p95 of create -> `Succeeded`, and
/// how the median compares with `goal` (seconds), if there is one.
async fn time_pods(pods: &Api<Pod>, pod_runs: usize, what: &str, goal: Option<f64>) {
    let mut times = pod_times(pods, pod_runs, "trivial").await;
    let med = median(&mut times.clone());
    let goal = goal.map_or(String::new(), |g| {
        let met = if med <= g { "met" } else { "not met" };
        format!("; goal: median <= {g} s ({met})")
    });
    println!(
        "Pod create -> Succeeded (trivial lab Pod, {what}), {pod_runs} runs: median {med:.3} s, p95 {:.3} s{goal}",
        percentile(&mut times, 95.0)
    );
}

/// Create -> `Succeeded` of `pod_runs` trivial lab Pods named
/// `<prefix>-<i>`, one after another, in seconds.
///
/// Each create waits a fraction of a second first (i * 0.618 s mod 1 s, so
/// the offsets spread evenly): the kubelet lists its containers on a
/// 1-second clock, and a Pod created the instant the previous one finished
/// would start at the same point of that clock every time, giving one
/// alignment's figure instead of the median over all of them.
async fn pod_times(pods: &Api<Pod>, pod_runs: usize, prefix: &str) -> Vec<f64> {
    let mut times = Vec::new();
    for i in 0..pod_runs {
        let offset = (i as f64 * 0.618_034).fract();
        tokio::time::sleep(Duration::from_secs_f64(offset)).await;
        let pod_name = format!("{prefix}-{i}");
        let wp = WatchParams::default().fields(&format!("metadata.name={pod_name}"));
        let mut stream = pods.watch(&wp, "0").await.expect("watch").boxed();
        let t = Instant::now();
        pods.create(
            &PostParams::default(),
            &toolbox_pod(&pod_name, &["exit", "0"]),
        )
        .await
        .expect("create pod");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ev = tokio::time::timeout_at(deadline.into(), stream.next())
                .await
                .expect("pod did not finish within 60 s");
            match ev {
                Some(Ok(WatchEvent::Added(p) | WatchEvent::Modified(p))) => {
                    let phase = phase(Some(&p));
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
    times
}

/// Makes namespace `ns`, waits for its default ServiceAccount (the
/// controller manager's), and returns its Pods.
async fn bench_namespace(client: &kube::Client, ns: &str) -> Api<Pod> {
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
    )
    .await
    .expect("namespace");
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), ns);
    wait(&sas, "default", 30, |sa: Option<&_>| sa.is_some()).await;
    Api::namespaced(client.clone(), ns)
}

/// The kubelet node's Pod create -> `Succeeded` with each way the kubelet
/// learns of container exits (`SA_LAB_KUBELET_PLEG`): containerd's events
/// (evented, the default) and the generic PLEG's listing alone (as on
/// kind); two rounds, a cluster per PLEG per round, `pod_runs` Pods each.
async fn bench_pleg(pod_runs: usize) {
    use sa_lab::kubelet::Pleg;
    let plegs = [Pleg::Evented, Pleg::Generic];
    let mut times: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 0..2 {
        for (k, pleg) in plegs.into_iter().enumerate() {
            let name = format!("bench-pleg-{}-{round}-{k}", std::process::id());
            let info = local::up(&UpOptions {
                name: name.clone(),
                node: Some(NodeKind::Kubelet),
                kubelet_pleg: Some(pleg),
                ..Default::default()
            })
            .await
            .expect("sa-lab up --node kubelet");
            let pods = bench_namespace(&info.client().await.expect("client"), "bench").await;
            times[k].extend(pod_times(&pods, pod_runs, "pleg").await);
            local::down(&name).expect("sa-lab down");
        }
    }
    for (k, pleg) in plegs.into_iter().enumerate() {
        println!(
            "Pod create -> Succeeded (trivial lab Pod, kubelet node, {} PLEG), {} runs in 2 rounds: median {:.3} s, p95 {:.3} s",
            pleg.as_str(),
            times[k].len(),
            median(&mut times[k].clone()),
            percentile(&mut times[k], 95.0)
        );
    }
}

/// Audit logging's cost (goal: at most 5 % slower): `up` to ready and Pod
/// create -> `Succeeded` with the audit log and without it
/// (`--no-audit-log`), the two interleaved run by run.
async fn bench_audit_cost(runs: usize, pod_runs: usize) {
    let mut up: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut pod: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for i in 0..runs {
        for (k, audit) in [true, false].into_iter().enumerate() {
            let name = format!("bench-audit-{}-{i}-{k}", std::process::id());
            let t = Instant::now();
            let info = local::up(&UpOptions {
                name: name.clone(),
                no_audit_log: !audit,
                ..Default::default()
            })
            .await
            .expect("sa-lab up");
            up[k].push(t.elapsed().as_secs_f64());
            let pods = bench_namespace(&info.client().await.expect("client"), "bench").await;
            pod[k].extend(pod_times(&pods, pod_runs, "audit").await);
            local::down(&name).expect("sa-lab down");
        }
    }
    for (what, v) in [
        ("sa-lab up -> ready", &mut up),
        ("Pod create -> Succeeded", &mut pod),
    ] {
        let with = median(&mut v[0].clone());
        let without = median(&mut v[1].clone());
        println!(
            "audit log cost, {what}: median {with:.3} s with, {without:.3} s without \
             ({:+.1} %; {} runs each)",
            (with / without - 1.0) * 100.0,
            v[0].len()
        );
    }
}

/// Pod create -> `Succeeded` on kind cluster `cluster`, in a namespace of
/// its own that is deleted afterwards.
async fn bench_pods_kind(cluster: &str, pod_runs: usize) {
    use sa_lab::provider::{self, ConnectOptions, Provider};
    let conn = provider::connect(&ConnectOptions {
        provider: Some(Provider::Kind),
        name: Some(cluster.to_owned()),
        ..Default::default()
    })
    .await
    .expect("kind cluster (run scripts/kind-up.sh first)");
    let ns = format!("bench-{}", std::process::id());
    let pods = bench_namespace(&conn.client, &ns).await;
    time_pods(&pods, pod_runs, "kind", None).await;
    let nss: Api<Namespace> = Api::all(conn.client.clone());
    nss.delete(&ns, &DeleteParams::default())
        .await
        .expect("delete namespace");
}

/// A node's timings on one cluster: Pod start-up, graceful delete,
/// Lease renewal interval.
async fn bench_node(node: NodeKind, pod_runs: usize, delete_runs: usize, lease_renewals: usize) {
    let name = format!("bench-pods-{}", std::process::id());
    let info = local::up(&UpOptions {
        name: name.clone(),
        node: Some(node),
        ..Default::default()
    })
    .await
    .expect("up");
    let client = info.client().await.expect("client");
    let pods = bench_namespace(&client, "bench").await;

    // Issue 12's goal for the kubelet node; the sandbox node's since its start.
    let goal = match node {
        NodeKind::Sandbox => 0.5,
        NodeKind::Kubelet => 1.5,
    };
    let node = node.as_str();
    time_pods(&pods, pod_runs, &format!("{node} node"), Some(goal)).await;

    // Graceful delete of a Pod whose program exits on SIGTERM (grace 30 s).
    let mut deletes = Vec::new();
    for i in 0..delete_runs {
        let pod_name = format!("sleeper-{i}");
        pods.create(
            &PostParams::default(),
            &toolbox_pod(&pod_name, &["sleep", "600"]),
        )
        .await
        .expect("create pod");
        let p = wait(&pods, &pod_name, 60, |p: Option<&Pod>| {
            phase(p) == "Running"
        })
        .await
        .expect("running pod");
        let uid = p.metadata.uid.clone().unwrap_or_default();
        // Its SIGTERM handler is in place once it says "sleeping".
        let follow = LogParams {
            follow: true,
            ..Default::default()
        };
        let log = pods.log_stream(&pod_name, &follow).await.expect("log");
        let mut lines = futures::AsyncBufReadExt::lines(log);
        while !lines
            .next()
            .await
            .expect("a log line")
            .expect("log")
            .contains("sleeping")
        {}
        let t = Instant::now();
        pods.delete(&pod_name, &DeleteParams::default())
            .await
            .expect("delete pod");
        wait(&pods, &pod_name, 60, conditions::is_deleted(&uid)).await;
        deletes.push(t.elapsed().as_secs_f64());
    }
    if !deletes.is_empty() {
        println!(
            "graceful delete -> Pod gone (program exits on SIGTERM, grace 30 s, {node} node), {delete_runs} runs: median {:.3} s, max {:.3} s",
            median(&mut deletes.clone()),
            deletes.iter().cloned().fold(0.0, f64::max)
        );
    }

    // The node's Lease renewals, watched (every 10 s, as a kubelet's).
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let renew = |l: Option<&Lease>| l.and_then(|l| l.spec.as_ref()?.renew_time.clone());
    let mut last = renew(
        leases
            .get_opt(&info.node_name)
            .await
            .expect("lease")
            .as_ref(),
    );
    let mut intervals = Vec::new();
    for _ in 0..lease_renewals {
        let before = last.clone();
        let l = wait(&leases, &info.node_name, 60, |l: Option<&Lease>| {
            renew(l) > before
        })
        .await;
        let now = renew(l.as_ref());
        if let (Some(a), Some(b)) = (&last, &now) {
            intervals.push(b.0.duration_since(a.0).as_secs_f64());
        }
        last = now;
    }
    if !intervals.is_empty() {
        println!(
            "{node} node Lease renewal interval, {} renewals: median {:.2} s, max {:.2} s",
            intervals.len(),
            median(&mut intervals.clone()),
            intervals.iter().cloned().fold(0.0, f64::max)
        );
    }
    local::down(&name).expect("down");
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let arg =
        |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (up_runs, pod_runs, delete_runs, lease_renewals) =
        (arg(0, 5), arg(1, 20), arg(2, 5), arg(3, 3));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // The kubelet node needs root; without it, say so instead of a figure.
    // SA_LAB_SKIP_KUBELET=1 leaves it out (the host's one kubelet slot is
    // another job's).
    let skip = std::env::var("SA_LAB_SKIP_KUBELET").is_ok_and(|v| v == "1");
    let kubelet = match sa_lab::kubelet::host::require_root() {
        Ok(()) if skip => {
            println!("kubelet node: not measured (SA_LAB_SKIP_KUBELET=1)");
            false
        }
        Ok(()) => true,
        Err(e) => {
            println!("kubelet node: not measured ({e})");
            false
        }
    };
    rt.block_on(async {
        if let Ok(cluster) = std::env::var("SA_LAB_BENCH_KIND")
            && !cluster.is_empty()
        {
            bench_pods_kind(&cluster, pod_runs).await;
            return;
        }
        for node in [NodeKind::Sandbox, NodeKind::Kubelet] {
            if node == NodeKind::Kubelet && !kubelet {
                continue;
            }
            bench_up(up_runs, node).await;
            if pod_runs > 0 {
                bench_node(node, pod_runs, delete_runs, lease_renewals).await;
            }
        }
        if kubelet && pod_runs > 0 {
            bench_pleg(pod_runs.div_ceil(2)).await;
        }
        if pod_runs > 0 {
            bench_audit_cost(up_runs, pod_runs.div_ceil(2)).await;
        }
    });
}
