//! The Pod's volumes: set up before any container starts (retried, as the
//! kubelet does, while the Pod stays `ContainerCreating`), then kept fresh.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::{Exit, Worker};
use crate::node::error_text;
use crate::node::volumes::{self, MountError, VolumeCtx};

/// How often volumes are re-synced (tokens at 80 % of their TTL, configMaps, secrets).
const VOLUME_RESYNC: Duration = Duration::from_secs(30);

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

    /// Re-syncs volumes every 30 s (tokens at 80 % of their TTL, configMaps, secrets).
    pub(super) fn start_resync(&mut self) {
        let ctx = self.ctx.clone();
        let rx = self.rx.clone();
        let tokens = self.tokens.clone();
        let vdir = self.dir.join("volumes");
        self.resync = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(VOLUME_RESYNC);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(pod) = rx.borrow().clone() else {
                    break;
                };
                let vctx = VolumeCtx {
                    client: &ctx.client,
                    pod: &pod,
                    tokens: &tokens,
                    node: ctx.node_res,
                };
                if let Err(e) = volumes::setup_all(&vctx, &vdir).await {
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
