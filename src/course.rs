//! Running chapters for a learner: one chapter on a cluster the provider
//! module reached, or the whole tour on a fresh local cluster.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use serde::Serialize;

use crate::chapters::kit::COURSE_NAMESPACES;
use crate::chapters::{self, Chapter, ChapterResult, RunContext};
use crate::interrupt::{Caught, Interrupt};
use crate::local;
use crate::provider::Connection;

/// Why the tour could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Its cluster could not be started, reached or stopped.
    #[error(transparent)]
    Local(#[from] local::Error),
    /// Its cluster's kubeconfig gave no client.
    #[error(transparent)]
    Kubeconfig(#[from] crate::kubeconfig::LoadError),
    /// A chapter could not run.
    #[error(transparent)]
    Chapter(#[from] chapters::Error),
    /// Ctrl-C or SIGTERM arrived during the tour.
    #[error("interrupted ({0}); the tour's cluster was removed")]
    Interrupted(Caught),
    /// Ctrl-C or SIGTERM arrived during a chapter run.
    #[error(
        "interrupted ({signal}); what chapter {chapter:02} had made was removed \
         (its objects, and the namespaces it created)"
    )]
    RunInterrupted {
        /// Which signal.
        signal: Caught,
        /// The chapter's number.
        chapter: u8,
    },
    /// A signal handler could not be installed.
    #[error("installing Ctrl-C and SIGTERM handlers")]
    Signal(#[source] std::io::Error),
}

/// How long a namespace a run made may take to go once it is interrupted.
const NS_GONE_TIMEOUT: Duration = Duration::from_secs(90);

/// The run context for `conn`.
pub fn context(conn: &Connection, timeout: Duration) -> RunContext {
    RunContext {
        client: conn.client.clone(),
        config: conn.config.clone(),
        image: conn.image.clone(),
        timeout,
        audit_log: conn.audit_log.clone(),
        timings: Default::default(),
    }
}

/// Runs one chapter on the cluster `conn` reaches. On a local cluster whose
/// supervisor restarted a component during a run that did not pass, waits
/// (bounded) for the cluster to be whole again and runs the chapter once
/// more: it starts from a clean slate, so a second run is safe.
///
/// Ctrl-C or SIGTERM stops the run and removes what it had made: every
/// object of the course (as the next run's clean slate would) and the
/// course namespaces that did not exist when it started. A finished run
/// leaves its objects for the learner to look at; an interrupted one
/// leaves nothing half-made.
pub async fn run(
    conn: &Connection,
    chapter: &Chapter,
    timeout: Duration,
) -> Result<ChapterResult, Error> {
    let mut interrupt = Interrupt::install().map_err(Error::Signal)?;
    let cx = context(conn, timeout);
    let existed = tokio::select! {
        r = existing_namespaces(&cx) => r?,
        // Nothing made yet.
        signal = interrupt.recv() => {
            return Err(Error::RunInterrupted { signal, chapter: chapter.number });
        }
    };
    let signal = tokio::select! {
        r = run_healing(conn, &cx, chapter) => return r,
        signal = interrupt.recv() => signal,
    };
    let step = crate::ui::Step::start(format!(
        "Interrupted ({signal}): removing what chapter {:02} made",
        chapter.number
    ));
    match remove_made(&cx, &existed).await {
        Ok(()) => step.ok(),
        Err(e) => {
            step.fail();
            return Err(e);
        }
    }
    Err(Error::RunInterrupted {
        signal,
        chapter: chapter.number,
    })
}

/// The course namespaces that exist now.
async fn existing_namespaces(cx: &RunContext) -> Result<Vec<&'static str>, Error> {
    let api: Api<Namespace> = Api::all(cx.client.clone());
    let mut out = Vec::new();
    for ns in COURSE_NAMESPACES {
        let found = api
            .get_opt(ns)
            .await
            .map_err(|source| chapters::Error::Api {
                action: format!("reading namespace {ns}"),
                source,
            })?;
        if found.is_some() {
            out.push(ns);
        }
    }
    Ok(out)
}

/// After an interrupted run: the course's objects, and the course
/// namespaces not in `existed`, deleted and gone. The clean slate runs
/// twice: a create that was in flight when the run was stopped may land
/// during the first.
async fn remove_made(cx: &RunContext, existed: &[&str]) -> Result<(), Error> {
    cx.clean_slate().await?;
    cx.clean_slate().await?;
    let api: Api<Namespace> = Api::all(cx.client.clone());
    for ns in COURSE_NAMESPACES.iter().filter(|ns| !existed.contains(ns)) {
        chapters::kit::delete_and_wait(&api, ns, NS_GONE_TIMEOUT).await?;
    }
    Ok(())
}

async fn run_healing(
    conn: &Connection,
    cx: &RunContext,
    chapter: &Chapter,
) -> Result<ChapterResult, Error> {
    let Some(info) = &conn.local else {
        return Ok(chapters::run_chapter(cx, chapter).await?);
    };
    let before = local::restarts(info);
    let first = chapters::run_chapter(cx, chapter).await;
    if matches!(&first, Ok(r) if r.passed()) {
        return Ok(first?);
    }
    // A failure may be a component that just died: its supervisor may not
    // have restarted it yet, so wait for the cluster to be whole (at once
    // when it is) before asking whether anything was restarted.
    local::await_whole(info, &conn.client).await?;
    if local::restarts(info) == before {
        return Ok(first?);
    }
    crate::ui::note(format!(
        "a component of cluster {:?} was restarted during the run; \
         running chapter {:02} again",
        info.name, chapter.number
    ));
    Ok(chapters::run_chapter(cx, chapter).await?)
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
    /// Wall time of the chapter.
    pub seconds: f64,
    /// Where that time went, by kind of step (the rest is the scenario's
    /// own checks and waits).
    pub steps: BTreeMap<&'static str, f64>,
}

/// The whole tour.
#[derive(Serialize, Debug)]
pub struct TourReport {
    pub cluster: String,
    pub chapters: Vec<TourEntry>,
    pub passed: bool,
    /// Wall time, including bring-up and tear-down.
    pub seconds: f64,
    /// Bring-up to ready, and tear-down.
    pub up_seconds: f64,
    pub down_seconds: f64,
}

/// Every chapter in order on a fresh local cluster, torn down afterwards,
/// also on Ctrl-C or SIGTERM. `each` sees every chapter as it finishes.
/// With `no_audit_log` the API server keeps no audit log (rows then name no
/// binding; the benchmark compares the two).
pub async fn tour(
    timeout: Duration,
    no_audit_log: bool,
    mut each: impl FnMut(&TourEntry),
) -> Result<TourReport, Error> {
    let start = Instant::now();
    let name = format!("tour-{}", std::process::id());
    // Installed before bring-up, so no signal is ever lost between the two.
    let mut interrupt = Interrupt::install().map_err(Error::Signal)?;
    let info = local::up_interruptible(&local::UpOptions {
        name: name.clone(),
        no_audit_log,
        ..Default::default()
    })
    .await?;
    let up_seconds = start.elapsed().as_secs_f64();
    let body = async {
        let admin = info.connect().await?;
        let cx = RunContext {
            client: admin.client,
            config: admin.config,
            image: crate::LAB_IMAGE.to_string(),
            timeout,
            audit_log: info
                .audit_log
                .then(|| crate::audit::AuditLog::of_cluster(&info.dir)),
            timings: Default::default(),
        };
        let mut entries = Vec::new();
        for chapter in chapters::catalog() {
            let began = Instant::now();
            let run = chapters::run_chapter(&cx, chapter).await;
            let (seconds, steps) = (began.elapsed().as_secs_f64(), cx.timings.take());
            let entry = match run {
                Ok(r) => TourEntry {
                    chapter: chapter.slug.to_string(),
                    passed: r.passed(),
                    rows: r.rows.len(),
                    mismatches: r.rows.iter().filter(|row| !row.pass).count(),
                    error: None,
                    result: Some(r),
                    seconds,
                    steps,
                },
                Err(e) => TourEntry {
                    chapter: chapter.slug.to_string(),
                    passed: false,
                    rows: 0,
                    mismatches: 0,
                    error: Some(crate::ui::error_chain(&e)),
                    result: None,
                    seconds,
                    steps,
                },
            };
            each(&entry);
            entries.push(entry);
        }
        Ok::<_, Error>(entries)
    };
    let outcome = tokio::select! {
        r = body => r,
        signal = interrupt.recv() => Err(Error::Interrupted(signal)),
    };
    let stopping = Instant::now();
    let step = crate::ui::Step::start(format!("Stopping and removing cluster {name:?}"));
    let down = tokio::task::spawn_blocking(move || local::down(&name))
        .await
        .unwrap_or_else(|e| {
            Err(local::Error::StopFailed {
                name: info.name.clone(),
                what: format!("the tear-down task failed: {e}"),
            })
        });
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
        up_seconds,
        down_seconds: stopping.elapsed().as_secs_f64(),
    })
}

impl TourReport {
    /// The summary table.
    pub fn summary(&self) -> String {
        let mut t = comfy_table::Table::new();
        t.load_style(comfy_table::presets::UTF8_FULL_CONDENSED)
            .set_content_arrangement(comfy_table::ContentArrangement::Dynamic)
            .set_width(chapters::render::width());
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
