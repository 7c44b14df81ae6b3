//! 02-rust-by-hand: call the API server by hand, as `curl` does, with the
//! Pod's mounted token and CA bundle. README.md says what to do.

use lab_kit::report::{ProbeRow, Report};
use lab_kit::{CA_PATH, TOKEN_PATH};

/// GET `path` (`/api/v1/...`) on the API server as this Pod's
/// ServiceAccount: the mounted token as a bearer token, the mounted
/// `ca.crt` as the only CA it trusts. Returns the HTTP status and a short
/// message (the Status message of a refusal).
async fn get_by_hand(path: &str) -> anyhow::Result<(u16, String)> {
    // TODO 1: the API server's URL: lab_kit::apiserver_url_from_env()
    //         (https://KUBERNETES_SERVICE_HOST:KUBERNETES_SERVICE_PORT), then `path`.
    // TODO 2: read the token (TOKEN_PATH) and the CA bundle (CA_PATH).
    // TODO 3: lab_kit::https::get(&url, &ca, Some(&token)) sends the GET;
    //         return its status and its message().
    todo!("GET {path} by hand")
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut report = Report::new("02", "exercise-02-rust-by-hand");
    for (id, resource) in [("raw-list-pods", "pods"), ("raw-list-secrets", "secrets")] {
        let path = format!("/api/v1/namespaces/shop/{resource}");
        let (status, message) = get_by_hand(&path).await?;
        let row = ProbeRow::http(id, "list", resource, "shop", status, &message);
        report.rows.push(row);
    }
    // Prints the table and writes the report check reads.
    report.finish();
    Ok(())
}
