//! [`Cancellations`]: the cancel requests this worker has heard of, shared by the cancel
//! consumer (which records them) and the jobs (which check them while queued and between
//! denoising steps).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use inpaint_job::JobId;

/// How long a cancel request for a job this worker has not seen is remembered.
pub const REMEMBER_FOR: Duration = Duration::from_secs(3600);
/// Most remembered requests; the oldest go first beyond this.
pub const MAX_REMEMBERED: usize = 100_000;

#[derive(Debug, Default)]
struct State {
    requested: HashMap<JobId, Instant>,
    running: HashMap<JobId, Vec<Arc<AtomicBool>>>,
}

/// Cancel requests and the flags of running jobs.
#[derive(Clone, Debug, Default)]
pub struct Cancellations {
    state: Arc<Mutex<State>>,
}

impl Cancellations {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a cancel request: raises the flag of the job if it runs here, and remembers it
    /// for a job that has not arrived yet.
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
        if let Some(flags) = state.running.get(&job_id) {
            for flag in flags {
                flag.store(true, Ordering::SeqCst);
            }
        }
    }

    /// Whether a cancel request for `job_id` was heard.
    pub fn is_cancelled(&self, job_id: JobId) -> bool {
        self.lock().requested.contains_key(&job_id)
    }

    /// Registers a running job; the returned flag rises when a cancel request arrives (or had
    /// arrived). Call [`Cancellations::finish`] with it when the job ends.
    pub fn start(&self, job_id: JobId) -> Arc<AtomicBool> {
        let mut state = self.lock();
        let flag = Arc::new(AtomicBool::new(state.requested.contains_key(&job_id)));
        state
            .running
            .entry(job_id)
            .or_default()
            .push(Arc::clone(&flag));
        flag
    }

    /// Unregisters a running job's flag.
    pub fn finish(&self, job_id: JobId, flag: &Arc<AtomicBool>) {
        let mut state = self.lock();
        if let Some(flags) = state.running.get_mut(&job_id) {
            flags.retain(|f| !Arc::ptr_eq(f, flag));
            if flags.is_empty() {
                state.running.remove(&job_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancels_running_and_future_jobs() {
        let c = Cancellations::default();
        let running = JobId::new_random();
        let flag = c.start(running);
        assert!(!flag.load(Ordering::SeqCst));
        c.cancel(running);
        assert!(flag.load(Ordering::SeqCst));
        c.finish(running, &flag);

        let later = JobId::new_random();
        c.cancel(later);
        assert!(c.is_cancelled(later));
        assert!(c.start(later).load(Ordering::SeqCst));
        assert!(!c.is_cancelled(JobId::new_random()));
    }
}
