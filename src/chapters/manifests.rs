//! The chapters' manifests, embedded at build time from
//! `labs/NN-slug/manifests/*.yaml`: the exact YAML the book shows.

use anyhow::Context as _;

/// One manifest file.
#[derive(Debug, Clone, Copy)]
pub struct Manifest {
    /// Path relative to the repository root.
    pub path: &'static str,
    /// The YAML text.
    pub text: &'static str,
}

impl Manifest {
    /// The file name (`03-rolebinding.yaml`).
    pub fn file_name(&self) -> &'static str {
        self.path.rsplit('/').next().unwrap_or(self.path)
    }
}

macro_rules! manifest {
    ($lab:literal, $file:literal) => {
        Manifest {
            path: concat!("labs/", $lab, "/manifests/", $file),
            text: include_str!(concat!("../../labs/", $lab, "/manifests/", $file)),
        }
    };
}

static CH01: &[Manifest] = &[
    manifest!("01-identity", "00-namespace.yaml"),
    manifest!("01-identity", "01-serviceaccount.yaml"),
    manifest!("01-identity", "02-pod.yaml"),
    manifest!("01-identity", "03-pod-without-sa.yaml"),
];
static CH02: &[Manifest] = &[
    manifest!("02-token-mount", "00-namespace.yaml"),
    manifest!("02-token-mount", "01-serviceaccount.yaml"),
    manifest!("02-token-mount", "02-pod.yaml"),
];
static CH03: &[Manifest] = &[
    manifest!("03-rolebinding", "00-namespaces.yaml"),
    manifest!("03-rolebinding", "01-serviceaccount.yaml"),
    manifest!("03-rolebinding", "02-role.yaml"),
    manifest!("03-rolebinding", "03-rolebinding.yaml"),
    manifest!("03-rolebinding", "04-pod.yaml"),
    manifest!("03-rolebinding", "05-role-binding-manager.yaml"),
    manifest!("03-rolebinding", "06-rolebinding-binds.yaml"),
    manifest!("03-rolebinding", "07-pod-escalation.yaml"),
];
static CH04: &[Manifest] = &[
    manifest!("04-default-sa", "00-namespace.yaml"),
    manifest!("04-default-sa", "01-role.yaml"),
    manifest!("04-default-sa", "02-default-binding.yaml"),
    manifest!("04-default-sa", "03-web-pod.yaml"),
    manifest!("04-default-sa", "04-app-serviceaccount.yaml"),
    manifest!("04-default-sa", "05-app-binding.yaml"),
    manifest!("04-default-sa", "06-app-pod.yaml"),
];
static CH05: &[Manifest] = &[
    manifest!("05-automount", "00-namespace.yaml"),
    manifest!("05-automount", "01-serviceaccounts.yaml"),
    manifest!("05-automount", "02-pod-default.yaml"),
    manifest!("05-automount", "03-pod-off.yaml"),
    manifest!("05-automount", "04-pod-sa-off.yaml"),
    manifest!("05-automount", "05-pod-opts-in.yaml"),
];

/// The manifests of chapter `number`, in file order.
pub fn manifests(number: u8) -> &'static [Manifest] {
    match number {
        1 => CH01,
        2 => CH02,
        3 => CH03,
        4 => CH04,
        5 => CH05,
        _ => &[],
    }
}

/// The manifest of chapter `number` called `file`.
pub(crate) fn manifest(number: u8, file: &str) -> anyhow::Result<Manifest> {
    manifests(number)
        .iter()
        .find(|m| m.file_name() == file)
        .copied()
        .with_context(|| format!("chapter {number} has no manifest {file}"))
}

/// Parse a multi-document YAML file into JSON objects (empty documents are
/// skipped). Errors name the file and the line.
pub fn parse_manifest(path: &str, text: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(text)
        .map_err(|e| anyhow::anyhow!("{path}: invalid YAML: {e}"))?;
    let mut out = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        let ok = doc["apiVersion"].is_string()
            && doc["kind"].is_string()
            && doc["metadata"]["name"].is_string();
        anyhow::ensure!(
            ok,
            "{path}: document {} has no apiVersion, kind or metadata.name",
            i + 1
        );
        out.push(doc);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_manifest_parses_and_is_labelled() {
        for c in super::super::catalog() {
            let ms = manifests(c.number);
            assert!(!ms.is_empty());
            for m in ms {
                let docs = parse_manifest(m.path, m.text).unwrap();
                assert!(!docs.is_empty(), "{}", m.path);
                for d in docs {
                    let labels = &d["metadata"]["labels"];
                    assert_eq!(labels["app.kubernetes.io/part-of"], "sa-lab", "{}", m.path);
                    let want = format!("{:02}", c.number);
                    assert_eq!(labels["sa-lab.dev/chapter"], want.as_str(), "{}", m.path);
                    if d["kind"] == "Pod" {
                        let spec = &d["spec"];
                        assert_eq!(spec["restartPolicy"], "Never");
                        let ctr = &spec["containers"][0];
                        assert_eq!(ctr["image"], crate::LAB_IMAGE);
                        assert_eq!(ctr["imagePullPolicy"], "IfNotPresent");
                        assert_eq!(ctr["command"][0], c.lab_binary().as_str());
                    }
                }
            }
        }
    }

    #[test]
    fn embedded_list_matches_directory() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for c in super::super::catalog() {
            let dir = root.join("labs").join(c.slug).join("manifests");
            let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".yaml"))
                .collect();
            on_disk.sort();
            let embedded: Vec<String> = manifests(c.number)
                .iter()
                .map(|m| m.file_name().to_string())
                .collect();
            assert_eq!(on_disk, embedded, "chapter {}", c.number);
        }
    }

    #[test]
    fn malformed_yaml_names_file_and_line() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n---\nkind: [unclosed\n";
        let err = parse_manifest("labs/x/manifests/bad.yaml", text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("labs/x/manifests/bad.yaml"), "{err}");
        assert!(
            err.contains("line 6") || err.contains(":6:") || err.contains("6:"),
            "{err}"
        );
    }
}
