//! What makes the lab image work on kind, checked without a cluster or a
//! Docker engine: every lab manifest names the pinned lab image with a pull
//! policy that works with `kind load`, the tag the image build uses is that
//! same tag, the Docker build context leaves target/ out, and the kind
//! config pins the Kubernetes minor the local provider runs.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use sa_lab::{KUBERNETES_VERSION, LAB_IMAGE, manifest};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ sits in the repository root")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// labs/*/manifests/*.yaml (and .yml), sorted.
fn lab_manifests() -> Vec<PathBuf> {
    let mut files = Vec::new();
    let labs = repo_root().join("labs");
    for lab in fs::read_dir(&labs).expect("labs/") {
        let dir = lab.unwrap().path().join("manifests");
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn rel(path: &Path) -> String {
    path.strip_prefix(repo_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Cargo.toml's `[workspace.package] version`.
fn workspace_version() -> String {
    let text = read(&repo_root().join("Cargo.toml"));
    let mut in_table = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_table = line == "[workspace.package]";
        } else if in_table && line.starts_with("version") {
            let (_, value) = line.split_once('=').expect("version = ...");
            return value.trim().trim_matches('"').to_owned();
        }
    }
    panic!("no version in [workspace.package] of Cargo.toml");
}

#[test]
fn every_lab_container_runs_the_pinned_lab_image() {
    let files = lab_manifests();
    assert!(
        !files.is_empty(),
        "no lab manifests found under labs/*/manifests/: nothing would run on kind"
    );
    let mut containers = 0;
    let mut wrong = Vec::new();
    for file in &files {
        let text = read(file);
        if text.contains(":latest") {
            wrong.push(format!("{}: mentions :latest", rel(file)));
        }
        let found = manifest::parse(&rel(file), &text)
            .map(|docs| manifest::containers(&docs))
            .unwrap_or_else(|e| panic!("{e} ({e:?})"));
        for c in found {
            containers += 1;
            let at = format!("{} {} container {:?}", rel(file), c.object, c.container);
            if c.image.as_deref() != Some(LAB_IMAGE) {
                wrong.push(format!("{at}: image {:?}, want {LAB_IMAGE:?}", c.image));
            }
            match c.pull_policy.as_deref() {
                Some("IfNotPresent" | "Never") => {}
                other => wrong.push(format!(
                    "{at}: imagePullPolicy {other:?}, want IfNotPresent (works with kind load)"
                )),
            }
        }
    }
    assert!(
        containers > 0,
        "{} lab manifests but no container in any of them: no lab would run",
        files.len()
    );
    assert!(wrong.is_empty(), "lab manifests:\n  {}", wrong.join("\n  "));
}

#[test]
fn lab_image_tag_is_the_workspace_version() {
    assert_eq!(LAB_IMAGE, format!("sa-lab-labs:{}", workspace_version()));
    assert!(!LAB_IMAGE.ends_with(":latest"));
}

#[test]
fn image_build_tags_what_the_manifests_name() {
    let script = repo_root().join("scripts/build-lab-image.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--print-tag")
        .output()
        .expect("running bash");
    assert!(
        out.status.success(),
        "{} --print-tag failed: {}",
        rel(&script),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), LAB_IMAGE);
}

#[test]
fn dockerfile_builds_every_lab_into_a_pinned_non_root_image() {
    let text = read(&repo_root().join("Dockerfile"));
    let args: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ARG "))
        .filter_map(|a| a.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let expand = |s: &str| {
        args.iter().fold(s.to_owned(), |acc, (k, v)| {
            acc.replace(&format!("${{{k}}}"), v)
        })
    };
    let froms: Vec<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("FROM "))
        .map(|f| expand(f.split_whitespace().next().unwrap()))
        .collect();
    assert_eq!(froms.len(), 2, "a builder and a runtime stage: {froms:?}");
    for image in &froms {
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
        assert!(
            !tag.is_empty() && tag != "latest" && !tag.contains('$'),
            "FROM {image}: pin a version"
        );
    }
    assert!(
        froms[0].starts_with("rust:1."),
        "builder on an official rust image pinned by version: {}",
        froms[0]
    );
    assert!(
        text.contains("labs/*/Cargo.toml"),
        "builds every package under labs/"
    );
    assert!(
        text.contains("/usr/local/bin/"),
        "binaries in /usr/local/bin"
    );
    let user = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("USER "))
        .next_back()
        .expect("a USER line");
    let uid = user.split(':').next().unwrap();
    assert!(
        uid.parse::<u32>().is_ok_and(|u| u != 0),
        "USER {user}: numeric and not root (runAsNonRoot needs a numeric user)"
    );
}

#[test]
fn docker_build_context_excludes_target() {
    let text = read(&repo_root().join(".dockerignore"));
    let rules: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let excludes = |name: &str| {
        rules.iter().any(|r| {
            let r = r.trim_start_matches('/').trim_end_matches('/');
            r == name || r == format!("**/{name}")
        })
    };
    let reincluded = |name: &str| rules.iter().any(|r| r.starts_with('!') && r.contains(name));
    for name in ["target", ".git"] {
        assert!(
            excludes(name),
            ".dockerignore must exclude {name}/: {rules:?}"
        );
        assert!(
            !reincluded(name),
            ".dockerignore re-includes {name}: {rules:?}"
        );
    }
    assert!(
        excludes("book") || excludes("book/book"),
        ".dockerignore must exclude the built book: {rules:?}"
    );
}

#[test]
fn kind_config_pins_the_local_kubernetes_minor_by_digest() {
    let text = read(&repo_root().join("kind/cluster.yaml"));
    let images: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("image:"))
        .map(str::trim)
        .collect();
    assert!(!images.is_empty(), "kind/cluster.yaml names no node image");
    let local_minor = KUBERNETES_VERSION.split('.').nth(1).unwrap();
    for image in images {
        let (reference, digest) = image
            .split_once("@sha256:")
            .unwrap_or_else(|| panic!("{image}: pin the node image by digest"));
        assert!(
            digest.len() == 64 && digest.chars().all(|c| c.is_ascii_hexdigit()),
            "{image}: a sha256 digest has 64 hex digits"
        );
        let version = reference
            .strip_prefix("kindest/node:v")
            .unwrap_or_else(|| panic!("{image}: expected kindest/node:vX.Y.Z"));
        let minor = version.split('.').nth(1).unwrap();
        assert_eq!(
            minor, local_minor,
            "{image}: kind must run the local provider's minor ({KUBERNETES_VERSION})"
        );
    }
    let up = read(&repo_root().join("scripts/kind-up.sh"));
    assert!(
        up.lines()
            .any(|l| l.starts_with("readonly KIND_VERSION=\"v0.")),
        "scripts/kind-up.sh pins the kind release"
    );
}
