//! The denoising schedulers: one [`Scheduler`] trait, one file per diffusers scheduler, each
//! reproducing its diffusers counterpart number for number (see `tests/parity/schedulers/`).
//!
//! - [`SchedulerKind`] names the schedulers a job may ask for; [`SchedulerConfig`] is a model
//!   folder's `scheduler/scheduler_config.json`; [`build`] turns both into a running scheduler the
//!   way `XScheduler.from_config(config, **kind_kwargs)` + `set_timesteps(n)` does in diffusers.
//! - [`apply_strength`] is the inpainting pipeline's `get_timesteps` (img2img strength).
//! - [`noise`] supplies the Gaussian noise of stochastic steps ([`NoiseSource`]).
//!
//! Timesteps are `f64` for every scheduler: PNDM, DDIM and DPM-Solver schedules are integers
//! (exact in `f64`), Euler schedules are fp32 values (also exact in `f64`). The UNet should get them
//! as fp32, which is what diffusers' timestep embedding computes with (`timesteps.float()`).

pub mod ddim;
pub mod dpm_solver_multistep;
pub mod euler;
pub mod euler_ancestral;
pub mod noise;
pub mod pndm;

mod common;
mod sigmas;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::Tensor;

pub use noise::{CpuGenerator, Generators, NoNoise, NoiseSource, with_global_cpu_rng};

use crate::EngineError;

/// One denoising scheduler, stepped by the pipeline's loop exactly like a diffusers scheduler:
///
/// ```text
/// for t in timesteps:
///     input  = scheduler.scale_model_input(latents, t)
///     output = unet(input, t)           (+ guidance)
///     latents = scheduler.step(output, t, latents, noise)
/// ```
pub trait Scheduler: Send + fmt::Debug {
    /// Which scheduler this is.
    fn kind(&self) -> SchedulerKind;

    /// How many model evaluations one step uses (diffusers' `scheduler.order`; 1 for all here).
    fn order(&self) -> usize {
        1
    }

    /// The whole inference schedule set up by [`build`] (before any strength cut).
    fn timesteps(&self) -> &[f64];

    /// The sigmas of sigma-parameterised schedulers (one more than the timesteps), else `None`.
    fn sigmas(&self) -> Option<&[f32]> {
        None
    }

    /// The factor the initial noise is multiplied with (`latents = noise * init_noise_sigma`):
    /// 1 unless the scheduler says otherwise (the Euler schedulers).
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// diffusers' `set_begin_index`: the index of the first timestep that will be stepped (the
    /// strength cut). A no-op unless the scheduler has one in diffusers (the sigma-based ones;
    /// PNDM and DDIM have none).
    fn set_begin_index(&mut self, begin_index: usize) {
        let _ = begin_index;
    }

    /// Scales the UNet input for timestep `t`: the identity unless the scheduler says otherwise
    /// (the Euler schedulers).
    fn scale_model_input(&mut self, sample: &Tensor, timestep: f64) -> Result<Tensor, EngineError> {
        let _ = timestep;
        Ok(sample.shallow_clone())
    }

    /// One denoising step from `sample` at `timestep`, given the (guided) model output. Stochastic
    /// schedulers draw their noise from `noise`; deterministic ones never touch it.
    fn step(
        &mut self,
        model_output: &Tensor,
        timestep: f64,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor, EngineError>;

    /// Noises `original` to the level of `timestep` (forward diffusion), as the pipeline does for
    /// strength < 1 and for the 4-channel UNet's re-noised image latents. Like diffusers, the
    /// sigma-based schedulers use their begin/step index rather than `timestep` once the pipeline
    /// has set a begin index.
    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        timestep: f64,
    ) -> Result<Tensor, EngineError>;
}

/// The schedulers a job can choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerKind {
    /// `PNDMScheduler` (PLMS, `skip_prk_steps`): SD-1.5's default.
    Pndm,
    /// `DDIMScheduler` (with the job's `eta`).
    Ddim,
    /// `EulerDiscreteScheduler`.
    Euler,
    /// `EulerAncestralDiscreteScheduler` (stochastic).
    EulerAncestral,
    /// `DPMSolverMultistepScheduler` with `algorithm_type="dpmsolver++"`, `solver_order=2`.
    #[serde(rename = "dpmpp_2m")]
    Dpmpp2m,
    /// DPM++ 2M with `use_karras_sigmas=True`.
    #[serde(rename = "dpmpp_2m_karras")]
    Dpmpp2mKarras,
}

impl SchedulerKind {
    /// Every kind, in declaration order.
    pub const ALL: [SchedulerKind; 6] = [
        SchedulerKind::Pndm,
        SchedulerKind::Ddim,
        SchedulerKind::Euler,
        SchedulerKind::EulerAncestral,
        SchedulerKind::Dpmpp2m,
        SchedulerKind::Dpmpp2mKarras,
    ];

    /// The name used in job documents and configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            SchedulerKind::Pndm => "pndm",
            SchedulerKind::Ddim => "ddim",
            SchedulerKind::Euler => "euler",
            SchedulerKind::EulerAncestral => "euler_ancestral",
            SchedulerKind::Dpmpp2m => "dpmpp_2m",
            SchedulerKind::Dpmpp2mKarras => "dpmpp_2m_karras",
        }
    }

    /// The configuration `XScheduler.from_config(config, **kwargs)` ends up with: the keyword
    /// arguments this kind implies override the model folder's values.
    pub fn apply_overrides(self, config: &SchedulerConfig) -> SchedulerConfig {
        let mut config = config.clone();
        match self {
            SchedulerKind::Pndm
            | SchedulerKind::Ddim
            | SchedulerKind::Euler
            | SchedulerKind::EulerAncestral => {}
            SchedulerKind::Dpmpp2m => {
                config.algorithm_type = Some("dpmsolver++".into());
                config.solver_order = Some(2);
            }
            SchedulerKind::Dpmpp2mKarras => {
                config.algorithm_type = Some("dpmsolver++".into());
                config.solver_order = Some(2);
                config.use_karras_sigmas = Some(true);
            }
        }
        config
    }
}

impl fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SchedulerKind {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SchedulerKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = SchedulerKind::ALL
                    .iter()
                    .map(|kind| kind.as_str())
                    .collect();
                EngineError::InvalidInput(format!(
                    "unknown scheduler {s:?}: expected one of {}",
                    names.join(", ")
                ))
            })
    }
}

/// `beta_schedule` of a scheduler config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// `linspace(beta_start, beta_end)`.
    Linear,
    /// `linspace(sqrt(beta_start), sqrt(beta_end)) ** 2` (Stable Diffusion).
    ScaledLinear,
    /// The cosine schedule (`betas_for_alpha_bar`).
    #[serde(rename = "squaredcos_cap_v2")]
    SquaredcosCapV2,
}

/// What the model predicts (`prediction_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    /// The noise (SD-1.5).
    Epsilon,
    /// The velocity `v` (SD-2.x 768).
    VPrediction,
    /// The clean sample (not supported by PNDM, as in diffusers).
    #[serde(alias = "original_sample")]
    Sample,
}

/// How inference timesteps are spread over the training range (`timestep_spacing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    /// `arange(0, n) * (N // n) + steps_offset`.
    Leading,
    /// `round(arange(N, 0, -N / n)) - 1`.
    Trailing,
    /// `round(linspace(0, N - 1, n))`.
    Linspace,
}

/// The sigma after the last step (`final_sigmas_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalSigmasType {
    /// 0: the last step lands on the clean sample.
    Zero,
    /// The smallest training sigma.
    SigmaMin,
}

/// A diffusers `scheduler_config.json`. Every field is optional because each scheduler class has
/// its own default for a missing key (e.g. `timestep_spacing`: `leading` for PNDM/DDIM,
/// `linspace` for Euler/DPM; `clip_sample` and `set_alpha_to_one`: true for DDIM); keys a
/// scheduler does not know are ignored, as `from_config` does. Unknown keys are ignored too:
/// real configs carry `_class_name`, `_diffusers_version` and keys of other schedulers.
/// Deserialize it with any serde format (`serde_json::from_str` for the JSON file).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    /// Length of the training schedule (default 1000).
    pub num_train_timesteps: Option<usize>,
    /// First beta of the training schedule (default 0.0001).
    pub beta_start: Option<f64>,
    /// Last beta of the training schedule (default 0.02).
    pub beta_end: Option<f64>,
    /// How betas go from `beta_start` to `beta_end` (default `linear`).
    pub beta_schedule: Option<BetaSchedule>,
    /// Explicit betas, replacing the schedule.
    pub trained_betas: Option<Vec<f64>>,
    /// What the model predicts (default `epsilon`).
    pub prediction_type: Option<PredictionType>,
    /// How inference timesteps are spread (default per scheduler, see the type doc).
    pub timestep_spacing: Option<TimestepSpacing>,
    /// Offset added to `leading` timesteps (default 0; SD-1.5 ships 1).
    pub steps_offset: Option<i64>,
    /// PNDM/DDIM: the "previous" ᾱ of the last step is 1 instead of ᾱ₀ (default false for PNDM,
    /// true for DDIM).
    pub set_alpha_to_one: Option<bool>,
    /// PNDM: skip the Runge-Kutta warm-up (default false; the inpainting pipeline forces true).
    pub skip_prk_steps: Option<bool>,
    /// DDIM: clip the predicted clean sample (default true).
    pub clip_sample: Option<bool>,
    /// DDIM: the clipping range (default 1.0).
    pub clip_sample_range: Option<f64>,
    /// DDIM/DPM dynamic thresholding (default false; not supported).
    pub thresholding: Option<bool>,
    /// Zero-terminal-SNR rescaling of the betas (default false; not supported).
    pub rescale_betas_zero_snr: Option<bool>,
    /// Euler: sigma interpolation (default `linear`, the only one supported).
    pub interpolation_type: Option<String>,
    /// Euler/DPM: Karras sigmas (default false).
    pub use_karras_sigmas: Option<bool>,
    /// Euler/DPM: exponential sigmas (default false; not supported).
    pub use_exponential_sigmas: Option<bool>,
    /// Euler/DPM: beta sigmas (default false; not supported).
    pub use_beta_sigmas: Option<bool>,
    /// DPM: Lu lambdas (default false; not supported).
    pub use_lu_lambdas: Option<bool>,
    /// DPM: flow-matching sigmas (default false; not supported).
    pub use_flow_sigmas: Option<bool>,
    /// Euler/DPM Karras: lower sigma bound (default: the smallest training sigma).
    pub sigma_min: Option<f64>,
    /// Euler/DPM Karras: upper sigma bound (default: the largest training sigma).
    pub sigma_max: Option<f64>,
    /// Euler: `discrete` (default, the only one supported) or `continuous`.
    pub timestep_type: Option<String>,
    /// Euler/DPM: the sigma after the last step (default `zero`).
    pub final_sigmas_type: Option<FinalSigmasType>,
    /// DPM: multistep order 1-3 (default 2).
    pub solver_order: Option<usize>,
    /// DPM: `dpmsolver++` (default, the only one supported).
    pub algorithm_type: Option<String>,
    /// DPM: `midpoint` (default) or `heun`.
    pub solver_type: Option<String>,
    /// DPM: lower the order at the end of short (< 15 step) schedules (default true).
    pub lower_order_final: Option<bool>,
    /// DPM: first-order last step (default false).
    pub euler_at_final: Option<bool>,
    /// DPM: clip lambda (default -inf, the only one supported).
    pub lambda_min_clipped: Option<f64>,
    /// DPM: learned-variance models (default none; not supported).
    pub variance_type: Option<String>,
}

impl SchedulerConfig {
    /// What `StableDiffusionInpaintPipeline.__init__` does to any scheduler handed to it:
    /// `steps_offset` becomes 1 and `skip_prk_steps` true (every one of these schedulers has a
    /// `steps_offset` parameter, so a missing key counts as its default 0 and is rewritten too).
    pub fn with_inpaint_pipeline_fixups(mut self) -> Self {
        self.steps_offset = Some(1);
        self.skip_prk_steps = Some(true);
        self
    }

    pub(crate) fn num_train_timesteps(&self) -> usize {
        self.num_train_timesteps.unwrap_or(1000)
    }

    pub(crate) fn prediction_type(&self) -> PredictionType {
        self.prediction_type.unwrap_or(PredictionType::Epsilon)
    }

    /// Errors for the options no scheduler here implements.
    pub(crate) fn reject_unsupported(&self) -> Result<(), EngineError> {
        if self.thresholding.unwrap_or(false) {
            return Err(common::config_error("thresholding is not supported"));
        }
        for (name, value) in [
            ("use_exponential_sigmas", self.use_exponential_sigmas),
            ("use_beta_sigmas", self.use_beta_sigmas),
            ("use_lu_lambdas", self.use_lu_lambdas),
            ("use_flow_sigmas", self.use_flow_sigmas),
        ] {
            if value.unwrap_or(false) {
                return Err(common::config_error(format!("{name} is not supported")));
            }
        }
        Ok(())
    }
}

/// Builds `kind` from a model folder's scheduler config and sets up `num_inference_steps`
/// timesteps: `XScheduler.from_config(config, **kind_kwargs).set_timesteps(num_inference_steps)`.
/// `eta` is DDIM's step parameter (the pipeline's `eta`), ignored by the other schedulers, whose
/// `step` takes none in diffusers.
///
/// The inpainting pipeline also rewrites `steps_offset`/`skip_prk_steps`: pass
/// `config.clone().with_inpaint_pipeline_fixups()` to match it.
pub fn build(
    kind: SchedulerKind,
    config: &SchedulerConfig,
    num_inference_steps: usize,
    eta: f64,
) -> Result<Box<dyn Scheduler>, EngineError> {
    if num_inference_steps == 0 {
        return Err(EngineError::InvalidInput(
            "num_inference_steps must be at least 1".into(),
        ));
    }
    let config = kind.apply_overrides(config);
    config.reject_unsupported()?;
    Ok(match kind {
        SchedulerKind::Pndm => Box::new(pndm::PndmScheduler::new(&config, num_inference_steps)?),
        SchedulerKind::Ddim => {
            Box::new(ddim::DdimScheduler::new(&config, num_inference_steps, eta)?)
        }
        SchedulerKind::Euler => Box::new(euler::EulerDiscreteScheduler::new(
            &config,
            num_inference_steps,
        )?),
        SchedulerKind::EulerAncestral => Box::new(
            euler_ancestral::EulerAncestralDiscreteScheduler::new(&config, num_inference_steps)?,
        ),
        SchedulerKind::Dpmpp2m | SchedulerKind::Dpmpp2mKarras => {
            Box::new(dpm_solver_multistep::DpmSolverMultistepScheduler::new(
                kind,
                &config,
                num_inference_steps,
            )?)
        }
    })
}

/// The inpainting pipeline's `get_timesteps(num_inference_steps, strength)`: keeps the last
/// `int(steps * strength)` steps, tells the scheduler where it begins, and returns the timesteps to
/// run and how many steps that is. `num_inference_steps` is the count the scheduler was built
/// with (PNDM's schedule has one timestep more than that, as in diffusers).
pub fn apply_strength(
    scheduler: &mut dyn Scheduler,
    num_inference_steps: usize,
    strength: f64,
) -> Result<(Vec<f64>, usize), EngineError> {
    if !(0.0..=1.0).contains(&strength) {
        return Err(EngineError::InvalidInput(format!(
            "strength must be in [0, 1], got {strength}"
        )));
    }
    // Python's int() truncates toward zero, as `as` does for these non-negative values.
    let init_timestep = ((num_inference_steps as f64 * strength) as usize).min(num_inference_steps);
    let t_start = num_inference_steps - init_timestep;
    let remaining = num_inference_steps - t_start;
    if remaining < 1 {
        return Err(EngineError::InvalidInput(format!(
            "strength {strength} leaves {remaining} of {num_inference_steps} steps; at least 1 is needed"
        )));
    }
    let begin = t_start * scheduler.order();
    let timesteps = scheduler.timesteps().get(begin..).unwrap_or(&[]).to_vec();
    scheduler.set_begin_index(begin);
    Ok((timesteps, remaining))
}

#[cfg(test)]
mod tests;
