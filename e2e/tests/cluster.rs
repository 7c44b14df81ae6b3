//! The local cluster itself (issue: real control plane on one machine).
//! Each test starts its own cluster and stops it; none depends on another.

mod common;

use std::time::Duration;

use base64::Engine;
use common::{TestCluster, eventually, unique_ns};
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenRequest};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::wait::await_condition;
use serde_json::json;

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("valid object")
}

async fn create_ns(client: &kube::Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    api.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": name}})),
    )
    .await
    .expect("create namespace");
}

fn pod(name: &str, sa: Option<&str>) -> Pod {
    let mut spec = json!({
        "restartPolicy": "Never",
        "containers": [{
            "name": "main",
            "image": sa_lab::LAB_IMAGE,
            "imagePullPolicy": "IfNotPresent",
            "command": ["lab-toolbox", "exit", "0"]
        }]
    });
    if let Some(sa) = sa {
        spec["serviceAccountName"] = json!(sa);
    }
    obj(json!({"metadata": {"name": name}, "spec": spec}))
}

/// Decodes a JWT's payload (no verification: the API server verifies).
fn claims(jwt: &str) -> serde_json::Value {
    let payload = jwt.split('.').nth(1).expect("three-part JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

fn pem_to_der(pem: &str) -> Vec<Vec<u8>> {
    pem.split("-----BEGIN CERTIFICATE-----")
        .skip(1)
        .map(|block| {
            let body: String = block
                .split("-----END CERTIFICATE-----")
                .next()
                .unwrap_or_default()
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            base64::engine::general_purpose::STANDARD
                .decode(body)
                .expect("PEM body")
        })
        .collect()
}

/// A client that trusts only `ca_pem` and authenticates with `token`, as a
/// Pod would.
fn token_client(server: &str, ca_pem: &str, token: &str) -> kube::Client {
    let mut cfg = kube::Config::new(server.parse().expect("server URL"));
    cfg.root_cert = Some(pem_to_der(ca_pem));
    cfg.auth_info.token = Some(token.to_string().into());
    kube::Client::try_from(cfg).expect("token client")
}

async fn whoami(client: &kube::Client) -> Result<serde_json::Value, kube::Error> {
    let api: Api<SelfSubjectReview> = Api::all(client.clone());
    let review: SelfSubjectReview =
        obj(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}));
    let out = api.create(&PostParams::default(), &review).await?;
    Ok(serde_json::to_value(out.status).unwrap()["userInfo"].clone())
}

async fn request_token(client: &kube::Client, ns: &str, sa: &str) -> String {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let tr: TokenRequest = obj(json!({"spec": {"expirationSeconds": 600}}));
    let out = api
        .create_token_request(sa, &PostParams::default(), &tr)
        .await
        .expect("TokenRequest");
    out.status.and_then(|s| s.token).expect("token in status")
}

#[tokio::test]
async fn namespaces_get_default_sa_and_pods_get_projected_token() {
    let c = TestCluster::start("pods").await;
    let client = c.client().await;
    let ns = unique_ns("admission");
    create_ns(&client, &ns).await;

    // The ServiceAccount controller gives every namespace `default`.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    eventually(10, "default ServiceAccount", || async {
        sas.get_opt("default").await.ok().flatten().is_some()
    })
    .await;

    // Admission fills in serviceAccountName and the kube-api-access volume.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let stored = pods
        .create(&PostParams::default(), &pod("no-sa", None))
        .await
        .expect("create pod");
    let spec = stored.spec.expect("spec");
    assert_eq!(spec.service_account_name.as_deref(), Some("default"));
    let volumes = spec.volumes.unwrap_or_default();
    let vol = volumes
        .iter()
        .find(|v| v.name.starts_with("kube-api-access-"))
        .expect("kube-api-access-* volume");
    assert_eq!(vol.name.len(), "kube-api-access-".len() + 5);
    let sources = vol
        .projected
        .as_ref()
        .expect("projected")
        .sources
        .clone()
        .unwrap_or_default();
    let token = sources
        .iter()
        .find_map(|s| s.service_account_token.as_ref())
        .expect("token source");
    assert_eq!(token.path, "token");
    assert_eq!(token.expiration_seconds, Some(3607));
    let cm = sources
        .iter()
        .find_map(|s| s.config_map.as_ref())
        .expect("configMap source");
    assert_eq!(cm.name, "kube-root-ca.crt");
    let dapi = sources
        .iter()
        .find_map(|s| s.downward_api.as_ref())
        .expect("downwardAPI source");
    let item = &dapi.items.as_ref().expect("items")[0];
    assert_eq!(item.path, "namespace");
    assert_eq!(
        item.field_ref.as_ref().unwrap().field_path,
        "metadata.namespace"
    );
    let mount = spec.containers[0]
        .volume_mounts
        .as_ref()
        .and_then(|m| m.iter().find(|m| m.name == vol.name).cloned())
        .expect("token mount");
    assert_eq!(
        mount.mount_path,
        "/var/run/secrets/kubernetes.io/serviceaccount"
    );
    assert_eq!(mount.read_only, Some(true));

    // Twin: a Pod naming an existing ServiceAccount is accepted...
    sas.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "app"}})),
    )
    .await
    .expect("create sa");
    let ok = pods
        .create(&PostParams::default(), &pod("with-sa", Some("app")))
        .await;
    assert!(
        ok.is_ok(),
        "pod naming an existing SA must be accepted: {ok:?}"
    );
    // ...and one naming a missing ServiceAccount is refused with 403.
    let err = pods
        .create(
            &PostParams::default(),
            &pod("missing-sa", Some("does-not-exist")),
        )
        .await
        .expect_err("pod naming a missing SA must be refused");
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 403, "{s:?}");
            assert!(
                s.message.contains("error looking up service account"),
                "{}",
                s.message
            );
        }
        other => panic!("expected a 403, got {other:?}"),
    }
}

#[tokio::test]
async fn token_request_identity_and_rbac() {
    let c = TestCluster::start("tokens").await;
    let client = c.client().await;
    let ns = unique_ns("tokens");
    create_ns(&client, &ns).await;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    sas.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "robot"}})),
    )
    .await
    .expect("create sa");

    let jwt = request_token(&client, &ns, "robot").await;
    assert_eq!(jwt.split('.').count(), 3, "a JWT has three parts");
    let cl = claims(&jwt);
    assert_eq!(cl["sub"], format!("system:serviceaccount:{ns}:robot"));
    assert_eq!(cl["iss"], "https://kubernetes.default.svc.cluster.local");

    let ca = {
        // The root-ca publisher fills the new namespace: wait on a watch.
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let cm = tokio::time::timeout(
            Duration::from_secs(10),
            await_condition(cms, "kube-root-ca.crt", |cm: Option<&ConfigMap>| {
                cm.is_some()
            }),
        )
        .await
        .expect("kube-root-ca.crt in the new namespace within 10s")
        .expect("watching kube-root-ca.crt")
        .expect("the ConfigMap");
        cm.data
            .and_then(|d| d.get("ca.crt").cloned())
            .expect("kube-root-ca.crt holds ca.crt")
    };
    let sa_client = token_client(&c.info.server, &ca, &jwt);
    let user = whoami(&sa_client)
        .await
        .expect("SelfSubjectReview with the token");
    assert_eq!(
        user["username"],
        format!("system:serviceaccount:{ns}:robot")
    );
    let groups: Vec<String> = serde_json::from_value(user["groups"].clone()).unwrap();
    for g in [
        "system:serviceaccounts",
        &format!("system:serviceaccounts:{ns}"),
        "system:authenticated",
    ] {
        assert!(groups.iter().any(|x| x == g), "groups {groups:?} lack {g}");
    }

    // A corrupted token is not a valid identity: 401. The corruption
    // always changes the signed bytes (see lab_kit::jwt::corrupt): flipping
    // the *last* base64url character of an ES256 signature may change only
    // padding bits, which decode to the same signature.
    let bad = lab_kit::jwt::corrupt(&jwt);
    assert_ne!(
        lab_kit::jwt::signature_bytes(&bad).unwrap(),
        lab_kit::jwt::signature_bytes(&jwt).unwrap()
    );
    match whoami(&token_client(&c.info.server, &ca, &bad)).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 401, "{s:?}"),
        other => panic!("corrupted token must get 401, got {other:?}"),
    }

    // Authenticated is not authorised: listing pods is forbidden...
    let pods: Api<Pod> = Api::namespaced(sa_client.clone(), &ns);
    match pods.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{s:?}"),
        other => panic!("bare SA must be forbidden to list pods, got {other:?}"),
    }
    // ...until a RoleBinding grants it.
    let roles: Api<Role> = Api::namespaced(client.clone(), &ns);
    roles
        .create(
            &PostParams::default(),
            &obj(json!({
                "metadata": {"name": "pod-reader"},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]
            })),
        )
        .await
        .expect("create role");
    let rbs: Api<RoleBinding> = Api::namespaced(client.clone(), &ns);
    rbs.create(&PostParams::default(), &obj(json!({
        "metadata": {"name": "robot-reads-pods"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "robot", "namespace": ns}]
    }))).await.expect("create rolebinding");
    let mut allowed = false;
    for _ in 0..50 {
        if pods.list(&ListParams::default()).await.is_ok() {
            allowed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(allowed, "the RoleBinding must allow listing pods");
}

#[tokio::test]
async fn aggregated_roles_root_ca_and_kubectl() {
    let c = TestCluster::start("kubectl").await;
    let client = c.client().await;

    // clusterrole-aggregation filled `view`.
    let view = Api::<ClusterRole>::all(client.clone())
        .get("view")
        .await
        .expect("view");
    assert!(view.rules.is_some_and(|r| !r.is_empty()), "view has rules");

    // kube-root-ca.crt holds the CA that verifies the API server: a client
    // trusting only it completes TLS (and gets /version anonymously).
    let cm = Api::<ConfigMap>::namespaced(client.clone(), "default")
        .get("kube-root-ca.crt")
        .await
        .expect("kube-root-ca.crt");
    let ca = cm.data.unwrap()["ca.crt"].clone();
    let mut cfg = kube::Config::new(c.info.server.parse().unwrap());
    cfg.root_cert = Some(pem_to_der(&ca));
    let anon = kube::Client::try_from(cfg).unwrap();
    let v = anon
        .apiserver_version()
        .await
        .expect("TLS verified by kube-root-ca.crt");
    assert_eq!(v.git_version, sa_lab::KUBERNETES_VERSION);
    // Twin: a client trusting some other CA fails TLS.
    let other = sa_lab::pki::generate(&c.dir().join("other-pki"), "x").unwrap();
    let mut cfg = kube::Config::new(c.info.server.parse().unwrap());
    cfg.root_cert = Some(pem_to_der(&other.ca.cert_pem));
    let wrong = kube::Client::try_from(cfg).unwrap();
    assert!(
        wrong.apiserver_version().await.is_err(),
        "an unrelated CA must not verify the apiserver"
    );

    // The built kubectl works against it.
    let version = c.kubectl_ok(&["version", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&version).unwrap();
    assert_eq!(v["serverVersion"]["gitVersion"], sa_lab::KUBERNETES_VERSION);
    assert_eq!(v["clientVersion"]["gitVersion"], sa_lab::KUBERNETES_VERSION);
    let who = c.kubectl_ok(&["auth", "whoami", "-o", "json"]);
    assert!(
        who.contains("kubernetes-admin") && who.contains("system:masters"),
        "{who}"
    );

    let ns = unique_ns("kubectl");
    c.kubectl_ok(&["create", "namespace", &ns]);
    c.kubectl_ok(&["-n", &ns, "create", "serviceaccount", "pod-manager"]);
    let token = c.kubectl_ok(&[
        "-n",
        &ns,
        "create",
        "token",
        "pod-manager",
        "--duration",
        "10m",
    ]);
    assert_eq!(
        claims(token.trim())["sub"],
        format!("system:serviceaccount:{ns}:pod-manager")
    );

    let sa = format!("system:serviceaccount:{ns}:pod-manager");
    let can = |c: &TestCluster| {
        let out = c.kubectl(&["auth", "can-i", "list", "pods", "-n", &ns, "--as", &sa]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(can(&c), "no");
    c.kubectl_ok(&[
        "-n",
        &ns,
        "create",
        "role",
        "lister",
        "--verb=list",
        "--resource=pods",
    ]);
    c.kubectl_ok(&[
        "-n",
        &ns,
        "create",
        "rolebinding",
        "lister",
        "--role=lister",
        &format!("--serviceaccount={ns}:pod-manager"),
    ]);
    let mut answer = String::new();
    for _ in 0..50 {
        answer = can(&c);
        if answer == "yes" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answer, "yes");

    // A namespace can be deleted (the namespace controller finishes it).
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.delete(&ns, &DeleteParams::default())
        .await
        .expect("delete ns");
    eventually(60, "namespace deletion", || async {
        nss.get_opt(&ns).await.ok().flatten().is_none()
    })
    .await;
}
