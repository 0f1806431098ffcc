//! Parity of every scheduler with diffusers: replays the cases of
//! `tests/parity/schedulers/fixtures/schedulers.json` (written by `generate.py` next to it from the
//! real diffusers schedulers) and compares schedules, `add_noise` and every step's sample.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use super::*;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/parity/schedulers/fixtures/schedulers.json"
);

/// Maximum difference allowed, relative to the magnitude of the reference (fp32 arithmetic).
const TOLERANCE: f64 = 1e-5;

#[derive(Deserialize)]
struct Fixture {
    randn_checks: Vec<RandnCheck>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct RandnCheck {
    seed: u64,
    shapes: Vec<Vec<i64>>,
    draws: Vec<Vec<f32>>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    kind: SchedulerKind,
    config: SchedulerConfig,
    steps: usize,
    strength: f64,
    eta: f64,
    shape: Vec<i64>,
    seeds: Vec<u64>,
    full_timesteps: Vec<f64>,
    full_sigmas: Option<Vec<f32>>,
    timesteps: Vec<f64>,
    num_steps_after_strength: usize,
    init_noise_sigma: f64,
    x0: Vec<f32>,
    noise: Vec<f32>,
    add_noise: Vec<f32>,
    after_steps: Vec<Vec<f32>>,
    renoised: Vec<Vec<f32>>,
}

fn fixture() -> Fixture {
    let text = std::fs::read_to_string(FIXTURE).expect("scheduler fixture (run generate.py)");
    serde_json::from_str(&text).expect("fixture JSON")
}

fn tensor(values: &[f32], shape: &[i64]) -> Tensor {
    Tensor::from_slice(values).reshape(shape)
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(&t.to_kind(Kind::Float).flatten(0, -1)).expect("float tensor")
}

/// `max |got - want| / max(max |want|, 1)`.
fn rel_diff(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "length");
    let scale = want.iter().fold(1.0_f64, |m, v| m.max(f64::from(v.abs())));
    let diff = got.iter().zip(want).fold(0.0_f64, |m, (g, w)| {
        m.max((f64::from(*g) - f64::from(*w)).abs())
    });
    if got.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    diff / scale
}

fn rel_diff64(got: &[f64], want: &[f64]) -> f64 {
    let g: Vec<f32> = got.iter().map(|&v| v as f32).collect();
    let w: Vec<f32> = want.iter().map(|&v| v as f32).collect();
    rel_diff(&g, &w)
}

/// The fake "UNet" of generate.py: `eps = input * 0.1 + float(t) * 5e-5`.
fn fake_model(input: &Tensor, t: f64) -> Tensor {
    input
        .f_mul_scalar(0.1)
        .unwrap()
        .f_add_scalar(t * 5e-5)
        .unwrap()
}

/// Runs one fixture case; returns the largest relative difference seen.
fn run_case(case: &Case) -> f64 {
    let name = &case.name;
    let mut scheduler = build(case.kind, &case.config, case.steps, case.eta).unwrap();
    let mut worst = rel_diff64(scheduler.timesteps(), &case.full_timesteps);
    // Integer schedules must match exactly; Euler's Karras timesteps are fractional fp32.
    if case.full_timesteps.iter().all(|t| t.fract() == 0.0) {
        assert_eq!(
            scheduler.timesteps(),
            case.full_timesteps.as_slice(),
            "{name}: timesteps"
        );
    }
    if let Some(sigmas) = &case.full_sigmas {
        let got = scheduler.sigmas().expect("scheduler has sigmas");
        worst = worst.max(rel_diff(got, sigmas));
    }
    let (timesteps, remaining) =
        apply_strength(scheduler.as_mut(), case.steps, case.strength).unwrap();
    assert_eq!(
        remaining, case.num_steps_after_strength,
        "{name}: steps after strength"
    );
    worst = worst.max(rel_diff64(&timesteps, &case.timesteps));
    worst = worst
        .max((scheduler.init_noise_sigma() - case.init_noise_sigma).abs() / case.init_noise_sigma);

    let x0 = tensor(&case.x0, &case.shape);
    let noise = tensor(&case.noise, &case.shape);
    let added = scheduler.add_noise(&x0, &noise, timesteps[0]).unwrap();
    worst = worst.max(rel_diff(&values(&added), &case.add_noise));
    let mut latents = if case.strength == 1.0 {
        noise.f_mul_scalar(scheduler.init_noise_sigma()).unwrap()
    } else {
        tensor(&case.add_noise, &case.shape)
    };

    let mut generators = Generators::from_seeds(&case.seeds);
    assert_eq!(
        timesteps.len(),
        case.after_steps.len(),
        "{name}: step count"
    );
    for (i, &t) in timesteps.iter().enumerate() {
        let input = scheduler.scale_model_input(&latents, t).unwrap();
        let eps = fake_model(&input, t);
        latents = scheduler.step(&eps, t, &latents, &mut generators).unwrap();
        let d = rel_diff(&values(&latents), &case.after_steps[i]);
        assert!(
            d <= TOLERANCE,
            "{name}: step {i} (t = {t}) differs by {d:e}"
        );
        worst = worst.max(d);
        if i + 1 < timesteps.len() {
            let renoised = scheduler.add_noise(&x0, &noise, timesteps[i + 1]).unwrap();
            worst = worst.max(rel_diff(&values(&renoised), &case.renoised[i]));
        }
    }
    worst
}

#[test]
fn every_scheduler_matches_diffusers() {
    let fixture = fixture();
    let mut per_kind: Vec<(SchedulerKind, f64)> =
        SchedulerKind::ALL.iter().map(|&k| (k, 0.0)).collect();
    for case in &fixture.cases {
        let worst = run_case(case);
        eprintln!("{:<100} max rel diff {worst:.3e}", case.name);
        assert!(
            worst <= TOLERANCE,
            "{}: max relative difference {worst:e} > {TOLERANCE:e}",
            case.name
        );
        if let Some(entry) = per_kind.iter_mut().find(|(k, _)| *k == case.kind) {
            entry.1 = entry.1.max(worst);
        }
    }
    for (kind, worst) in per_kind {
        eprintln!("{kind:<16} max rel diff over all cases {worst:.3e}");
    }
}

#[test]
fn tch_global_generator_reproduces_torch_generator_streams() {
    for check in fixture().randn_checks {
        // Directly through libtorch's default generator (holding the process-wide lock) ...
        let direct: Vec<Vec<f32>> = with_global_cpu_rng(|| {
            tch::manual_seed(check.seed as i64);
            check
                .shapes
                .iter()
                .map(|s| values(&Tensor::randn(s.as_slice(), (Kind::Float, Device::Cpu))))
                .collect()
        });
        // ... and through CpuGenerator, interleaved with another stream.
        let mut generator = CpuGenerator::new(check.seed);
        let mut other = CpuGenerator::new(check.seed + 1);
        for (i, shape) in check.shapes.iter().enumerate() {
            drop(other.randn_cpu(&[17], Kind::Float).unwrap());
            let drawn = values(&generator.randn_cpu(shape, Kind::Float).unwrap());
            assert_eq!(
                drawn, check.draws[i],
                "seed {} draw {i} via CpuGenerator",
                check.seed
            );
            assert_eq!(
                direct[i], check.draws[i],
                "seed {} draw {i} via tch::manual_seed",
                check.seed
            );
        }
    }
}

#[test]
fn kind_names_round_trip() {
    for kind in SchedulerKind::ALL {
        assert_eq!(kind.as_str().parse::<SchedulerKind>().unwrap(), kind);
        let json = serde_json::to_string(&kind).unwrap();
        assert_eq!(json, format!("\"{kind}\""));
        assert_eq!(serde_json::from_str::<SchedulerKind>(&json).unwrap(), kind);
    }
    assert!("dpm++".parse::<SchedulerKind>().is_err());
}

#[test]
fn sd15_config_parses_and_ignores_unknown_keys() {
    let json = r#"{
        "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": false,
        "num_train_timesteps": 1000, "set_alpha_to_one": false, "skip_prk_steps": true,
        "steps_offset": 1, "trained_betas": null, "some_future_key": [1, 2]
    }"#;
    let config: SchedulerConfig = serde_json::from_str(json).unwrap();
    assert_eq!(config.beta_schedule, Some(BetaSchedule::ScaledLinear));
    assert_eq!(config.trained_betas, None);
    assert_eq!(config.timestep_spacing, None);
    for kind in [SchedulerKind::Pndm, SchedulerKind::Ddim] {
        assert!(build(kind, &config, 10, 0.0).is_ok(), "{kind}");
    }
    let bare = SchedulerConfig::default().with_inpaint_pipeline_fixups();
    assert_eq!(
        (bare.steps_offset, bare.skip_prk_steps),
        (Some(1), Some(true))
    );
}

#[test]
fn strength_cuts_the_schedule_like_get_timesteps() {
    let config = SchedulerConfig {
        steps_offset: Some(1),
        skip_prk_steps: Some(true),
        ..Default::default()
    };
    let mut s = build(SchedulerKind::Ddim, &config, 10, 0.0).unwrap();
    let (ts, n) = apply_strength(s.as_mut(), 10, 0.55).unwrap();
    assert_eq!((ts.len(), n), (5, 5));
    assert!(apply_strength(s.as_mut(), 10, 0.05).is_err());
    assert!(apply_strength(s.as_mut(), 10, 1.5).is_err());
    // PNDM keeps its extra timestep: 11 timesteps for 10 steps.
    let mut s = build(SchedulerKind::Pndm, &config, 10, 0.0).unwrap();
    let (ts, n) = apply_strength(s.as_mut(), 10, 1.0).unwrap();
    assert_eq!((ts.len(), n), (11, 10));
}
