//! What "preserve unmasked" promises with a watermark in the chain, checked on the worker's own
//! output: the worker runs end to end (real RabbitMQ and Garage; the embedded tiny model on the
//! CPU, and the pass-through engine) with the example configuration's chain (`ops/worker.example.toml`: prompt policy, safety
//! checker, watermark, provenance), and every pixel outside the mask must differ from the input
//! by at most the watermark's bound (`inpaint_watermark::MAX_CHANNEL_CHANGE`) and nothing else.
//!
//! The input is made of fully saturated colours with hard edges and blue/yellow checkerboards,
//! where the reference's own embedding (values wrapping past 0 and 255, chroma swapped across
//! 2×2 quads) breaks the bound: the test asserts that too, so it would fail without the fix.
//! The job's output prefix holds characters that object_store used to re-encode, and the
//! result's URI must name the object as stored.

use std::path::Path;
use std::sync::Arc;

use image::{Rgb, RgbImage};
use inpaint_job::JobStatus;
use inpaint_worker::Parts;
use inpaint_worker::settings::EngineBackend;

mod common;
use common::*;

const SIZE: u32 = 256;
/// The mask: a white square; everything else is unmasked.
const HOLE: std::ops::Range<u32> = 96..160;

fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The `[[chain.stages]]` of ops/worker.example.toml, with model paths made absolute (they are
/// relative to the repository root) and the safety checker on the CPU, never flagging.
fn example_chain() -> Vec<inpaint_stages::StageConfig> {
    let text = std::fs::read_to_string(repo_root().join("ops/worker.example.toml"))
        .expect("ops/worker.example.toml");
    let config: toml::Value = toml::from_str(&text).expect("example TOML");
    let mut stages = config["chain"]["stages"]
        .as_array()
        .expect("chain.stages")
        .clone();
    for stage in &mut stages {
        let table = stage.as_table_mut().expect("stage table");
        if let Some(model) = table.get("model").and_then(|m| m.as_str()) {
            let absolute = repo_root().join(model);
            table.insert(
                "model".into(),
                absolute.to_string_lossy().into_owned().into(),
            );
        }
        if table.contains_key("device") {
            table.insert("device".into(), "cpu".into());
        }
        // The example's checker has random weights (it exercises the plumbing) and flags some
        // images at random; this test is about pixels, so it lowers every concept score far
        // below the threshold. The stage still runs (and would replace pixels if it acted).
        if table.get("type").and_then(|t| t.as_str()) == Some("safety-checker") {
            table.insert("adjustment".into(), (-2.0).into());
        }
    }
    let kinds: Vec<&str> = stages
        .iter()
        .map(|s| s["type"].as_str().expect("type"))
        .collect();
    assert!(kinds.contains(&"watermark"), "example chain: {kinds:?}");
    toml::Value::Array(stages)
        .try_into()
        .expect("example stages parse")
}

/// Saturated colours in bands, crossed by diagonal stripes, with blue/yellow checkerboards of
/// 1 and 2 pixels in two corners: the worst case for chroma arithmetic.
fn hard_input() -> RgbImage {
    const COLOURS: [[u8; 3]; 8] = [
        [255, 0, 0],
        [0, 0, 255],
        [255, 255, 255],
        [0, 255, 0],
        [255, 255, 0],
        [0, 0, 0],
        [255, 0, 255],
        [0, 255, 255],
    ];
    RgbImage::from_fn(SIZE, SIZE, |x, y| {
        let checker = |cell: u32| {
            if (x / cell + y / cell).is_multiple_of(2) {
                Rgb([0, 0, 255])
            } else {
                Rgb([255, 255, 0])
            }
        };
        if x < 64 && y < 64 {
            checker(1)
        } else if x >= 192 && y >= 192 {
            checker(2)
        } else if (x + 2 * y) / 13 % 3 == 0 {
            Rgb(COLOURS[((y / 32) as usize + 5) % 8])
        } else {
            Rgb(COLOURS[(x / 32) as usize % 8])
        }
    })
}

fn mask() -> RgbImage {
    RgbImage::from_fn(SIZE, SIZE, |x, y| {
        if HOLE.contains(&x) && HOLE.contains(&y) {
            Rgb([255, 255, 255])
        } else {
            Rgb([0, 0, 0])
        }
    })
}

/// The largest change per channel over the unmasked pixels.
fn unmasked_change(input: &RgbImage, output: &RgbImage) -> [u8; 3] {
    let mut max = [0u8; 3];
    for (x, y, p) in input.enumerate_pixels() {
        if HOLE.contains(&x) && HOLE.contains(&y) {
            continue;
        }
        let q = output.get_pixel(x, y);
        for c in 0..3 {
            max[c] = max[c].max(p[c].abs_diff(q[c]));
        }
    }
    max
}

/// Which engine paints the masked region.
#[derive(Clone, Copy, Debug)]
enum Engine {
    /// The embedded tiny model (random weights) on the CPU.
    Tiny,
    /// The pass-through engine (returns the input): the chain alone changes pixels.
    PassThrough,
}

#[tokio::test]
async fn with_the_tiny_model_unmasked_pixels_change_by_at_most_the_watermark_bound() {
    unmasked_pixels_change_by_at_most_the_watermark_bound(Engine::Tiny).await;
}

#[tokio::test]
async fn with_the_pass_through_engine_unmasked_pixels_change_by_at_most_the_watermark_bound() {
    unmasked_pixels_change_by_at_most_the_watermark_bound(Engine::PassThrough).await;
}

async fn unmasked_pixels_change_by_at_most_the_watermark_bound(engine: Engine) {
    let bound = inpaint_watermark::MAX_CHANNEL_CHANGE;
    let input = hard_input();

    // Without the fix: the reference-exact embedding breaks the bound on these pixels.
    let payload = inpaint_watermark::Payload::default();
    let reference = inpaint_watermark::encode_reference_exact(&input, payload.bits())
        .expect("reference embedding");
    let reference_change = unmasked_change(&input, &reference);
    assert!(
        (0..3).any(|c| reference_change[c] > bound[c]),
        "the reference embedding stays within {bound:?} here ({reference_change:?}): the input \
         does not exercise the bound"
    );

    let mut world = World::with(|s| {
        s.engine.backend = match engine {
            Engine::Tiny => EngineBackend::Tch,
            Engine::PassThrough => EngineBackend::PassThrough,
        };
        s.engine.device = inpaint_engine::DeviceSpec::Cpu;
        s.chain.stages = example_chain();
        s.chain.allow_unsafe_chain = false;
    })
    .await;
    let parts = Parts::build(&world.settings)
        .await
        .expect("tiny model and the example chain load");
    let worker = Worker::spawn(world.settings.clone(), parts, Arc::default());
    let image = world.put("in/image.png", png(&input)).await;
    let mask_ref = world.put("in/mask.png", png(&mask())).await;
    let mut job = world.job(&image, &mask_ref);
    job["params"]["seed"] = 11.into();
    job["params"]["width"] = SIZE.into();
    job["params"]["height"] = SIZE.into();
    // Characters object_store's Path::from re-encoded (space, '+', non-ASCII, '%').
    let out_prefix = format!("{}/out/sp ace+é/%2e%2e", world.prefix);
    job["output"]["prefix"] = out_prefix.clone().into();
    world.publish(&job).await;
    let result = world.next_result().await;
    worker.shutdown().await;
    assert_eq!(result.status, JobStatus::Succeeded, "{result:?}");
    let out = &result.outputs[0];
    assert_eq!(out.watermark.as_ref().expect("watermark").method, "dwtDct");

    // The result names the object as stored.
    let expected_key = format!("{out_prefix}/{}/0.png", job_id(&job));
    assert_eq!(out.uri.key(), expected_key);
    let listed: Vec<String> = world
        .storage
        .list(&world.bucket, &format!("{}/out", world.prefix))
        .await
        .expect("list outputs")
        .iter()
        .map(|o| o.key().to_owned())
        .collect();
    // The output and the job's manifest, both under the prefix exactly as written.
    assert!(listed.contains(&expected_key), "{listed:?}");
    let job_dir = format!("{out_prefix}/{}/", job_id(&job));
    assert!(listed.iter().all(|k| k.starts_with(&job_dir)), "{listed:?}");
    assert_outputs_exist(&world, &result).await;

    let stored = world.storage.get(&out.uri, None).await.expect("output");
    let output = image::load_from_memory(&stored.bytes)
        .expect("png")
        .to_rgb8();
    assert_eq!(output.dimensions(), input.dimensions());
    let change = unmasked_change(&input, &output);
    for c in 0..3 {
        assert!(
            change[c] <= bound[c],
            "unmasked pixels changed by {change:?} per channel, more than the watermark's \
             {bound:?}"
        );
    }
    // The watermark did run over the unmasked region (a chain without it would leave the
    // pixels bit-identical and pass the check above trivially).
    assert!(change.iter().any(|&c| c > 0), "no unmasked pixel changed");
    let detection = inpaint_watermark::detect(
        &output,
        payload.bits(),
        inpaint_watermark::DEFAULT_DETECT_THRESHOLD,
    )
    .expect("detect");
    eprintln!(
        "unmasked change {change:?} (bound {bound:?}, reference-exact {reference_change:?}); \
         Rust detector: {}/{} bits ({engine:?})",
        detection.bits_matched, detection.total
    );
}
