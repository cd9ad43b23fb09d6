//! `glint serve`: an OpenAI-compatible HTTP server over the engine's continuous-batching scheduler
//! (`glint::scheduler`). This module holds the flags, the listener, loading and shutdown; `routes`
//! the endpoints; `openai` the wire format.
//!
//! The listener is bound first (`/health` answers 503 while the model loads), then the scheduler
//! thread loads the model and the URL is printed. Ctrl-C or SIGTERM ends every queued and running
//! request (a stream gets an error event and `data: [DONE]`, a plain request a 503), stops the
//! scheduler and exits 0.

mod openai;
mod request;
mod routes;

use crate::generate::{load_path, ModelArgs};
use clap::Args;
use glint::scheduler::{Scheduler, SchedulerOptions};
use glint::LoadOptions;
use request::ApiError;
use std::future::IntoFuture;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on. The default is this machine only; 0.0.0.0 (every interface) only when
    /// other machines must reach it, preferably with --api-key.
    #[arg(long, default_value = "127.0.0.1", value_name = "ADDR")]
    host: String,
    /// Port to listen on; 0 picks a free one (the URL printed says which).
    #[arg(long, default_value_t = 8080, value_name = "PORT")]
    port: u16,
    /// Sequence slots: requests decoded together, each with its own KV cache of --ctx-size tokens.
    /// More wait in the queue.
    #[arg(long, default_value_t = 4, value_name = "N")]
    parallel: usize,
    /// Context size in tokens of EACH slot (prompt + answer of one request; the KV cache holds
    /// --parallel times this). Default: min(model maximum, 4096).
    #[arg(short = 'c', long = "ctx-size", value_name = "N")]
    ctx_size: Option<usize>,
    /// Tokens per batched step: one per generating slot, the rest for prompt chunks (a long prompt
    /// is read over several steps while the other streams go on).
    #[arg(
        short = 'b',
        long = "batch-size",
        default_value_t = 256,
        value_name = "N"
    )]
    batch_size: usize,
    /// Requests that may wait for a free slot; beyond them the server answers 503.
    #[arg(long = "queue-size", default_value_t = 64, value_name = "N")]
    queue_size: usize,
    /// Largest request body accepted, in bytes (larger: 413).
    #[arg(long = "max-body", default_value_t = 4 << 20, value_name = "BYTES")]
    max_body: usize,
    /// Require 'Authorization: Bearer KEY' on every endpoint but /health.
    #[arg(long = "api-key", value_name = "KEY")]
    api_key: Option<String>,
    /// Read accepted API keys from a file, one per line (blank lines and lines starting with # are
    /// skipped); with --api-key both are accepted.
    #[arg(long = "api-key-file", value_name = "FILE")]
    api_key_file: Option<PathBuf>,
    /// No progress bar, load report or per-request lines on stderr.
    #[arg(short = 'q', long)]
    quiet: bool,
}

/// What the request handlers share.
pub struct App {
    sched: Arc<Scheduler>,
    /// The id /v1/models lists; requests may name it, or the -m argument as given.
    model_id: String,
    model_arg: String,
    keys: Vec<String>,
    created: u64,
    quiet: bool,
    max_body: usize,
}

impl App {
    /// 404 for a model this server does not serve (absent: this one).
    fn check_model(&self, name: Option<&str>) -> Result<(), ApiError> {
        match name {
            None => Ok(()),
            Some(n) if n == self.model_id || n == self.model_arg => Ok(()),
            Some(n) => Err(ApiError {
                param: Some("model".into()),
                ..ApiError::new(
                    axum::http::StatusCode::NOT_FOUND,
                    format!(
                        "the model '{n}' does not exist here: this server serves '{}'",
                        self.model_id
                    ),
                )
            }
            .code("model_not_found")),
        }
    }
}

/// The id of the model: its file or directory name (without .gguf), or the repo id as given.
fn model_id(arg: &str) -> String {
    let p = Path::new(arg);
    if p.exists() {
        let name = p
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| arg.to_string());
        name.strip_suffix(".gguf")
            .map(str::to_string)
            .unwrap_or(name)
    } else {
        arg.to_string()
    }
}

fn read_keys(a: &ServeArgs) -> glint::Result<Vec<String>> {
    let mut keys: Vec<String> = a.api_key.iter().cloned().collect();
    if let Some(f) = &a.api_key_file {
        let text = std::fs::read_to_string(f).map_err(|e| glint::Error::io(f, e))?;
        let from_file: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect();
        if from_file.is_empty() {
            return Err(glint::Error::format(f, "--api-key-file holds no key"));
        }
        keys.extend(from_file);
    }
    if keys
        .iter()
        .any(|k| k.is_empty() || k.contains(char::is_whitespace))
    {
        return Err(glint::Error::Input(
            "--api-key: a key must be non-empty and hold no spaces".into(),
        ));
    }
    Ok(keys)
}

pub fn serve(a: ServeArgs) -> glint::Result<()> {
    if a.parallel == 0 {
        return Err(glint::Error::Input(
            "--parallel 0: at least one slot is needed".into(),
        ));
    }
    if a.batch_size <= a.parallel {
        return Err(glint::Error::Input(format!(
            "--batch-size {} must exceed --parallel {} (each step holds one token per generating slot, and room for a prompt)",
            a.batch_size, a.parallel
        )));
    }
    let keys = read_keys(&a)?;
    // Bad GPU flags fail here, before the server starts.
    a.model.load_options()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| glint::Error::Input(format!("cannot start the server's runtime: {e}")))?;
    rt.block_on(run(a, keys))
}

async fn run(a: ServeArgs, keys: Vec<String>) -> glint::Result<()> {
    let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
        .await
        .map_err(|e| {
            glint::Error::Input(format!(
                "--host {} --port {}: cannot listen there: {e}",
                a.host, a.port
            ))
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| glint::Error::Input(format!("listening socket: {e}")))?;
    // Lines for people and for scripts that started us with --port 0.
    eprintln!(
        "glint serve: listening on http://{addr} (loading the model: /health answers 503 until it is ready)"
    );
    let quiet = a.quiet;
    let model = a.model.clone();
    let (ctx_size, slots, batch) = (a.ctx_size, a.parallel, a.batch_size);
    let (sched, ready) = Scheduler::spawn(
        SchedulerOptions {
            step_tokens: Some(a.batch_size),
            max_queue: a.queue_size,
        },
        move || {
            let path = model.resolve(quiet)?;
            let opts = LoadOptions {
                ctx_size,
                slots,
                batch,
                ..model.load_options()?
            };
            load_path(&path, opts, quiet)
        },
    );
    let sched = Arc::new(sched);
    let app = Arc::new(App {
        sched: sched.clone(),
        model_id: model_id(&a.model.model),
        model_arg: a.model.model.clone(),
        keys,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        quiet: a.quiet,
        max_body: a.max_body,
    });
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    // Loading: print the URL when ready, or stop the server with the load error.
    let (parallel, model_id) = (a.parallel, app.model_id.clone());
    let loaded = tokio::task::spawn_blocking(move || ready.recv());
    let load_error = {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            match loaded.await {
                Ok(Ok(Ok(info))) => {
                    println!(
                        "glint serve: {model_id} ready at http://{addr}/v1 ({parallel} slots of {} tokens, on {})",
                        info.ctx_size, info.device
                    );
                    None
                }
                Ok(Ok(Err(e))) => {
                    let _ = stop_tx.send(true);
                    Some(e)
                }
                _ => {
                    let _ = stop_tx.send(true);
                    Some(glint::Error::Model("the model loader stopped".into()))
                }
            }
        })
    };
    let signal = {
        let sched = sched.clone();
        let mut stop_rx = stop_rx.clone();
        async move {
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = stop_rx.wait_for(|s| *s) => {}
            }
            let _ = stop_tx.send(true);
            // End every request (their streams close), then let the server drain.
            let _ = tokio::task::spawn_blocking(move || sched.shutdown()).await;
        }
    };
    let server = axum::serve(listener, routes::router(app))
        .with_graceful_shutdown(signal)
        .into_future();
    tokio::select! {
        r = server => r.map_err(|e| glint::Error::Input(format!("server: {e}")))?,
        // Connections that do not close by themselves do not hold the exit up for long.
        _ = async {
            let _ = stop_rx.wait_for(|s| *s).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        } => eprintln!("glint serve: closing the connections still open"),
    }
    if let Some(e) = load_error.await.ok().flatten() {
        return Err(e);
    }
    if !quiet {
        eprintln!("glint serve: stopped");
    }
    Ok(())
}

/// Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await,
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await
}
