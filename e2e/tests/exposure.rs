//! What the local cluster exposes: every endpoint of the sandbox node
//! authenticates and authorizes its caller as a kubelet does. Without
//! credentials it answers 401; with a ServiceAccount token 403; with the
//! API server's kubelet client certificate (what `kubectl logs` goes
//! through) it serves. The state directory is private, and no token or
//! private key shows in what sa-lab prints, logs or transcribes.

mod common;
mod pod_kit;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{TestCluster, listening_in, loopback, sa_lab, socket_inodes};
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

/// Every file under `dir` (recursively), without following links.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

/// A JWT (three base64url segments, the first two JSON objects) or a PEM
/// private key in `text`, if any: what it is and where.
fn secret_in(text: &str) -> Option<String> {
    if let Some(i) = text.find("PRIVATE KEY-----") {
        return Some(format!("a PEM private key at byte {i}"));
    }
    let b64 = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    let mut from = 0;
    while let Some(i) = text[from..].find("eyJ") {
        let start = from + i;
        let candidate: String = text[start..]
            .chars()
            .take_while(|c| b64(*c) || *c == '.')
            .collect();
        let parts: Vec<&str> = candidate.split('.').collect();
        if parts.len() >= 3 && parts[1].starts_with("eyJ") && parts[2].len() >= 16 {
            return Some(format!("a JWT at byte {start}: {}...", &candidate[..20]));
        }
        from = start + 3;
    }
    None
}

/// After `up`: the cluster's directory is 0700, every key and kubeconfig
/// 0600, and no file holding a private key is readable by others. After
/// every chapter has run on it: no JWT or private key in what `sa-lab
/// run` printed (tables and `-o json`, with the labs' termination
/// messages), in any log under the state directory (the components', the
/// audit log, the supervisor's, every container's), or in the book's
/// transcripts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_private_and_no_secret_leaks() {
    let c = TestCluster::start("secrets").await;
    let info = c.info.clone();
    assert_eq!(mode(&info.dir), 0o700, "{}", info.dir.display());
    let files = files_under(&info.dir);
    let mut private = 0;
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let holds_key = std::fs::read(f)
            .is_ok_and(|b| String::from_utf8_lossy(&b).contains("PRIVATE KEY-----"));
        if name.ends_with(".key") || name.ends_with("kubeconfig") || holds_key {
            assert_eq!(mode(f), 0o600, "{}", f.display());
            private += 1;
        }
    }
    assert!(private >= 10, "keys and kubeconfigs found: {private}");
    // The scanner finds what it looks for (else "none found" proves
    // nothing): a private key file, and a real ServiceAccount token.
    let admin_key = std::fs::read_to_string(info.pki_dir().join("admin.key")).unwrap();
    assert!(secret_in(&admin_key).is_some());
    let sas: Api<ServiceAccount> = Api::namespaced(c.client().await, "default");
    let tr = TokenRequest {
        spec: Some(TokenRequestSpec::default()),
        ..Default::default()
    };
    let token = sas
        .create_token_request("default", &PostParams::default(), &tr)
        .await
        .unwrap()
        .status
        .and_then(|s| s.token)
        .unwrap();
    assert!(secret_in(&format!("x {token} y")).is_some());

    let mut outputs = Vec::new();
    for ch in sa_lab::chapters::catalog() {
        let n = format!("{:02}", ch.number);
        for format in ["table", "json"] {
            let out = sa_lab(
                &["run", &n, "--name", &info.name, "-o", format],
                &[("SA_LAB_QUIET", "0")],
            );
            let o = out.get_output();
            let text = format!(
                "{}\n{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(o.status.success(), "chapter {n} -o {format}:\n{text}");
            outputs.push((format!("`sa-lab run {n} -o {format}`"), text));
        }
    }
    let logs: Vec<PathBuf> = files_under(&info.dir)
        .into_iter()
        .filter(|f| {
            f.starts_with(info.logs_dir())
                || f.file_name()
                    .is_some_and(|n| n == "log" || n.to_string_lossy().ends_with(".log"))
        })
        .collect();
    assert!(
        logs.iter().any(|f| f.ends_with("audit.log")) && logs.len() > 8,
        "logs found: {logs:?}"
    );
    for f in logs.iter().chain(&files_under(
        &sa_lab::paths::repo_root().join("book/src/transcripts"),
    )) {
        let text = String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned();
        outputs.push((f.display().to_string(), text));
    }
    let found: Vec<String> = outputs
        .iter()
        .filter_map(|(what, text)| secret_in(text).map(|s| format!("{what}: {s}")))
        .collect();
    assert!(found.is_empty(), "secrets shown: {found:#?}");
}

/// Every process of the cluster: its supervisor and everything descended
/// from it (components, the node's Pod processes), and anything whose
/// command line names the cluster's directory.
fn cluster_processes(info: &ClusterInfo) -> Vec<u32> {
    let sup = sa_lab::local::read_status(&info.dir)
        .expect("status.json")
        .supervisor_pid;
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // `pid (comm) state ppid ...`; comm may hold spaces.
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut ours = vec![sup];
    let mut i = 0;
    while i < ours.len() {
        let p = ours[i];
        ours.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    ours.extend(
        common::processes_mentioning(&info.dir.display().to_string())
            .into_iter()
            .map(|(p, _)| p),
    );
    ours.sort();
    ours.dedup();
    ours
}

#[test]
fn the_socket_table_parser_tells_loopback_from_any() {
    // Lines as the kernel writes them (header, then one socket a line).
    let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0 100 0 0 10 0\n\
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2222 1 0 100 0 0 10 0\n\
   2: 0100007F:9C40 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 3333 1 0 100 0 0 10 0\n";
    let found = listening_in("tcp", tcp);
    assert_eq!(
        found.len(),
        2,
        "the established one is not listening: {found:?}"
    );
    assert_eq!(
        (found[0].addr.to_string(), found[0].port, found[0].inode),
        ("127.0.0.1".to_string(), 8080, 1111)
    );
    assert!(loopback(&found[0].addr));
    assert_eq!(found[1].addr.to_string(), "0.0.0.0");
    assert!(!loopback(&found[1].addr), "any address is not loopback");
    let tcp6 = "  sl  local_address                         remote_address                        st\n\
   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1\n\
   1: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5555 1\n";
    let found = listening_in("tcp6", tcp6);
    assert_eq!(found[0].addr.to_string(), "::1");
    assert!(loopback(&found[0].addr));
    assert_eq!(found[1].addr.to_string(), "::");
    assert!(!loopback(&found[1].addr));
}

/// After `up`, every TCP or UDP socket a process of the cluster listens on
/// is bound to loopback (127.0.0.0/8 or ::1), unless it is in a network
/// namespace other than the host's (one the cluster made). The scan must
/// find the API server's and etcd's sockets, so an empty scan fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listening_socket_is_on_loopback() {
    let c = TestCluster::start("sockets").await;
    let info = c.info.clone();
    let host_net = std::fs::read_link("/proc/self/ns/net").unwrap();
    let pids = cluster_processes(&info);
    assert!(pids.len() >= 6, "supervisor + 5 components: {pids:?}");
    let mut found = Vec::new(); // (owner, socket)
    let mut elsewhere = Vec::new();
    for pid in pids {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let inodes = socket_inodes(pid);
        if inodes.is_empty() {
            continue;
        }
        let own_net = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
        if own_net.as_ref() != Some(&host_net) {
            elsewhere.push(format!("{comm} ({pid}) in {own_net:?}"));
            continue;
        }
        for proto in ["tcp", "tcp6", "udp", "udp6"] {
            let table =
                std::fs::read_to_string(format!("/proc/{pid}/net/{proto}")).unwrap_or_default();
            for l in listening_in(proto, &table) {
                if inodes.contains(&l.inode) {
                    found.push((format!("{comm} ({pid})"), l));
                }
            }
        }
    }
    let owner_of = |port: u16| -> Vec<&str> {
        found
            .iter()
            .filter(|(_, l)| l.port == port && l.proto.starts_with("tcp"))
            .map(|(o, _)| o.as_str())
            .collect()
    };
    // The twin: the scan sees the sockets it must.
    assert!(
        owner_of(info.api_port)
            .iter()
            .any(|o| o.starts_with("kube-apiserver")),
        "the API server's port {} among {found:#?}",
        info.api_port
    );
    assert!(
        owner_of(info.etcd_port)
            .iter()
            .any(|o| o.starts_with("etcd")),
        "etcd's port {} among {found:#?}",
        info.etcd_port
    );
    assert!(
        !owner_of(info.kubelet_port).is_empty(),
        "the node's port {} among {found:#?}",
        info.kubelet_port
    );
    let offenders: Vec<String> = found
        .iter()
        .filter(|(_, l)| !loopback(&l.addr))
        .map(|(o, l)| format!("{o}: {} {}:{}", l.proto, l.addr, l.port))
        .collect();
    assert!(
        offenders.is_empty(),
        "listening beyond loopback: {offenders:#?}\n(all found: {found:#?}; in other network namespaces: {elsewhere:?})"
    );
    let list: Vec<String> = found
        .iter()
        .map(|(o, l)| format!("{o} {} {}:{}", l.proto, l.addr, l.port))
        .collect();
    eprintln!(
        "{} listening sockets, all on loopback: {list:?}; processes in other network namespaces: {elsewhere:?}",
        found.len()
    );
}
