//! inpaint-worker: the service around the inpainting engine.
//!
//! Layout:
//! - [`settings`]: [`Settings`], the whole configuration as plain serde data (TOML file plus
//!   `INPAINT__SECTION__KEY` environment overrides), validated at start-up.
//! - [`topology`]: every queue, exchange and header name, and their idempotent declaration.
//! - [`parts`]: [`Parts`], the running pieces (store, inference thread, chain, metrics).
//! - [`flow`]: [`flow::JobFlow`], one job from admission to its stored result, broker-free:
//!   admission → inputs → plugins before inference → inference → plugins after output →
//!   encode, provenance, sign → store → manifest. Used by the worker and by `inpaint`.
//! - [`report`]: what the plugin chain's records become in the result.
//! - [`runner`]: the broker side ([`run`], [`run_with`]): consume, hand jobs to the flow,
//!   settle, forward progress, reconnect with backoff, drain on shutdown.
//! - [`error`]: [`error::JobFailure`] and [`error::action_for`], the one place that maps an
//!   outcome to ack, retry, dead-letter or release; [`settle`] carries every action out.
//! - [`inference`]: the [`inference::Inference`] trait, the libtorch engine, the pass-through
//!   engine; [`batching`]: the dedicated inference thread and its cross-job batching.
//! - [`images`]: decoding within limits, fitting to the output size, encoding.
//! - [`store`]: [`store::ObjectStorage`], the object operations the runner needs.
//! - [`cancel`]: cancel requests shared between the cancel consumer and running jobs; each
//!   running job's `CancellationToken` is a child of the session's stop token.
//! - [`metrics`], [`http`]: `/metrics`, `/healthz`, `/readyz`; [`gpu`]: GPU memory via NVML.
//! - [`bench`]: `inpaint-worker bench`, sizing a machine: part timings, batch sizes, backlogs.
//! - [`submit`]: `inpaint-worker submit`, publishing a job from the command line.
//! - [`inpaint_cli`]: `inpaint-worker inpaint`, one job on local files through the worker's
//!   [`flow::JobFlow`] (same chain rules, encoder, provenance, signing, result), no broker.
//! - [`watermark_cli`]: `inpaint-worker watermark`, embed or detect the invisible watermark.
//! - [`smoke`]: `inpaint-worker smoke`, one round trip through every external dependency the
//!   worker has (RabbitMQ with publisher confirms and manual ack, S3, libtorch), for checking a
//!   deployment before it takes jobs.

pub mod batching;
pub mod bench;
pub mod cancel;
pub mod error;
pub mod flow;
pub mod gpu;
pub mod http;
pub mod images;
pub mod inference;
pub mod inpaint_cli;
pub mod metrics;
pub mod parts;
pub mod report;
pub mod runner;
pub mod settings;
pub mod settle;
pub mod smoke;
pub mod store;
pub mod submit;
#[cfg(test)]
mod test_log;
pub mod topology;
pub mod watermark_cli;

pub use parts::{Parts, WorkerError};
pub use runner::{run, run_with};
pub use settings::Settings;

/// Completes on SIGINT (Ctrl-C) or SIGTERM: the shutdown future `main` hands to [`run`].
pub async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}
