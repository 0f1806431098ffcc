//! [`Cancellations`]: the cancel requests this worker has heard of, shared by the cancel
//! consumer (which records them) and the jobs (which check them while queued and, through a
//! [`CancellationToken`], between denoising steps).
//!
//! A running job's token is a child of the worker's stop token, so one token stops the engine
//! for both reasons: a cancel request for this job, or the end of the shutdown grace period.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use inpaint_job::JobId;
use tokio_util::sync::CancellationToken;

/// How long a cancel request for a job this worker has not seen is remembered.
pub const REMEMBER_FOR: Duration = Duration::from_secs(3600);
/// Most remembered requests; the oldest go first beyond this.
pub const MAX_REMEMBERED: usize = 100_000;

#[derive(Debug, Default)]
struct State {
    requested: HashMap<JobId, Instant>,
    running: HashMap<JobId, Vec<(u64, CancellationToken)>>,
    serial: u64,
}

/// Cancel requests and the tokens of running jobs.
#[derive(Clone, Debug, Default)]
pub struct Cancellations {
    state: Arc<Mutex<State>>,
}

impl Cancellations {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a cancel request: cancels the token of the job if it runs here, and remembers
    /// it for a job that has not arrived yet.
    pub fn cancel(&self, job_id: JobId) {
        let mut state = self.lock();
        let now = Instant::now();
        state
            .requested
            .retain(|_, at| now.duration_since(*at) < REMEMBER_FOR);
        if state.requested.len() >= MAX_REMEMBERED
            && let Some(oldest) = state
                .requested
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(id, _)| *id)
        {
            state.requested.remove(&oldest);
        }
        state.requested.insert(job_id, now);
        if let Some(tokens) = state.running.get(&job_id) {
            for (_, token) in tokens {
                token.cancel();
            }
        }
    }

    /// Whether a cancel request for `job_id` was heard.
    pub fn is_cancelled(&self, job_id: JobId) -> bool {
        self.lock().requested.contains_key(&job_id)
    }

    /// Registers a running job; the returned handle's token, a child of `stop`, is cancelled
    /// when a cancel request arrives (or had arrived) or when `stop` is. Hand it back to
    /// [`Cancellations::finish`] when the job ends.
    pub fn start(&self, job_id: JobId, stop: &CancellationToken) -> RunningJob {
        let mut state = self.lock();
        let token = stop.child_token();
        if state.requested.contains_key(&job_id) {
            token.cancel();
        }
        state.serial += 1;
        let serial = state.serial;
        state
            .running
            .entry(job_id)
            .or_default()
            .push((serial, token.clone()));
        RunningJob {
            job_id,
            serial,
            token,
        }
    }

    /// Unregisters a running job.
    pub fn finish(&self, running: RunningJob) {
        let mut state = self.lock();
        if let Some(tokens) = state.running.get_mut(&running.job_id) {
            tokens.retain(|(serial, _)| *serial != running.serial);
            if tokens.is_empty() {
                state.running.remove(&running.job_id);
            }
        }
    }
}

/// A job registered with [`Cancellations::start`]: its token stops the engine.
#[derive(Debug)]
pub struct RunningJob {
    job_id: JobId,
    serial: u64,
    /// Cancelled by a cancel request for the job or by the worker's stop token.
    pub token: CancellationToken,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancels_running_and_future_jobs() {
        let c = Cancellations::default();
        let stop = CancellationToken::new();
        let running = JobId::new_random();
        let job = c.start(running, &stop);
        assert!(!job.token.is_cancelled());
        c.cancel(running);
        assert!(job.token.is_cancelled());
        c.finish(job);

        let later = JobId::new_random();
        c.cancel(later);
        assert!(c.is_cancelled(later));
        assert!(c.start(later, &stop).token.is_cancelled());
        assert!(!c.is_cancelled(JobId::new_random()));
    }

    #[test]
    fn the_stop_token_stops_every_running_job_and_finish_forgets_one() {
        let c = Cancellations::default();
        let stop = CancellationToken::new();
        let id = JobId::new_random();
        // Two deliveries of one job (a redelivery racing the first): finishing one keeps the
        // other registered.
        let first = c.start(id, &stop);
        let second = c.start(id, &stop);
        let second_token = second.token.clone();
        c.finish(first);
        c.cancel(id);
        assert!(second_token.is_cancelled());
        c.finish(second);
        assert!(c.lock().running.is_empty());
        let other = c.start(JobId::new_random(), &stop);
        stop.cancel();
        assert!(other.token.is_cancelled());
    }
}
