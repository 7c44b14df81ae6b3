//! What the local cluster exposes: every endpoint of the sandbox node
//! authenticates and authorizes its caller as a kubelet does. Without
//! credentials it answers 401; with a ServiceAccount token 403; with the
//! API server's kubelet client certificate (what `kubectl logs` goes
//! through) it serves.

mod common;
mod pod_kit;

use common::TestCluster;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::Api;
use kube::api::PostParams;
use pod_kit::{create, make_ns, toolbox_pod, wait_done};
use sa_lab::local::ClusterInfo;

/// How a test calls the node.
enum Cred<'a> {
    None,
    Token(&'a str),
    /// A client certificate and key (paths).
    Cert(&'a str, &'a str),
}

/// GET `path` on the node's port as `cred`; returns the status code and body.
async fn get(info: &ClusterInfo, path: &str, cred: Cred<'_>) -> (u16, String) {
    let user = match cred {
        Cred::None => "{}".to_string(),
        Cred::Token(t) => format!("{{token: {t:?}}}"),
        Cred::Cert(c, k) => format!("{{client-certificate: {c:?}, client-key: {k:?}}}"),
    };
    // The node's serving certificate is not checked here (the API server
    // does not check it either); who the caller is, is the point.
    let yaml = format!(
        "apiVersion: v1\nkind: Config\n\
         clusters: [{{name: node, cluster: {{server: \"https://127.0.0.1:{}\", insecure-skip-tls-verify: true}}}}]\n\
         users: [{{name: u, user: {user}}}]\n\
         contexts: [{{name: c, context: {{cluster: node, user: u}}}}]\n\
         current-context: c\n",
        info.kubelet_port
    );
    let kc = kube::config::Kubeconfig::from_yaml(&yaml).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let req = http::Request::get(path).body(Vec::new()).unwrap();
    match client.request_text(req).await {
        Ok(body) => (200, body),
        Err(kube::Error::Api(s)) => (s.code, s.message),
        Err(e) => panic!("GET {path}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_endpoint_wants_a_kubelet_client() {
    let c = TestCluster::start("exposure").await;
    let info = c.info.clone();
    let client = c.client().await;
    let ns = make_ns(&client, "expose").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    create(
        &pods,
        toolbox_pod("talk", &["message", "hello from the pod"]),
    )
    .await;
    wait_done(&pods, "talk", 60).await;

    // A ServiceAccount's token, as a Pod would hold it.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let tr = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let token = sas
        .create_token_request("default", &PostParams::default(), &tr)
        .await
        .expect("token request")
        .status
        .and_then(|s| s.token)
        .expect("a token");

    let pki = info.pki_dir();
    let path = |f: &str| pki.join(f).display().to_string();
    let (kcrt, kkey) = (
        path("apiserver-kubelet-client.crt"),
        path("apiserver-kubelet-client.key"),
    );
    let logs = format!("/containerLogs/{ns}/talk/main");
    for endpoint in ["/healthz", logs.as_str()] {
        let (code, body) = get(&info, endpoint, Cred::None).await;
        assert_eq!((code, body.trim()), (401, "Unauthorized"), "{endpoint}");
        let (code, _) = get(&info, endpoint, Cred::Token("not-a-token")).await;
        assert_eq!(code, 401, "{endpoint} with a bogus token");
        let (code, body) = get(&info, endpoint, Cred::Token(&token)).await;
        assert_eq!(code, 403, "{endpoint} with a ServiceAccount token: {body}");
        assert!(
            body.contains(&format!("user=system:serviceaccount:{ns}:default")),
            "{body}"
        );
        let (code, body) = get(&info, endpoint, Cred::Cert(&kcrt, &kkey)).await;
        assert_eq!(code, 200, "{endpoint} as the API server: {body}");
    }
    let (_, body) = get(&info, &logs, Cred::Cert(&kcrt, &kkey)).await;
    assert!(body.contains("wrote"), "the container's log: {body:?}");
    // A certificate of the cluster whose user may not proxy to nodes:
    // authenticated, then refused.
    let (code, body) = get(
        &info,
        &logs,
        Cred::Cert(&path("scheduler.crt"), &path("scheduler.key")),
    )
    .await;
    assert_eq!(code, 403, "the scheduler's certificate: {body}");
    // And `kubectl logs` (the API server, with its certificate) works.
    let out = c.kubectl_ok(&["logs", "-n", &ns, "talk"]);
    assert!(out.contains("wrote"), "kubectl logs: {out:?}");
}
