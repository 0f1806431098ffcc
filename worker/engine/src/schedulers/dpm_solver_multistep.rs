//! `DPMSolverMultistepScheduler` with `algorithm_type="dpmsolver++"`: DPM-Solver++ multistep
//! (orders 1-3, midpoint or Heun second-order update), on the plain or Karras sigma schedule.
//! `dpmpp_2m` and `dpmpp_2m_karras` are this scheduler with `solver_order=2`.

use tch::Tensor;

use super::common::{self, config_error};
use super::sigmas::{SigmaSchedule, UnknownTimestep};
use super::{
    FinalSigmasType, NoiseSource, PredictionType, Scheduler, SchedulerConfig, SchedulerKind,
    TimestepSpacing,
};
use crate::EngineError;

/// The second-order update formula (`solver_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SolverType {
    Midpoint,
    Heun,
}

/// diffusers' `DPMSolverMultistepScheduler` (deterministic `dpmsolver++` only).
#[derive(Debug)]
pub struct DpmSolverMultistepScheduler {
    kind: SchedulerKind,
    prediction_type: PredictionType,
    solver_order: usize,
    solver_type: SolverType,
    lower_order_final: bool,
    euler_at_final: bool,
    final_sigmas_zero: bool,
    schedule: SigmaSchedule,
    /// The converted (x0) model outputs of the last `solver_order` steps, oldest first.
    model_outputs: Vec<Option<Tensor>>,
    lower_order_nums: usize,
}

/// `_sigma_to_alpha_sigma_t`: (alpha_t, sigma_t) = (1 / sqrt(σ² + 1), σ · alpha_t), in fp32.
fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// log(alpha) - log(sigma) (infinite for the final sigma 0, which the formulas absorb as diffusers').
fn lambda(alpha: f32, sigma: f32) -> f32 {
    alpha.ln() - sigma.ln()
}

impl DpmSolverMultistepScheduler {
    /// `DPMSolverMultistepScheduler.from_config(config)` + `set_timesteps(num_inference_steps)`.
    /// `kind` only labels the scheduler; `config` already carries the kind's overrides.
    pub fn new(
        kind: SchedulerKind,
        config: &SchedulerConfig,
        num_inference_steps: usize,
    ) -> Result<Self, EngineError> {
        let algorithm = config.algorithm_type.as_deref().unwrap_or("dpmsolver++");
        if algorithm != "dpmsolver++" {
            return Err(config_error(format!(
                "DPM-Solver algorithm_type {algorithm:?} is not supported (dpmsolver++ is)"
            )));
        }
        let solver_type = match config.solver_type.as_deref().unwrap_or("midpoint") {
            // diffusers maps the UniPC/DEIS names onto midpoint.
            "midpoint" | "logrho" | "bh1" | "bh2" => SolverType::Midpoint,
            "heun" => SolverType::Heun,
            other => return Err(config_error(format!("unknown solver_type {other:?}"))),
        };
        let solver_order = config.solver_order.unwrap_or(2);
        if !(1..=3).contains(&solver_order) {
            return Err(config_error(format!(
                "solver_order must be 1, 2 or 3, got {solver_order}"
            )));
        }
        if config.variance_type.is_some() {
            return Err(config_error("learned variance_type is not supported"));
        }
        if config.lambda_min_clipped.is_some_and(f64::is_finite) {
            return Err(config_error("a finite lambda_min_clipped is not supported"));
        }
        let n = config.num_train_timesteps();
        let alphas_cumprod = common::alphas_cumprod(config)?;
        let train_sigmas = common::train_sigmas(&alphas_cumprod);
        let steps = num_inference_steps;
        // last_timestep = num_train_timesteps without lambda clipping.
        let last_timestep = n;
        let mut timesteps: Vec<i64> =
            match config.timestep_spacing.unwrap_or(TimestepSpacing::Linspace) {
                TimestepSpacing::Linspace => {
                    let mut ts: Vec<i64> =
                        common::linspace(0.0, (last_timestep - 1) as f64, steps + 1)
                            .into_iter()
                            .map(|t| t.round_ties_even() as i64)
                            .collect();
                    ts.reverse();
                    ts.truncate(steps);
                    ts
                }
                TimestepSpacing::Leading => {
                    let ratio = (last_timestep / (steps + 1)) as i64;
                    let offset = config.steps_offset.unwrap_or(0);
                    (1..=steps as i64)
                        .rev()
                        .map(|i| i * ratio + offset)
                        .collect()
                }
                TimestepSpacing::Trailing => {
                    common::arange(last_timestep as f64, 0.0, -(n as f64 / steps as f64))
                        .into_iter()
                        .map(|t| t.round_ties_even() as i64 - 1)
                        .collect()
                }
            };
        let mut sigmas64: Vec<f64>;
        if config.use_karras_sigmas.unwrap_or(false) {
            let log_sigmas: Vec<f32> = train_sigmas.iter().map(|s| s.ln()).collect();
            let sigma_min = config.sigma_min.unwrap_or(f64::from(train_sigmas[0]));
            let sigma_max = config.sigma_max.unwrap_or(f64::from(train_sigmas[n - 1]));
            sigmas64 = common::karras_sigmas(sigma_min, sigma_max, steps);
            let round = config.beta_schedule != Some(super::BetaSchedule::SquaredcosCapV2);
            timesteps = sigmas64
                .iter()
                .map(|&s| {
                    let t = common::sigma_to_t(s, &log_sigmas);
                    // Without rounding diffusers truncates when casting to int64.
                    if round {
                        t.round_ties_even() as i64
                    } else {
                        t as i64
                    }
                })
                .collect();
        } else {
            for &t in &timesteps {
                if t < 0 || t >= n as i64 {
                    return Err(config_error(format!(
                        "DPM-Solver timestep {t} falls outside 0..{n}"
                    )));
                }
            }
            sigmas64 = timesteps
                .iter()
                .map(|&t| common::interp_index(t as f64, &train_sigmas))
                .collect();
        }
        let final_sigmas_type = config.final_sigmas_type.unwrap_or(FinalSigmasType::Zero);
        sigmas64.push(match final_sigmas_type {
            FinalSigmasType::Zero => 0.0,
            FinalSigmasType::SigmaMin => f64::from(train_sigmas[0]),
        });
        Ok(Self {
            kind,
            prediction_type: config.prediction_type(),
            solver_order,
            solver_type,
            lower_order_final: config.lower_order_final.unwrap_or(true),
            euler_at_final: config.euler_at_final.unwrap_or(false),
            final_sigmas_zero: final_sigmas_type == FinalSigmasType::Zero,
            schedule: SigmaSchedule::new(
                timesteps.into_iter().map(|t| t as f64).collect(),
                sigmas64.into_iter().map(|s| s as f32).collect(),
                UnknownTimestep::LastStep,
            ),
            model_outputs: (0..solver_order).map(|_| None).collect(),
            lower_order_nums: 0,
        })
    }

    /// `convert_model_output` for dpmsolver++: the predicted clean sample.
    fn to_x0(
        &self,
        model_output: &Tensor,
        sample: &Tensor,
        sigma: f32,
    ) -> Result<Tensor, EngineError> {
        let (alpha_t, sigma_t) = alpha_sigma(sigma);
        Ok(match self.prediction_type {
            PredictionType::Epsilon => sample
                .f_sub(&common::scale(model_output, sigma_t)?)?
                .f_div_scalar(f64::from(alpha_t))?,
            PredictionType::Sample => model_output.shallow_clone(),
            PredictionType::VPrediction => {
                common::scale(sample, alpha_t)?.f_sub(&common::scale(model_output, sigma_t)?)?
            }
        })
    }

    fn first_order(
        &self,
        index: usize,
        m0: &Tensor,
        sample: &Tensor,
    ) -> Result<Tensor, EngineError> {
        let (alpha_t, sigma_t) = alpha_sigma(self.schedule.sigma(index + 1)?);
        let (alpha_s, sigma_s) = alpha_sigma(self.schedule.sigma(index)?);
        let h = lambda(alpha_t, sigma_t) - lambda(alpha_s, sigma_s);
        // (sigma_t / sigma_s) * sample - (alpha_t * (exp(-h) - 1)) * m0
        Ok(common::scale(sample, sigma_t / sigma_s)?
            .f_sub(&common::scale(m0, alpha_t * ((-h).exp() - 1.0))?)?)
    }

    fn second_order(
        &self,
        index: usize,
        m0: &Tensor,
        m1: &Tensor,
        sample: &Tensor,
    ) -> Result<Tensor, EngineError> {
        let (alpha_t, sigma_t) = alpha_sigma(self.schedule.sigma(index + 1)?);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.schedule.sigma(index)?);
        let (alpha_s1, sigma_s1) = alpha_sigma(self.schedule.sigma(index.wrapping_sub(1))?);
        let lambda_t = lambda(alpha_t, sigma_t);
        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let lambda_s1 = lambda(alpha_s1, sigma_s1);
        let h = lambda_t - lambda_s0;
        let h_0 = lambda_s0 - lambda_s1;
        let r0 = h_0 / h;
        let d0 = m0;
        let d1 = common::scale(&m0.f_sub(m1)?, 1.0 / r0)?;
        let expm1 = (-h).exp() - 1.0;
        let x = common::scale(sample, sigma_t / sigma_s0)?
            .f_sub(&common::scale(d0, alpha_t * expm1)?)?;
        Ok(match self.solver_type {
            SolverType::Midpoint => x.f_sub(&common::scale(&d1, 0.5 * (alpha_t * expm1))?)?,
            SolverType::Heun => x.f_add(&common::scale(&d1, alpha_t * (expm1 / h + 1.0))?)?,
        })
    }

    fn third_order(
        &self,
        index: usize,
        m0: &Tensor,
        m1: &Tensor,
        m2: &Tensor,
        sample: &Tensor,
    ) -> Result<Tensor, EngineError> {
        let (alpha_t, sigma_t) = alpha_sigma(self.schedule.sigma(index + 1)?);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.schedule.sigma(index)?);
        let (alpha_s1, sigma_s1) = alpha_sigma(self.schedule.sigma(index.wrapping_sub(1))?);
        let (alpha_s2, sigma_s2) = alpha_sigma(self.schedule.sigma(index.wrapping_sub(2))?);
        let lambda_t = lambda(alpha_t, sigma_t);
        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let lambda_s1 = lambda(alpha_s1, sigma_s1);
        let lambda_s2 = lambda(alpha_s2, sigma_s2);
        let (h, h_0, h_1) = (
            lambda_t - lambda_s0,
            lambda_s0 - lambda_s1,
            lambda_s1 - lambda_s2,
        );
        let (r0, r1) = (h_0 / h, h_1 / h);
        let d1_0 = common::scale(&m0.f_sub(m1)?, 1.0 / r0)?;
        let d1_1 = common::scale(&m1.f_sub(m2)?, 1.0 / r1)?;
        let d1_diff = d1_0.f_sub(&d1_1)?;
        let d1 = d1_0.f_add(&common::scale(&d1_diff, r0 / (r0 + r1))?)?;
        let d2 = common::scale(&d1_diff, 1.0 / (r0 + r1))?;
        let expm1 = (-h).exp() - 1.0;
        Ok(common::scale(sample, sigma_t / sigma_s0)?
            .f_sub(&common::scale(m0, alpha_t * expm1)?)?
            .f_add(&common::scale(&d1, alpha_t * (expm1 / h + 1.0))?)?
            .f_sub(&common::scale(
                &d2,
                alpha_t * (((-h).exp() - 1.0 + h) / (h * h) - 0.5),
            )?)?)
    }
}

impl Scheduler for DpmSolverMultistepScheduler {
    fn kind(&self) -> SchedulerKind {
        self.kind
    }

    fn timesteps(&self) -> &[f64] {
        self.schedule.timesteps()
    }

    fn sigmas(&self) -> Option<&[f32]> {
        Some(self.schedule.sigmas())
    }

    fn set_begin_index(&mut self, begin_index: usize) {
        self.schedule.set_begin_index(begin_index);
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        timestep: f64,
        sample: &Tensor,
        _noise: &mut dyn NoiseSource,
    ) -> Result<Tensor, EngineError> {
        let index = self.schedule.current(timestep)?;
        let len = self.schedule.timesteps().len();
        let lower_order_final = index + 1 == len
            && (self.euler_at_final
                || (self.lower_order_final && len < 15)
                || self.final_sigmas_zero);
        let lower_order_second = index + 2 == len && self.lower_order_final && len < 15;

        let x0 = self.to_x0(model_output, sample, self.schedule.sigma(index)?)?;
        self.model_outputs.remove(0);
        self.model_outputs.push(Some(x0.shallow_clone()));
        let sample = common::to_f32(sample)?;

        let order = self.model_outputs.len();
        let previous = |back: usize| -> Result<&Tensor, EngineError> {
            self.model_outputs[order - 1 - back]
                .as_ref()
                .ok_or_else(|| {
                    EngineError::InvalidInput("DPM-Solver history is missing a step".into())
                })
        };
        let prev = if self.solver_order == 1 || self.lower_order_nums < 1 || lower_order_final {
            self.first_order(index, &x0, &sample)?
        } else if self.solver_order == 2 || self.lower_order_nums < 2 || lower_order_second {
            self.second_order(index, &x0, previous(1)?, &sample)?
        } else {
            self.third_order(index, &x0, previous(1)?, previous(2)?, &sample)?
        };
        if self.lower_order_nums < self.solver_order {
            self.lower_order_nums += 1;
        }
        self.schedule.advance(index);
        Ok(prev.f_to_kind(model_output.kind())?)
    }

    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        timestep: f64,
    ) -> Result<Tensor, EngineError> {
        let sigma = self
            .schedule
            .sigma(self.schedule.for_add_noise(timestep)?)?;
        // diffusers casts sigma to the sample's dtype, then computes alpha_t and sigma_t in it.
        let kind = original.kind();
        let s = Tensor::from(sigma).f_to_kind(kind)?;
        let alpha_t = s
            .f_pow_tensor_scalar(2)?
            .f_add_scalar(1)?
            .f_pow_tensor_scalar(0.5)?
            .f_reciprocal()?;
        let sigma_t = s.f_mul(&alpha_t)?;
        Ok(original
            .f_mul_scalar(alpha_t.f_double_value(&[])?)?
            .f_add(&noise.f_mul_scalar(sigma_t.f_double_value(&[])?)?)?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::schedulers::{BetaSchedule, build};

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
    fn kinds_set_their_overrides() {
        let plain = build(SchedulerKind::Dpmpp2m, &sd15(), 4, 0.0).unwrap();
        assert_eq!(plain.timesteps(), &[999.0, 749.0, 500.0, 250.0]);
        let karras = build(SchedulerKind::Dpmpp2mKarras, &sd15(), 4, 0.0).unwrap();
        assert_eq!(karras.timesteps(), &[999.0, 687.0, 146.0, 0.0]);
        assert_eq!(karras.kind(), SchedulerKind::Dpmpp2mKarras);
        let sde = SchedulerConfig {
            algorithm_type: Some("sde-dpmsolver++".into()),
            ..sd15()
        };
        // The kind's override (dpmsolver++) wins over the config, as from_config kwargs do.
        assert!(build(SchedulerKind::Dpmpp2m, &sde, 4, 0.0).is_ok());
        assert!(DpmSolverMultistepScheduler::new(SchedulerKind::Dpmpp2m, &sde, 4).is_err());
    }
}
