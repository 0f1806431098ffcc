//! The HTTP stage against real servers on 127.0.0.1: the example server from `ops/plugins/`
//! (as operators run it) and the misbehaving test double, run through the `Chain` as the
//! worker runs stages.

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{Server, State, ctx, ctx_with_input, misbehave, ops_plugin, output, png_base64};
use inpaint_external_stages::{HttpStageConfig, OnFailure, UNAVAILABLE_CATEGORY};
use inpaint_plugin_api::{AuditAction, Chain, Hook, Stage, StageError, Verdict};

fn config(url: &str, hooks: &[Hook]) -> HttpStageConfig {
    HttpStageConfig {
        name: "word-filter".into(),
        url: url.to_owned(),
        hooks: hooks.to_vec(),
        connect_timeout_ms: 1_000,
        timeout_ms: 5_000,
        attempts: 1,
        backoff_ms: 10,
        ..HttpStageConfig::default()
    }
}

fn chain(config: HttpStageConfig) -> Chain {
    Chain::new(vec![Box::new(config.build().expect("build"))])
}

fn example_server(args: &[&str]) -> Server {
    let mut all = vec!["--port", "0"];
    all.extend_from_slice(args);
    Server::start(&ops_plugin("verdict_http.py"), &all)
}

fn double(args: &[&str]) -> Server {
    let mut all = vec!["http"];
    all.extend_from_slice(args);
    Server::start(&misbehave(), &all)
}

#[test]
fn example_server_continues_on_an_ordinary_prompt() {
    let server = example_server(&["--block-word", "forbidden"]);
    let chain = chain(config(&server.url, &[Hook::BeforeInference]));
    let input = ctx("a lighthouse on a cliff at dusk");
    let outcome = chain.before_inference(input.clone()).expect("answer");
    assert!(!outcome.is_blocked());
    assert!(outcome.audit.is_empty(), "{:?}", outcome.audit);
    assert_eq!(outcome.context, input);
}

#[test]
fn example_server_blocks_a_listed_word() {
    let server = example_server(&["--block-word", "castle", "--block-word", "forbidden"]);
    let chain = chain(config(&server.url, &[Hook::BeforeInference]));
    let outcome = chain
        .before_inference(ctx("a FORBIDDEN garden behind a wall"))
        .expect("answer");
    let record = outcome.block.expect("blocked");
    assert_eq!(record.stage, "word-filter");
    assert_eq!(record.block.category, "operator_blocklist");
    assert_eq!(record.block.rules, vec!["blocklist/1".to_owned()]);
    assert_eq!(record.block.scores.get("blocklist_matches"), Some(&1.0));
    let audit = serde_json::to_string(&outcome.audit).expect("json");
    assert!(!audit.contains("garden"), "audit leaks the prompt: {audit}");
}

#[test]
fn example_server_rewrites_the_prompt_and_sets_the_negative() {
    let server = example_server(&[
        "--rewrite",
        "dog=cat",
        "--set-negative",
        "blurry",
        "--negative",
        "text",
        "--negative",
        "watermark",
    ]);
    let chain = chain(config(&server.url, &[Hook::BeforeInference]));
    let outcome = chain
        .before_inference(ctx("a dog on a beach"))
        .expect("answer");
    assert!(!outcome.is_blocked());
    assert_eq!(outcome.context.prompt, "a cat on a beach");
    assert_eq!(
        outcome.context.negative_prompt.as_deref(),
        Some("blurry, text, watermark")
    );
    assert_eq!(
        outcome.context.metadata.get("example_policy.version"),
        Some(&"1".to_owned())
    );
    assert_eq!(outcome.audit.len(), 4);
    assert_eq!(
        outcome.audit[0].category.as_deref(),
        Some("operator_rewrite")
    );
    assert!(
        outcome
            .audit
            .iter()
            .all(|e| e.action == AuditAction::Modified && e.stage == "word-filter")
    );
}

#[test]
fn example_server_scores_replaces_and_blocks_output_images() {
    let server = example_server(&["--grayscale", "--min-brightness", "0.1"]);
    let chain = chain(config(&server.url, &[Hook::AfterOutput]));
    let images = vec![output(0, [200, 100, 50]), output(1, [0, 0, 0])];
    let out = chain
        .after_output(&ctx("a red bicycle"), images)
        .expect("answer");
    assert_eq!(out.images.len(), 1);
    let image = &out.images[0];
    assert_eq!(image.index, 0);
    // Luma of (200, 100, 50): (299*200 + 587*100 + 114*50 + 500) / 1000 = 124.
    assert!(image.image.pixels().all(|p| p.0 == [124, 124, 124]));
    assert_eq!(
        image.metadata_value("example_policy.checked"),
        Some("brightness")
    );
    let brightness = image.reports[0].scores["brightness"];
    assert!((brightness - 124.0 / 255.0).abs() < 1e-3, "{brightness}");
    assert_eq!(out.blocks.len(), 1);
    assert_eq!(out.blocks[0].image_index, Some(1));
    assert_eq!(out.blocks[0].block.category, "blank_output");
    assert_eq!(out.blocks[0].block.scores.get("brightness"), Some(&0.0));
}

#[test]
fn hooks_not_configured_are_not_sent() {
    let state = State::new();
    let server = double(&["--state", state.path()]);
    let stage = config(&server.url, &[Hook::AfterOutput])
        .build()
        .expect("build");
    assert_eq!(
        stage.before_inference(&ctx("x")).ok(),
        Some(Verdict::Continue)
    );
    assert_eq!(server.count(), 0);
}

#[test]
fn requests_carry_the_context_the_image_and_the_input_on_request() {
    let state = State::new();
    let server = double(&["--state", state.path()]);
    let with_input = HttpStageConfig {
        send_input_image: true,
        ..config(&server.url, &[Hook::BeforeInference, Hook::AfterOutput])
    }
    .build()
    .expect("build");
    let without_input = config(&server.url, &[Hook::BeforeInference])
        .build()
        .expect("build");
    let ctx = ctx_with_input("a lighthouse on a cliff");
    with_input.before_inference(&ctx).expect("answer");
    without_input.before_inference(&ctx).expect("answer");
    with_input
        .after_output(&ctx, &output(3, [1, 2, 3]))
        .expect("answer");

    let requests = state.requests();
    assert_eq!(requests.len(), 3);
    let before = &requests[0];
    assert_eq!(before["protocol"], "inpaint-stage.v1");
    assert_eq!(before["stage"], "word-filter");
    assert_eq!(before["hook"], "before-inference");
    assert_eq!(before["job"]["prompt"], "a lighthouse on a cliff");
    assert_eq!(before["job"]["negative_prompt"], "lowres");
    assert_eq!(before["job"]["params"]["num_inference_steps"], 25);
    assert_eq!(before["job"]["metadata"]["tenant"], "studio-a");
    assert_eq!(before["job"]["text_only"], false);
    assert_eq!(
        before["job"]["job_id"],
        "00000000-0000-0000-0000-000000001234"
    );
    assert_eq!(before["input_image"]["width"], 6);
    assert_eq!(before["input_image"]["height"], 4);
    assert!(before["input_image"]["png_base64"].is_string());
    assert!(requests[1].get("input_image").is_none(), "off by default");
    let after = &requests[2];
    assert_eq!(after["hook"], "after-output");
    assert_eq!(after["image"]["index"], 3);
    assert_eq!(after["image"]["seed"], 1003);
    assert_eq!(after["image"]["width"], 16);
    assert!(after.get("input_image").is_none());
    assert_ne!(after["id"], before["id"], "every request has its own id");
}

#[test]
fn a_change_the_hook_may_not_make_is_refused_by_the_chain() {
    let rewrite_after_output = r#"{"protocol": "inpaint-stage.v1", "verdict": "modify",
        "changes": [{"type": "rewrite_prompt", "prompt": "something else"}]}"#;
    let server = double(&["--response", rewrite_after_output]);
    let chain = chain(config(&server.url, &[Hook::AfterOutput]));
    let err = chain
        .after_output(&ctx("a red bicycle"), vec![output(0, [9, 9, 9])])
        .expect_err("refused");
    assert!(matches!(err.source, StageError::Contract(_)), "{err}");
    assert_eq!(err.image_index, Some(0));
    assert!(!err.is_retryable());

    let replace_before = format!(
        r#"{{"protocol": "inpaint-stage.v1", "verdict": "modify",
            "changes": [{{"type": "replace_image", "png_base64": "{}"}}]}}"#,
        png_base64(2, 2, [0, 0, 0])
    );
    let server = double(&["--response", &replace_before]);
    let chain = self::chain(config(&server.url, &[Hook::BeforeInference]));
    let err = chain
        .before_inference(ctx("a red bicycle"))
        .expect_err("refused");
    assert!(matches!(err.source, StageError::Contract(_)), "{err}");
    assert!(
        err.to_string()
            .contains("not allowed during before-inference"),
        "{err}"
    );
}

#[test]
fn a_malformed_response_is_a_contract_error_and_not_retried() {
    let server = double(&["--response", "this is not json"]);
    let chain = chain(HttpStageConfig {
        attempts: 3,
        ..config(&server.url, &[Hook::BeforeInference])
    });
    let err = chain.before_inference(ctx("x")).expect_err("malformed");
    assert!(matches!(err.source, StageError::Contract(_)), "{err}");
    assert!(
        err.to_string().contains("malformed response: not JSON"),
        "{err}"
    );
    assert!(!err.is_retryable());
    assert_eq!(server.count(), 1, "a wrong answer is not asked again");

    let wrong_verdict = double(&[
        "--response",
        r#"{"protocol": "inpaint-stage.v1", "verdict": "yes"}"#,
    ]);
    let chain = self::chain(config(&wrong_verdict.url, &[Hook::BeforeInference]));
    let err = chain.before_inference(ctx("x")).expect_err("malformed");
    assert!(err.to_string().contains("`verdict` is \"yes\""), "{err}");
}

#[test]
fn server_errors_are_retried_then_on_failure_blocks_or_requeues() {
    let server = double(&["--mode", "status", "--status", "500"]);
    let block = config(&server.url, &[Hook::BeforeInference]);
    let block = HttpStageConfig {
        attempts: 3,
        on_failure: OnFailure::Block,
        ..block
    };
    let verdict = block
        .build()
        .expect("build")
        .before_inference(&ctx("x"))
        .expect("a verdict");
    let Verdict::Block(b) = verdict else {
        panic!("expected a block: {verdict:?}");
    };
    assert_eq!(b.category, UNAVAILABLE_CATEGORY);
    assert!(
        b.reason.contains("HTTP 500") && b.reason.contains("3 attempt(s)"),
        "{}",
        b.reason
    );
    assert_eq!(server.count(), 3);

    let retry = HttpStageConfig {
        attempts: 2,
        on_failure: OnFailure::Retry,
        ..config(&server.url, &[Hook::BeforeInference])
    };
    let err = retry
        .build()
        .expect("build")
        .before_inference(&ctx("x"))
        .expect_err("requeue");
    assert!(matches!(err, StageError::Unavailable(_)), "{err}");
    assert!(err.is_retryable());
    assert_eq!(server.count(), 5);
}

#[test]
fn a_flaky_server_answers_within_the_attempts() {
    let server = double(&["--mode", "status", "--status", "503", "--fail", "2"]);
    let stage = HttpStageConfig {
        attempts: 3,
        ..config(&server.url, &[Hook::BeforeInference])
    }
    .build()
    .expect("build");
    assert_eq!(
        stage.before_inference(&ctx("x")).ok(),
        Some(Verdict::Continue)
    );
    assert_eq!(server.count(), 3);
}

#[test]
fn client_errors_are_not_retried() {
    let server = double(&["--mode", "status", "--status", "401"]);
    let stage = HttpStageConfig {
        attempts: 3,
        on_failure: OnFailure::Block,
        ..config(&server.url, &[Hook::BeforeInference])
    }
    .build()
    .expect("build");
    let err = stage.before_inference(&ctx("x")).expect_err("401");
    assert!(matches!(err, StageError::Failed(_)), "{err}");
    assert!(err.to_string().contains("HTTP 401"), "{err}");
    assert!(!err.is_retryable());
    assert_eq!(server.count(), 1);
}

#[test]
fn a_hanging_server_times_out_and_on_failure_applies() {
    let server = double(&["--mode", "hang"]);
    let hanging = HttpStageConfig {
        timeout_ms: 400,
        attempts: 2,
        ..config(&server.url, &[Hook::AfterOutput])
    };
    let block = HttpStageConfig {
        on_failure: OnFailure::Block,
        ..hanging.clone()
    };
    let chain = chain(block);
    let start = Instant::now();
    let out = chain
        .after_output(&ctx("x"), vec![output(0, [1, 1, 1])])
        .expect("blocked, not failed");
    let elapsed = start.elapsed();
    assert!(out.images.is_empty());
    assert_eq!(out.blocks[0].block.category, UNAVAILABLE_CATEGORY);
    assert!(
        out.blocks[0].block.reason.contains("no answer"),
        "{:?}",
        out.blocks
    );
    assert!(
        elapsed >= Duration::from_millis(800),
        "two timeouts: {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    assert_eq!(server.count(), 2);

    let retry = HttpStageConfig {
        on_failure: OnFailure::Retry,
        ..hanging
    };
    let chain = self::chain(retry);
    let err = chain
        .after_output(&ctx("x"), vec![output(0, [1, 1, 1])])
        .expect_err("requeue");
    assert!(
        matches!(err.source, StageError::Timeout(d) if d == Duration::from_millis(400)),
        "{err}"
    );
    assert!(err.is_retryable());
    assert_eq!(err.image_index, Some(0));
}

#[test]
fn a_server_that_drops_the_connection_is_unavailable() {
    let server = double(&["--mode", "close"]);
    let stage = HttpStageConfig {
        attempts: 2,
        ..config(&server.url, &[Hook::BeforeInference])
    }
    .build()
    .expect("build");
    let err = stage.before_inference(&ctx("x")).expect_err("no answer");
    assert!(matches!(err, StageError::Unavailable(_)), "{err}");
    assert!(err.is_retryable());
    assert_eq!(server.count(), 2);
}

#[test]
fn nothing_listening_is_unavailable() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let stage = HttpStageConfig {
        attempts: 2,
        on_failure: OnFailure::Block,
        ..config(
            &format!("http://127.0.0.1:{port}/verdict"),
            &[Hook::BeforeInference],
        )
    }
    .build()
    .expect("build");
    let verdict = stage.before_inference(&ctx("x")).expect("a verdict");
    assert!(
        matches!(&verdict, Verdict::Block(b) if b.category == UNAVAILABLE_CATEGORY),
        "{verdict:?}"
    );
}

#[test]
fn a_body_over_the_limit_is_refused() {
    let server = double(&[]);
    let stage = HttpStageConfig {
        attempts: 3,
        max_response_bytes: 20,
        ..config(&server.url, &[Hook::BeforeInference])
    }
    .build()
    .expect("build");
    let err = stage.before_inference(&ctx("x")).expect_err("too large");
    assert!(matches!(err, StageError::Contract(_)), "{err}");
    assert!(err.to_string().contains("max_response_bytes"), "{err}");
    assert_eq!(server.count(), 1, "not retried");
}
