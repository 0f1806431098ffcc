//! Every action against a recording broker: what is published where, in which order relative
//! to the settlement, and what a failed publish leaves unsettled.

use std::sync::Mutex;

use inpaint_job::{ErrorCode, JobId, JobStatus, WorkerInfo};

use super::*;
use crate::error::JobFailure;

#[derive(Clone, Debug, PartialEq)]
enum Event {
    Publish {
        exchange: String,
        routing_key: String,
        headers: Option<FieldTable>,
        expiration: Option<String>,
    },
    Ack,
    Reject {
        requeue: bool,
    },
}

/// Records what the settlement did; publishes to `fail_on` fail like a lost confirm.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<Event>>,
    fail_on: Option<&'static str>,
}

impl Recorder {
    fn events(&self) -> Vec<Event> {
        self.events.lock().expect("lock").clone()
    }
}

impl Outbox for Recorder {
    fn publish<'a>(
        &'a self,
        exchange: &'a str,
        routing_key: &'a str,
        _body: &'a [u8],
        properties: BasicProperties,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(async move {
            if self.fail_on == Some(exchange) {
                return Err(QueueError::Config("nacked by the broker".into()));
            }
            self.events.lock().expect("lock").push(Event::Publish {
                exchange: exchange.into(),
                routing_key: routing_key.into(),
                headers: properties.headers().clone(),
                expiration: properties.expiration().as_ref().map(|e| e.to_string()),
            });
            Ok(())
        })
    }
}

impl Settle for Recorder {
    fn ack(&self) -> BoxFuture<'_, Result<(), QueueError>> {
        self.events.lock().expect("lock").push(Event::Ack);
        Box::pin(async { Ok(()) })
    }

    fn reject(&self, requeue: bool) -> BoxFuture<'_, Result<(), QueueError>> {
        self.events
            .lock()
            .expect("lock")
            .push(Event::Reject { requeue });
        Box::pin(async { Ok(()) })
    }
}

fn result(status: JobStatus) -> Box<InpaintResult> {
    let model = crate::parts::pass_through_model();
    let worker = WorkerInfo {
        version: "0".into(),
        host: "h".into(),
        missing_required_stages: vec![],
    };
    Box::new(InpaintResult::new(
        Some(JobId::new_random()),
        status,
        model,
        worker,
        chrono::Utc::now(),
    ))
}

async fn settle(
    recorder: &Recorder,
    action: Action,
    answer: Answer,
    reply_to: bool,
    unsafe_chain: &[String],
) -> Result<(), QueueError> {
    let topology = TopologyConfig::with_prefix("t");
    let metrics = Metrics::default();
    let settling = Settling {
        topology: &topology,
        unsafe_chain,
        metrics: &metrics,
    };
    let mut properties = BasicProperties::default();
    if reply_to {
        properties = properties.with_reply_to("replies".into());
    }
    let received = Received {
        data: b"{}",
        properties: &properties,
        attempt: 2,
        now_ms: 0,
    };
    carry_out(&settling, recorder, recorder, received, action, answer).await
}

fn publish_to(exchange: &str, routing_key: &str) -> (String, String) {
    (exchange.to_owned(), routing_key.to_owned())
}

fn targets(events: &[Event]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Publish {
                exchange,
                routing_key,
                ..
            } => Some(publish_to(exchange, routing_key)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn final_actions_publish_the_result_before_settling() {
    let topology = TopologyConfig::with_prefix("t");
    for (action, status, settled) in [
        (Action::Ack, JobStatus::Succeeded, Event::Ack),
        (Action::Ack, JobStatus::Cancelled, Event::Ack),
        (
            Action::DeadLetter,
            JobStatus::Rejected,
            Event::Reject { requeue: false },
        ),
    ] {
        for reply_to in [false, true] {
            let recorder = Recorder::default();
            settle(
                &recorder,
                action,
                Answer::Result(result(status)),
                reply_to,
                &[],
            )
            .await
            .expect("settled");
            let events = recorder.events();
            let mut expected = vec![publish_to(
                &topology.results_exchange,
                &topology::result_routing_key(status),
            )];
            if reply_to {
                expected.push(publish_to("", "replies"));
            }
            assert_eq!(targets(&events), expected, "{action:?} {status:?}");
            assert_eq!(events.last(), Some(&settled), "settled last: {events:?}");
            assert_eq!(events.len(), expected.len() + 1, "{events:?}");
        }
    }
}

#[tokio::test]
async fn a_retry_republishes_the_next_attempt_to_the_delay_queue_then_acks() {
    let topology = TopologyConfig::with_prefix("t");
    let recorder = Recorder::default();
    let after = Duration::from_millis(400);
    settle(
        &recorder,
        Action::Retry { after },
        Answer::Nothing("storage unavailable".into()),
        true,
        &[],
    )
    .await
    .expect("settled");
    let events = recorder.events();
    assert_eq!(events.len(), 2, "{events:?}");
    let Event::Publish {
        exchange,
        routing_key,
        headers,
        expiration,
    } = &events[0]
    else {
        panic!("publish first: {events:?}");
    };
    assert_eq!(
        (exchange.as_str(), routing_key.clone()),
        ("", topology.delay_queue_for(2))
    );
    assert_eq!(expiration.as_deref(), Some("400"));
    let headers = headers.as_ref().expect("headers");
    assert_eq!(topology::header_u32(Some(headers), ATTEMPT_HEADER), Some(3));
    assert!(headers.inner().keys().any(|k| k.as_str() == ERROR_HEADER));
    assert_eq!(events[1], Event::Ack);
}

#[tokio::test]
async fn a_release_publishes_nothing_and_requeues() {
    for answer in [
        Answer::Nothing("worker shutting down".into()),
        Answer::Result(result(JobStatus::Succeeded)),
    ] {
        let recorder = Recorder::default();
        settle(&recorder, Action::Release, answer, true, &[])
            .await
            .expect("released");
        assert_eq!(recorder.events(), vec![Event::Reject { requeue: true }]);
    }
}

#[tokio::test]
async fn a_failed_publish_leaves_the_delivery_unsettled_for_the_caller_to_release() {
    let topology = TopologyConfig::with_prefix("t");
    for (action, fail_on) in [
        (Action::Ack, topology.results_exchange.clone()),
        (Action::DeadLetter, topology.results_exchange.clone()),
        (
            Action::Retry {
                after: Duration::from_millis(1),
            },
            String::new(),
        ),
    ] {
        let recorder = Recorder {
            fail_on: Some(Box::leak(fail_on.into_boxed_str())),
            ..Recorder::default()
        };
        let failure = JobFailure::transient(ErrorCode::StorageUnavailable, "503");
        let answer = match action {
            Action::Retry { .. } => Answer::Nothing(failure.to_string()),
            _ => Answer::Result(result(JobStatus::Failed)),
        };
        settle(&recorder, action, answer, false, &[])
            .await
            .expect_err("publish failed");
        assert!(
            !recorder
                .events()
                .iter()
                .any(|e| matches!(e, Event::Ack | Event::Reject { .. })),
            "{action:?}: {:?}",
            recorder.events()
        );
        // What the runner does next, through the same function.
        settle(
            &recorder,
            Action::Release,
            Answer::Nothing(String::new()),
            false,
            &[],
        )
        .await
        .expect("released");
        assert_eq!(
            recorder.events().last(),
            Some(&Event::Reject { requeue: true })
        );
    }
}

#[tokio::test]
async fn a_failed_reply_to_publish_does_not_stop_the_settlement() {
    let recorder = Recorder {
        fail_on: Some(""),
        ..Recorder::default()
    };
    settle(
        &recorder,
        Action::Ack,
        Answer::Result(result(JobStatus::Succeeded)),
        true,
        &[],
    )
    .await
    .expect("settled");
    assert_eq!(recorder.events().last(), Some(&Event::Ack));
}

#[tokio::test]
async fn results_of_an_unsafe_chain_carry_the_header() {
    let recorder = Recorder::default();
    let missing = vec!["safety-checker".to_owned(), "watermark".to_owned()];
    settle(
        &recorder,
        Action::Ack,
        Answer::Result(result(JobStatus::Succeeded)),
        false,
        &missing,
    )
    .await
    .expect("settled");
    let Event::Publish { headers, .. } = &recorder.events()[0] else {
        panic!("publish first");
    };
    let headers = headers.as_ref().expect("headers");
    assert_eq!(
        headers
            .inner()
            .iter()
            .find(|(k, _)| k.as_str() == UNSAFE_CHAIN_HEADER)
            .map(|(_, v)| v),
        Some(&AMQPValue::LongString("safety-checker,watermark".into()))
    );
}

#[tokio::test]
async fn a_final_action_without_a_result_is_an_error_not_a_silent_ack() {
    for action in [Action::Ack, Action::DeadLetter] {
        let recorder = Recorder::default();
        settle(&recorder, action, Answer::Nothing("?".into()), false, &[])
            .await
            .expect_err("no result");
        assert!(recorder.events().is_empty());
    }
}

/// The broker as far as attempt counting goes: one message copy in the jobs queue, with the
/// headers its publisher set and the quorum queue's count of its redeliveries (written into
/// `x-delivery-count` only once the copy has been redelivered; a fresh copy keeps whatever
/// header it was published with).
struct Copy {
    headers: FieldTable,
    redeliveries: u32,
}

impl Copy {
    fn delivered(&self) -> BasicProperties {
        let mut headers = self.headers.clone();
        if self.redeliveries > 0 {
            headers.insert(
                DELIVERY_COUNT_HEADER.into(),
                AMQPValue::LongLongInt(i64::from(self.redeliveries)),
            );
        }
        BasicProperties::default().with_headers(headers)
    }
}

#[derive(Clone, Copy, Debug)]
enum Fate {
    /// The worker dies with the job: the broker redelivers the same copy.
    Crash,
    /// The job fails transiently: the worker decides, and retries through the delay queue.
    Transient,
}

/// Every sequence of crashes and transient failures (up to `max_attempts + 2` deliveries):
/// delivery n is attempt n exactly, and a transient failure is retried until attempt
/// `max_attempts`, then dead-lettered.
#[tokio::test]
async fn attempts_count_each_delivery_once_through_crashes_and_retries() {
    let retry = crate::settings::RetryConfig {
        max_attempts: 4,
        ..Default::default()
    };
    // Not an outage: counted by attempts (outages are retried by time, tested below).
    let code = ErrorCode::Timeout;
    let topology = TopologyConfig::with_prefix("t");
    let metrics = Metrics::default();
    let settling = Settling {
        topology: &topology,
        unsafe_chain: &[],
        metrics: &metrics,
    };
    let length = retry.max_attempts as usize + 2;
    let mut checked = 0;
    for bits in 0u32..(1 << length) {
        let fates: Vec<Fate> = (0..length)
            .map(|i| {
                if bits & (1 << i) == 0 {
                    Fate::Crash
                } else {
                    Fate::Transient
                }
            })
            .collect();
        let mut copy = Copy {
            headers: FieldTable::default(),
            redeliveries: 0,
        };
        for (n, fate) in fates.iter().enumerate() {
            let properties = copy.delivered();
            let attempt = crate::runner::attempt_of(&properties);
            assert_eq!(attempt as usize, n + 1, "delivery {} of {fates:?}", n + 1);
            checked += 1;
            match fate {
                Fate::Crash => copy.redeliveries += 1,
                Fate::Transient => {
                    let failure = JobFailure::transient(code, "slow");
                    let action = crate::error::action_for(Err(&failure), attempt, &retry);
                    if attempt >= retry.max_attempts {
                        assert_eq!(action, Action::DeadLetter, "{fates:?}");
                        break;
                    }
                    assert!(matches!(action, Action::Retry { .. }), "{fates:?}");
                    let recorder = Recorder::default();
                    let received = Received {
                        data: b"{}",
                        properties: &properties,
                        attempt,
                        now_ms: 0,
                    };
                    carry_out(
                        &settling,
                        &recorder,
                        &recorder,
                        received,
                        action,
                        Answer::Nothing("503".into()),
                    )
                    .await
                    .expect("retried");
                    let Some(Event::Publish {
                        headers: Some(headers),
                        ..
                    }) = recorder.events().first().cloned()
                    else {
                        panic!("no republish: {:?}", recorder.events());
                    };
                    // Through the delay queue into the jobs queue: a new copy.
                    copy = Copy {
                        headers,
                        redeliveries: 0,
                    };
                }
            }
        }
    }
    assert!(checked > 1 << length, "{checked}");
}

/// A failed result carrying `failure`, as the runner builds one for a final action.
fn failure_result(failure: &JobFailure) -> Box<InpaintResult> {
    let mut result = result(failure.code.status());
    result.error = Some(failure.to_error_info());
    result
}

/// How many results went to the results exchange.
fn results_published(events: &[Event], topology: &TopologyConfig) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::Publish { exchange, .. } if *exchange == topology.results_exchange))
        .count()
}

/// Every broker count 0..=limit+1 of every limit 1..=8, with and without a retry header: the
/// delivery showing `x-delivery-count == limit` (the last the quorum queue makes) and beyond
/// are never run but answered `failed`/`delivery_limit_exceeded` (not retryable) to the results
/// exchange and `reply_to`, then dead-lettered; every earlier one runs.
#[tokio::test]
async fn the_last_delivery_is_answered_not_run() {
    let topology = TopologyConfig::with_prefix("t");
    let metrics = Metrics::default();
    let settling = Settling {
        topology: &topology,
        unsafe_chain: &[],
        metrics: &metrics,
    };
    let retry = crate::settings::RetryConfig::default();
    for limit in 1..=8u32 {
        for retry_header in [None, Some(2i64), Some(7)] {
            for redeliveries in 0..=limit + 1 {
                let mut headers = FieldTable::default();
                if let Some(n) = retry_header {
                    headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(n));
                }
                let copy = Copy {
                    headers,
                    redeliveries,
                };
                let properties = copy.delivered().with_reply_to("replies".into());
                let mut ran = 0;
                let outcome = unless_last_delivery(&properties, limit, || {
                    ran += 1;
                    async { Ok::<(), JobFailure>(()) }
                })
                .await;
                let case = format!("limit {limit} count {redeliveries} header {retry_header:?}");
                if redeliveries < limit {
                    assert_eq!((ran, outcome), (1, Ok(())), "{case}");
                    continue;
                }
                assert_eq!(ran, 0, "{case}");
                let failure = outcome.expect_err(&case);
                assert_eq!(failure.code, ErrorCode::DeliveryLimitExceeded, "{case}");
                assert!(!failure.to_error_info().retryable, "{case}");
                assert_eq!(failure.code.status(), JobStatus::Failed, "{case}");
                let attempt = crate::runner::attempt_of(&properties);
                let action = crate::error::action_for(Err(&failure), attempt, &retry);
                assert_eq!(action, Action::DeadLetter, "{case}");
                let recorder = Recorder::default();
                let received = Received {
                    data: b"not json",
                    properties: &properties,
                    attempt,
                    now_ms: 0,
                };
                carry_out(
                    &settling,
                    &recorder,
                    &recorder,
                    received,
                    action,
                    Answer::Result(failure_result(&failure)),
                )
                .await
                .expect("answered");
                assert_eq!(
                    targets(&recorder.events()),
                    vec![
                        publish_to(
                            &topology.results_exchange,
                            &topology::result_routing_key(JobStatus::Failed)
                        ),
                        publish_to("", "replies")
                    ],
                    "{case}"
                );
                assert_eq!(
                    recorder.events().last(),
                    Some(&Event::Reject { requeue: false }),
                    "{case}"
                );
            }
        }
    }
}

/// A message that crashes the worker on every delivery, against a broker that redelivers an
/// unsettled copy with its count + 1 and silently dead-letters it once the count would exceed
/// the limit: for every limit, the job runs `limit` times and ends with exactly one terminal
/// result (before this, none).
#[tokio::test]
async fn a_message_crashing_every_delivery_gets_exactly_one_answer() {
    let topology = TopologyConfig::with_prefix("t");
    let metrics = Metrics::default();
    let settling = Settling {
        topology: &topology,
        unsafe_chain: &[],
        metrics: &metrics,
    };
    let retry = crate::settings::RetryConfig::default();
    for limit in 1..=10u32 {
        let recorder = Recorder::default();
        let mut copy = Copy {
            headers: FieldTable::default(),
            redeliveries: 0,
        };
        let mut runs = 0;
        let mut settled = false;
        // The broker: deliver while the count is within the limit.
        while copy.redeliveries <= limit {
            let properties = copy.delivered();
            let attempt = crate::runner::attempt_of(&properties);
            let outcome = unless_last_delivery(&properties, limit, || {
                runs += 1;
                async { Ok::<(), JobFailure>(()) }
            })
            .await;
            match outcome {
                // The job ran: it crashes the worker, the delivery stays unsettled.
                Ok(()) => copy.redeliveries += 1,
                Err(failure) => {
                    let action = crate::error::action_for(Err(&failure), attempt, &retry);
                    let received = Received {
                        data: b"{\"job_id\":",
                        properties: &properties,
                        attempt,
                        now_ms: 0,
                    };
                    carry_out(
                        &settling,
                        &recorder,
                        &recorder,
                        received,
                        action,
                        Answer::Result(failure_result(&failure)),
                    )
                    .await
                    .expect("answered");
                    settled = true;
                    break;
                }
            }
        }
        assert!(settled, "limit {limit}: dropped by the broker unanswered");
        assert_eq!(runs, limit, "limit {limit}");
        assert_eq!(
            results_published(&recorder.events(), &topology),
            1,
            "limit {limit}"
        );
    }
}

/// Storage down for `outage` seconds from the first attempt, on a fake clock: each attempt
/// takes 1 s, fails `storage_unavailable` while the outage lasts, and is retried through the
/// delay queue (the clock moves by the republished delay, read from its expiration). Every
/// outage shorter than the budget ends `succeeded`, with the attempts counted; a longer one
/// ends `failed` once the budget (measured from the first failure) is spent — and never
/// before, whatever `max_attempts` says.
#[tokio::test]
async fn an_outage_shorter_than_the_time_budget_delays_jobs_instead_of_failing_them() {
    let retry = crate::settings::RetryConfig {
        max_attempts: 3,
        max_elapsed_secs: 120,
        max_outage_attempts: 100,
        base_delay_ms: 500,
        max_delay_ms: 8_000,
    };
    let budget_ms = retry.max_elapsed_secs as i64 * 1_000;
    let topology = TopologyConfig::with_prefix("t");
    let metrics = Metrics::default();
    let settling = Settling {
        topology: &topology,
        unsafe_chain: &[],
        metrics: &metrics,
    };
    for outage_s in (0..=200i64).step_by(5) {
        let start_ms = 1_700_000_000_000i64;
        let mut now_ms = start_ms;
        let mut copy = Copy {
            headers: FieldTable::default(),
            redeliveries: 0,
        };
        let mut first_failure_ms = None;
        let (status, attempts) = loop {
            let properties = copy.delivered();
            let attempt = crate::runner::attempt_of(&properties);
            now_ms += 1_000; // the attempt runs
            if now_ms - start_ms >= outage_s * 1_000 {
                break (JobStatus::Succeeded, attempt);
            }
            first_failure_ms.get_or_insert(now_ms);
            let failure = JobFailure::transient(ErrorCode::StorageUnavailable, "503");
            let elapsed = since_first_failure(&properties, now_ms);
            assert_eq!(
                elapsed.as_millis() as i64,
                now_ms - first_failure_ms.expect("set"),
                "outage {outage_s}"
            );
            let action = crate::error::action_after(Err(&failure), attempt, elapsed, &retry);
            let Action::Retry { .. } = action else {
                assert_eq!(action, Action::DeadLetter, "outage {outage_s}");
                assert!(
                    elapsed.as_millis() as i64 >= budget_ms,
                    "outage {outage_s}: gave up early"
                );
                break (JobStatus::Failed, attempt);
            };
            let recorder = Recorder::default();
            let received = Received {
                data: b"{}",
                properties: &properties,
                attempt,
                now_ms,
            };
            carry_out(
                &settling,
                &recorder,
                &recorder,
                received,
                action,
                Answer::Nothing("503".into()),
            )
            .await
            .expect("retried");
            let Some(Event::Publish {
                headers: Some(headers),
                expiration: Some(expiration),
                ..
            }) = recorder.events().first().cloned()
            else {
                panic!("no republish: {:?}", recorder.events());
            };
            let delay: i64 = expiration.parse().expect("expiration in ms");
            assert!(delay <= retry.max_delay_ms as i64, "{delay}");
            now_ms += delay;
            copy = Copy {
                headers,
                redeliveries: 0,
            };
        };
        // An outage within the budget always ends succeeded; one outlasting the budget plus
        // the last delay (and the attempts' own time) always ends failed; in between, the
        // last retry's timing decides.
        let outage_ms = outage_s * 1_000;
        if outage_ms <= budget_ms {
            assert_eq!(
                status,
                JobStatus::Succeeded,
                "outage {outage_s}s after {attempts} attempts"
            );
        } else if outage_ms > budget_ms + retry.max_delay_ms as i64 + 2_000 {
            assert_eq!(
                status,
                JobStatus::Failed,
                "outage {outage_s}s after {attempts} attempts"
            );
        }
        assert!(
            attempts > retry.max_attempts || outage_s <= 2,
            "outage {outage_s}: {attempts}"
        );
    }
}
