//! The Pod's volumes: set up before any container starts (retried, as the
//! kubelet does, while the Pod stays `ContainerCreating`), then kept fresh
//! on events: a token due for refresh, a change to a configMap or secret
//! they read, a change to the Pod.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};

use super::{Exit, Worker};
use crate::node::error_text;
use crate::node::volumes::{self, MountError, VolumeCtx};

/// How long to wait before setting the volumes up again after that failed.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10);

/// The longest the re-sync sleeps without looking at the wall clock. A
/// token's refresh time is a wall-clock time, but a sleep counts monotonic
/// time, which stands still while a laptop is suspended and does not see a
/// clock set forward (NTP stepping it, a user): a jump past a refresh time
/// is noticed within this long. (The kubelet looks at each Pod once a
/// minute, its sync period.) Looking costs nothing but the clock read.
const CLOCK_CHECK: Duration = Duration::from_secs(10);

/// How long until the next token refresh is due (a second past the kubelet's
/// 80 % mark, which is counted in whole seconds); a day when no token is
/// cached; after a failure, at least [`RETRY_AFTER_FAILURE`].
fn refresh_wait(next_refresh: Option<jiff::Timestamp>, failed: bool) -> Duration {
    let until = match next_refresh {
        Some(at) => {
            let secs = at.as_second() + 1 - jiff::Timestamp::now().as_second();
            Duration::from_secs(secs.max(1) as u64)
        }
        None => Duration::from_secs(24 * 3600),
    };
    if failed {
        until.max(RETRY_AFTER_FAILURE)
    } else {
        until
    }
}

/// What downwardAPI volumes can show of a Pod that may change while it runs.
type DownwardMeta = (
    Option<std::collections::BTreeMap<String, String>>,
    Option<std::collections::BTreeMap<String, String>>,
);

fn downward_meta(pod: &k8s_openapi::api::core::v1::Pod) -> DownwardMeta {
    (
        pod.metadata.labels.clone(),
        pod.metadata.annotations.clone(),
    )
}

/// One item each time a configMap or secret in `sources` changes (or is
/// created or deleted), from one watch per object, selected by name.
fn source_changes(
    client: &kube::Client,
    ns: &str,
    sources: &volumes::Sources,
) -> futures::stream::BoxStream<'static, ()> {
    fn changes<K>(api: Api<K>, name: &str) -> futures::stream::BoxStream<'static, ()>
    where
        K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
        K::DynamicType: Default,
    {
        let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
        watcher(api, cfg)
            .default_backoff()
            .filter_map(|ev| async move {
                match ev {
                    // The initial list (and a re-list) ends with InitDone.
                    Ok(
                        watcher::Event::InitDone
                        | watcher::Event::Apply(_)
                        | watcher::Event::Delete(_),
                    ) => Some(()),
                    Ok(_) => None,
                    Err(e) => {
                        tracing::warn!(error = %e, "watching a volume source failed; retrying");
                        None
                    }
                }
            })
            .skip(1) // the first InitDone: nothing changed yet
            .boxed()
    }
    let cms = sources
        .configmaps
        .iter()
        .map(|name| changes(Api::<ConfigMap>::namespaced(client.clone(), ns), name));
    let secrets = sources
        .secrets
        .iter()
        .map(|name| changes(Api::<Secret>::namespaced(client.clone(), ns), name));
    let all: Vec<_> = cms.chain(secrets).collect();
    if all.is_empty() {
        return futures::stream::pending().boxed();
    }
    futures::stream::select_all(all).boxed()
}

impl Worker {
    fn vctx(&self) -> VolumeCtx<'_> {
        VolumeCtx {
            client: &self.ctx.client,
            pod: &self.pod,
            tokens: &self.tokens,
            node: self.ctx.node_res,
        }
    }

    /// Sets up every volume; returns volume name -> host path. `Err` only
    /// when the pod goes away first. Failures after the first few (often the
    /// Node authorizer's graph catching up) become `FailedMount` events.
    pub(super) async fn setup_volumes(&mut self) -> Result<BTreeMap<String, PathBuf>, Exit> {
        let vdir = self.dir.join("volumes");
        let mut failures: u32 = 0;
        let mut last_event: Option<(String, tokio::time::Instant)> = None;
        loop {
            let res = volumes::setup_all(&self.vctx(), &vdir).await;
            match res {
                Ok(v) => return Ok(v),
                Err(MountError { volume, source }) => {
                    failures += 1;
                    // The kubelet's wording, space before the colon included.
                    let text = format!(
                        "MountVolume.SetUp failed for volume {volume:?} : {}",
                        error_text(&source)
                    );
                    if failures >= 3 {
                        let due = match &last_event {
                            None => true,
                            Some((m, at)) => *m != text || at.elapsed() > Duration::from_secs(20),
                        };
                        if due {
                            tracing::warn!(pod = %self.name, ns = %self.ns, "{text}");
                            self.event(true, "FailedMount", text.clone(), None);
                            last_event = Some((text, tokio::time::Instant::now()));
                        }
                        self.post_status().await;
                    }
                    self.backoff(failures).await?;
                }
            }
        }
    }

    /// Keeps the volumes fresh, as the kubelet does, without polling: sets
    /// them up again when a token is due for refresh (80 % of its TTL), when
    /// a configMap or secret they read changes (watched by name, as the
    /// kubelet's watch-based manager does), and when the Pod changes
    /// (downwardAPI labels and annotations).
    pub(super) fn start_resync(&mut self) {
        let ctx = self.ctx.clone();
        let mut rx = self.rx.clone();
        let tokens = self.tokens.clone();
        let vdir = self.dir.join("volumes");
        let pod = self.pod.clone();
        self.resync = Some(tokio::spawn(async move {
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let mut changes = source_changes(&ctx.client, &ns, &volumes::sources(&pod));
            let mut failed = false;
            let mut meta = downward_meta(&pod);
            loop {
                let due = refresh_wait(tokens.next_refresh(), failed);
                tokio::select! {
                    _ = tokio::time::sleep(due.min(CLOCK_CHECK)) => {
                        // Woken to look at the clock: work only when a
                        // token is due (or the last try failed).
                        if !failed && !tokens.due(jiff::Timestamp::now()) {
                            continue;
                        }
                    }
                    Some(()) = changes.next() => {}
                    r = rx.changed() => {
                        let Ok(()) = r else { break };
                        // Status updates (most changes) change no volume.
                        let now = rx.borrow().as_deref().map(downward_meta);
                        if now.as_ref().is_none_or(|m| *m == meta) {
                            continue;
                        }
                        meta = now.unwrap_or_default();
                    }
                }
                let Some(pod) = rx.borrow().clone() else {
                    break;
                };
                let vctx = VolumeCtx {
                    client: &ctx.client,
                    pod: &pod,
                    tokens: &tokens,
                    node: ctx.node_res,
                };
                let res = volumes::setup_all(&vctx, &vdir).await;
                failed = res.is_err();
                if let Err(e) = res {
                    tracing::warn!(pod = ?pod.metadata.name, "volume re-sync failed: {}", error_text(&e));
                }
            }
        }));
    }

    pub(super) fn stop_resync(&mut self) {
        if let Some(h) = self.resync.take() {
            h.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_until_the_next_token_is_due() {
        let now = jiff::Timestamp::now().as_second();
        let at = |secs: i64| Some(jiff::Timestamp::from_second(now + secs).unwrap());
        let w = refresh_wait(at(100), false).as_secs();
        assert!((100..=101).contains(&w), "{w}");
        assert_eq!(refresh_wait(at(-50), false), Duration::from_secs(1));
        assert_eq!(refresh_wait(at(-50), true), RETRY_AFTER_FAILURE);
        assert_eq!(refresh_wait(None, false), Duration::from_secs(24 * 3600));
    }
}
