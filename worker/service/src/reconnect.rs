//! Reconnecting to the broker: [`reconnecting`] runs one session after another with a
//! jittered, capped exponential backoff between failed ones, and [`Link`] is how a session says
//! that it connected (ending the outage and resetting the backoff). Generic over the session,
//! so the tests drive it on a paused clock without a broker.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// First wait before reconnecting to the broker; doubles per failed attempt up to
/// [`MAX_BACKOFF`] and starts again after a session that connected.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between two reconnection attempts. Short on purpose: while the broker is down
/// an attempt costs one refused TCP connection, and a longer cap is how long workers sit idle
/// after it comes back (they did for 12–30 s with a 30 s cap).
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// What a session tells [`reconnecting`]: that it is connected and consuming. It ends the
/// current outage (logged at info with its length) and resets the backoff.
#[derive(Clone, Debug, Default)]
pub struct Link {
    outage: Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
    up: Arc<AtomicBool>,
}

impl Link {
    /// The session is connected and consuming.
    pub fn connected(&self) {
        self.up.store(true, Ordering::SeqCst);
        let since = self.outage.lock().map(|mut o| o.take()).unwrap_or_default();
        if let Some(since) = since {
            tracing::info!(
                down_ms = since.elapsed().as_millis() as u64,
                "reconnected to the broker"
            );
        }
    }
}

/// Runs `session` until it ends cleanly or `stopping` is cancelled, waiting between failed
/// sessions: [`FIRST_BACKOFF`], doubling up to [`MAX_BACKOFF`], each wait jittered down to
/// half (so that a fleet does not reconnect in lockstep), reset by a session that connected.
/// An outage is logged once at warn; the further refused attempts of the same outage at debug
/// (the broker being down is expected and handled here, not an error). Generic over the
/// session so that a paused-clock test can drive it.
pub async fn reconnecting<F, Fut, E>(stopping: CancellationToken, mut session: F)
where
    F: FnMut(CancellationToken, Link) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let link = Link::default();
    let mut backoff = FIRST_BACKOFF;
    let mut tries: u64 = 0;
    loop {
        let Err(e) = session(stopping.clone(), link.clone()).await else {
            return;
        };
        if link.up.swap(false, Ordering::SeqCst) {
            backoff = FIRST_BACKOFF;
        }
        tries += 1;
        let wait = jittered(backoff, tries);
        let new_outage = match link.outage.lock() {
            Ok(mut outage) if outage.is_none() => {
                *outage = Some(tokio::time::Instant::now());
                true
            }
            _ => false,
        };
        if new_outage {
            tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "broker connection lost; reconnecting");
        } else {
            tracing::debug!(error = %e, retry_in_ms = wait.as_millis() as u64, "broker still unreachable");
        }
        tokio::select! {
            () = stopping.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// `backoff` scaled into (backoff/2, backoff] by a per-process random hash of `nonce`.
fn jittered(backoff: Duration, nonce: u64) -> Duration {
    use std::hash::BuildHasher;
    static SEED: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    let hash = SEED.get_or_init(Default::default).hash_one(nonce);
    let fraction = 0.5 + 0.5 * ((hash % 1_000) + 1) as f64 / 1_000.0;
    backoff.mul_f64(fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the broker does with one session.
    enum Session {
        Refused,
        /// Connects, stays up this long, then the connection is lost.
        UpThenLost(Duration),
        /// Connects; the worker then shuts down, which ends the loop.
        UpUntilShutdown,
    }

    /// Runs the loop with `broker(n, since_start)` deciding session n (from 1); returns when each
    /// session started, measured from the loop's start.
    async fn session_starts(mut broker: impl FnMut(usize, Duration) -> Session) -> Vec<Duration> {
        let stopping = CancellationToken::new();
        let stop = stopping.clone();
        let started = tokio::time::Instant::now();
        let mut starts = Vec::new();
        reconnecting(stopping, |_, link| {
            let now = started.elapsed();
            starts.push(now);
            let session = broker(starts.len(), now);
            let stop = stop.clone();
            async move {
                match session {
                    Session::Refused => Err("connection refused"),
                    Session::UpThenLost(up) => {
                        link.connected();
                        tokio::time::sleep(up).await;
                        Err("connection reset by peer")
                    }
                    Session::UpUntilShutdown => {
                        link.connected();
                        stop.cancel();
                        Ok(())
                    }
                }
            }
        })
        .await;
        starts
    }

    /// Broker outages of every length from 0 to 120 s, starting at different points of the
    /// backoff: the worker is connected again within [`MAX_BACKOFF`] of the broker coming back,
    /// every wait is within (backoff/2, backoff], and a connected session resets the backoff.
    #[tokio::test(start_paused = true)]
    async fn reconnects_within_a_second_of_the_broker_coming_back() {
        for down_ms in (0..=120_000u64)
            .step_by(7_919)
            .chain([150, 999, 1_001, 12_000])
        {
            let back_at = Duration::from_millis(down_ms);
            let at = session_starts(|_, now| {
                if now < back_at {
                    Session::Refused
                } else {
                    Session::UpUntilShutdown
                }
            })
            .await;
            let last = *at.last().expect("a session");
            assert!(last >= back_at, "{down_ms}: {at:?}");
            assert!(
                last - back_at <= Duration::from_secs(1),
                "down {down_ms} ms, reconnected at {last:?}: {at:?}"
            );
            let mut backoff = FIRST_BACKOFF;
            for gap in at.windows(2).map(|w| w[1] - w[0]) {
                assert!(
                    gap > backoff / 2 && gap <= backoff,
                    "{gap:?} vs {backoff:?}"
                );
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// An outage is one WARN line however many attempts (~20) it takes, the refused attempts are
    /// DEBUG, the reconnection INFO, and nothing is logged as ERROR.
    #[tokio::test(start_paused = true)]
    async fn an_outage_logs_one_warning_and_one_reconnection() {
        let (log, _guard) = crate::test_log::capture();
        // Up for a minute, then the broker is away for 20 s.
        session_starts(|n, now| match n {
            1 => Session::UpThenLost(Duration::from_secs(60)),
            _ if now < Duration::from_secs(80) => Session::Refused,
            _ => Session::UpUntilShutdown,
        })
        .await;
        let warns = log.at("WARN");
        let infos = log.at("INFO");
        assert!(log.at("ERROR").is_empty(), "{:?}", log.lines());
        assert!(log.at("DEBUG").len() > 10, "{:#?}", log.lines());
        assert_eq!(warns.len(), 1, "{warns:?}");
        assert_eq!(infos.len(), 1, "{infos:?}");
        assert!(infos[0].contains("reconnected"), "{infos:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connected_session_resets_the_backoff() {
        // Sessions: refused ×5, connected for 10 s then lost, refused, then up for good.
        let at = session_starts(|n, _| match n {
            1..=5 | 7 => Session::Refused,
            6 => Session::UpThenLost(Duration::from_secs(10)),
            _ => Session::UpUntilShutdown,
        })
        .await;
        let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(gaps.len(), 7, "{at:?}");
        // After the connected session: the first backoff again, not the cap.
        assert!(
            gaps[5] - Duration::from_secs(10) <= FIRST_BACKOFF,
            "{gaps:?}"
        );
        assert!(gaps[6] <= FIRST_BACKOFF * 2, "{gaps:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_during_the_backoff_ends_the_loop_at_once() {
        let stopping = CancellationToken::new();
        let stop = stopping.clone();
        let started = tokio::time::Instant::now();
        let mut sessions = 0;
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            stop.cancel();
        });
        reconnecting(stopping, |_, _| {
            sessions += 1;
            async { Err::<(), _>("refused") }
        })
        .await;
        // Every wait is at most the 1 s cap: at least 5 sessions in 5 s, and the loop ends
        // at the shutdown, not after its wait.
        assert!(sessions >= 5, "{sessions}");
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}
