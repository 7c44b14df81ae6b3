//! The sandbox node (issue 3): lab Pods run as local processes with real
//! projected ServiceAccount volumes, and the node behaves like a kubelet
//! towards the API server. Each test starts its own local cluster.

//!
//! Tests wait on events (a watch, a condition) with a deadline and assert
//! behaviour, never how long something took: timings are measured by
//! `scripts/bench.sh` (e2e/benches/startup.rs).

mod common;
mod pod_kit;

use std::time::Duration;

use common::{TestCluster, eventually};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Node, Pod, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Api;
use kube::api::{DeleteParams, LogParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use pod_kit::{
    create, make_ns, message_json, phase, terminated, toolbox_container, toolbox_pod, wait_done,
    wait_for, wait_running, waiting,
};

const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

// ---------------------------------------------------------------- helpers

/// Waits, watching the Events of `ns`, for one that `pred` accepts.
async fn wait_event(
    client: &kube::Client,
    ns: &str,
    secs: u64,
    what: &str,
    pred: impl Fn(&Event) -> bool,
) -> Event {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    let mut seen = Vec::new();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .applied_objects();
    futures::pin_mut!(stream);
    let found = tokio::time::timeout(Duration::from_secs(secs), async {
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(ev) if pred(&ev) => return Some(ev),
                Ok(ev) => seen.push((ev.reason, ev.message)),
                Err(e) => eprintln!("watching events (retrying): {e}"),
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(ev)) => ev,
        _ => panic!("no event {what} within {secs}s; seen: {seen:#?}"),
    }
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

/// Waits, following the container log (`kubectl logs -f`), for a line
/// that contains `needle`.
async fn wait_log_line(api: &Api<Pod>, name: &str, secs: u64, needle: &str) {
    use futures::AsyncBufReadExt;
    let follow = LogParams {
        follow: true,
        ..Default::default()
    };
    let lines = api
        .log_stream(name, &follow)
        .await
        .unwrap_or_else(|e| panic!("following the log of {name}: {e}"))
        .lines();
    futures::pin_mut!(lines);
    let found = tokio::time::timeout(Duration::from_secs(secs), async {
        while let Some(line) = lines.next().await {
            if line.expect("a log line").contains(needle) {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        found == Ok(true),
        "no log line with {needle:?} from {name} within {secs}s"
    );
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

// ---------------------------------------------------------------- tests

/// Exit codes, termination messages, signals, start errors, the image rule,
/// the ServiceAccount files and claims, in-cluster config, env, automount,
/// explicit audiences, kubectl logs and 20 pods at once.
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

    wait_for(
        &pods,
        "other-image",
        30,
        "ErrImageNeverPull on other-image",
        |p| {
            p.is_some_and(|p| {
                phase(p) == "Pending"
                    && waiting(p).is_some_and(|w| {
                        w.reason.as_deref() == Some("ErrImageNeverPull")
                            && w.message.unwrap_or_default().contains(sa_lab::LAB_IMAGE)
                    })
            })
        },
    )
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
        // More containers show the env and list the token dir and /var/run/secrets.
        p["spec"]["containers"].as_array_mut().unwrap().extend([
            toolbox_container("env", &["env"]),
            toolbox_container("ls-sa", &["ls", SA_DIR]),
            toolbox_container("ls-secrets", &["ls", "/var/run/secrets"]),
        ]);
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
        token_dir_absent_or_present(&p, *mounted, &format!("SA {sa} / pod {pod_auto:?}"));
    }
}

/// As on a kubelet: with the token mounted its dir holds token, ca.crt and
/// namespace; without it the dir does not exist at all, it is not an empty
/// dir, and neither does /var/run/secrets (nothing is mounted below it, and
/// the image has no such dir), whatever the host has there.
fn token_dir_absent_or_present(p: &Pod, mounted: bool, case: &str) {
    let ls = terminated(p, "ls-sa");
    let listing = message_json(&ls);
    let secrets = terminated(p, "ls-secrets");
    if mounted {
        assert_eq!(ls.exit_code, 0, "{case}: {listing}");
        let entries = listing["entries"].as_array().cloned().unwrap_or_default();
        for f in ["token", "ca.crt", "namespace"] {
            assert!(entries.iter().any(|e| e == f), "{case}: {f} in {listing}");
        }
        let up = message_json(&secrets);
        assert_eq!(up["entries"], json!(["kubernetes.io"]), "{case}: {up}");
    } else {
        for (path, t) in [(SA_DIR, &ls), ("/var/run/secrets", &secrets)] {
            let out = message_json(t);
            let err = out["error"].as_str().unwrap_or_default();
            assert!(
                t.exit_code == 2 && err.contains("No such file or directory"),
                "{case}: {path} must not exist (not even empty): {out}"
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

/// The node renews its Lease and stays Ready and untainted, while pods are
/// deleted gracefully and a pod whose token cannot be fetched waits; then a
/// node agent restart re-adopts running pods and never re-runs finished ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_behaves_like_a_kubelet_over_time() {
    let c = TestCluster::start("node-life").await;
    let client = c.client().await;
    let node = c.info.node_name.clone();
    tokio::join!(lease_renewed_and_node_ready(&client, &node), async {
        graceful_delete(&c, &client).await;
        unfetchable_token_waits(&client).await;
    });
    restart_adopts_and_never_reruns(&c, &client).await;
}

fn renew_time(lease: Option<&Lease>) -> Option<MicroTime> {
    lease?.spec.as_ref()?.renew_time.clone()
}

/// The Lease (owned by the Node) is renewed after the node started, and
/// the Node is Ready with no taints, its kubelet endpoint and InternalIP set.
async fn lease_renewed_and_node_ready(client: &kube::Client, node: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease = leases.get(node).await.expect("node lease");
    let owners = lease.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(
        owners.first().map(|o| o.kind.as_str()),
        Some("Node"),
        "{owners:?}"
    );
    let first = renew_time(Some(&lease)).expect("renewTime");
    // Renewed every 10 s: one renewal is due well within the deadline.
    wait_for(&leases, node, 60, "the node Lease renewed", |l| {
        renew_time(l).is_some_and(|t| t > first)
    })
    .await;
    let n = wait_for(&nodes, node, 60, "the Node Ready and untainted", |n| {
        n.is_some_and(|n| {
            let ready = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
                .is_some_and(|c| c.status == "True");
            let taints = n.spec.as_ref().and_then(|s| s.taints.as_ref());
            ready && taints.is_none_or(|t| t.is_empty())
        })
    })
    .await
    .expect("the node");
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
}

/// A graceful delete sends SIGTERM first: the program handles it and exits
/// 0 well within the 30 s grace (a SIGKILL after the grace would end it with
/// 137), the node posts that final status, deletes the pod, and the token
/// bound to it stops working.
async fn graceful_delete(c: &TestCluster, client: &kube::Client) {
    let ns = make_ns(client, "delete").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    create(&pods, toolbox_pod("sleeper", &["sleep", "600"])).await;
    let pod = wait_running(&pods, "sleeper", 60).await;
    // Running means the process started, not that it handles SIGTERM yet
    // (as on a kubelet): it says "sleeping" once its handler is in place.
    wait_log_line(&pods, "sleeper", 30, "sleeping").await;
    let token = bound_token(client, &pod).await;
    assert_eq!(
        get_api_status(c, client, &token).await,
        200,
        "token bound to the live pod accepted"
    );

    // Watch from before the delete (its initial list done): the Delete
    // event carries the final status the node posted.
    let cfg = watcher::Config::default().fields("metadata.name=sleeper");
    let stream = watcher(pods.clone(), cfg).default_backoff();
    futures::pin_mut!(stream);
    let next = |ev: Option<watcher::Event<Pod>>| ev.expect("the watch ended");
    while !matches!(
        next(stream.try_next().await.expect("watching sleeper")),
        watcher::Event::InitDone
    ) {}
    pods.delete("sleeper", &DeleteParams::default())
        .await
        .expect("delete");
    let last = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match next(stream.try_next().await.expect("watching sleeper")) {
                watcher::Event::Delete(p) => return p,
                // A re-list after a lost watch: gone means deleted unseen.
                watcher::Event::InitDone => {
                    assert!(
                        pods.get_opt("sleeper").await.unwrap().is_some(),
                        "the final state was not seen"
                    )
                }
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("sleeper not deleted within 60 s"));
    let t = terminated(&last, "main");
    assert_eq!(
        (t.exit_code, t.reason.as_deref()),
        (0, Some("Completed")),
        "the program ended on SIGTERM, not SIGKILL: {t:?}"
    );
    assert_eq!(message_json(&t)["signal"], "SIGTERM", "{t:?}");
    assert!(pods.get_opt("sleeper").await.unwrap().is_none(), "deleted");
    wait_event(client, &ns, 30, "Killing", |e| {
        e.reason.as_deref() == Some("Killing")
    })
    .await;
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
    wait_for(&nss, &ns, 60, "namespace gone", |n| n.is_none()).await;
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

    wait_event(client, &ns, 60, "FailedMount about the token", |e| {
        let msg = e.message.as_deref().unwrap_or_default();
        e.reason.as_deref() == Some("FailedMount")
            && e.type_.as_deref() == Some("Warning")
            && msg.contains("failed to fetch token")
            && msg.contains("gone")
    })
    .await;
    // The status the node posts with that event: still creating, not started.
    wait_for(
        &pods,
        "orphan",
        30,
        "orphan Pending in ContainerCreating",
        |p| {
            p.is_some_and(|p| {
                phase(p) == "Pending"
                    && waiting(p).and_then(|w| w.reason).as_deref() == Some("ContainerCreating")
            })
        },
    )
    .await;
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
    let running = wait_running(&pods, "running", 60).await;
    let cid_before = running.status.unwrap().container_statuses.unwrap()[0]
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

    // The new agent posted "running"'s end, so its initial list (which held
    // "done") is behind it, and a pod created now runs after it: once
    // "after" has run, the new agent has had its go at "done".
    create(&pods, toolbox_pod("after", &["exit", "0"])).await;
    assert_eq!(phase(&wait_done(&pods, "after", 60).await), "Succeeded");
    // The finished pod kept its status and ran once.
    let again = pods.get("done").await.unwrap();
    assert_eq!(terminated(&again, "main").finished_at, done_t.finished_at);
    assert_eq!(
        logs(&pods, "done", "main").await.matches("wrote").count(),
        1
    );
}
