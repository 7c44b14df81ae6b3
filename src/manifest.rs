//! The one manifest parser of the project: multi-document YAML files as the
//! book shows them and the runner, the exercises and the image checks read
//! them.

use serde_json::Value;

/// Why a manifest could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The text is not YAML that maps to JSON values; the YAML error names
    /// the line and column.
    #[error("{path}: invalid YAML")]
    Yaml {
        /// The file, as the reader should find it.
        path: String,
        /// What the YAML parser said (with line and column).
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    /// A document lacks what every Kubernetes object has.
    #[error("{path}: document {index} has no apiVersion, kind or metadata.name")]
    NotAnObject {
        /// The file.
        path: String,
        /// 1-based position of the document in the file.
        index: usize,
    },
}

/// Every object of a multi-document YAML file, empty documents skipped.
/// Each must have `apiVersion`, `kind` and `metadata.name`.
pub fn parse(path: &str, text: &str) -> Result<Vec<Value>, ManifestError> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).map_err(|source| ManifestError::Yaml {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
    let mut out = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        let ok = doc["apiVersion"].is_string()
            && doc["kind"].is_string()
            && doc["metadata"]["name"].is_string();
        if !ok {
            return Err(ManifestError::NotAnObject {
                path: path.to_owned(),
                index: i + 1,
            });
        }
        out.push(doc);
    }
    Ok(out)
}

/// `Kind/name` (and ` -n namespace`), as messages name an object.
pub fn describe(obj: &Value) -> String {
    let ns = obj["metadata"]["namespace"]
        .as_str()
        .map(|n| format!(" -n {n}"))
        .unwrap_or_default();
    format!(
        "{}/{}{ns}",
        obj["kind"].as_str().unwrap_or("?"),
        obj["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// A container of a workload in a manifest, as the image checks see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// The object, as `Kind/name`.
    pub object: String,
    /// The container's name.
    pub container: String,
    /// Its `image`, if set.
    pub image: Option<String>,
    /// Its `imagePullPolicy`, if set.
    pub pull_policy: Option<String>,
}

/// Every container (`initContainers`, `containers`, `ephemeralContainers`)
/// of every workload in `docs`: Pods, Jobs, CronJobs, Deployments,
/// ReplicaSets, StatefulSets, DaemonSets, and `List`s of them.
pub fn containers(docs: &[Value]) -> Vec<Container> {
    let mut out = Vec::new();
    for doc in docs {
        let object = format!(
            "{}/{}",
            doc["kind"].as_str().unwrap_or("?"),
            doc["metadata"]["name"].as_str().unwrap_or("?")
        );
        for_each_container(doc, &mut |c| {
            let text = |k: &str| c.get(k).and_then(Value::as_str).map(str::to_owned);
            out.push(Container {
                object: object.clone(),
                container: text("name").unwrap_or_default(),
                image: text("image"),
                pull_policy: text("imagePullPolicy"),
            });
        });
    }
    out
}

/// The Pod spec of a workload object (`None` for other kinds).
pub fn pod_spec(doc: &Value) -> Option<&Value> {
    let pointer = match doc.get("kind").and_then(Value::as_str) {
        Some("Pod") => "/spec",
        Some("CronJob") => "/spec/jobTemplate/spec/template/spec",
        Some(
            "Job"
            | "Deployment"
            | "ReplicaSet"
            | "StatefulSet"
            | "DaemonSet"
            | "ReplicationController",
        ) => "/spec/template/spec",
        _ => return None,
    };
    doc.pointer(pointer)
}

fn for_each_container(doc: &Value, f: &mut dyn FnMut(&Value)) {
    if doc.get("kind").and_then(Value::as_str) == Some("List") {
        for item in doc["items"].as_array().into_iter().flatten() {
            for_each_container(item, f);
        }
        return;
    }
    let Some(spec) = pod_spec(doc) else {
        return;
    };
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        spec[list]
            .as_array()
            .into_iter()
            .flatten()
            .for_each(&mut *f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_yaml_names_file_and_line() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n---\nkind: [unclosed\n";
        let err = parse("labs/x/manifests/bad.yaml", text).unwrap_err();
        let shown = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(
            shown.starts_with("labs/x/manifests/bad.yaml: invalid YAML"),
            "{shown}"
        );
        assert!(shown.contains("line 6") || shown.contains("6:"), "{shown}");
    }

    #[test]
    fn documents_must_be_objects() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\nkind: Pod\n";
        let err = parse("f.yaml", text).unwrap_err();
        assert_eq!(
            err.to_string(),
            "f.yaml: document 2 has no apiVersion, kind or metadata.name"
        );
        assert!(parse("f.yaml", "\n---\n").unwrap().is_empty());
    }

    #[test]
    fn containers_of_every_workload_kind() {
        let yaml = r#"
apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  initContainers: [{name: init, image: "a:1"}]
  containers: [{name: c, image: "b:2", imagePullPolicy: IfNotPresent}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: cj}
spec: {jobTemplate: {spec: {template: {spec: {containers: [{name: j, image: "c:3"}]}}}}}
---
apiVersion: v1
kind: List
metadata: {name: l}
items:
  - {kind: Deployment, metadata: {name: d}, spec: {template: {spec: {containers: [{name: x}]}}}}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cm}
"#;
        let docs = parse("f.yaml", yaml).unwrap();
        let got: Vec<(String, String, Option<String>)> = containers(&docs)
            .into_iter()
            .map(|c| (c.object, c.container, c.image))
            .collect();
        assert_eq!(
            got,
            vec![
                ("Pod/p".into(), "init".into(), Some("a:1".into())),
                ("Pod/p".into(), "c".into(), Some("b:2".into())),
                ("CronJob/cj".into(), "j".into(), Some("c:3".into())),
                ("List/l".into(), "x".into(), None),
            ]
        );
    }

    const JOB: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata:
  name: lab
---
apiVersion: batch/v1
kind: Job
metadata:
  name: probe
spec:
  template:
    spec:
      serviceAccountName: lab
      restartPolicy: Never
      initContainers:
        - name: init
          image: sa-lab-labs:0.1.0
          imagePullPolicy: IfNotPresent
      containers:
        - name: lab
          image: sa-lab-labs:0.1.0
          imagePullPolicy: Never
        - name: other
          image: busybox:1.36
---
# only a comment
"#;

    #[test]
    fn manifest_containers_finds_every_container() {
        let found = containers(&parse("job.yaml", JOB).unwrap());
        assert_eq!(found.len(), 3);
        assert_eq!(found[0].object, "Job/probe");
        assert_eq!(found[0].container, "init");
        assert_eq!(found[1].pull_policy.as_deref(), Some("Never"));
        assert_eq!(found[2].image.as_deref(), Some("busybox:1.36"));
        assert_eq!(found[2].pull_policy, None);

        let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - {name: c, image: x:1}\n";
        assert_eq!(
            containers(&parse("p.yaml", pod).unwrap())[0].object,
            "Pod/p"
        );
        assert!(parse("x.yaml", "kind: [").is_err());
    }
}
