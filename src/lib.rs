//! sa-lab: a hands-on, CI-verified course on Kubernetes ServiceAccounts.
//!
//! The library holds everything the `sa-lab` CLI does: locating the pinned
//! Kubernetes binaries, generating the PKI, running a local control plane
//! (real etcd, kube-apiserver, kube-controller-manager, kube-scheduler), the
//! sandbox node that runs lab Pods as local processes (or the real kubelet
//! with containerd, as root), the cluster providers
//! and the chapter runner that compares what the API server decided with the
//! curriculum's expected tables.

pub mod audit;
pub mod binaries;
pub mod chapters;
pub mod course;
pub mod exercises;
pub mod interrupt;
pub mod kubeconfig;
pub mod kubelet;
pub mod local;
pub mod manifest;
pub mod node;
pub mod paths;
pub mod pki;
pub mod provider;
pub mod rbac;
pub mod risks;
pub mod sys;
pub mod ui;

/// The lab image every lab manifest names. On the local provider the sandbox
/// node maps it to the lab binaries cargo built; on kind it is the image
/// `scripts/kind-up.sh` builds and loads.
pub use lab_kit::LAB_IMAGE;

/// The Kubernetes version the local control plane is built at (pinned in
/// `tools/k8sbin/go.mod`; `k8s-openapi`'s version feature matches its minor).
pub const KUBERNETES_VERSION: &str = "v1.37.2";
/// The etcd version (pinned in `tools/etcdbin/go.mod`).
pub const ETCD_VERSION: &str = "v3.6.16";
