//! `EulerAncestralDiscreteScheduler`: Euler steps down to `sigma_down`, plus fresh noise of scale
//! `sigma_up` drawn from the caller's [`NoiseSource`] at every step (the last one included, as
//! diffusers draws it even when `sigma_up` is 0 — that keeps the random streams aligned).

use tch::Tensor;

use super::common;
use super::euler::{
    euler_add_noise, euler_init_noise_sigma, euler_pred_original, euler_scale_model_input,
    euler_timesteps,
};
use super::sigmas::{SigmaSchedule, UnknownTimestep};
use super::{
    NoiseSource, PredictionType, Scheduler, SchedulerConfig, SchedulerKind, TimestepSpacing,
};
use crate::EngineError;

/// diffusers' `EulerAncestralDiscreteScheduler`.
#[derive(Debug)]
pub struct EulerAncestralDiscreteScheduler {
    prediction_type: PredictionType,
    init_noise_sigma: f64,
    schedule: SigmaSchedule,
}

impl EulerAncestralDiscreteScheduler {
    /// `EulerAncestralDiscreteScheduler.from_config(config)` + `set_timesteps(num_inference_steps)`.
    /// (The class has no Karras or final-sigma options: those config keys are ignored, as in
    /// diffusers.)
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize) -> Result<Self, EngineError> {
        let alphas_cumprod = common::alphas_cumprod(config)?;
        let train_sigmas = common::train_sigmas(&alphas_cumprod);
        let timesteps32 = euler_timesteps(config, num_inference_steps);
        let mut sigmas: Vec<f32> = timesteps32
            .iter()
            .map(|&t| common::interp_index(f64::from(t), &train_sigmas) as f32)
            .collect();
        sigmas.push(0.0);
        let spacing = config.timestep_spacing.unwrap_or(TimestepSpacing::Linspace);
        Ok(Self {
            prediction_type: config.prediction_type(),
            init_noise_sigma: euler_init_noise_sigma(&sigmas, spacing),
            schedule: SigmaSchedule::new(
                timesteps32.into_iter().map(f64::from).collect(),
                sigmas,
                UnknownTimestep::Error,
            ),
        })
    }
}

impl Scheduler for EulerAncestralDiscreteScheduler {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::EulerAncestral
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
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor, EngineError> {
        let index = self.schedule.current(timestep)?;
        let sigma = self.schedule.sigma(index)?;
        let sigma_to = self.schedule.sigma(index + 1)?;
        let sample = common::to_f32(sample)?;
        let pred_original =
            euler_pred_original(self.prediction_type, model_output, &sample, sigma)?;
        // fp32 scalar arithmetic in diffusers' order.
        let sigma_from = sigma;
        let sigma_up = (sigma_to * sigma_to * (sigma_from * sigma_from - sigma_to * sigma_to)
            / (sigma_from * sigma_from))
            .sqrt();
        let sigma_down = (sigma_to * sigma_to - sigma_up * sigma_up).sqrt();
        let derivative = sample
            .f_sub(&pred_original)?
            .f_div_scalar(f64::from(sigma))?;
        let dt = sigma_down - sigma;
        let prev = sample.f_add(&common::scale(&derivative, dt)?)?;
        let fresh = noise.randn(
            &model_output.size(),
            model_output.kind(),
            model_output.device(),
        )?;
        let prev = prev.f_add(&common::scale(&fresh, sigma_up)?)?;
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
    use crate::schedulers::{CpuGenerator, NoNoise, build};

    #[test]
    fn every_step_draws_noise() {
        let config = SchedulerConfig::default();
        let mut s = build(SchedulerKind::EulerAncestral, &config, 2, 0.0).unwrap();
        let x = Tensor::zeros([1, 4, 2, 2], (tch::Kind::Float, tch::Device::Cpu));
        assert!(s.step(&x, 999.0, &x, &mut NoNoise).is_err());
        let mut s = build(SchedulerKind::EulerAncestral, &config, 2, 0.0).unwrap();
        let mut generator = CpuGenerator::new(3);
        assert!(s.step(&x, 999.0, &x, &mut generator).is_ok());
        // The last step (sigma_to = 0) still draws, keeping the stream aligned with diffusers.
        assert!(s.step(&x, 0.0, &x, &mut NoNoise).is_err());
    }
}
