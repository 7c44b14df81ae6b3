//! "Who am I?" as the API server sees it: SelfSubjectReview.

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::Client;
use kube::api::{Api, PostParams};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The authenticated user, as the API server resolved the credential.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Identity {
    /// e.g. `system:serviceaccount:production:pod-manager`.
    pub username: String,
    /// e.g. `system:serviceaccounts`, `system:authenticated`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// e.g. `authentication.kubernetes.io/pod-name`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Vec<String>>,
}

// ANCHOR: whoami
/// Ask the API server who this client is (`kubectl auth whoami`).
pub async fn whoami(client: &Client) -> Result<Identity, kube::Error> {
    let api: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = api
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await?;
    let user = review.status.and_then(|s| s.user_info).unwrap_or_default();
    Ok(Identity {
        username: user.username.unwrap_or_default(),
        groups: user.groups.unwrap_or_default(),
        extra: user.extra.unwrap_or_default(),
    })
}
// ANCHOR_END: whoami
