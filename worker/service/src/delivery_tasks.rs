//! The delivery tasks of one broker session: the tokens they watch ([`Stops`]), the guard each
//! runs its work in ([`guarded`]) and the shutdown that waits on their [`TaskTracker`]
//! ([`drain`], [`abandon`]). Each task settles its own delivery, or releases it after a panic
//! or when the grace period ends, so the session keeps no table of deliveries in flight.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The tokens one session's delivery tasks watch.
#[derive(Clone, Debug, Default)]
pub(super) struct Stops {
    /// Shutdown began: a job still waiting for a slot gives it back (its delivery is released).
    pub draining: CancellationToken,
    /// The grace period ended or the connection was lost: inference stops between two steps.
    pub stop: CancellationToken,
    /// The grace period ended: each task stops where it is and releases its delivery.
    release: CancellationToken,
    /// The connection was lost: each task stops where it is; the broker requeues its delivery
    /// (it can no longer be settled on this channel).
    lost: CancellationToken,
}

/// Runs one delivery's `work` (which settles the delivery) to its end. After a panic in it, or
/// when the grace period ends first, `release` returns the delivery to the queue instead; when
/// the connection is lost the work just stops.
pub(super) async fn guarded<W, F, R>(work: W, stops: &Stops, release: F)
where
    W: Future<Output = ()>,
    F: FnOnce() -> R,
    R: Future<Output = ()>,
{
    let work = AssertUnwindSafe(work).catch_unwind();
    tokio::select! {
        // Work first: a delivery it has settled is never released as well.
        biased;
        done = work => if let Err(panic) = done {
            tracing::error!(panic = panic_message(&*panic), "job task panicked; its delivery returns to the queue");
            release().await;
        },
        () = stops.release.cancelled() => release().await,
        () = stops.lost.cancelled() => {}
    }
}

/// A clean shutdown, once `stops.draining` is cancelled and no delivery comes in any more:
/// the tasks have `grace` to finish; then inference stops and the unfinished ones release their
/// deliveries. Returns how many were unfinished when the grace period ended.
pub(super) async fn drain(tasks: &TaskTracker, stops: &Stops, grace: Duration) -> usize {
    tasks.close();
    if tokio::time::timeout(grace, tasks.wait()).await.is_ok() {
        return 0;
    }
    let unfinished = tasks.len();
    tracing::warn!(
        unfinished,
        "grace period over: releasing unfinished jobs to the queue"
    );
    stops.stop.cancel();
    stops.release.cancel();
    tasks.wait().await;
    unfinished
}

/// The connection is gone: every task stops where it is, settling nothing.
pub(super) async fn abandon(tasks: &TaskTracker, stops: &Stops) {
    tasks.close();
    stops.stop.cancel();
    stops.lost.cancel();
    tasks.wait().await;
}

/// The text a panic was raised with, when it has one.
fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use tokio::time::{Instant, sleep};

    use super::*;

    /// Counts what the tasks did: work finished, deliveries released.
    #[derive(Clone, Default)]
    struct Count {
        finished: Arc<AtomicU32>,
        released: Arc<AtomicU32>,
    }

    impl Count {
        /// A task whose work takes `secs` (paused clock).
        fn spawn(&self, tasks: &TaskTracker, stops: &Stops, secs: u64) {
            let (count, stops) = (self.clone(), stops.clone());
            tasks.spawn(async move {
                let finished = Arc::clone(&count.finished);
                let work = async move {
                    sleep(Duration::from_secs(secs)).await;
                    finished.fetch_add(1, Ordering::SeqCst);
                };
                let released = Arc::clone(&count.released);
                guarded(work, &stops, || async move {
                    released.fetch_add(1, Ordering::SeqCst);
                })
                .await;
            });
        }

        fn get(&self) -> (u32, u32) {
            (
                self.finished.load(Ordering::SeqCst),
                self.released.load(Ordering::SeqCst),
            )
        }
    }

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_tasks_that_finish_within_the_grace_period() {
        let (tasks, stops, count) = (TaskTracker::new(), Stops::default(), Count::default());
        let started = Instant::now();
        count.spawn(&tasks, &stops, 2);
        count.spawn(&tasks, &stops, 3);
        assert_eq!(drain(&tasks, &stops, Duration::from_secs(5)).await, 0);
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        assert_eq!(count.get(), (2, 0));
        assert!(!stops.stop.is_cancelled(), "inference was never stopped");
    }

    #[tokio::test(start_paused = true)]
    async fn drain_releases_what_is_unfinished_when_the_grace_period_ends() {
        let (tasks, stops, count) = (TaskTracker::new(), Stops::default(), Count::default());
        let started = Instant::now();
        count.spawn(&tasks, &stops, 2);
        count.spawn(&tasks, &stops, 100);
        count.spawn(&tasks, &stops, 200);
        assert_eq!(drain(&tasks, &stops, Duration::from_secs(5)).await, 2);
        // At the end of the grace period, not when the slow work would have ended.
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(count.get(), (1, 2));
        assert!(stops.stop.is_cancelled() && tasks.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn work_that_ends_as_the_grace_period_ends_is_not_released() {
        let (tasks, stops, count) = (TaskTracker::new(), Stops::default(), Count::default());
        count.spawn(&tasks, &stops, 5);
        drain(&tasks, &stops, Duration::from_secs(5)).await;
        assert_eq!(count.get(), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_connection_stops_every_task_and_releases_nothing() {
        let (tasks, stops, count) = (TaskTracker::new(), Stops::default(), Count::default());
        let started = Instant::now();
        count.spawn(&tasks, &stops, 100);
        count.spawn(&tasks, &stops, 200);
        sleep(Duration::from_secs(1)).await;
        abandon(&tasks, &stops).await;
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert_eq!(count.get(), (0, 0));
        assert!(stops.stop.is_cancelled() && tasks.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_releases_its_delivery() {
        let stops = Stops::default();
        let released = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&released);
        let task = tokio::spawn(async move {
            let work = async { panic!("a bug in a stage") };
            guarded(work, &stops, || async move {
                counter.fetch_add(1, Ordering::SeqCst);
            })
            .await;
        });
        task.await.expect("the panic stays inside the guard");
        assert_eq!(released.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn panic_messages_are_read_from_str_and_string_payloads() {
        assert_eq!(panic_message(&"boom"), "boom");
        assert_eq!(panic_message(&String::from("bang")), "bang");
        assert_eq!(panic_message(&42_u8), "(no message)");
    }
}
