//! `inpaint` on the embedded tiny model: local files through the worker's flow.

use image::GrayImage;

use super::*;

#[test]
fn scheduler_names_from_the_command_line() {
    assert_eq!(
        parse_scheduler("euler-a").ok(),
        Some(SchedulerKind::EulerAncestral)
    );
    assert_eq!(
        parse_scheduler("dpmpp-2m-karras").ok(),
        Some(SchedulerKind::Dpmpp2mKarras)
    );
    assert_eq!(parse_scheduler("pndm").ok(), Some(SchedulerKind::Pndm));
    let err = parse_scheduler("heun").expect_err("unknown");
    assert!(err.to_string().contains("unknown scheduler"), "{err}");
}

#[test]
fn every_scheduler_name_becomes_the_jobs_scheduler() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, expected) in [
        ("pndm", inpaint_job::Scheduler::Pndm),
        ("ddim", inpaint_job::Scheduler::Ddim),
        ("euler", inpaint_job::Scheduler::Euler),
        ("euler-a", inpaint_job::Scheduler::EulerAncestral),
        ("dpmpp-2m", inpaint_job::Scheduler::DpmPp2m),
        ("dpmpp-2m-karras", inpaint_job::Scheduler::DpmPp2mKarras),
    ] {
        let mut args = base_args(dir.path());
        args.scheduler = name.into();
        assert_eq!(
            job_for(&args).expect("job").params.scheduler,
            expected,
            "{name}"
        );
    }
}

#[test]
fn several_images_get_numbered_names() {
    let out = Path::new("/tmp/x/out.png");
    assert_eq!(output_path(out, 0, 1), PathBuf::from("/tmp/x/out.png"));
    assert_eq!(output_path(out, 1, 3), PathBuf::from("/tmp/x/out-1.png"));
    assert_eq!(result_path(out), PathBuf::from("/tmp/x/out.result.json"));
}

#[test]
fn bad_arguments_are_refused_as_the_worker_refuses_jobs() {
    let dir = tempfile::tempdir().expect("tempdir");
    type Edit = fn(&mut InpaintArgs);
    let cases: [(Edit, &str); 4] = [
        (|a| a.steps = 0, "num_inference_steps"),
        (|a| a.strength = 1.5, "strength"),
        (|a| a.num_images = 0, "num_images"),
        (|a| a.output = PathBuf::from("out.gif"), ".gif"),
    ];
    for (edit, names) in cases {
        let mut args = base_args(dir.path());
        edit(&mut args);
        let err = job_for(&args).expect_err("refused").to_string();
        assert!(err.contains(names), "{names}: {err}");
    }
}

fn base_args(dir: &Path) -> InpaintArgs {
    InpaintArgs {
        model: None,
        variant: None,
        image: None,
        mask: None,
        prompt: "a lighthouse on a cliff".into(),
        negative_prompt: None,
        output: dir.join("out.png"),
        steps: 2,
        guidance_scale: 7.5,
        strength: 1.0,
        eta: 0.0,
        seed: 3,
        scheduler: "ddim".into(),
        width: None,
        height: None,
        num_images: 2,
        device: DeviceSpec::Cpu,
        dtype: "f32".into(),
        vae_dtype: "auto".into(),
        no_preserve_unmasked: false,
        mask_grow: 0,
        mask_feather: 0,
        crop_to_mask: None,
        max_side: 1024,
        chain: None,
        config: None,
        // The default chain has no safety checker or watermark (the tiny model has no
        // checker, and its images are too small to watermark).
        allow_unsafe_chain: true,
        job_id: None,
        quality: 90,
        raw: false,
    }
}

fn write_inputs(dir: &Path) -> (image::RgbImage, PathBuf, PathBuf) {
    let image = image::RgbImage::from_fn(40, 24, |x, y| image::Rgb([x as u8 * 6, y as u8 * 9, 77]));
    let mask = GrayImage::from_fn(40, 24, |x, _| image::Luma([if x > 20 { 255 } else { 0 }]));
    image.save(dir.join("in.png")).expect("save");
    mask.save(dir.join("mask.png")).expect("save");
    (image, dir.join("in.png"), dir.join("mask.png"))
}

#[test]
fn inpaints_local_files_with_the_embedded_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (image, image_path, mask_path) = write_inputs(dir.path());
    let mut args = base_args(dir.path());
    args.image = Some(image_path);
    args.mask = Some(mask_path);
    let written = run_inpaint(&args).expect("inpaint");
    assert_eq!(
        written,
        vec![dir.path().join("out-0.png"), dir.path().join("out-1.png")]
    );
    let out = image::open(&written[0]).expect("decode").to_rgb8();
    assert_eq!(out.dimensions(), (40, 24));
    assert_eq!(
        out.get_pixel(3, 3),
        image.get_pixel(3, 3),
        "unmasked pixels are kept"
    );
    // The worker's encoder: provenance in the file, and the override recorded in it.
    let bytes = std::fs::read(&written[0]).expect("read");
    let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"iTXtprovenance.ai_generated"));
    assert!(has(crate::report::MISSING_STAGES_KEY.as_bytes()));
    // The worker's result, beside the outputs, with the sha256 of the files.
    let result: InpaintResult = serde_json::from_slice(
        &std::fs::read(dir.path().join("out.result.json")).expect("result json"),
    )
    .expect("result parses");
    assert_eq!(result.outputs.len(), 2);
    for (output, path) in result.outputs.iter().zip(&written) {
        let file = std::fs::read(path).expect("read");
        assert_eq!(
            output.sha256,
            crate::inference::hex(&sha2::Digest::finalize(
                <sha2::Sha256 as sha2::Digest>::new_with_prefix(&file)
            ))
        );
    }
    assert!(!result.worker.missing_required_stages.is_empty());
}

#[test]
fn a_blocked_prompt_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = base_args(dir.path());
    args.prompt = "nude child".into();
    let err = run_inpaint(&args).expect_err("blocked");
    assert!(err.to_string().contains("blocked by stage"), "{err}");
    assert!(!dir.path().join("out-0.png").exists());
}

#[test]
fn without_the_required_stages_it_refuses_to_run_unless_told() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = base_args(dir.path());
    args.allow_unsafe_chain = false;
    let err = format!("{:#}", run_inpaint(&args).expect_err("refused"));
    assert!(
        err.contains("safety-checker") && err.contains("watermark"),
        "{err}"
    );
    assert!(!dir.path().join("out-0.png").exists());
    // --raw runs without a chain, for reference comparisons: no provenance in the file.
    args.raw = true;
    args.num_images = 1;
    let written = run_inpaint(&args).expect("raw run");
    let bytes = std::fs::read(&written[0]).expect("read");
    assert!(!bytes.windows(10).any(|w| w == b"provenance"));
}

/// The worker's side of the comparison: the job message a producer would send, through a
/// worker's flow built from settings the way `run` builds it.
async fn worker_output(
    job: &serde_json::Value,
    stages: Vec<StageConfig>,
) -> (InpaintResult, Vec<Vec<u8>>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, image_path, mask_path) = write_inputs(dir.path());
    let mut settings = Settings {
        storage: StorageConfig::Memory,
        allow: AllowConfig {
            read_buckets: vec!["inputs".into()],
            write_buckets: vec!["outputs".into()],
            ..AllowConfig::default()
        },
        chain: ChainConfig {
            stages,
            allow_unsafe_chain: true,
        },
        ..Settings::default()
    };
    settings.engine.backend = EngineBackend::Tch;
    settings.engine.model = crate::settings::EMBEDDED_TINY.into();
    settings.engine.device = DeviceSpec::Cpu;
    let parts = Parts::build(&settings).await.expect("parts");
    for (path, key) in [(image_path, "image.png"), (mask_path, "mask.png")] {
        let object = inpaint_storage::ObjectRef::new("inputs", key).expect("ref");
        let bytes = std::fs::read(path).expect("read");
        parts
            .storage
            .put(&object, Bytes::from(bytes), &PutRequest::default())
            .await
            .expect("put");
    }
    let job = InpaintJob::from_json(&serde_json::to_vec(job).expect("json")).expect("job");
    let flow = JobFlow::new(&settings, &parts, Signer::build(&settings).expect("signer"));
    let run = JobRun {
        attempt: 1,
        ..JobRun::default()
    };
    let result = flow
        .run(&job, run, &mut Timings::new())
        .await
        .expect("worker flow");
    let mut files = Vec::new();
    for output in &result.outputs {
        files.push(
            parts
                .storage
                .get(&output.uri, None)
                .await
                .expect("stored")
                .bytes
                .to_vec(),
        );
    }
    (result, files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inpaint_writes_the_bytes_a_worker_writes_for_the_same_job_and_seed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, image_path, mask_path) = write_inputs(dir.path());
    let job_id = JobId::new_random();
    let stages = default_stages();
    for format in ["png", "webp", "jpg"] {
        let mut args = base_args(dir.path());
        args.image = Some(image_path.clone());
        args.mask = Some(mask_path.clone());
        args.job_id = Some(job_id);
        args.output = dir.path().join(format!("out.{format}"));
        let (written, local) = inpaint(&args).await.expect("inpaint");

        let mut output = serde_json::json!({"bucket": "outputs", "prefix": "w"});
        output["format"] = match format {
            "jpg" => serde_json::json!({"type": "jpeg", "quality": 90}),
            other => serde_json::json!({ "type": other }),
        };
        let job = serde_json::json!({
            "schema_version": 1,
            "job_id": job_id.to_string(),
            "image": "s3://inputs/image.png",
            "mask": "s3://inputs/mask.png",
            "prompt": "a lighthouse on a cliff",
            "params": {"scheduler": "ddim", "num_inference_steps": 2, "seed": 3, "num_images": 2},
            "output": output,
        });
        let (worker, files) = worker_output(&job, stages.clone()).await;
        assert_eq!(files.len(), written.len(), "{format}");
        for (i, (file, path)) in files.iter().zip(&written).enumerate() {
            let local_bytes = std::fs::read(path).expect("read");
            assert!(local_bytes == *file, "{format} image {i}: the bytes differ");
            assert_eq!(local.outputs[i].sha256, worker.outputs[i].sha256);
            assert_eq!(local.outputs[i].seed, worker.outputs[i].seed);
        }
    }
}
