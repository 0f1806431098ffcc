//! `DDIMScheduler`: denoising diffusion implicit models, deterministic at `eta = 0` and adding
//! `eta`-scaled fresh noise (drawn from the caller's [`NoiseSource`]) at `eta > 0`.

use tch::Tensor;

use super::common::{self, config_error};
use super::{NoiseSource, PredictionType, Scheduler, SchedulerConfig, SchedulerKind};
use crate::EngineError;

/// diffusers' `DDIMScheduler` (no thresholding, no zero-SNR rescaling).
#[derive(Debug)]
pub struct DdimScheduler {
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    prediction_type: PredictionType,
    /// `Some(range)` when the predicted clean sample is clipped to `[-range, range]`.
    clip_sample_range: Option<f32>,
    num_train_timesteps: usize,
    num_inference_steps: usize,
    eta: f64,
    timesteps: Vec<f64>,
}

impl DdimScheduler {
    /// `DDIMScheduler.from_config(config)` + `set_timesteps(num_inference_steps)`; `eta` is the
    /// pipeline's `eta`, passed to every `step`.
    pub fn new(
        config: &SchedulerConfig,
        num_inference_steps: usize,
        eta: f64,
    ) -> Result<Self, EngineError> {
        if !eta.is_finite() || eta < 0.0 {
            return Err(EngineError::InvalidInput(format!(
                "eta must be a finite number >= 0, got {eta}"
            )));
        }
        let n = config.num_train_timesteps();
        if num_inference_steps > n {
            return Err(EngineError::InvalidInput(format!(
                "num_inference_steps {num_inference_steps} exceeds num_train_timesteps {n}"
            )));
        }
        let alphas_cumprod = common::alphas_cumprod(config)?;
        // DDIM's defaults differ from PNDM's: set_alpha_to_one and clip_sample default to true.
        let final_alpha_cumprod = if config.set_alpha_to_one.unwrap_or(true) {
            1.0
        } else {
            alphas_cumprod[0]
        };
        let clip_sample_range = if config.clip_sample.unwrap_or(true) {
            Some(config.clip_sample_range.unwrap_or(1.0) as f32)
        } else {
            None
        };
        let timesteps = common::ddpm_timesteps(config, num_inference_steps);
        if let Some(bad) = timesteps.iter().find(|&&t| t < 0 || t >= n as i64) {
            return Err(config_error(format!(
                "DDIM timestep {bad} falls outside 0..{n}"
            )));
        }
        Ok(Self {
            alphas_cumprod,
            final_alpha_cumprod,
            prediction_type: config.prediction_type(),
            clip_sample_range,
            num_train_timesteps: n,
            num_inference_steps,
            eta,
            timesteps: timesteps.into_iter().map(|t| t as f64).collect(),
        })
    }
}

impl Scheduler for DdimScheduler {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Ddim
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    // init_noise_sigma, set_begin_index and scale_model_input: the trait's defaults (1, none:
    // every step is computed from its timestep alone, the identity).

    fn step(
        &mut self,
        model_output: &Tensor,
        timestep: f64,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor, EngineError> {
        let t = common::train_index(timestep, self.num_train_timesteps)?;
        let prev_t = t as i64 - (self.num_train_timesteps / self.num_inference_steps) as i64;
        // All scalar coefficients are fp32, as diffusers' 0-dim fp32 tensors are.
        let alpha_prod_t = self.alphas_cumprod[t];
        let alpha_prod_t_prev = match usize::try_from(prev_t) {
            Ok(prev) => self.alphas_cumprod[prev],
            Err(_) => self.final_alpha_cumprod,
        };
        let beta_prod_t = 1.0 - alpha_prod_t;
        let (mut pred_original, pred_epsilon) = match self.prediction_type {
            PredictionType::Epsilon => (
                sample
                    .f_sub(&common::scale(model_output, beta_prod_t.sqrt())?)?
                    .f_div_scalar(f64::from(alpha_prod_t.sqrt()))?,
                model_output.shallow_clone(),
            ),
            PredictionType::Sample => (
                model_output.shallow_clone(),
                sample
                    .f_sub(&common::scale(model_output, alpha_prod_t.sqrt())?)?
                    .f_div_scalar(f64::from(beta_prod_t.sqrt()))?,
            ),
            PredictionType::VPrediction => (
                common::scale(sample, alpha_prod_t.sqrt())?
                    .f_sub(&common::scale(model_output, beta_prod_t.sqrt())?)?,
                common::axpby(
                    alpha_prod_t.sqrt(),
                    model_output,
                    beta_prod_t.sqrt(),
                    sample,
                )?,
            ),
        };
        if let Some(range) = self.clip_sample_range {
            pred_original = pred_original.f_clamp(-f64::from(range), f64::from(range))?;
        }
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let variance = (beta_prod_t_prev / beta_prod_t) * (1.0 - alpha_prod_t / alpha_prod_t_prev);
        let std_dev_t = self.eta as f32 * variance.sqrt();
        let direction = common::scale(
            &pred_epsilon,
            (1.0 - alpha_prod_t_prev - std_dev_t * std_dev_t).sqrt(),
        )?;
        let mut prev =
            common::scale(&pred_original, alpha_prod_t_prev.sqrt())?.f_add(&direction)?;
        if self.eta > 0.0 {
            let variance_noise = noise.randn(
                &model_output.size(),
                model_output.kind(),
                model_output.device(),
            )?;
            prev = prev.f_add(&common::scale(&variance_noise, std_dev_t)?)?;
        }
        Ok(prev)
    }

    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        timestep: f64,
    ) -> Result<Tensor, EngineError> {
        common::ddpm_add_noise(&self.alphas_cumprod, original, noise, timestep)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::schedulers::{BetaSchedule, NoNoise, TimestepSpacing, build};

    fn sd15() -> SchedulerConfig {
        SchedulerConfig {
            beta_start: Some(0.00085),
            beta_end: Some(0.012),
            beta_schedule: Some(BetaSchedule::ScaledLinear),
            set_alpha_to_one: Some(false),
            clip_sample: Some(false),
            steps_offset: Some(1),
            ..SchedulerConfig::default()
        }
    }

    #[test]
    fn leading_and_trailing_timesteps() {
        let s = build(SchedulerKind::Ddim, &sd15(), 4, 0.0).unwrap();
        assert_eq!(s.timesteps(), &[751.0, 501.0, 251.0, 1.0]);
        let trailing = SchedulerConfig {
            timestep_spacing: Some(TimestepSpacing::Trailing),
            ..sd15()
        };
        let s = build(SchedulerKind::Ddim, &trailing, 4, 0.0).unwrap();
        assert_eq!(s.timesteps(), &[999.0, 749.0, 499.0, 249.0]);
    }

    #[test]
    fn eta_zero_never_asks_for_noise_and_eta_positive_does() {
        let x = Tensor::ones([1, 4, 2, 2], (tch::Kind::Float, tch::Device::Cpu));
        let mut s = build(SchedulerKind::Ddim, &sd15(), 4, 0.0).unwrap();
        assert!(s.step(&x, 751.0, &x, &mut NoNoise).is_ok());
        let mut s = build(SchedulerKind::Ddim, &sd15(), 4, 0.5).unwrap();
        assert!(s.step(&x, 751.0, &x, &mut NoNoise).is_err());
        assert!(build(SchedulerKind::Ddim, &sd15(), 4, -1.0).is_err());
    }
}
