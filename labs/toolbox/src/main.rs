//! `lab-toolbox`: small, predictable behaviours for testing the node that
//! runs lab Pods. Results go to stdout; where useful a compact JSON result
//! is also written to the termination message path.
//!
//! ```text
//! lab-toolbox exit N            exit with code N
//! lab-toolbox sleep SECS        sleep; on SIGTERM print "got SIGTERM", exit 0
//! lab-toolbox kill-self SIGNAL  send SIGNAL (TERM, KILL, 9...) to itself
//! lab-toolbox ls DIR            list DIR (sorted)
//! lab-toolbox cat FILE          print FILE
//! lab-toolbox env               print the environment (sorted)
//! lab-toolbox claims FILE       decoded JWT payload of the token in FILE
//! lab-toolbox whoami            SelfSubjectReview via Config::incluster()
//! lab-toolbox incluster         try Config::incluster(), print the error
//! lab-toolbox message TEXT      write TEXT to the termination message, exit 0
//! lab-toolbox get PATH          raw GET with the mounted token and ca.crt
//! lab-toolbox connect ADDR      open a TCP connection to ADDR (ip:port, 3 s)
//! ```

use std::process::ExitCode;

use anyhow::{Context as _, bail};
use serde_json::json;

const USAGE: &str = "usage: lab-toolbox <exit N | sleep SECS | kill-self SIGNAL | \
ls DIR | cat FILE | env | claims FILE | whoami | incluster | message TEXT | get PATH | \
connect ADDR>";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lab-toolbox: {e:#}");
            write_message(&json!({ "error": format!("{e:#}") }));
            ExitCode::from(2)
        }
    }
}

fn write_message(v: &serde_json::Value) {
    let path = lab_kit::termination_log_path();
    let text = lab_kit::truncate(&v.to_string(), 4000);
    if let Err(e) = std::fs::write(&path, text) {
        eprintln!("lab-toolbox: cannot write {}: {e}", path.display());
    }
}

fn arg<'a>(args: &'a [String], i: usize, what: &str) -> anyhow::Result<&'a str> {
    args.get(i)
        .map(String::as_str)
        .with_context(|| format!("missing {what}\n{USAGE}"))
}

async fn run(args: &[String]) -> anyhow::Result<ExitCode> {
    let cmd = arg(args, 0, "command")?;
    match cmd {
        "exit" => {
            let n: u8 = arg(args, 1, "exit code")?.parse().context("exit code")?;
            println!("exiting with {n}");
            Ok(ExitCode::from(n))
        }
        "sleep" => {
            let secs: f64 = arg(args, 1, "seconds")?.parse().context("seconds")?;
            let mut term = tokio::signal::unix::signal(
                tokio::signal::unix::SignalKind::terminate(),
            )?;
            println!("sleeping {secs}s");
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs_f64(secs)) => {
                    println!("slept {secs}s");
                }
                _ = term.recv() => {
                    println!("got SIGTERM");
                    write_message(&json!({ "signal": "SIGTERM" }));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        "kill-self" => {
            let name = arg(args, 1, "signal")?;
            let sig = parse_signal(name)?;
            println!("sending {sig} to myself");
            nix::sys::signal::kill(nix::unistd::getpid(), sig)?;
            // A caught/ignored signal leaves us here; wait for a fatal one.
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            bail!("still alive 5s after {sig}")
        }
        "ls" => {
            let dir = arg(args, 1, "directory")?;
            let rd = std::fs::read_dir(dir).with_context(|| format!("ls {dir}"))?;
            let mut names: Vec<String> = rd
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            for n in &names {
                println!("{n}");
            }
            write_message(&json!({ "dir": dir, "entries": names }));
            Ok(ExitCode::SUCCESS)
        }
        "cat" => {
            let file = arg(args, 1, "file")?;
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cat {file}"))?;
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        "env" => {
            let mut vars: Vec<(String, String)> = std::env::vars().collect();
            vars.sort();
            for (k, v) in &vars {
                println!("{k}={v}");
            }
            let map: serde_json::Map<String, serde_json::Value> =
                vars.into_iter().map(|(k, v)| (k, v.into())).collect();
            write_message(&serde_json::Value::Object(map));
            Ok(ExitCode::SUCCESS)
        }
        "claims" => {
            let file = arg(args, 1, "token file")?;
            let token = std::fs::read_to_string(file)
                .with_context(|| format!("read {file}"))?;
            let claims = lab_kit::jwt::decode_payload(&token)?;
            println!("{}", serde_json::to_string_pretty(&claims)?);
            write_message(&claims);
            Ok(ExitCode::SUCCESS)
        }
        "whoami" => {
            let config = kube::Config::incluster().context("in-cluster config")?;
            let client = kube::Client::try_from(config)?;
            let id = lab_kit::identity::whoami(&client).await?;
            println!("username: {}", id.username);
            println!("groups: {}", id.groups.join(", "));
            for (k, v) in &id.extra {
                println!("extra {k}: {}", v.join(", "));
            }
            write_message(&serde_json::to_value(&id)?);
            Ok(ExitCode::SUCCESS)
        }
        "incluster" => match kube::Config::incluster() {
            Ok(c) => {
                println!("ok: {}", c.cluster_url);
                write_message(
                    &json!({ "ok": true, "url": c.cluster_url.to_string() }),
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                println!("error: {e}");
                write_message(&json!({ "ok": false, "error": e.to_string() }));
                Ok(ExitCode::from(1))
            }
        },
        "message" => {
            let text = arg(args, 1, "text")?;
            let path = lab_kit::termination_log_path();
            std::fs::write(&path, text)
                .with_context(|| format!("write {}", path.display()))?;
            println!("wrote {} bytes to {}", text.len(), path.display());
            Ok(ExitCode::SUCCESS)
        }
        "get" => {
            let path = arg(args, 1, "path")?;
            let url = format!("{}{path}", lab_kit::apiserver_url_from_env()?);
            let token = std::fs::read_to_string(lab_kit::TOKEN_PATH)
                .with_context(|| format!("read {}", lab_kit::TOKEN_PATH))?;
            let ca = std::fs::read(lab_kit::CA_PATH)
                .with_context(|| format!("read {}", lab_kit::CA_PATH))?;
            let res = lab_kit::https::get(&url, &ca, Some(&token)).await?;
            let outcome = lab_kit::probe::Outcome::from_status(res.status);
            println!("{} {outcome} {}", res.status, res.message());
            write_message(&json!({
                "status": res.status,
                "outcome": outcome,
                "message": lab_kit::truncate(&res.message(), 300),
            }));
            Ok(ExitCode::SUCCESS)
        }
        "connect" => {
            // The outcome is the result, not an error: "connected",
            // "refused", "unreachable", "timeout" or another OS error.
            let addr: std::net::SocketAddr = arg(args, 1, "address")?
                .parse()
                .context("address as ip:port")?;
            let attempt = tokio::time::timeout(
                std::time::Duration::from_secs(3),
                tokio::net::TcpStream::connect(addr),
            )
            .await;
            let outcome = match &attempt {
                Ok(Ok(_)) => "connected".to_string(),
                Ok(Err(e)) => match e.kind() {
                    std::io::ErrorKind::ConnectionRefused => "refused".into(),
                    std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::NetworkUnreachable => {
                        "unreachable".into()
                    }
                    _ => format!("error: {e}"),
                },
                Err(_) => "timeout".into(),
            };
            println!("connect {addr}: {outcome}");
            write_message(
                &json!({ "address": addr.to_string(), "connect": outcome }),
            );
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unknown command {other:?}\n{USAGE}"),
    }
}

fn parse_signal(name: &str) -> anyhow::Result<nix::sys::signal::Signal> {
    use nix::sys::signal::Signal;
    if let Ok(n) = name.parse::<i32>() {
        return Ok(Signal::try_from(n)?);
    }
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<Signal>()
        .with_context(|| format!("unknown signal {name}"))
}
