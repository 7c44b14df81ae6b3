//! What the learner wrote, read and checked before anything touches the
//! cluster: every `*.yaml` of the exercise folder parses (else the file
//! and line), holds objects of kinds the exercise accepts, in its
//! namespaces, with names that are not `check`'s own. A problem here is
//! an error with a message for the learner; nothing has been applied.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::Exercise;
use super::def::{Definition, PROBE_PROGRAM, ProbePod};
use crate::manifest::{self, ManifestError};

/// The label every object a check applies carries, with the exercise id.
pub const EXERCISE_LABEL: &str = "sa-lab.dev/exercise";
/// Names starting with this are `check`'s own objects.
pub const RESERVED_PREFIX: &str = "sa-lab-exercise-";

/// Cluster-scoped kinds among those an exercise may accept.
pub const CLUSTER_SCOPED: [&str; 2] = ["ClusterRole", "ClusterRoleBinding"];

/// What is wrong with the learner's files.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The exercise's folder is missing.
    #[error("{} does not exist: `sa-lab reset {id}` writes the starter again", folder.display())]
    NoFolder {
        /// The folder.
        folder: PathBuf,
        /// The exercise.
        id: String,
    },
    /// A file could not be read.
    #[error("reading {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file is not YAML of Kubernetes objects.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// No objects at all.
    #[error(
        "no objects in {}: every *.yaml file there is applied; write your manifests in them \
         (README.md says what the task needs)",
        folder.display()
    )]
    Empty {
        /// The folder.
        folder: PathBuf,
    },
    /// A kind the exercise does not take.
    #[error("{file}: {object}: {why}")]
    Kind {
        /// The file.
        file: String,
        /// `Kind/name`.
        object: String,
        /// What to do instead.
        why: String,
    },
    /// An object in a namespace that is not the exercise's.
    #[error(
        "{file}: {object} is in namespace {namespace:?}; this exercise's objects go in {allowed} \
         (an object that names no namespace goes in {first})"
    )]
    Namespace {
        /// The file.
        file: String,
        /// `Kind/name`.
        object: String,
        /// The namespace it names.
        namespace: String,
        /// The exercise's namespaces.
        allowed: String,
        /// Where an object without a namespace goes.
        first: String,
    },
    /// A name `check` uses for its own objects.
    #[error("{file}: {object} {why}: give yours another name")]
    Reserved {
        /// The file.
        file: String,
        /// `Kind/name`.
        object: String,
        /// Whose name it is.
        why: String,
    },
    /// The same object twice.
    #[error("{object} is defined twice: in {first} and in {second}")]
    Duplicate {
        /// `Kind/name -n ns`.
        object: String,
        /// The first file.
        first: String,
        /// The second file.
        second: String,
    },
    /// A Pod the task needs is not in the files.
    #[error(
        "the task needs your Pod {name:?} (README.md says what it must do); \
         none of your files defines Pod/{name}"
    )]
    MissingPod {
        /// Its name.
        name: String,
    },
    /// A learner Pod with other than one container.
    #[error("{file}: {object} must have exactly one container: check runs {PROBE_PROGRAM} in it")]
    Containers {
        /// The file.
        file: String,
        /// `Pod/name`.
        object: String,
    },
}

/// One object of the learner's files.
#[derive(Debug, Clone, PartialEq)]
pub struct LearnerObject {
    /// The file it is in (its name in the exercise folder).
    pub file: String,
    /// The object, its namespace filled in and `check`'s labels added.
    pub obj: Value,
}

impl LearnerObject {
    /// Its kind.
    pub fn kind(&self) -> &str {
        self.obj["kind"].as_str().unwrap_or_default()
    }

    /// Its name.
    pub fn name(&self) -> &str {
        self.obj["metadata"]["name"].as_str().unwrap_or_default()
    }

    /// Its namespace (`None` for cluster-scoped objects).
    pub fn namespace(&self) -> Option<&str> {
        self.obj["metadata"]["namespace"].as_str()
    }

    /// `Kind/name` (and ` -n namespace`).
    pub fn describe(&self) -> String {
        manifest::describe(&self.obj)
    }

    /// Whether it is cluster-scoped.
    pub fn cluster_scoped(&self) -> bool {
        CLUSTER_SCOPED.contains(&self.kind())
    }
}

/// The `*.yaml` (and `*.yml`) files directly in `folder`, sorted by name,
/// with their text.
pub fn read_files(ex: &Exercise, folder: &Path) -> Result<Vec<(String, String)>, InputError> {
    let rd = std::fs::read_dir(folder).map_err(|_| InputError::NoFolder {
        folder: folder.into(),
        id: ex.id.into(),
    })?;
    let mut names: Vec<String> = rd
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let path = folder.join(&n);
            let text =
                std::fs::read_to_string(&path).map_err(|source| InputError::Io { path, source })?;
            Ok((n, text))
        })
        .collect()
}

/// The learner's objects from `files` (name, text), checked against `def`
/// and ready to apply. `folder` is where the files are (for messages).
pub fn objects(
    ex: &Exercise,
    def: &Definition,
    folder: &Path,
    files: &[(String, String)],
) -> Result<Vec<LearnerObject>, InputError> {
    let mut out: Vec<LearnerObject> = Vec::new();
    for (name, text) in files {
        let shown = folder.join(name).display().to_string();
        for obj in manifest::parse(&shown, text)? {
            let o = prepare(ex, def, name, obj)?;
            if let Some(first) = out.iter().find(|p| {
                p.kind() == o.kind() && p.name() == o.name() && p.namespace() == o.namespace()
            }) {
                return Err(InputError::Duplicate {
                    object: o.describe(),
                    first: first.file.clone(),
                    second: o.file.clone(),
                });
            }
            out.push(o);
        }
    }
    if out.is_empty() {
        return Err(InputError::Empty {
            folder: folder.into(),
        });
    }
    for pod in def.pods.iter().filter(|p| p.learner) {
        if !out
            .iter()
            .any(|o| o.kind() == "Pod" && o.name() == pod.name)
        {
            return Err(InputError::MissingPod {
                name: pod.name.clone(),
            });
        }
    }
    Ok(out)
}

/// One object checked: its kind accepted, its namespace the exercise's
/// (filled in when missing), its name not `check`'s; labels added.
fn prepare(
    ex: &Exercise,
    def: &Definition,
    file: &str,
    mut obj: Value,
) -> Result<LearnerObject, InputError> {
    let kind = obj["kind"].as_str().unwrap_or_default().to_string();
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let object = format!("{kind}/{name}");
    let kind_err = |why: String| InputError::Kind {
        file: file.into(),
        object: object.clone(),
        why,
    };
    if kind == "Namespace" {
        return Err(kind_err(format!(
            "check makes this exercise's namespaces ({}) itself: remove the Namespace",
            def.namespaces.join(", ")
        )));
    }
    if !def.accepts.contains(&kind) {
        return Err(kind_err(format!(
            "this exercise takes {}, not {kind}",
            def.accepts.join(", ")
        )));
    }
    let reserved = |why: &str| InputError::Reserved {
        file: file.into(),
        object: object.clone(),
        why: why.into(),
    };
    if name.starts_with(RESERVED_PREFIX) {
        return Err(reserved(
            "starts with sa-lab-exercise-, which check keeps for its own objects",
        ));
    }
    if kind == "ConfigMap" && name == "kube-root-ca.crt" {
        return Err(reserved(
            "is the namespace's CA bundle, published by kube-controller-manager",
        ));
    }
    if !CLUSTER_SCOPED.contains(&kind.as_str()) {
        let first = def.namespaces.first().cloned().unwrap_or_default();
        let ns = match obj["metadata"]["namespace"].as_str() {
            None | Some("") => first.clone(),
            Some(ns) => ns.to_string(),
        };
        if !def.namespaces.contains(&ns) {
            return Err(InputError::Namespace {
                file: file.into(),
                object,
                namespace: ns,
                allowed: def.namespaces.join(", "),
                first,
            });
        }
        obj["metadata"]["namespace"] = Value::String(ns.clone());
        if kind == "Pod" {
            check_pod(def, file, &object, &name, &ns, &obj)?;
        }
    } else if let Some(m) = obj["metadata"].as_object_mut() {
        m.remove("namespace");
    }
    let labels = &mut obj["metadata"]["labels"];
    if !labels.is_object() {
        *labels = Value::Object(Default::default());
    }
    labels["app.kubernetes.io/part-of"] = "sa-lab".into();
    labels[EXERCISE_LABEL] = ex.id.into();
    Ok(LearnerObject {
        file: file.into(),
        obj,
    })
}

fn check_pod(
    def: &Definition,
    file: &str,
    object: &str,
    name: &str,
    ns: &str,
    obj: &Value,
) -> Result<(), InputError> {
    let is = |p: &&ProbePod| p.name == name && p.namespace(def) == ns;
    match def.pods.iter().find(is) {
        Some(p) if p.learner => {
            let containers = obj["spec"]["containers"].as_array().map_or(0, Vec::len);
            let others = ["initContainers", "ephemeralContainers"]
                .iter()
                .any(|k| obj["spec"][k].as_array().is_some_and(|a| !a.is_empty()));
            if containers != 1 || others {
                return Err(InputError::Containers {
                    file: file.into(),
                    object: object.into(),
                });
            }
            Ok(())
        }
        Some(_) => Err(InputError::Reserved {
            file: file.into(),
            object: object.into(),
            why: "is the name of check's own probe Pod".into(),
        }),
        None => {
            let yours: Vec<&str> = def
                .pods
                .iter()
                .filter(|p| p.learner)
                .map(|p| p.name.as_str())
                .collect();
            Err(InputError::Kind {
                file: file.into(),
                object: object.into(),
                why: format!(
                    "this exercise runs only your Pod{} {}; remove the others",
                    if yours.len() == 1 { "" } else { "s" },
                    yours.join(", ")
                ),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EX: Exercise = Exercise {
        id: "03-test",
        chapter: "03-rolebinding",
        definition: "",
        readme: "",
        files: &[],
    };

    fn def() -> Definition {
        serde_saphyr::from_str(
            r#"
title: t
kind: write
namespaces: [shop, ci]
accepts: [ServiceAccount, Role, RoleBinding, Pod]
pods:
- {name: probe-default}
- {name: web, learner: true}
rows: [{id: a, check: c, whoami: true, expect: x}]
hints: [a, b]
starter_fails: [a]
"#,
        )
        .unwrap()
    }

    fn run(files: &[(&str, &str)]) -> Result<Vec<LearnerObject>, InputError> {
        let files: Vec<(String, String)> = files
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        objects(&EX, &def(), Path::new("/ws/03-rolebinding/03-test"), &files)
    }

    const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers: [{name: c, image: x}]\n";

    fn err(files: &[(&str, &str)]) -> String {
        crate::ui::error_chain(&run(files).unwrap_err())
    }

    #[test]
    fn good_objects_get_namespace_and_labels() {
        let sa =
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: reporter, labels: {mine: x}}\n";
        let role = "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: r, namespace: ci}\nrules: []\n";
        let out = run(&[("a.yaml", sa), ("b.yaml", role), ("pod.yaml", POD)]).unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(
            out[0].namespace(),
            Some("shop"),
            "no namespace: the first one"
        );
        assert_eq!(out[1].namespace(), Some("ci"));
        let labels = &out[0].obj["metadata"]["labels"];
        assert_eq!(labels["mine"], "x");
        assert_eq!(labels[EXERCISE_LABEL], "03-test");
        assert_eq!(labels["app.kubernetes.io/part-of"], "sa-lab");
    }

    #[test]
    fn bad_input_gets_a_message_for_the_learner() {
        let e = err(&[("pod.yaml", POD), ("bad.yaml", "kind: Role\nrules: [\n")]);
        assert!(
            e.starts_with("/ws/03-rolebinding/03-test/bad.yaml: invalid YAML"),
            "{e}"
        );
        assert!(e.contains("line"), "{e}");

        let e = err(&[("empty.yaml", "# nothing yet\n")]);
        assert!(
            e.starts_with("no objects in /ws/03-rolebinding/03-test"),
            "{e}"
        );

        let crb = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: x}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}\n";
        let e = err(&[("crb.yaml", crb)]);
        assert_eq!(
            e,
            "crb.yaml: ClusterRoleBinding/x: this exercise takes ServiceAccount, Role, RoleBinding, Pod, not ClusterRoleBinding"
        );

        let ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n";
        assert!(
            err(&[("ns.yaml", ns)])
                .contains("check makes this exercise's namespaces (shop, ci) itself")
        );

        let elsewhere =
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: a, namespace: default}\n";
        let e = err(&[("sa.yaml", elsewhere)]);
        assert!(
            e.contains("is in namespace \"default\"; this exercise's objects go in shop, ci"),
            "{e}"
        );

        let probe = "apiVersion: v1\nkind: Pod\nmetadata: {name: probe-default}\nspec: {containers: [{name: c}]}\n";
        assert!(
            err(&[("p.yaml", probe)])
                .contains("is the name of check's own probe Pod: give yours another name")
        );
        let other =
            "apiVersion: v1\nkind: Pod\nmetadata: {name: other}\nspec: {containers: [{name: c}]}\n";
        assert!(err(&[("p.yaml", other)]).contains("this exercise runs only your Pod web"));
        let ours = "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: sa-lab-exercise-sync}\n";
        assert!(err(&[("s.yaml", ours)]).contains("keeps for its own objects"));

        let sa = "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: a}\n";
        let e = err(&[("a.yaml", sa), ("b.yaml", sa)]);
        assert_eq!(
            e,
            "ServiceAccount/a -n shop is defined twice: in a.yaml and in b.yaml"
        );

        let e = err(&[("a.yaml", sa)]);
        assert!(e.contains("the task needs your Pod \"web\""), "{e}");

        let two = "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec: {containers: [{name: a}, {name: b}]}\n";
        assert!(err(&[("p.yaml", two)]).contains("must have exactly one container"));
    }
}
