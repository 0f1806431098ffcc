//! [`SigmaSchedule`]: what the sigma-parameterised schedulers (Euler, Euler ancestral,
//! DPM-Solver++) share — their timesteps, their sigmas (one more than the timesteps) and
//! diffusers' step-index bookkeeping (`step_index`, `begin_index`, `index_for_timestep`) — so each
//! of them only writes how its schedule is made and how it steps.

use super::common;
use crate::EngineError;

/// What `index_for_timestep` does with a timestep that is not in the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnknownTimestep {
    /// An error (the Euler schedulers).
    Error,
    /// The last step (DPM-Solver).
    LastStep,
}

/// A sigma schedule and where a scheduler is in it, with diffusers' rules for finding out.
#[derive(Debug, Clone)]
pub(crate) struct SigmaSchedule {
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    unknown: UnknownTimestep,
    step_index: Option<usize>,
    begin_index: Option<usize>,
}

impl SigmaSchedule {
    pub(crate) fn new(timesteps: Vec<f64>, sigmas: Vec<f32>, unknown: UnknownTimestep) -> Self {
        Self {
            timesteps,
            sigmas,
            unknown,
            step_index: None,
            begin_index: None,
        }
    }

    pub(crate) fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    pub(crate) fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// diffusers' `set_begin_index`.
    pub(crate) fn set_begin_index(&mut self, begin_index: usize) {
        self.begin_index = Some(begin_index);
    }

    /// `index_for_timestep`.
    fn index_of(&self, timestep: f64) -> Result<usize, EngineError> {
        match common::index_for_timestep(&self.timesteps, timestep) {
            Some(index) => Ok(index),
            None => match self.unknown {
                UnknownTimestep::Error => Err(EngineError::InvalidInput(format!(
                    "timestep {timestep} is not in the schedule"
                ))),
                UnknownTimestep::LastStep => Ok(self.timesteps.len().saturating_sub(1)),
            },
        }
    }

    /// The step index for `timestep` (`_init_step_index` on first use: the begin index if the
    /// pipeline set one, else the timestep's position).
    pub(crate) fn current(&mut self, timestep: f64) -> Result<usize, EngineError> {
        if let Some(index) = self.step_index {
            return Ok(index);
        }
        let index = match self.begin_index {
            Some(begin) => begin,
            None => self.index_of(timestep)?,
        };
        self.step_index = Some(index);
        Ok(index)
    }

    /// Ends the step at `index` (`self._step_index += 1`).
    pub(crate) fn advance(&mut self, index: usize) {
        self.step_index = Some(index + 1);
    }

    /// The sigma index `add_noise` uses: the timestep's position without a begin index, else the
    /// current step index, else the begin index.
    pub(crate) fn for_add_noise(&self, timestep: f64) -> Result<usize, EngineError> {
        match (self.begin_index, self.step_index) {
            (None, _) => self.index_of(timestep),
            (Some(_), Some(step)) => Ok(step),
            (Some(begin), None) => Ok(begin),
        }
    }

    /// The sigma at `index`, or an error once the schedule is exhausted.
    pub(crate) fn sigma(&self, index: usize) -> Result<f32, EngineError> {
        self.sigmas.get(index).copied().ok_or_else(|| {
            EngineError::InvalidInput(format!("step {index} is past the end of the schedule"))
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn schedule(unknown: UnknownTimestep) -> SigmaSchedule {
        SigmaSchedule::new(vec![999.0, 500.0, 0.0], vec![3.0, 2.0, 1.0, 0.0], unknown)
    }

    #[test]
    fn begin_index_wins_over_the_timestep_and_add_noise_follows_the_step() {
        let mut s = schedule(UnknownTimestep::Error);
        assert_eq!(s.for_add_noise(500.0).unwrap(), 1);
        s.set_begin_index(2);
        assert_eq!(s.for_add_noise(500.0).unwrap(), 2);
        assert_eq!(s.current(999.0).unwrap(), 2);
        s.advance(2);
        assert_eq!(s.current(999.0).unwrap(), 3);
        assert_eq!(s.for_add_noise(999.0).unwrap(), 3);
        assert_eq!(s.sigma(3).unwrap(), 0.0);
        assert!(s.sigma(4).is_err());
    }

    #[test]
    fn unknown_timesteps_fail_or_take_the_last_step() {
        assert!(schedule(UnknownTimestep::Error).current(7.0).is_err());
        assert_eq!(schedule(UnknownTimestep::LastStep).current(7.0).unwrap(), 2);
    }
}
