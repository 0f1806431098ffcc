//! The exec stage against real programs: the example script from `ops/plugins/` (as operators
//! run it) and the misbehaving test double, run through the `Chain` as the worker runs stages,
//! or called directly where the test needs the program's process id.

mod common;

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{State, ctx, ctx_with_input, gone_within, is_alive, misbehave, ops_plugin, output};
use inpaint_external_stages::{ExecStage, ExecStageConfig, OnFailure, UNAVAILABLE_CATEGORY};
use inpaint_plugin_api::{AuditAction, Chain, Hook, Stage, StageError, Verdict};

fn python(script: &std::path::Path, args: &[&str], hooks: &[Hook]) -> ExecStageConfig {
    let mut all = vec![script.to_str().expect("utf-8 path").to_owned()];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    ExecStageConfig {
        name: "word-filter".into(),
        program: "python3".into(),
        args: all,
        hooks: hooks.to_vec(),
        timeout_ms: 5_000,
        attempts: 1,
        backoff_ms: 10,
        ..ExecStageConfig::default()
    }
}

fn example(args: &[&str], hooks: &[Hook]) -> ExecStageConfig {
    python(&ops_plugin("verdict_exec.py"), args, hooks)
}

/// The test double in exec mode, recording into `state`. Hanging tests set short timeouts;
/// the start-up grace stays long enough for Python on a busy machine.
fn double(state: &State, args: &[&str], hooks: &[Hook]) -> ExecStageConfig {
    let mut all = vec!["exec", "--state", state.path()];
    all.extend_from_slice(args);
    ExecStageConfig {
        startup_grace_ms: 2_000,
        ..python(&misbehave(), &all, hooks)
    }
}

fn build(config: ExecStageConfig) -> ExecStage {
    config.build().expect("build")
}

fn chain(config: ExecStageConfig) -> Chain {
    Chain::new(vec![Box::new(build(config))])
}

#[test]
fn example_script_continues_blocks_and_rewrites_before_inference() {
    let chain = chain(example(
        &["--block-word", "forbidden", "--rewrite", "dog=cat"],
        &[Hook::BeforeInference],
    ));
    let ordinary = ctx("a lighthouse on a cliff at dusk");
    let outcome = chain.before_inference(ordinary.clone()).expect("answer");
    assert!(!outcome.is_blocked());
    assert!(outcome.audit.is_empty(), "{:?}", outcome.audit);
    assert_eq!(outcome.context, ordinary);

    let outcome = chain
        .before_inference(ctx("a forbidden garden"))
        .expect("answer");
    let record = outcome.block.expect("blocked");
    assert_eq!(record.stage, "word-filter");
    assert_eq!(record.block.category, "operator_blocklist");
    assert_eq!(record.block.rules, vec!["blocklist/0".to_owned()]);

    let outcome = chain
        .before_inference(ctx("a Dog on a beach"))
        .expect("answer");
    assert_eq!(outcome.context.prompt, "a cat on a beach");
    assert_eq!(outcome.context.negative_prompt.as_deref(), Some("lowres"));
    assert_eq!(
        outcome.context.metadata.get("example_policy.version"),
        Some(&"1".to_owned())
    );
    assert_eq!(outcome.audit.len(), 2);
    assert!(
        outcome
            .audit
            .iter()
            .all(|e| e.action == AuditAction::Modified)
    );
}

#[test]
fn example_script_sets_and_extends_the_negative_prompt() {
    let chain = chain(example(
        &[
            "--set-negative",
            "blurry",
            "--negative",
            "text",
            "--negative",
            "logo",
        ],
        &[Hook::BeforeInference],
    ));
    let outcome = chain.before_inference(ctx("a lighthouse")).expect("answer");
    assert_eq!(outcome.context.prompt, "a lighthouse");
    assert_eq!(
        outcome.context.negative_prompt.as_deref(),
        Some("blurry, text, logo")
    );
    let details: Vec<&str> = outcome.audit.iter().map(|e| e.detail.as_str()).collect();
    assert_eq!(
        details,
        vec![
            "negative prompt replaced",
            "2 term(s) appended to the negative prompt",
            "metadata `example_policy.version` added",
        ]
    );
}

#[test]
fn example_script_scores_replaces_and_blocks_output_images() {
    let chain = chain(example(
        &["--grayscale", "--min-brightness", "0.1"],
        &[Hook::AfterOutput],
    ));
    let images = vec![
        output(0, [0, 0, 0]),
        output(1, [10, 200, 30]),
        output(2, [255, 255, 255]),
    ];
    let out = chain.after_output(&ctx("a field"), images).expect("answer");
    let indices: Vec<u32> = out.images.iter().map(|i| i.index).collect();
    assert_eq!(indices, vec![1, 2]);
    // Luma of (10, 200, 30): (2990 + 117400 + 3420 + 500) / 1000 = 124.
    assert!(out.images[0].image.pixels().all(|p| p.0 == [124, 124, 124]));
    assert!(out.images[1].image.pixels().all(|p| p.0 == [255, 255, 255]));
    assert_eq!(out.images[1].reports[0].scores["brightness"], 1.0);
    assert_eq!(out.images[1].reports[0].stage, "word-filter");
    assert_eq!(
        out.images[0].metadata_value("example_policy.checked"),
        Some("brightness")
    );
    assert_eq!(out.blocks.len(), 1);
    assert_eq!(out.blocks[0].block.category, "blank_output");
}

#[test]
fn example_script_serves_concurrent_callers_in_turn() {
    let stage = Arc::new(build(example(
        &["--block-word", "forbidden"],
        &[Hook::BeforeInference],
    )));
    let pid = stage.process_id().expect("running");
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let stage = Arc::clone(&stage);
            thread::spawn(move || {
                for i in 0..5 {
                    let blocked = (t + i) % 2 == 0;
                    let prompt = if blocked {
                        format!("a forbidden thing number {i}")
                    } else {
                        format!("an allowed thing number {i}")
                    };
                    let verdict = stage.before_inference(&ctx(&prompt)).expect("answer");
                    assert_eq!(verdict.is_block(), blocked, "{prompt}: {verdict:?}");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("no panic");
    }
    assert_eq!(stage.process_id(), Some(pid), "one program served them all");
}

#[test]
fn requests_carry_the_context_the_image_and_the_input_on_request() {
    let state = State::new();
    let stage = build(ExecStageConfig {
        send_input_image: true,
        ..double(&state, &[], &[Hook::BeforeInference, Hook::AfterOutput])
    });
    let ctx = ctx_with_input("a lighthouse on a cliff");
    assert_eq!(stage.before_inference(&ctx).ok(), Some(Verdict::Continue));
    assert_eq!(
        stage.after_output(&ctx, &output(1, [5, 6, 7])).ok(),
        Some(Verdict::Continue)
    );
    let requests = state.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0]["protocol"], "inpaint-stage.v1");
    assert_eq!(requests[0]["hook"], "before-inference");
    assert_eq!(requests[0]["job"]["prompt"], "a lighthouse on a cliff");
    assert_eq!(requests[0]["job"]["metadata"]["tenant"], "studio-a");
    assert_eq!(requests[0]["input_image"]["width"], 6);
    assert_eq!(requests[1]["hook"], "after-output");
    assert_eq!(requests[1]["image"]["index"], 1);
    assert_eq!(requests[1]["image"]["seed"], 1001);
    assert_eq!(state.lines("starts").len(), 1, "started once, at build");
}

#[test]
fn a_hanging_program_is_killed_and_on_failure_block_blocks() {
    let state = State::new();
    let stage = build(ExecStageConfig {
        timeout_ms: 500,
        on_failure: OnFailure::Block,
        ..double(&state, &["--mode", "hang"], &[Hook::BeforeInference])
    });
    let pid = stage.process_id().expect("running");
    let start = Instant::now();
    let verdict = stage.before_inference(&ctx("x")).expect("a verdict");
    let elapsed = start.elapsed();
    let Verdict::Block(block) = verdict else {
        panic!("expected a block: {verdict:?}");
    };
    assert_eq!(block.category, UNAVAILABLE_CATEGORY);
    assert!(
        block.reason.contains("no response line"),
        "{}",
        block.reason
    );
    // The timeout, plus what is left of the start-up grace of the program started at build.
    assert!(elapsed >= Duration::from_millis(500), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert!(!is_alive(pid), "the hanging program was killed and reaped");
    assert_eq!(stage.process_id(), None);
}

#[test]
fn a_hanging_program_with_retry_requeues_and_is_restarted_on_the_next_call() {
    let state = State::new();
    let stage = build(ExecStageConfig {
        timeout_ms: 500,
        on_failure: OnFailure::Retry,
        ..double(&state, &["--mode", "hang-once"], &[Hook::AfterOutput])
    });
    let chain_stage: Box<dyn Stage> = Box::new(stage);
    let chain = Chain::new(vec![chain_stage]);
    let err = chain
        .after_output(&ctx("x"), vec![output(0, [1, 1, 1])])
        .expect_err("timed out");
    assert!(
        matches!(err.source, StageError::Timeout(d) if d == Duration::from_millis(500)),
        "{err}"
    );
    assert!(err.is_retryable());
    let out = chain
        .after_output(&ctx("x"), vec![output(0, [1, 1, 1])])
        .expect("the fresh program answers");
    assert_eq!(out.images.len(), 1);
    let starts = state.lines("starts");
    assert_eq!(starts.len(), 2, "{starts:?}");
    assert!(!is_alive(starts[0].parse().expect("pid")));
}

#[test]
fn the_kill_reaches_the_programs_own_children() {
    let state = State::new();
    let stage = build(ExecStageConfig {
        timeout_ms: 500,
        ..double(&state, &["--mode", "hang-child"], &[Hook::BeforeInference])
    });
    let err = stage.before_inference(&ctx("x")).expect_err("timed out");
    assert!(matches!(err, StageError::Timeout(_)), "{err}");
    let child: u32 = state.lines("child")[0].parse().expect("pid");
    assert!(
        gone_within(child, Duration::from_secs(2)),
        "the program's `sleep` child {child} outlived the kill"
    );
}

#[test]
fn a_crash_mid_request_is_restarted_on_the_next_call() {
    let state = State::new();
    let stage = build(double(
        &state,
        &["--mode", "crash-once"],
        &[Hook::BeforeInference],
    ));
    let err = stage.before_inference(&ctx("x")).expect_err("crashed");
    assert!(matches!(err, StageError::Unavailable(_)), "{err}");
    assert!(err.is_retryable());
    assert!(err.to_string().contains("exit status: 3"), "{err}");
    assert_eq!(
        stage.before_inference(&ctx("x")).ok(),
        Some(Verdict::Continue)
    );
    assert_eq!(state.lines("starts").len(), 2);
}

#[test]
fn a_crash_is_retried_within_the_call_when_attempts_allow() {
    let state = State::new();
    let stage = build(ExecStageConfig {
        attempts: 2,
        ..double(&state, &["--mode", "crash-once"], &[Hook::BeforeInference])
    });
    assert_eq!(
        stage.before_inference(&ctx("x")).ok(),
        Some(Verdict::Continue)
    );
    assert_eq!(state.lines("starts").len(), 2);
    assert_eq!(
        state.lines("requests").len(),
        2,
        "the request was sent again"
    );
}

#[test]
fn a_program_that_keeps_crashing_gives_up_after_the_attempts() {
    let state = State::new();
    let stage = build(ExecStageConfig {
        attempts: 3,
        on_failure: OnFailure::Block,
        ..double(&state, &["--mode", "crash"], &[Hook::BeforeInference])
    });
    let start = Instant::now();
    let verdict = stage.before_inference(&ctx("x")).expect("a verdict");
    assert!(
        matches!(&verdict, Verdict::Block(b) if b.category == UNAVAILABLE_CATEGORY
            && b.reason.contains("3 attempt(s)")),
        "{verdict:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        state.lines("starts").len(),
        3,
        "one start per attempt, no more"
    );
}

#[test]
fn a_malformed_line_is_a_contract_error_and_the_program_is_replaced() {
    let state = State::new();
    let stage = build(ExecStageConfig {
        attempts: 3,
        ..double(
            &state,
            &["--response", "this is not json"],
            &[Hook::BeforeInference],
        )
    });
    let err = stage.before_inference(&ctx("x")).expect_err("malformed");
    assert!(matches!(err, StageError::Contract(_)), "{err}");
    assert!(
        err.to_string().contains("malformed response: not JSON"),
        "{err}"
    );
    assert!(!err.is_retryable());
    assert_eq!(state.lines("requests").len(), 1, "not asked again");
    assert_eq!(
        stage.process_id(),
        None,
        "the desynchronised program is gone"
    );
    let _ = stage.before_inference(&ctx("x"));
    assert_eq!(state.lines("starts").len(), 2);
}

#[test]
fn a_change_the_hook_may_not_make_is_refused_by_the_chain() {
    let state = State::new();
    let negative_after_output = r#"{"protocol": "inpaint-stage.v1", "verdict": "modify", "changes": [{"type": "set_negative", "negative_prompt": "x"}]}"#;
    let chain = chain(double(
        &state,
        &["--response", negative_after_output],
        &[Hook::AfterOutput],
    ));
    let err = chain
        .after_output(&ctx("x"), vec![output(0, [1, 1, 1]), output(1, [2, 2, 2])])
        .expect_err("refused");
    assert!(matches!(err.source, StageError::Contract(_)), "{err}");
    assert!(
        err.to_string()
            .contains("negative prompt replaced is not allowed during after-output"),
        "{err}"
    );
    assert_eq!(err.image_index, Some(0));
}

#[test]
fn dropping_the_stage_kills_the_program() {
    let state = State::new();
    let stage = build(double(&state, &[], &[Hook::BeforeInference]));
    let pid = stage.process_id().expect("running");
    assert!(is_alive(pid));
    drop(stage);
    assert!(!is_alive(pid), "killed and reaped on drop");
}
