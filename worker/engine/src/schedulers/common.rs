//! Arithmetic the schedulers share, written to round exactly like diffusers' numpy/torch code:
//! the fp32 beta schedule and `alphas_cumprod` (computed by libtorch itself), numpy's `linspace`,
//! `arange`, `interp` and round-half-to-even, the sigma ↔ timestep conversions and Karras sigmas,
//! the integer timesteps and forward process of the DDPM family (PNDM, DDIM), and helpers for fp32
//! tensor-times-scalar arithmetic. (The sigma schedulers' shared state is in `sigmas`.)

use tch::{Device, Kind, Tensor};

use super::{BetaSchedule, SchedulerConfig, TimestepSpacing};
use crate::EngineError;

/// A scheduler configuration problem.
pub(crate) fn config_error(message: impl Into<String>) -> EngineError {
    EngineError::InvalidInput(format!("scheduler configuration: {}", message.into()))
}

/// `alphas_cumprod` of the training schedule, in fp32, computed with the same libtorch ops as
/// diffusers (`torch.linspace`, `** 2`, `1.0 - betas`, `torch.cumprod`) so the values are identical.
pub(crate) fn alphas_cumprod(config: &SchedulerConfig) -> Result<Vec<f32>, EngineError> {
    let n = config.num_train_timesteps();
    if n < 2 {
        return Err(config_error(format!(
            "num_train_timesteps must be at least 2, got {n}"
        )));
    }
    if config.rescale_betas_zero_snr.unwrap_or(false) {
        return Err(config_error("rescale_betas_zero_snr is not supported"));
    }
    let options = (Kind::Float, Device::Cpu);
    let betas = if let Some(trained) = &config.trained_betas {
        if trained.len() != n {
            return Err(config_error(format!(
                "trained_betas has {} values for {n} training timesteps",
                trained.len()
            )));
        }
        // torch.tensor(list_of_floats, dtype=float32) rounds each double to float.
        let values: Vec<f32> = trained.iter().map(|&b| b as f32).collect();
        Tensor::f_from_slice(&values)?
    } else {
        let start = config.beta_start.unwrap_or(0.0001);
        let end = config.beta_end.unwrap_or(0.02);
        let steps = n as i64;
        match config.beta_schedule.unwrap_or(BetaSchedule::Linear) {
            BetaSchedule::Linear => Tensor::f_linspace(start, end, steps, options)?,
            BetaSchedule::ScaledLinear => {
                Tensor::f_linspace(start.powf(0.5), end.powf(0.5), steps, options)?
                    .f_pow_tensor_scalar(2)?
            }
            BetaSchedule::SquaredcosCapV2 => {
                Tensor::f_from_slice(&betas_for_alpha_bar_cosine(n, 0.999))?
            }
        }
    };
    let alphas = betas.f_neg()?.f_add_scalar(1.0)?;
    let cumprod = alphas.f_cumprod(0, Kind::Float)?;
    Ok(Vec::<f32>::try_from(&cumprod)?)
}

/// diffusers' `betas_for_alpha_bar` with the cosine transform, in f64 then rounded to f32.
fn betas_for_alpha_bar_cosine(n: usize, max_beta: f64) -> Vec<f32> {
    let alpha_bar = |t: f64| {
        let c = ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos();
        c * c
    };
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(max_beta) as f32
        })
        .collect()
}

/// The training sigmas `((1 - ᾱ) / ᾱ) ** 0.5` in fp32, index = training timestep.
pub(crate) fn train_sigmas(alphas_cumprod: &[f32]) -> Vec<f32> {
    alphas_cumprod
        .iter()
        .map(|&a| ((1.0 - a) / a).sqrt())
        .collect()
}

/// `np.linspace(start, stop, num)` (endpoint included) in f64.
pub(crate) fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return Vec::new();
    }
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut values: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    values[num - 1] = stop;
    values
}

/// `np.arange(start, stop, step)` for a float step.
pub(crate) fn arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    if !len.is_finite() || len <= 0.0 {
        return Vec::new();
    }
    // numpy fills float ranges as `start + i * delta` with `delta = (start + step) - start`.
    let delta = (start + step) - start;
    (0..len as usize)
        .map(|i| {
            if i == 1 {
                start + step
            } else {
                start + i as f64 * delta
            }
        })
        .collect()
}

/// `np.interp(x, arange(len(fp)), fp)`: linear interpolation of `fp` at the (fractional) index `x`.
pub(crate) fn interp_index(x: f64, fp: &[f32]) -> f64 {
    let last = fp.len() - 1;
    if x <= 0.0 {
        return f64::from(fp[0]);
    }
    if x >= last as f64 {
        return f64::from(fp[last]);
    }
    let j = x.floor() as usize;
    let xj = j as f64;
    if xj == x {
        return f64::from(fp[j]);
    }
    let slope = (f64::from(fp[j + 1]) - f64::from(fp[j])) / 1.0;
    slope * (x - xj) + f64::from(fp[j])
}

/// diffusers' `_sigma_to_t`: the fractional training timestep whose log-sigma `sigma` falls on,
/// interpolated linearly in log space. `log_sigmas` are the fp32 logs of the training sigmas.
pub(crate) fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    // argmax(cumsum(dists >= 0)): the last index whose log-sigma is <= log_sigma (0 if none),
    // at most len - 2.
    let last_true = log_sigmas
        .iter()
        .rposition(|&l| log_sigma - f64::from(l) >= 0.0)
        .unwrap_or(0);
    let low_idx = last_true.min(log_sigmas.len() - 2);
    let high_idx = low_idx + 1;
    let low = f64::from(log_sigmas[low_idx]);
    let high = f64::from(log_sigmas[high_idx]);
    let w = ((low - log_sigma) / (low - high)).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * high_idx as f64
}

/// diffusers' `_convert_to_karras` (rho = 7) between `sigma_max` and `sigma_min`.
pub(crate) fn karras_sigmas(sigma_min: f64, sigma_max: f64, num: usize) -> Vec<f64> {
    let rho = 7.0_f64;
    let min_inv_rho = sigma_min.powf(1.0 / rho);
    let max_inv_rho = sigma_max.powf(1.0 / rho);
    linspace(0.0, 1.0, num)
        .into_iter()
        .map(|ramp| (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)).powf(rho))
        .collect()
}

/// A fp32 value as the scalar multiplier diffusers effectively uses once it is cast to `kind`
/// (their coefficients are fp32 tensors, cast to the sample's dtype in `add_noise`).
pub(crate) fn as_kind(value: f32, kind: Kind) -> Result<f64, EngineError> {
    if kind == Kind::Float {
        return Ok(f64::from(value));
    }
    Ok(Tensor::from(value).f_to_kind(kind)?.f_double_value(&[])?)
}

/// The integer inference timesteps of the DDPM-family schedulers, in stepping (descending)
/// order: DDIM's `timesteps`, and PNDM's `_timesteps` reversed. Both default to `leading`.
pub(crate) fn ddpm_timesteps(config: &SchedulerConfig, steps: usize) -> Vec<i64> {
    let n = config.num_train_timesteps();
    match config.timestep_spacing.unwrap_or(TimestepSpacing::Leading) {
        TimestepSpacing::Linspace => linspace(0.0, (n - 1) as f64, steps)
            .into_iter()
            .rev()
            .map(|t| t.round_ties_even() as i64)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = (n / steps) as i64;
            let offset = config.steps_offset.unwrap_or(0);
            (0..steps as i64)
                .rev()
                .map(|i| i * ratio + offset)
                .collect()
        }
        TimestepSpacing::Trailing => arange(n as f64, 0.0, -(n as f64 / steps as f64))
            .into_iter()
            .map(|t| t.round_ties_even() as i64 - 1)
            .collect(),
    }
}

/// `sqrt(ᾱ_t) * original + sqrt(1 - ᾱ_t) * noise`, the forward process of the DDPM-family
/// schedulers (PNDM, DDIM), with ᾱ cast to the sample's dtype first as diffusers does.
pub(crate) fn ddpm_add_noise(
    alphas_cumprod: &[f32],
    original: &Tensor,
    noise: &Tensor,
    timestep: f64,
) -> Result<Tensor, EngineError> {
    let index = train_index(timestep, alphas_cumprod.len())?;
    let kind = original.kind();
    let alpha = Tensor::from(alphas_cumprod[index]).f_to_kind(kind)?;
    let sqrt_alpha = alpha.f_pow_tensor_scalar(0.5)?.f_double_value(&[])?;
    let sqrt_one_minus = alpha
        .f_neg()?
        .f_add_scalar(1)?
        .f_pow_tensor_scalar(0.5)?
        .f_double_value(&[])?;
    Ok(original
        .f_mul_scalar(sqrt_alpha)?
        .f_add(&noise.f_mul_scalar(sqrt_one_minus)?)?)
}

/// Checks that a timestep of an integer schedule is an integer inside the training range.
pub(crate) fn train_index(timestep: f64, len: usize) -> Result<usize, EngineError> {
    if timestep.fract() != 0.0 || timestep < 0.0 || timestep >= len as f64 {
        return Err(EngineError::InvalidInput(format!(
            "timestep {timestep} is not a training timestep in 0..{len}"
        )));
    }
    Ok(timestep as usize)
}

/// Index of `timestep` in `schedule` as diffusers' `index_for_timestep`: the second match when
/// there are several (so a restarted schedule does not skip a sigma), `None` if there is none.
pub(crate) fn index_for_timestep(schedule: &[f64], timestep: f64) -> Option<usize> {
    let mut matches = schedule
        .iter()
        .enumerate()
        .filter(|(_, t)| **t == timestep)
        .map(|(i, _)| i);
    let first = matches.next()?;
    Some(matches.next().unwrap_or(first))
}

/// `x + y * c`, `x * a + y * b` and friends as fallible libtorch ops, each rounding like the
/// corresponding torch expression with a fp32 scalar tensor coefficient.
pub(crate) fn scale(x: &Tensor, c: f32) -> Result<Tensor, EngineError> {
    Ok(x.f_mul_scalar(f64::from(c))?)
}

/// `a * x + b * y`.
pub(crate) fn axpby(a: f32, x: &Tensor, b: f32, y: &Tensor) -> Result<Tensor, EngineError> {
    Ok(scale(x, a)?.f_add(&scale(y, b)?)?)
}

/// The prediction-type conversions of the sigma-parameterised (Euler/DPM) schedulers need the
/// sample in fp32 whatever the model dtype (`sample.to(torch.float32)` in diffusers).
pub(crate) fn to_f32(sample: &Tensor) -> Result<Tensor, EngineError> {
    Ok(sample.f_to_kind(Kind::Float)?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn numpy_like_helpers() {
        assert_eq!(linspace(0.0, 999.0, 4), vec![0.0, 333.0, 666.0, 999.0]);
        assert_eq!(
            arange(1000.0, 0.0, -250.0),
            vec![1000.0, 750.0, 500.0, 250.0]
        );
        assert_eq!(arange(1000.0, 0.0, -1000.0 / 3.0).len(), 3);
        assert_eq!(interp_index(2.5, &[0.0, 1.0, 2.0, 4.0]), 3.0);
        assert_eq!(index_for_timestep(&[3.0, 2.0, 2.0, 1.0], 2.0), Some(2));
        assert_eq!(index_for_timestep(&[3.0, 2.0], 5.0), None);
        assert!(train_index(1.5, 1000).is_err());
        assert!(train_index(1000.0, 1000).is_err());
        assert_eq!(train_index(999.0, 1000).unwrap(), 999);
    }
}
