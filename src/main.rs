//! The `sa-lab` command: bring up a cluster, run a chapter or the whole tour,
//! print the allowed/forbidden matrix.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use sa_lab::exercises::commands::{self as ex, Outcome};
use sa_lab::provider::{self, ConnectOptions, Provider};
use sa_lab::{chapters, course, exercises, local};

#[derive(Parser)]
#[command(
    name = "sa-lab",
    version,
    about = "A hands-on course on Kubernetes ServiceAccounts, on a real API server",
    long_about = "A hands-on course on Kubernetes ServiceAccounts. Every allow, deny and \
token is decided by a real kube-apiserver: the local provider runs the real etcd, \
kube-apiserver, kube-controller-manager and kube-scheduler as local processes, plus a \
sandbox node that runs lab Pods.\n\nRUST_LOG=info,kube=debug shows what the client does."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, Debug, Default, ValueEnum)]
enum Output {
    #[default]
    Table,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a local cluster (real control plane + sandbox node) and print
    /// the `export KUBECONFIG=...` line.
    Up {
        /// Cluster name (one directory of state per name; default sa-lab,
        /// or sa-lab-kind on kind).
        #[arg(long)]
        name: Option<String>,
        /// API server port on 127.0.0.1 (default: a free port).
        #[arg(long)]
        api_port: Option<u16>,
        /// local (default) or kind (runs scripts/kind-up.sh). Also
        /// $SA_LAB_PROVIDER.
        #[arg(long)]
        provider: Option<Provider>,
        /// Local: run kube-apiserver without its audit log (then no row
        /// says which binding allowed it, and `sa-lab trace` has nothing).
        #[arg(long)]
        no_audit_log: bool,
        /// Local: which node runs Pods: sandbox (default) or kubelet (the real
        /// kubelet, containerd and kube-proxy; needs root). Also $SA_LAB_NODE.
        /// $SA_LAB_KUBELET_PLEG=generic: the kubelet only lists containers,
        /// as on kind (default evented: containerd's events tell it of exits).
        #[arg(long, value_enum)]
        node: Option<sa_lab::kubelet::NodeKind>,
    },
    /// Stop every process of a local cluster and remove its state.
    Down {
        /// Cluster name (default sa-lab, or sa-lab-kind on kind).
        #[arg(long)]
        name: Option<String>,
        /// local (default) or kind (runs scripts/kind-down.sh). Also
        /// $SA_LAB_PROVIDER.
        #[arg(long)]
        provider: Option<Provider>,
    },
    /// List the chapters.
    List {
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Run one chapter: apply its manifests, run its lab Pods, and compare
    /// what the API server allowed and refused with the expected table.
    /// Exits 0 only if every row matches.
    Run {
        /// Chapter number or slug: 3, 03, 03-rolebinding, rolebinding.
        chapter: String,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Before running, predict each row (allowed, forbidden...) on
        /// stdin; the answers are scored after the run.
        #[arg(long)]
        predict: bool,
    },
    /// The exercises: list them with your progress (default), or make a
    /// workspace with `init DIR`.
    Exercises {
        #[command(subcommand)]
        command: Option<ExercisesCmd>,
        #[command(flatten)]
        dir: DirArg,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Grade an exercise on the cluster (the next unsolved one without ID):
    /// apply its files, run probe Pods as its ServiceAccounts, compare
    /// with its rows. Exits 0 only if it passes.
    Check {
        /// Exercise id (03-pods-only), or its folder.
        id: Option<String>,
        #[command(flatten)]
        dir: DirArg,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// The next hint for an exercise (the next unsolved one without ID).
    Hint {
        /// Exercise id.
        id: Option<String>,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Check the current exercise again on every save; keys for hint,
    /// list, next and quit.
    Watch {
        /// Start with this exercise (default: the next unsolved one).
        id: Option<String>,
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Show a solution: once solved, or with --reveal.
    Solution {
        /// Exercise id.
        id: String,
        /// Show it even though the exercise is not solved yet.
        #[arg(long)]
        reveal: bool,
        /// Also put it in the workspace (your files are kept in
        /// .sa-lab/reset/ID).
        #[arg(long)]
        write: bool,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Put an exercise back to its starter (your files are kept in
    /// .sa-lab/reset/ID).
    Reset {
        /// Exercise id.
        id: String,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Every chapter in order on a fresh local cluster, a summary, then
    /// tear-down (also on Ctrl-C).
    Tour {
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
        /// Seconds to wait for each batch of lab Pods.
        #[arg(long, default_value_t = 90)]
        timeout: u64,
        /// Run kube-apiserver without its audit log (then no row says which
        /// binding allowed it).
        #[arg(long)]
        no_audit_log: bool,
    },
    /// What a ServiceAccount did, from the API server's audit log: every
    /// call, its answer, and which binding allowed it (local clusters).
    Trace {
        /// The ServiceAccount, as NAMESPACE:NAME (e.g. production:pod-manager).
        service_account: String,
        /// The local cluster (default $SA_LAB_CLUSTER, else sa-lab).
        #[arg(long)]
        name: Option<String>,
        /// Keep printing calls as they happen (Ctrl-C to stop).
        #[arg(short, long)]
        follow: bool,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Report ServiceAccount risks on any cluster: who may read Secrets,
    /// create Pods, mint tokens, escalate; bindings to `default` and to
    /// ServiceAccount groups; unneeded tokens; legacy token Secrets.
    /// Read-only. Exits 1 when --fail-on finds something that bad.
    Audit {
        /// Audit the cluster of this kubeconfig (default: the local cluster).
        #[arg(long)]
        kubeconfig: Option<std::path::PathBuf>,
        /// Use this context (of --kubeconfig, else of $KUBECONFIG or
        /// ~/.kube/config).
        #[arg(long)]
        context: Option<String>,
        /// The local cluster to audit when no kubeconfig is given (default
        /// $SA_LAB_CLUSTER, else sa-lab).
        #[arg(long)]
        name: Option<String>,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
        /// Exit 1 if a finding is at least this severe (info never counts).
        #[arg(long, value_enum)]
        fail_on: Option<sa_lab::risks::Severity>,
        /// Also list the info findings (Kubernetes' own bootstrap policy).
        #[arg(long)]
        all: bool,
        /// Print the ClusterRole that is enough to run the audit, and exit.
        #[arg(long)]
        print_role: bool,
    },
    /// Show each component of local clusters and its health.
    Status {
        /// Only this cluster (default: all).
        #[arg(long)]
        name: Option<String>,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Print the shell lines that point kubectl and sa-lab at a cluster:
    /// `eval "$(sa-lab env)"`.
    Env {
        #[arg(long, default_value = local::DEFAULT_NAME)]
        name: String,
    },
    /// Run a local cluster's supervisor (started by `up`).
    #[command(hide = true)]
    Supervise {
        #[arg(long)]
        name: String,
    },
    /// Run one container of a Pod in its own mount namespace (started by the
    /// sandbox node; single-threaded, execs the container's command).
    #[command(hide = true)]
    PodExec { spec: std::path::PathBuf },
    /// Run the sandbox node agent (started by the supervisor).
    #[command(hide = true)]
    Node {
        #[arg(long)]
        options: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
enum ExercisesCmd {
    /// Make a workspace at DIR with every exercise's starter and a
    /// progress file (in an existing workspace, add what is missing).
    Init { dir: std::path::PathBuf },
    /// The exercises, with your progress.
    List,
}

/// Which cluster: the same choice as `sa-lab run`.
#[derive(Args)]
struct ClusterArgs {
    /// local (default), kind, or current (the current kubeconfig context).
    /// Also $SA_LAB_PROVIDER.
    #[arg(long)]
    provider: Option<Provider>,
    /// Local: cluster name (default $SA_LAB_CLUSTER, else sa-lab; started
    /// if not running). Kind: the kind cluster name.
    #[arg(long)]
    name: Option<String>,
    /// Current: use this kubeconfig context.
    #[arg(long)]
    context: Option<String>,
    /// Lab image for kind/current (e.g. in your registry); also $SA_LAB_IMAGE.
    #[arg(long)]
    image: Option<String>,
    /// Seconds to wait for each batch of lab Pods.
    #[arg(long, default_value_t = 90)]
    timeout: u64,
}

impl ClusterArgs {
    fn options(&self) -> ConnectOptions {
        ConnectOptions {
            provider: self.provider,
            name: self.name.clone(),
            context: self.context.clone(),
            image: self.image.clone(),
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }
}

/// Where the exercises workspace is.
#[derive(Args)]
struct DirArg {
    /// The exercises workspace (default: the one the current folder is in).
    #[arg(long, global = true, env = exercises::workspace::DIR_ENV)]
    dir: Option<std::path::PathBuf>,
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    // kube's client logs every refused request as an error; sa-lab reports
    // them itself (a learner's refused object is a verdict, not a crash).
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,kube_client::client::builder=off"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        // The supervisor builds its own single-threaded runtime.
        Cmd::Supervise { name } => local::supervise(&name)
            .map(|()| true)
            .map_err(anyhow::Error::from),
        // Must stay single-threaded: it unshares its mount namespace.
        Cmd::PodExec { spec } => sa_lab::node::pod_exec_main(&spec).map(|never| match never {}),
        command => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("building the async runtime")
            .and_then(|rt| rt.block_on(dispatch(command))),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {}", sa_lab::ui::error_chain(e.as_ref()));
            ExitCode::from(2)
        }
    }
}

async fn dispatch(command: Cmd) -> anyhow::Result<bool> {
    match command {
        Cmd::Up {
            provider,
            name,
            api_port,
            no_audit_log,
            node,
        } => {
            let args = provider::UpArgs {
                provider,
                name,
                api_port,
                no_audit_log,
                node,
            };
            if let provider::Started::Local(info) = provider::up(&args).await? {
                eprintln!(
                    "Cluster {:?} is ready ({}). Point kubectl and sa-lab at it with:",
                    info.name, info.server
                );
                print_env(&info);
                eprintln!("Stop it with: sa-lab down --name {}", info.name);
            }
            Ok(true)
        }
        Cmd::Down { provider, name } => {
            let name = provider::down(provider, name.as_deref())?;
            eprintln!("Cluster {name:?} stopped and removed.");
            Ok(true)
        }
        Cmd::Status { name, output } => status(name, output).await,
        Cmd::Env { name } => {
            let info = local::load(&name)?;
            if local::running_pid(&name).is_none() {
                anyhow::bail!(
                    "cluster {name:?} is not running; start it with `sa-lab up --name {name}`"
                );
            }
            print_env(&info);
            Ok(true)
        }
        Cmd::List { output } => {
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(chapters::catalog())?),
                Output::Table => {
                    for c in chapters::catalog() {
                        println!("{:<16} {}", c.slug, c.title);
                    }
                }
            }
            Ok(true)
        }
        Cmd::Run {
            chapter,
            output,
            cluster,
            predict,
        } => {
            let chapter = chapters::find(&chapter)?;
            let questions = if predict {
                let qs = exercises::predict::questions(chapter)?;
                let stdin = std::io::stdin();
                let answers =
                    exercises::predict::ask(&qs, &mut stdin.lock(), &mut std::io::stderr())?;
                Some((qs, answers))
            } else {
                None
            };
            let conn = provider::connect(&cluster.options()).await?;
            eprintln!(
                "Running chapter {:02} ({}) on {}",
                chapter.number, chapter.slug, conn.describe
            );
            let result = course::run(&conn, chapter, cluster.timeout()).await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&result)?),
                Output::Table => println!("{}", chapters::render_table(&result)),
            }
            if !result.passed() {
                eprintln!("Some rows differ from the expected table (marked ✗ above).");
            }
            if let Some((qs, answers)) = questions {
                let graded = exercises::predict::grade(&qs, &answers, &result);
                println!("{}", exercises::predict::score(&graded));
            }
            Ok(result.passed())
        }
        Cmd::Exercises {
            command,
            dir,
            output,
        } => match command {
            Some(ExercisesCmd::Init { dir }) => show(ex::init(&dir)?),
            Some(ExercisesCmd::List) | None => {
                show(ex::list(dir.dir.as_deref(), json(output), width())?)
            }
        },
        Cmd::Check {
            id,
            dir,
            output,
            cluster,
        } => show(
            ex::check(
                dir.dir.as_deref(),
                id.as_deref(),
                &cluster.options(),
                cluster.timeout(),
                json(output),
                width(),
            )
            .await?,
        ),
        Cmd::Hint { id, dir } => show(ex::hint(dir.dir.as_deref(), id.as_deref())?),
        Cmd::Watch { id, dir, cluster } => {
            let (dir, opts) = (dir.dir.as_deref(), cluster.options());
            exercises::watch::run(dir, id.as_deref(), &opts, cluster.timeout()).await?;
            Ok(true)
        }
        Cmd::Solution {
            id,
            reveal,
            write,
            dir,
        } => show(ex::solution(dir.dir.as_deref(), &id, reveal, write)?),
        Cmd::Reset { id, dir } => show(ex::reset(dir.dir.as_deref(), &id)?),
        Cmd::Tour {
            output,
            timeout,
            no_audit_log,
        } => {
            let report = course::tour(Duration::from_secs(timeout), no_audit_log, |entry| {
                if let Output::Table = output {
                    match (&entry.result, &entry.error) {
                        (Some(r), _) => println!("{}\n", chapters::render_table(r)),
                        (None, Some(e)) => println!("{}: could not run: {e}\n", entry.chapter),
                        _ => {}
                    }
                }
            })
            .await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                Output::Table => println!("{}", report.summary()),
            }
            Ok(report.passed)
        }
        Cmd::Trace {
            service_account,
            name,
            follow,
            output,
        } => trace(&service_account, name.as_deref(), follow, output).await,
        Cmd::Audit {
            kubeconfig,
            context,
            name,
            output,
            fail_on,
            all,
            print_role,
        } => {
            if print_role {
                print!("{}", sa_lab::risks::AUDIT_ROLE);
                return Ok(true);
            }
            let target = sa_lab::risks::Target {
                kubeconfig,
                context,
                name,
            };
            let (client, describe) = sa_lab::risks::connect(&target).await?;
            eprintln!("Auditing {describe}");
            let report = sa_lab::risks::run(&client).await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                Output::Table => print!(
                    "{}",
                    sa_lab::risks::render(&report, chapters::render::width(), all)
                ),
            }
            Ok(fail_on.is_none_or(|level| report.at_least(level) == 0))
        }
        Cmd::Node { options } => sa_lab::node::run_from_file(&options).await.map(|()| true),
        Cmd::Supervise { .. } | Cmd::PodExec { .. } => unreachable!("handled in main"),
    }
}

async fn trace(
    service_account: &str,
    name: Option<&str>,
    follow: bool,
    output: Output,
) -> anyhow::Result<bool> {
    use sa_lab::audit;
    let user = audit::service_account_user(service_account).with_context(|| {
        format!("{service_account:?} is not NAMESPACE:NAME (e.g. production:pod-manager)")
    })?;
    let name = provider::connect::local_name(name);
    let info = local::load(&name)?;
    if !info.audit_log {
        anyhow::bail!(
            "cluster {name:?} runs without an audit log (sa-lab up --no-audit-log); \
             restart it without that flag to trace"
        );
    }
    let log = audit::AuditLog::of_cluster(&info.dir);
    let calls = audit::calls_of(&log.events()?, &user);
    let width = chapters::render::width();
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&calls)?),
        Output::Table if calls.is_empty() => eprintln!("No calls by {user} in the audit log yet."),
        Output::Table => print!("{}", audit::render_calls(&calls, width)),
    }
    if follow {
        eprintln!("Following the audit log for {user} (Ctrl-C to stop)...");
        log.follow(|ev| {
            if ev.user.username == user && ev.stage != "RequestReceived" {
                let call = audit::Call::of(ev);
                match output {
                    Output::Json => {
                        println!("{}", serde_json::to_string(&call).unwrap_or_default())
                    }
                    Output::Table => print!("{}", audit::render_calls(&[call], width)),
                }
            }
            true
        })
        .await?;
    }
    Ok(true)
}

fn json(output: Output) -> bool {
    matches!(output, Output::Json)
}

fn width() -> u16 {
    chapters::render::width()
}

/// Print a command's result on stdout and its note on stderr.
fn show(o: Outcome) -> anyhow::Result<bool> {
    if !o.stdout.is_empty() {
        print!("{}", o.stdout);
        if !o.stdout.ends_with('\n') {
            println!();
        }
    }
    if !o.note.is_empty() {
        eprintln!("{}", o.note);
    }
    Ok(o.ok)
}

fn print_env(info: &local::ClusterInfo) {
    println!("export KUBECONFIG={}", info.kubeconfig.display());
    println!("export SA_LAB_CLUSTER={}", info.name);
    println!("export PATH={}:$PATH", info.bin_dir.display());
}

async fn status(name: Option<String>, output: Output) -> anyhow::Result<bool> {
    let names = match name {
        Some(n) => {
            local::load(&n)?;
            vec![n]
        }
        None => local::list(),
    };
    let mut reports = Vec::new();
    for n in &names {
        reports.push(local::health(n).await?);
    }
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&reports)?),
        Output::Table => {
            if reports.is_empty() {
                eprintln!("No local clusters. Start one with `sa-lab up`.");
            }
            for r in &reports {
                println!("{}", r.render());
            }
        }
    }
    Ok(reports.iter().all(|r| r.healthy))
}
