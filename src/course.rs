//! Running chapters for a learner: connect to the chosen provider's cluster
//! (starting a local one if needed), refuse clusters that do not enforce
//! RBAC, run chapters, and the whole tour on a fresh local cluster.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::chapters::{self, Chapter, ChapterResult, RunOptions};
use crate::local;
use crate::provider::{self, Provider};

/// Where to run chapters.
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    /// `--provider`; else `$SA_LAB_PROVIDER`; else local.
    pub provider: Option<Provider>,
    /// Local: the cluster name (else `$SA_LAB_CLUSTER`, else `sa-lab`).
    /// Kind: the kind cluster name.
    pub name: Option<String>,
    /// Current: a kubeconfig context other than the current one.
    pub context: Option<String>,
    /// `--image` (kind/current only).
    pub image: Option<String>,
}

/// A cluster ready for chapters.
pub struct Target {
    pub provider: Provider,
    pub client: kube::Client,
    /// The admin config (lets chapter 2 send a stale token itself).
    pub config: Option<kube::Config>,
    pub image: String,
    /// Human description: which cluster this is.
    pub describe: String,
}

/// Connects to the cluster chapters should run on. For the local provider a
/// cluster that is not running is started (and left running).
pub async fn connect(opts: &ConnectOptions) -> anyhow::Result<Target> {
    let provider = provider::select_from_env(opts.provider)?;
    let image = provider::select_image_from_env(provider, opts.image.as_deref())?;
    match provider {
        Provider::Local => {
            let name = opts
                .name
                .clone()
                .or_else(local::env_cluster_name)
                .unwrap_or_else(|| local::DEFAULT_NAME.to_string());
            let info = if local::running_pid(&name).is_some() {
                local::load(&name)?
            } else {
                eprintln!(
                    "No local cluster {name:?} is running; starting one \
                     (stop it later with `sa-lab down --name {name}`)."
                );
                local::up_interruptible(&local::UpOptions {
                    name: name.clone(),
                    api_port: None,
                })
                .await?
            };
            let config = local_config(&info).await?;
            let client = kube::Client::try_from(config.clone())?;
            reachable(
                &client,
                &format!("local cluster {name:?} ({})", info.server),
                &format!(
                    "check it with `sa-lab status --name {name}`, or restart it with \
                 `sa-lab down --name {name} && sa-lab up --name {name}`"
                ),
            )
            .await?;
            Ok(Target {
                provider,
                client,
                config: Some(config),
                image,
                describe: format!("local cluster {name:?} ({})", info.server),
            })
        }
        Provider::Kind | Provider::Current => {
            let kind_name = provider::kind_cluster_name(
                opts.name.as_deref(),
                std::env::var("SA_LAB_KIND_CLUSTER").ok().as_deref(),
            );
            let mut copts = provider::ClientOptions::new(&kind_name);
            copts.context = opts.context.clone();
            let conn = provider::client(provider, &copts).await?;
            let describe = format!(
                "{provider} cluster (context {}, {})",
                conn.context, conn.kubeconfig
            );
            reachable(
                &conn.client,
                &describe,
                "check the kubeconfig and that the cluster is running",
            )
            .await?;
            provider::preflight(&conn.client)
                .await
                .context("refusing to teach on this cluster")?;
            Ok(Target {
                provider,
                client: conn.client,
                config: None,
                image,
                describe,
            })
        }
    }
}

async fn local_config(info: &local::ClusterInfo) -> anyhow::Result<kube::Config> {
    let kc = kube::config::Kubeconfig::read_from(&info.kubeconfig)?;
    Ok(
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?,
    )
}

async fn reachable(client: &kube::Client, what: &str, hint: &str) -> anyhow::Result<()> {
    match tokio::time::timeout(Duration::from_secs(10), client.apiserver_version()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => bail!("no cluster reachable: {what} answered {e}; {hint}"),
        Err(_) => bail!("no cluster reachable: {what} did not answer within 10s; {hint}"),
    }
}

/// Runs one chapter on `target`.
pub async fn run(
    target: &Target,
    chapter: &Chapter,
    timeout: Duration,
) -> anyhow::Result<ChapterResult> {
    let opts = RunOptions {
        image: target.image.clone(),
        timeout,
        config: target.config.clone(),
    };
    chapters::run_chapter(&target.client, chapter, &opts).await
}

/// One chapter's line in the tour summary.
#[derive(Serialize, Debug)]
pub struct TourEntry {
    pub chapter: String,
    pub passed: bool,
    pub rows: usize,
    pub mismatches: usize,
    /// Set when the chapter could not run at all.
    pub error: Option<String>,
    pub result: Option<ChapterResult>,
}

/// The whole tour.
#[derive(Serialize, Debug)]
pub struct TourReport {
    pub cluster: String,
    pub chapters: Vec<TourEntry>,
    pub passed: bool,
    /// Wall time, including bring-up and tear-down.
    pub seconds: f64,
}

/// Every chapter in order on a fresh local cluster, torn down afterwards,
/// also on Ctrl-C. `each` sees every chapter as it finishes.
pub async fn tour(
    timeout: Duration,
    mut each: impl FnMut(&TourEntry),
) -> anyhow::Result<TourReport> {
    let start = Instant::now();
    let name = format!("tour-{}", std::process::id());
    // Installed before bring-up, so no Ctrl-C is ever lost between the two.
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let info = local::up_interruptible(&local::UpOptions {
        name: name.clone(),
        api_port: None,
    })
    .await?;
    let body = async {
        let config = local_config(&info).await?;
        let target = Target {
            provider: Provider::Local,
            client: kube::Client::try_from(config.clone())?,
            config: Some(config),
            image: crate::LAB_IMAGE.to_string(),
            describe: format!("local cluster {name:?}"),
        };
        let mut entries = Vec::new();
        for chapter in chapters::catalog() {
            let entry = match run(&target, chapter, timeout).await {
                Ok(r) => TourEntry {
                    chapter: chapter.slug.to_string(),
                    passed: r.passed(),
                    rows: r.rows.len(),
                    mismatches: r.rows.iter().filter(|row| !row.pass).count(),
                    error: None,
                    result: Some(r),
                },
                Err(e) => TourEntry {
                    chapter: chapter.slug.to_string(),
                    passed: false,
                    rows: 0,
                    mismatches: 0,
                    error: Some(format!("{e:#}")),
                    result: None,
                },
            };
            each(&entry);
            entries.push(entry);
        }
        anyhow::Ok(entries)
    };
    let outcome = tokio::select! {
        r = body => r,
        _ = int.recv() => Err(anyhow::anyhow!("interrupted (Ctrl-C); the tour's cluster is being removed")),
    };
    let step = crate::ui::Step::start(format!("Stopping and removing cluster {name:?}"));
    let down = tokio::task::spawn_blocking(move || local::down(&name)).await?;
    match &down {
        Ok(()) => step.ok(),
        Err(_) => step.fail(),
    }
    let entries = outcome?;
    down?;
    Ok(TourReport {
        cluster: info.name,
        passed: entries.iter().all(|e| e.passed),
        chapters: entries,
        seconds: start.elapsed().as_secs_f64(),
    })
}

impl TourReport {
    /// The summary table.
    pub fn summary(&self) -> String {
        let mut t = comfy_table::Table::new();
        t.load_style(comfy_table::presets::UTF8_FULL_CONDENSED);
        t.set_header(vec!["CHAPTER", "RESULT", "ROWS", "MISMATCHES"]);
        for e in &self.chapters {
            let result = match (&e.error, e.passed) {
                (Some(err), _) => format!("✗ error: {}", first_line(err)),
                (None, true) => "✓ as expected".into(),
                (None, false) => "✗ differs".into(),
            };
            t.add_row(vec![
                e.chapter.clone(),
                result,
                e.rows.to_string(),
                e.mismatches.to_string(),
            ]);
        }
        let verdict = if self.passed {
            "every row as expected"
        } else {
            "some rows differ"
        };
        format!("{t}\nTour: {} chapters, {verdict}.", self.chapters.len())
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}
