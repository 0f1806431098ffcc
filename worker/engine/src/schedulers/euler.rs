//! `EulerDiscreteScheduler` (deterministic Euler steps in sigma space, optionally on Karras
//! sigmas), and the arithmetic it shares with `EulerAncestralDiscreteScheduler` (schedule,
//! `init_noise_sigma`, input scaling, clean-sample prediction, `add_noise`).

use tch::Tensor;

use super::common::{self, config_error};
use super::sigmas::{SigmaSchedule, UnknownTimestep};
use super::{
    FinalSigmasType, NoiseSource, PredictionType, Scheduler, SchedulerConfig, SchedulerKind,
    TimestepSpacing,
};
use crate::EngineError;

/// The inference timesteps (fp32) of `EulerDiscreteScheduler`/`EulerAncestralDiscreteScheduler`
/// before any Karras conversion, in stepping order.
pub(crate) fn euler_timesteps(config: &SchedulerConfig, steps: usize) -> Vec<f32> {
    let n = config.num_train_timesteps();
    match config.timestep_spacing.unwrap_or(TimestepSpacing::Linspace) {
        TimestepSpacing::Linspace => common::linspace(0.0, (n - 1) as f64, steps)
            .into_iter()
            .rev()
            .map(|t| t as f32)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = (n / steps) as f64;
            let offset = config.steps_offset.unwrap_or(0) as f32;
            (0..steps)
                .rev()
                .map(|i| (i as f64 * ratio).round_ties_even() as f32 + offset)
                .collect()
        }
        TimestepSpacing::Trailing => common::arange(n as f64, 0.0, -(n as f64 / steps as f64))
            .into_iter()
            .map(|t| t.round_ties_even() as f32 - 1.0)
            .collect(),
    }
}

/// `init_noise_sigma` of the Euler schedulers: the largest sigma, or `sqrt(max² + 1)` for
/// `leading` spacing (fp32, as diffusers' tensor arithmetic).
pub(crate) fn euler_init_noise_sigma(sigmas: &[f32], spacing: TimestepSpacing) -> f64 {
    let max = sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    match spacing {
        TimestepSpacing::Linspace | TimestepSpacing::Trailing => f64::from(max),
        TimestepSpacing::Leading => f64::from((max * max + 1.0).sqrt()),
    }
}

/// `sample / sqrt(sigma² + 1)` at the current step, the Euler schedulers' input scaling.
pub(crate) fn euler_scale_model_input(
    schedule: &mut SigmaSchedule,
    sample: &Tensor,
    timestep: f64,
) -> Result<Tensor, EngineError> {
    let index = schedule.current(timestep)?;
    let sigma = schedule.sigma(index)?;
    Ok(sample.f_div_scalar(f64::from((sigma * sigma + 1.0).sqrt()))?)
}

/// The clean-sample prediction of the Euler schedulers (`sample` already fp32).
pub(crate) fn euler_pred_original(
    prediction_type: PredictionType,
    model_output: &Tensor,
    sample: &Tensor,
    sigma: f32,
) -> Result<Tensor, EngineError> {
    Ok(match prediction_type {
        PredictionType::Epsilon => sample.f_sub(&common::scale(model_output, sigma)?)?,
        PredictionType::VPrediction => {
            let c_out = -sigma / (sigma * sigma + 1.0).sqrt();
            common::scale(model_output, c_out)?
                .f_add(&sample.f_div_scalar(f64::from(sigma * sigma + 1.0))?)?
        }
        PredictionType::Sample => model_output.shallow_clone(),
    })
}

/// `original + noise * sigma` with sigma cast to the sample's dtype (Euler `add_noise`).
pub(crate) fn euler_add_noise(
    schedule: &SigmaSchedule,
    original: &Tensor,
    noise: &Tensor,
    timestep: f64,
) -> Result<Tensor, EngineError> {
    let sigma = schedule.sigma(schedule.for_add_noise(timestep)?)?;
    let sigma = common::as_kind(sigma, original.kind())?;
    Ok(original.f_add(&noise.f_mul_scalar(sigma)?)?)
}

/// diffusers' `EulerDiscreteScheduler` without churn (`s_churn = 0`, the pipeline's default).
#[derive(Debug)]
pub struct EulerDiscreteScheduler {
    prediction_type: PredictionType,
    init_noise_sigma: f64,
    schedule: SigmaSchedule,
}

impl EulerDiscreteScheduler {
    /// `EulerDiscreteScheduler.from_config(config)` + `set_timesteps(num_inference_steps)`.
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize) -> Result<Self, EngineError> {
        if config
            .interpolation_type
            .as_deref()
            .is_some_and(|t| t != "linear")
        {
            return Err(config_error(
                "Euler supports interpolation_type \"linear\" only",
            ));
        }
        if config
            .timestep_type
            .as_deref()
            .is_some_and(|t| t != "discrete")
        {
            return Err(config_error(
                "Euler supports timestep_type \"discrete\" only",
            ));
        }
        let alphas_cumprod = common::alphas_cumprod(config)?;
        let train_sigmas = common::train_sigmas(&alphas_cumprod);
        let timesteps32 = euler_timesteps(config, num_inference_steps);
        // np.interp of the fp32 training sigmas at the (fp32) timesteps, in f64.
        let mut sigmas64: Vec<f64> = timesteps32
            .iter()
            .map(|&t| common::interp_index(f64::from(t), &train_sigmas))
            .collect();
        let mut timesteps: Vec<f64> = timesteps32.iter().map(|&t| f64::from(t)).collect();
        if config.use_karras_sigmas.unwrap_or(false) {
            let log_sigmas: Vec<f32> = train_sigmas.iter().map(|s| s.ln()).collect();
            let sigma_min = config.sigma_min.unwrap_or(sigmas64[sigmas64.len() - 1]);
            let sigma_max = config.sigma_max.unwrap_or(sigmas64[0]);
            sigmas64 = common::karras_sigmas(sigma_min, sigma_max, num_inference_steps);
            // The timesteps become fractional; the UNet receives them as fp32.
            timesteps = sigmas64
                .iter()
                .map(|&s| f64::from(common::sigma_to_t(s, &log_sigmas) as f32))
                .collect();
        }
        let last = match config.final_sigmas_type.unwrap_or(FinalSigmasType::Zero) {
            FinalSigmasType::Zero => 0.0,
            FinalSigmasType::SigmaMin => train_sigmas[0],
        };
        let mut sigmas: Vec<f32> = sigmas64.iter().map(|&s| s as f32).collect();
        sigmas.push(last);
        let spacing = config.timestep_spacing.unwrap_or(TimestepSpacing::Linspace);
        Ok(Self {
            prediction_type: config.prediction_type(),
            init_noise_sigma: euler_init_noise_sigma(&sigmas, spacing),
            schedule: SigmaSchedule::new(timesteps, sigmas, UnknownTimestep::Error),
        })
    }
}

impl Scheduler for EulerDiscreteScheduler {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Euler
    }

    fn timesteps(&self) -> &[f64] {
        self.schedule.timesteps()
    }

    fn sigmas(&self) -> Option<&[f32]> {
        Some(self.schedule.sigmas())
    }

    fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    fn set_begin_index(&mut self, begin_index: usize) {
        self.schedule.set_begin_index(begin_index);
    }

    fn scale_model_input(&mut self, sample: &Tensor, timestep: f64) -> Result<Tensor, EngineError> {
        euler_scale_model_input(&mut self.schedule, sample, timestep)
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        timestep: f64,
        sample: &Tensor,
        _noise: &mut dyn NoiseSource,
    ) -> Result<Tensor, EngineError> {
        let index = self.schedule.current(timestep)?;
        let sigma = self.schedule.sigma(index)?;
        let sigma_next = self.schedule.sigma(index + 1)?;
        let sample = common::to_f32(sample)?;
        // gamma = 0 without churn, so sigma_hat = sigma * (0 + 1) = sigma.
        let sigma_hat = sigma;
        let pred_original =
            euler_pred_original(self.prediction_type, model_output, &sample, sigma_hat)?;
        let derivative = sample
            .f_sub(&pred_original)?
            .f_div_scalar(f64::from(sigma_hat))?;
        let dt = sigma_next - sigma_hat;
        let prev = sample.f_add(&common::scale(&derivative, dt)?)?;
        self.schedule.advance(index);
        Ok(prev.f_to_kind(model_output.kind())?)
    }

    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        timestep: f64,
    ) -> Result<Tensor, EngineError> {
        euler_add_noise(&self.schedule, original, noise, timestep)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::schedulers::{BetaSchedule, NoNoise, build};

    fn sd15() -> SchedulerConfig {
        SchedulerConfig {
            beta_start: Some(0.00085),
            beta_end: Some(0.012),
            beta_schedule: Some(BetaSchedule::ScaledLinear),
            steps_offset: Some(1),
            ..SchedulerConfig::default()
        }
    }

    #[test]
    fn linspace_schedule_and_sigmas() {
        let s = build(SchedulerKind::Euler, &sd15(), 4, 0.0).unwrap();
        assert_eq!(s.timesteps(), &[999.0, 666.0, 333.0, 0.0]);
        let sigmas = s.sigmas().unwrap();
        assert_eq!(sigmas.len(), 5);
        assert_eq!(sigmas[4], 0.0);
        assert!((s.init_noise_sigma() - 14.614647).abs() < 1e-5);
    }

    #[test]
    fn unknown_timestep_without_begin_index_is_an_error() {
        let mut s = build(SchedulerKind::Euler, &sd15(), 4, 0.0).unwrap();
        let x = Tensor::zeros([1, 4, 2, 2], (tch::Kind::Float, tch::Device::Cpu));
        assert!(s.scale_model_input(&x, 500.0).is_err());
        assert!(s.step(&x, 999.0, &x, &mut NoNoise).is_ok());
        assert!(s.step(&x, 666.0, &x, &mut NoNoise).is_ok());
    }
}
