//! `PNDMScheduler` in its PLMS form (`skip_prk_steps=True`, what Stable Diffusion and the
//! inpainting pipeline use): a 4th-order linear multistep method on the model's noise predictions,
//! warmed up with one extra evaluation at the first timestep.
//!
//! The Runge-Kutta warm-up (`skip_prk_steps=False`) is not implemented: the inpainting pipeline
//! rewrites the config to `skip_prk_steps=True` anyway (see
//! [`SchedulerConfig::with_inpaint_pipeline_fixups`]), so such a config is rejected.

use tch::Tensor;

use super::common::{self, config_error};
use super::{NoiseSource, PredictionType, Scheduler, SchedulerConfig, SchedulerKind};
use crate::EngineError;

/// diffusers' `PNDMScheduler` with `skip_prk_steps=True`.
#[derive(Debug)]
pub struct PndmScheduler {
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    prediction_type: PredictionType,
    num_train_timesteps: usize,
    num_inference_steps: usize,
    timesteps: Vec<f64>,
    /// Model outputs of the previous steps (at most 4), oldest first.
    ets: Vec<Tensor>,
    /// The sample of the first step, reused by the warm-up second evaluation.
    cur_sample: Option<Tensor>,
    counter: usize,
}

impl PndmScheduler {
    /// `PNDMScheduler.from_config(config)` + `set_timesteps(num_inference_steps)`.
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize) -> Result<Self, EngineError> {
        if !config.skip_prk_steps.unwrap_or(false) {
            return Err(config_error(
                "PNDM with skip_prk_steps=false (Runge-Kutta warm-up) is not supported; the inpainting \
                 pipeline sets skip_prk_steps=true",
            ));
        }
        let prediction_type = config.prediction_type();
        if prediction_type == PredictionType::Sample {
            return Err(config_error(
                "PNDM supports prediction_type epsilon or v_prediction",
            ));
        }
        let n = config.num_train_timesteps();
        if num_inference_steps < 2 || num_inference_steps > n {
            // The PLMS schedule repeats the second-to-last timestep: it needs 2 or more steps.
            return Err(EngineError::InvalidInput(format!(
                "PNDM needs 2..={n} inference steps, got {num_inference_steps}"
            )));
        }
        let alphas_cumprod = common::alphas_cumprod(config)?;
        let final_alpha_cumprod = if config.set_alpha_to_one.unwrap_or(false) {
            1.0
        } else {
            alphas_cumprod[0]
        };
        // `_timesteps` of `set_timesteps` (ascending), then
        // plms_timesteps = concat(ts[:-1], ts[-2:-1], ts[-1:])[::-1]
        let mut base = common::ddpm_timesteps(config, num_inference_steps);
        base.reverse();
        let k = base.len();
        let mut plms: Vec<i64> = base[..k - 1].to_vec();
        plms.push(base[k - 2]);
        plms.push(base[k - 1]);
        plms.reverse();
        Ok(Self {
            alphas_cumprod,
            final_alpha_cumprod,
            prediction_type,
            num_train_timesteps: n,
            num_inference_steps,
            timesteps: plms.into_iter().map(|t| t as f64).collect(),
            ets: Vec::new(),
            cur_sample: None,
            counter: 0,
        })
    }

    fn alpha_prod(&self, timestep: i64) -> Result<f32, EngineError> {
        let index = usize::try_from(timestep)
            .ok()
            .filter(|&i| i < self.alphas_cumprod.len())
            .ok_or_else(|| {
                EngineError::InvalidInput(format!("PNDM timestep {timestep} out of range"))
            })?;
        Ok(self.alphas_cumprod[index])
    }

    /// Formula (9) of the PNDM paper (`_get_prev_sample`), with diffusers' fp32 coefficient order.
    fn prev_sample(
        &self,
        sample: &Tensor,
        timestep: i64,
        prev_timestep: i64,
        model_output: &Tensor,
    ) -> Result<Tensor, EngineError> {
        let alpha_prod_t = self.alpha_prod(timestep)?;
        let alpha_prod_t_prev = if prev_timestep >= 0 {
            self.alpha_prod(prev_timestep)?
        } else {
            self.final_alpha_cumprod
        };
        let beta_prod_t = 1.0 - alpha_prod_t;
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let model_output = match self.prediction_type {
            PredictionType::VPrediction => common::axpby(
                alpha_prod_t.sqrt(),
                model_output,
                beta_prod_t.sqrt(),
                sample,
            )?,
            _ => model_output.shallow_clone(),
        };
        let sample_coeff = (alpha_prod_t_prev / alpha_prod_t).sqrt();
        let denom = alpha_prod_t * beta_prod_t_prev.sqrt()
            + (alpha_prod_t * beta_prod_t * alpha_prod_t_prev).sqrt();
        // sample_coeff * sample - (a_prev - a) * model_output / denom
        let update = common::scale(&model_output, alpha_prod_t_prev - alpha_prod_t)?
            .f_div_scalar(f64::from(denom))?;
        Ok(common::scale(sample, sample_coeff)?.f_sub(&update)?)
    }
}

impl Scheduler for PndmScheduler {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Pndm
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    // init_noise_sigma, set_begin_index and scale_model_input: the trait's defaults (1, none:
    // the state is the step counter alone, the identity).

    fn step(
        &mut self,
        model_output: &Tensor,
        timestep: f64,
        sample: &Tensor,
        _noise: &mut dyn NoiseSource,
    ) -> Result<Tensor, EngineError> {
        let timestep = common::train_index(timestep, self.num_train_timesteps)? as i64;
        let delta = (self.num_train_timesteps / self.num_inference_steps) as i64;
        let (mut timestep, mut prev_timestep) = (timestep, timestep - delta);
        if self.counter != 1 {
            if self.ets.len() > 3 {
                drop(self.ets.remove(0));
            }
            self.ets.push(model_output.shallow_clone());
        } else {
            // The warm-up's second evaluation re-runs the first interval from its start.
            prev_timestep = timestep;
            timestep += delta;
        }
        let mut sample = sample.shallow_clone();
        let e = &self.ets;
        let model_output = match (e.len(), self.counter) {
            (1, 0) => {
                self.cur_sample = Some(sample.shallow_clone());
                model_output.shallow_clone()
            }
            (1, 1) => {
                sample = self.cur_sample.take().ok_or_else(|| {
                    EngineError::InvalidInput("PNDM warm-up step without a first step".into())
                })?;
                model_output.f_add(&e[0])?.f_div_scalar(2)?
            }
            (2, _) => e[1].f_mul_scalar(3)?.f_sub(&e[0])?.f_div_scalar(2)?,
            (3, _) => e[2]
                .f_mul_scalar(23)?
                .f_sub(&e[1].f_mul_scalar(16)?)?
                .f_add(&e[0].f_mul_scalar(5)?)?
                .f_div_scalar(12)?,
            (4, _) => e[3]
                .f_mul_scalar(55)?
                .f_sub(&e[2].f_mul_scalar(59)?)?
                .f_add(&e[1].f_mul_scalar(37)?)?
                .f_sub(&e[0].f_mul_scalar(9)?)?
                .f_mul_scalar(1.0 / 24.0)?,
            (len, counter) => {
                return Err(EngineError::InvalidInput(format!(
                    "PNDM state out of order: {len} stored outputs at step {counter}"
                )));
            }
        };
        let prev = self.prev_sample(&sample, timestep, prev_timestep, &model_output)?;
        self.counter += 1;
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
    use crate::schedulers::{NoNoise, build};

    fn sd15() -> SchedulerConfig {
        SchedulerConfig {
            beta_start: Some(0.00085),
            beta_end: Some(0.012),
            beta_schedule: Some(super::super::BetaSchedule::ScaledLinear),
            set_alpha_to_one: Some(false),
            skip_prk_steps: Some(true),
            steps_offset: Some(1),
            ..SchedulerConfig::default()
        }
    }

    #[test]
    fn plms_schedule_repeats_the_second_timestep() {
        let s = build(SchedulerKind::Pndm, &sd15(), 4, 0.0).unwrap();
        assert_eq!(s.timesteps(), &[751.0, 501.0, 501.0, 251.0, 1.0]);
        assert_eq!(s.init_noise_sigma(), 1.0);
    }

    #[test]
    fn rejects_prk_and_too_few_steps() {
        let mut config = sd15();
        config.skip_prk_steps = None;
        assert!(build(SchedulerKind::Pndm, &config, 4, 0.0).is_err());
        assert!(
            build(
                SchedulerKind::Pndm,
                &config.with_inpaint_pipeline_fixups(),
                4,
                0.0
            )
            .is_ok()
        );
        assert!(build(SchedulerKind::Pndm, &sd15(), 1, 0.0).is_err());
    }

    #[test]
    fn step_rejects_a_timestep_outside_training() {
        let mut s = build(SchedulerKind::Pndm, &sd15(), 4, 0.0).unwrap();
        let x = Tensor::zeros([1, 4, 2, 2], (tch::Kind::Float, tch::Device::Cpu));
        assert!(s.step(&x, 1000.0, &x, &mut NoNoise).is_err());
        assert!(s.step(&x, 751.0, &x, &mut NoNoise).is_ok());
    }
}
