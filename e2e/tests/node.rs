//! The sandbox node (issue 3): lab Pods run as local processes with real
//! projected ServiceAccount volumes, and the node behaves like a kubelet
//! towards the API server. Each test starts its own local cluster.

mod common;

use std::time::{Duration, Instant};

use common::{TestCluster, eventually, unique_ns};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, ContainerStateTerminated, Event, Namespace, Node, Pod, ServiceAccount,
};
use kube::Api;
use kube::api::{DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

// ---------------------------------------------------------------- helpers

async fn make_ns(client: &kube::Client, prefix: &str) -> String {
    let ns = unique_ns(prefix);
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
    )
    .await
    .expect("create namespace");
    // The ServiceAccount admission plugin needs `default` (made by the KCM).
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    eventually(30, "the default ServiceAccount", || async {
        sas.get_opt("default").await.ok().flatten().is_some()
    })
    .await;
    ns
}

fn toolbox_container(name: &str, args: &[&str]) -> Value {
    json!({
        "name": name,
        "image": sa_lab::LAB_IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": ["lab-toolbox"],
        "args": args,
    })
}

/// A lab Pod running `lab-toolbox ARGS`, restartPolicy Never.
fn toolbox_pod(name: &str, args: &[&str]) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "sa-lab"}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 30,
            "containers": [toolbox_container("main", args)],
        }
    })
}

async fn create(api: &Api<Pod>, pod: Value) -> Pod {
    api.create(
        &PostParams::default(),
        &serde_json::from_value(pod).expect("pod json"),
    )
    .await
    .expect("create pod")
}

fn phase(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

/// Waits until the Pod is Succeeded or Failed; returns it.
async fn wait_done(api: &Api<Pod>, name: &str, secs: u64) -> Pod {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let p = api.get(name).await.expect("get pod");
        if matches!(phase(&p).as_str(), "Succeeded" | "Failed") {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "pod {name} not finished after {secs}s: {:#?}",
            p.status
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn terminated(p: &Pod, container: &str) -> ContainerStateTerminated {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == container))
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.clone())
        .unwrap_or_else(|| panic!("container {container} not terminated: {:#?}", p.status))
}

fn message_json(t: &ContainerStateTerminated) -> Value {
    serde_json::from_str(t.message.as_deref().unwrap_or("null")).unwrap_or(Value::Null)
}

async fn logs(api: &Api<Pod>, name: &str, container: &str) -> String {
    api.logs(
        name,
        &LogParams {
            container: Some(container.into()),
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("logs of {name}/{container}: {e}"))
}

/// Raw GET /api with `token` (or anonymous), trusting only the cluster CA.
async fn get_api_status(c: &TestCluster, client: &kube::Client, token: &str) -> u16 {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let ca = cms.get("kube-root-ca.crt").await.expect("kube-root-ca.crt");
    let ca = ca
        .data
        .unwrap_or_default()
        .get("ca.crt")
        .cloned()
        .expect("ca.crt key");
    let url = format!("{}/api", c.info.server);
    lab_kit::https::get(&url, ca.as_bytes(), Some(token))
        .await
        .expect("raw GET")
        .status
}

async fn bound_token(client: &kube::Client, pod: &Pod) -> String {
    let ns = pod.metadata.namespace.clone().unwrap();
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let tr = TokenRequest {
        spec: Some(TokenRequestSpec {
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
            expiration_seconds: Some(600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let tr = sas
        .create_token_request("default", &PostParams::default(), &tr)
        .await
        .expect("token request");
    tr.status.and_then(|s| s.token).expect("token")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

// ---------------------------------------------------------------- tests

/// Exit codes, termination messages, signals, start errors, the image rule,
/// the ServiceAccount files and claims, in-cluster config, env, automount,
/// explicit audiences, kubectl logs, 20 pods at once and start latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_pods_run_like_on_a_kubelet() {
    let c = TestCluster::start("node-pods").await;
    let client = c.client().await;
    let ns = make_ns(&client, "pods").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let node = c.info.node_name.clone();

    // Succeeded with exit code 0 and the termination message.
    create(&pods, toolbox_pod("ok", &["message", "hello from the pod"])).await;
    // Non-zero exit: Failed, reason Error (the allowed twin of the above).
    create(&pods, toolbox_pod("exit3", &["exit", "3"])).await;
    // Killed by a signal.
    create(&pods, toolbox_pod("killed", &["kill-self", "KILL"])).await;
    // A program that is not in the lab image.
    let mut missing = toolbox_pod("missing", &[]);
    missing["spec"]["containers"][0]["command"] = json!(["lab-does-not-exist"]);
    create(&pods, missing).await;
    // Any other image never runs.
    let mut other = toolbox_pod("other-image", &["exit", "0"]);
    other["spec"]["containers"][0]["image"] = json!("nginx:1.27");
    create(&pods, other).await;

    let p = wait_done(&pods, "ok", 60).await;
    assert_eq!(phase(&p), "Succeeded");
    let t = terminated(&p, "main");
    assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")));
    assert_eq!(t.message.as_deref(), Some("hello from the pod"));
    assert!(t.started_at.is_some() && t.finished_at.is_some());
    let st = p.status.clone().unwrap();
    assert_eq!(st.pod_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(st.host_ip.as_deref(), Some("127.0.0.1"));
    let conds: Vec<(String, String)> = st
        .conditions
        .unwrap()
        .into_iter()
        .map(|c| (c.type_, c.status))
        .collect();
    for (ty, want) in [
        ("PodScheduled", "True"),
        ("Initialized", "True"),
        ("PodReadyToStartContainers", "True"),
        ("ContainersReady", "False"),
        ("Ready", "False"),
    ] {
        assert!(
            conds.contains(&(ty.to_string(), want.to_string())),
            "condition {ty}={want} in {conds:?}"
        );
    }

    let p = wait_done(&pods, "exit3", 60).await;
    assert_eq!(phase(&p), "Failed");
    let t = terminated(&p, "main");
    assert_eq!(
        (t.exit_code, t.reason.as_deref(), t.signal),
        (3, Some("Error"), None)
    );

    let p = wait_done(&pods, "killed", 60).await;
    assert_eq!(phase(&p), "Failed");
    let t = terminated(&p, "main");
    assert_eq!(
        (t.exit_code, t.signal, t.reason.as_deref()),
        (137, Some(9), Some("Error"))
    );

    let p = wait_done(&pods, "missing", 60).await;
    assert_eq!(phase(&p), "Failed");
    let t = terminated(&p, "main");
    assert_eq!(t.reason.as_deref(), Some("StartError"));
    assert!(t.message.unwrap_or_default().contains("lab-does-not-exist"));

    eventually(30, "ErrImageNeverPull on other-image", || async {
        let p = pods.get("other-image").await.unwrap();
        let w = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.first())
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.waiting.clone());
        phase(&p) == "Pending"
            && w.is_some_and(|w| {
                w.reason.as_deref() == Some("ErrImageNeverPull")
                    && w.message.unwrap_or_default().contains(sa_lab::LAB_IMAGE)
            })
    })
    .await;

    // kubectl logs of finished pods shows their output.
    let out = c.kubectl_ok(&["logs", "-n", &ns, "exit3"]);
    assert!(out.contains("exiting with 3"), "kubectl logs: {out:?}");
    let out = c.kubectl_ok(&["logs", "-n", &ns, "ok", "-c", "main"]);
    assert!(out.contains("wrote 18 bytes"), "kubectl logs: {out:?}");

    // The ServiceAccount files where a real Pod has them.
    create(&pods, toolbox_pod("ls-sa", &["ls", SA_DIR])).await;
    let p = wait_done(&pods, "ls-sa", 60).await;
    let entries = message_json(&terminated(&p, "main"))["entries"].clone();
    for f in ["token", "ca.crt", "namespace", "..data"] {
        assert!(
            entries.as_array().unwrap().iter().any(|e| e == f),
            "{f} in {entries}"
        );
    }
    create(
        &pods,
        toolbox_pod("ns-file", &["cat", &format!("{SA_DIR}/namespace")]),
    )
    .await;
    wait_done(&pods, "ns-file", 60).await;
    assert_eq!(logs(&pods, "ns-file", "main").await, ns);

    // The token's claims bind it to this Pod (name, uid) and this node.
    create(
        &pods,
        toolbox_pod("claims", &["claims", &format!("{SA_DIR}/token")]),
    )
    .await;
    let p = wait_done(&pods, "claims", 60).await;
    assert_eq!(phase(&p), "Succeeded", "{:#?}", p.status);
    let claims = message_json(&terminated(&p, "main"));
    let k = &claims["kubernetes.io"];
    assert_eq!(k["pod"]["name"], "claims");
    assert_eq!(k["pod"]["uid"], p.metadata.uid.clone().unwrap().as_str());
    assert_eq!(k["node"]["name"], node.as_str());
    assert_eq!(k["namespace"], ns.as_str());
    assert_eq!(claims["sub"], format!("system:serviceaccount:{ns}:default"));

    // ca.crt verifies the API server and Config::incluster() works: whoami.
    create(&pods, toolbox_pod("whoami", &["whoami"])).await;
    let p = wait_done(&pods, "whoami", 60).await;
    assert_eq!(
        phase(&p),
        "Succeeded",
        "{}",
        logs(&pods, "whoami", "main").await
    );
    let id = message_json(&terminated(&p, "main"));
    assert_eq!(
        id["username"],
        format!("system:serviceaccount:{ns}:default")
    );

    // Env: the kubelet's service variables plus fieldRef values.
    let mut envp = toolbox_pod("env", &["env"]);
    envp["spec"]["containers"][0]["env"] = json!([
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "GREETING", "value": "hi $(POD_NAME)"},
    ]);
    create(&pods, envp).await;
    let p = wait_done(&pods, "env", 60).await;
    let env = message_json(&terminated(&p, "main"));
    assert_eq!(env["KUBERNETES_SERVICE_HOST"], "127.0.0.1");
    assert_eq!(env["KUBERNETES_SERVICE_PORT"], c.info.api_port.to_string());
    assert_eq!(env["POD_NAME"], "env");
    assert_eq!(env["POD_NS"], ns.as_str());
    assert_eq!(env["POD_UID"], p.metadata.uid.clone().unwrap().as_str());
    assert_eq!(env["NODE"], node.as_str());
    assert_eq!(env["SA"], "default");
    assert_eq!(env["POD_IP"], "127.0.0.1");
    assert_eq!(env["GREETING"], "hi env");
    assert_eq!(env["HOSTNAME"], "env");

    automount_combinations(&client, &ns).await;
    explicit_audience(&c, &client, &ns).await;
    twenty_at_once(&pods).await;
    start_latency(&pods).await;
}

/// CURRICULUM chapter 5: the four ServiceAccount/Pod automount combinations.
async fn automount_combinations(client: &kube::Client, ns: &str) {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    for (name, sa_auto) in [("sa-unset", None), ("sa-false", Some(false))] {
        let mut sa = json!({"metadata": {"name": name}});
        if let Some(v) = sa_auto {
            sa["automountServiceAccountToken"] = json!(v);
        }
        sas.create(&PostParams::default(), &serde_json::from_value(sa).unwrap())
            .await
            .unwrap();
    }
    // (SA automount, Pod automount, mounted?)
    let table = [
        ("sa-unset", None, true),
        ("sa-unset", Some(false), false),
        ("sa-false", None, false),
        ("sa-false", Some(true), true),
    ];
    for (i, (sa, pod_auto, _)) in table.iter().enumerate() {
        let name = format!("automount-{i}");
        let mut p = toolbox_pod(&name, &["incluster"]);
        p["spec"]["serviceAccountName"] = json!(sa);
        if let Some(v) = pod_auto {
            p["spec"]["automountServiceAccountToken"] = json!(v);
        }
        // A second container lists the mount path and shows the env.
        p["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(toolbox_container("env", &["env"]));
        create(&pods, p).await;
    }
    for (i, (sa, pod_auto, mounted)) in table.iter().enumerate() {
        let name = format!("automount-{i}");
        let p = wait_done(&pods, &name, 60).await;
        let t = terminated(&p, "main");
        let msg = message_json(&t);
        let env = message_json(&terminated(&p, "env"));
        assert!(
            env["KUBERNETES_SERVICE_HOST"].is_string(),
            "env always set ({sa}, {pod_auto:?})"
        );
        assert!(
            env["KUBERNETES_SERVICE_PORT"].is_string(),
            "env always set ({sa}, {pod_auto:?})"
        );
        if *mounted {
            assert_eq!(
                t.exit_code, 0,
                "SA {sa} / pod {pod_auto:?}: in-cluster config works: {msg}"
            );
            assert_eq!(msg["ok"], true);
        } else {
            assert_eq!(
                t.exit_code, 1,
                "SA {sa} / pod {pod_auto:?}: no token: {msg}"
            );
            let err = msg["error"].as_str().unwrap_or_default().to_lowercase();
            // kube-rs reads the namespace file first, then the token: both are missing.
            assert!(
                !err.contains("environment variable")
                    && (err.contains("token") || err.contains("no such file")),
                "fails on the missing files, not on env: {err}"
            );
        }
    }
}

/// An explicit projected token, audience `vault`, 600 s, at a custom path:
/// the claims say so, and the API server refuses it while it accepts the
/// default-audience token of the same Pod.
async fn explicit_audience(c: &TestCluster, client: &kube::Client, ns: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut p = toolbox_pod("vault", &["claims", "/var/run/secrets/vault/token"]);
    p["spec"]["automountServiceAccountToken"] = json!(false);
    p["spec"]["volumes"] = json!([
        {"name": "vault-token", "projected": {"sources": [
            {"serviceAccountToken": {"audience": "vault", "expirationSeconds": 600, "path": "token"}}]}},
        {"name": "api-token", "projected": {"sources": [
            {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}]}},
    ]);
    p["spec"]["containers"][0]["volumeMounts"] =
        json!([{"name": "vault-token", "mountPath": "/var/run/secrets/vault", "readOnly": true}]);
    let mut show_vault = toolbox_container("show-vault", &["cat", "/var/run/secrets/vault/token"]);
    show_vault["volumeMounts"] = p["spec"]["containers"][0]["volumeMounts"].clone();
    let mut show_api = toolbox_container("show-api", &["cat", "/var/run/secrets/api/token"]);
    show_api["volumeMounts"] =
        json!([{"name": "api-token", "mountPath": "/var/run/secrets/api", "readOnly": true}]);
    p["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .extend([show_vault, show_api]);
    create(&pods, p).await;
    let p = wait_done(&pods, "vault", 60).await;
    assert_eq!(phase(&p), "Succeeded", "{:#?}", p.status);
    let claims = message_json(&terminated(&p, "main"));
    assert_eq!(claims["aud"], json!(["vault"]));
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert_eq!(exp - iat, 600, "{claims}");
    let vault_token = logs(&pods, "vault", "show-vault").await;
    let api_token = logs(&pods, "vault", "show-api").await;
    assert_eq!(
        get_api_status(c, client, &api_token).await,
        200,
        "default audience accepted"
    );
    assert_eq!(
        get_api_status(c, client, &vault_token).await,
        401,
        "audience vault refused"
    );
}

async fn twenty_at_once(pods: &Api<Pod>) {
    for i in 0..20 {
        let p = toolbox_pod(
            &format!("many-{i}"),
            &["message", &format!("pod number {i}")],
        );
        // Created as fast as the API server takes them.
        create(pods, p).await;
    }
    for i in 0..20 {
        let p = wait_done(pods, &format!("many-{i}"), 120).await;
        assert_eq!(phase(&p), "Succeeded", "many-{i}: {:#?}", p.status);
        assert_eq!(
            terminated(&p, "main").message.as_deref(),
            Some(format!("pod number {i}").as_str())
        );
    }
}

/// Pod create -> Succeeded for a trivial lab Pod, 20 runs one after another.
async fn start_latency(pods: &Api<Pod>) {
    let mut secs = Vec::new();
    for i in 0..20 {
        let name = format!("latency-{i}");
        let t0 = Instant::now();
        create(pods, toolbox_pod(&name, &["exit", "0"])).await;
        let p = wait_done(pods, &name, 60).await;
        secs.push(t0.elapsed().as_secs_f64());
        assert_eq!(phase(&p), "Succeeded");
    }
    secs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (median, p95) = (percentile(&secs, 0.5), percentile(&secs, 0.95));
    eprintln!(
        "pod create -> Succeeded over {} runs: median {median:.3}s, p95 {p95:.3}s",
        secs.len()
    );
    assert!(median < 2.0, "median start latency {median:.3}s");
}

/// Node Ready and Lease renewing over more than a minute, while pods are
/// deleted gracefully and a pod whose token cannot be fetched waits; then a
/// node agent restart re-adopts running pods and never re-runs finished ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_behaves_like_a_kubelet_over_time() {
    let c = TestCluster::start("node-life").await;
    let client = c.client().await;
    let node = c.info.node_name.clone();
    tokio::join!(lease_and_ready_for_a_minute(&client, &node), async {
        graceful_delete(&c, &client).await;
        unfetchable_token_waits(&client).await;
    });
    restart_adopts_and_never_reruns(&c, &client).await;
}

async fn lease_and_ready_for_a_minute(client: &kube::Client, node: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let start = Instant::now();
    let mut renew_times = std::collections::BTreeSet::new();
    while start.elapsed() < Duration::from_secs(65) {
        let n = nodes.get(node).await.expect("node");
        let ready = n
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.clone());
        assert_eq!(
            ready.as_deref(),
            Some("True"),
            "node Ready after {:?}",
            start.elapsed()
        );
        let taints = n
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        if start.elapsed() > Duration::from_secs(15) {
            assert!(taints.is_empty(), "no taints on a healthy node: {taints:?}");
        }
        let st = n.status.unwrap();
        assert!(
            st.daemon_endpoints
                .and_then(|d| d.kubelet_endpoint)
                .is_some_and(|e| e.port > 0)
        );
        assert!(
            st.addresses
                .unwrap_or_default()
                .iter()
                .any(|a| a.type_ == "InternalIP" && a.address == "127.0.0.1")
        );
        let lease = leases.get(node).await.expect("node lease");
        assert_eq!(
            lease.metadata.owner_references.unwrap_or_default()[0].kind,
            "Node"
        );
        let renew = lease.spec.and_then(|s| s.renew_time).expect("renewTime").0;
        renew_times.insert(renew.as_second());
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    assert!(
        renew_times.len() >= 5,
        "the Lease renewed {} times in 65 s",
        renew_times.len()
    );
}

async fn graceful_delete(c: &TestCluster, client: &kube::Client) {
    let ns = make_ns(client, "delete").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    create(&pods, toolbox_pod("sleeper", &["sleep", "600"])).await;
    eventually(60, "sleeper Running", || async {
        phase(&pods.get("sleeper").await.unwrap()) == "Running"
    })
    .await;
    let pod = pods.get("sleeper").await.unwrap();
    let token = bound_token(client, &pod).await;
    assert_eq!(
        get_api_status(c, client, &token).await,
        200,
        "token bound to the live pod accepted"
    );

    let t0 = Instant::now();
    pods.delete("sleeper", &DeleteParams::default())
        .await
        .expect("delete");
    // The program exits on SIGTERM, so the node deletes the pod well within its 30 s grace.
    eventually(30, "sleeper gone", || async {
        pods.get_opt("sleeper").await.unwrap().is_none()
    })
    .await;
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "pod gone after {took:?} (grace 30 s): SIGTERM was sent"
    );
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let evs = events.list(&ListParams::default()).await.unwrap();
    assert!(
        evs.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("Killing")),
        "a Killing event: {:?}",
        evs.items
            .iter()
            .map(|e| e.reason.clone())
            .collect::<Vec<_>>()
    );
    // The API server caches a successful token review for 10 s, so allow for that.
    eventually(
        30,
        "the token bound to the deleted pod refused (401)",
        || async { get_api_status(c, client, &token).await == 401 },
    )
    .await;

    let nss: Api<Namespace> = Api::all(client.clone());
    nss.delete(&ns, &DeleteParams::default())
        .await
        .expect("delete ns");
    eventually(60, "namespace gone", || async {
        nss.get_opt(&ns).await.unwrap().is_none()
    })
    .await;
}

async fn unfetchable_token_waits(client: &kube::Client) {
    let ns = make_ns(client, "notoken").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let sa =
        || serde_json::from_value::<ServiceAccount>(json!({"metadata": {"name": "gone"}})).unwrap();
    sas.create(&PostParams::default(), &sa()).await.unwrap();
    // Held by a scheduling gate while its ServiceAccount is deleted.
    let mut p = toolbox_pod("orphan", &["exit", "0"]);
    p["spec"]["serviceAccountName"] = json!("gone");
    p["spec"]["schedulingGates"] = json!([{"name": "sa-lab.dev/hold"}]);
    create(&pods, p).await;
    sas.delete("gone", &DeleteParams::default()).await.unwrap();
    pods.patch(
        "orphan",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"schedulingGates": null}})),
    )
    .await
    .expect("remove the scheduling gate");

    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    eventually(60, "a FailedMount event about the token", || async {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("FailedMount")
                    && e.type_.as_deref() == Some("Warning")
                    && e.message
                        .as_deref()
                        .unwrap_or_default()
                        .contains("failed to fetch token")
                    && e.message.as_deref().unwrap_or_default().contains("gone")
            })
    })
    .await;
    let p = pods.get("orphan").await.unwrap();
    assert_eq!(phase(&p), "Pending");
    let waiting = p
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|cs| cs.first().cloned());
    let reason = waiting
        .and_then(|c| c.state)
        .and_then(|s| s.waiting)
        .and_then(|w| w.reason);
    assert_eq!(reason.as_deref(), Some("ContainerCreating"));
    // The allowed twin: once the ServiceAccount exists again, the pod runs.
    sas.create(&PostParams::default(), &sa()).await.unwrap();
    let p = wait_done(&pods, "orphan", 60).await;
    assert_eq!(phase(&p), "Succeeded", "{:#?}", p.status);
}

/// The node agent's pid (the supervisor's child running `sa-lab node --options <dir>/node/options.json`).
fn node_agent_pid(c: &TestCluster) -> Option<i32> {
    let opts = c.info.dir.join("node/options.json").display().to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd);
        let args: Vec<&str> = cmd.split('\0').collect();
        (args.contains(&"node") && args.contains(&opts.as_str())).then_some(pid)
    })
}

async fn restart_adopts_and_never_reruns(c: &TestCluster, client: &kube::Client) {
    let ns = make_ns(client, "restart").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    create(&pods, toolbox_pod("done", &["message", "ran once"])).await;
    create(&pods, toolbox_pod("running", &["sleep", "8"])).await;
    let done = wait_done(&pods, "done", 60).await;
    let done_t = terminated(&done, "main");
    eventually(60, "running Running", || async {
        phase(&pods.get("running").await.unwrap()) == "Running"
    })
    .await;
    let cid_before = pods
        .get("running")
        .await
        .unwrap()
        .status
        .unwrap()
        .container_statuses
        .unwrap()[0]
        .container_id
        .clone();

    let old = node_agent_pid(c).expect("node agent process");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eventually(30, "the supervisor restarts the node agent", || async {
        node_agent_pid(c).is_some_and(|p| p != old)
    })
    .await;

    let p = wait_done(&pods, "running", 60).await;
    assert_eq!(
        phase(&p),
        "Succeeded",
        "adopted pod finished normally: {:#?}",
        p.status
    );
    let cs = p.status.unwrap().container_statuses.unwrap()[0].clone();
    assert_eq!(
        cs.container_id, cid_before,
        "same process, not started again"
    );
    assert_eq!(cs.restart_count, 0);
    let log = logs(&pods, "running", "main").await;
    assert_eq!(log.matches("sleeping").count(), 1, "ran once: {log:?}");

    // The finished pod keeps its status and does not run again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = pods.get("done").await.unwrap();
    assert_eq!(terminated(&again, "main").finished_at, done_t.finished_at);
    assert_eq!(
        logs(&pods, "done", "main").await.matches("wrote").count(),
        1
    );
    // A new pod still runs after the restart.
    create(&pods, toolbox_pod("after", &["exit", "0"])).await;
    assert_eq!(phase(&wait_done(&pods, "after", 60).await), "Succeeded");
}
