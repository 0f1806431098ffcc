//! Progress events: what the engine reports after each denoising step, forwarded to the
//! job's `reply_to` queue at a bounded rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use inpaint_job::{JobId, ProgressEvent};
use inpaint_queue::Publisher;
use inpaint_queue::lapin::BasicProperties;
use tokio::sync::mpsc;

/// Fewest milliseconds between two progress events of one job.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// Forwards (step, total) from the engine to `reply_to`, at most one event per
/// [`PROGRESS_INTERVAL`] (the last step always goes out). Best effort.
pub(super) fn progress_forwarder(
    publisher: Arc<Publisher>,
    job_id: JobId,
    reply_to: String,
    correlation_id: Option<inpaint_queue::lapin::types::ShortString>,
) -> crate::inference::Progress {
    let (tx, mut rx) = mpsc::channel::<(u32, u32)>(64);
    tokio::spawn(async move {
        let mut last_sent: Option<Instant> = None;
        while let Some((step, total)) = rx.recv().await {
            let due = last_sent.is_none_or(|at| at.elapsed() >= PROGRESS_INTERVAL) || step == total;
            if !due {
                continue;
            }
            let event = ProgressEvent {
                job_id,
                step,
                total,
            };
            let Ok(body) = event.to_json() else { continue };
            let mut properties =
                BasicProperties::default().with_content_type("application/json".into());
            if let Some(c) = &correlation_id {
                properties = properties.with_correlation_id(c.clone());
            }
            if let Err(e) = publisher.publish("", &reply_to, &body, properties).await {
                tracing::debug!(error = %e, "progress event not delivered");
            }
            last_sent = Some(Instant::now());
        }
    });
    tx
}
