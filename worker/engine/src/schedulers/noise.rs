//! Where stochastic schedulers get their Gaussian noise: the [`NoiseSource`] trait, and
//! [`CpuGenerator`] / [`Generators`], which reproduce PyTorch's `torch.Generator` streams.
//!
//! diffusers draws scheduler noise with `randn_tensor(shape, generator, device, dtype)`: one
//! `torch.randn(shape)` on the (CPU) generator for a single generator, or, for a list of
//! generators, one `torch.randn([1, ...])` per image on that image's generator, concatenated on
//! dim 0. A list of one generator counts as a single generator.
//!
//! `tch` 0.26 exposes no `Generator` object, only libtorch's process-wide default CPU generator
//! (`tch::manual_seed`). That generator is the same mt19937-based `CPUGeneratorImpl` as
//! `torch.Generator()`, so after `manual_seed(s)` it yields the same stream. [`CpuGenerator`]
//! builds an independent per-seed stream on top of it: it records what it has drawn, and when
//! another stream used the global generator in between, it reseeds and replays its own earlier
//! draws before drawing again (cost: the replayed numbers; with one generator in use, nothing).
//! Every use of the global CPU generator in the process must therefore go through
//! [`CpuGenerator`] or [`with_global_cpu_rng`], which serialise on one lock.
//!
//! Schedulers only see `&mut dyn NoiseSource`; how the noise is produced is the caller's choice.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tch::{Device, Kind, Tensor};

use crate::EngineError;

/// Draws standard-normal noise for stochastic scheduler steps.
pub trait NoiseSource {
    /// A tensor of `shape`, of `kind`, on `device`, drawn the way diffusers' `randn_tensor` draws
    /// it for this source's generator(s).
    fn randn(&mut self, shape: &[i64], kind: Kind, device: Device) -> Result<Tensor, EngineError>;
}

/// A source for deterministic schedulers: asking it for noise is an error.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoNoise;

impl NoiseSource for NoNoise {
    fn randn(
        &mut self,
        shape: &[i64],
        _kind: Kind,
        _device: Device,
    ) -> Result<Tensor, EngineError> {
        Err(EngineError::InvalidInput(format!(
            "a stochastic scheduler step asked for noise of shape {shape:?} but no generator was given"
        )))
    }
}

/// Which [`CpuGenerator`] the global libtorch CPU generator currently continues (`None`: unknown,
/// so the next draw reseeds and replays).
static GLOBAL_CPU_RNG: Mutex<Option<u64>> = Mutex::new(None);
static NEXT_GENERATOR_ID: AtomicU64 = AtomicU64::new(1);

/// Runs `f` while holding the lock on libtorch's global CPU generator, for code that seeds or draws
/// from it directly; afterwards every [`CpuGenerator`] replays its stream before drawing again.
pub fn with_global_cpu_rng<R>(f: impl FnOnce() -> R) -> R {
    let mut owner = GLOBAL_CPU_RNG
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    *owner = None;
    f()
}

/// The equivalent of `torch.Generator().manual_seed(seed)`: an independent CPU random stream.
#[derive(Debug)]
pub struct CpuGenerator {
    id: u64,
    seed: u64,
    /// Every draw so far (shape, kind), replayed to restore the stream after another user.
    history: Vec<(Vec<i64>, Kind)>,
}

impl CpuGenerator {
    /// A fresh stream seeded like `torch.Generator().manual_seed(seed)`.
    pub fn new(seed: u64) -> Self {
        Self {
            id: NEXT_GENERATOR_ID.fetch_add(1, Ordering::Relaxed),
            seed,
            history: Vec::new(),
        }
    }

    /// The seed this stream started from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// `torch.randn(shape, generator=self, dtype=kind)` on the CPU.
    pub fn randn_cpu(&mut self, shape: &[i64], kind: Kind) -> Result<Tensor, EngineError> {
        let mut owner = GLOBAL_CPU_RNG
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *owner != Some(self.id) {
            // libtorch's manual_seed takes the seed's bits as u64, like torch.Generator.manual_seed.
            tch::manual_seed(self.seed as i64);
            *owner = None;
            for (shape, kind) in &self.history {
                // Only the generator's advance matters here.
                drop(Tensor::f_randn(shape.as_slice(), (*kind, Device::Cpu))?);
            }
            *owner = Some(self.id);
        }
        match Tensor::f_randn(shape, (kind, Device::Cpu)) {
            Ok(tensor) => {
                self.history.push((shape.to_vec(), kind));
                Ok(tensor)
            }
            Err(err) => {
                // Whether a failed draw consumed numbers is unknown: replay next time.
                *owner = None;
                Err(err.into())
            }
        }
    }
}

impl NoiseSource for CpuGenerator {
    fn randn(&mut self, shape: &[i64], kind: Kind, device: Device) -> Result<Tensor, EngineError> {
        // randn_tensor draws on the generator's device (CPU) and then moves the result.
        Ok(self.randn_cpu(shape, kind)?.f_to_device(device)?)
    }
}

/// diffusers' `generator=[...]`: one generator per image of the batch (a list of one generator
/// behaves as that single generator).
#[derive(Debug)]
pub struct Generators(pub Vec<CpuGenerator>);

impl Generators {
    /// One generator per seed.
    pub fn from_seeds(seeds: &[u64]) -> Self {
        Self(seeds.iter().map(|&seed| CpuGenerator::new(seed)).collect())
    }
}

impl NoiseSource for Generators {
    fn randn(&mut self, shape: &[i64], kind: Kind, device: Device) -> Result<Tensor, EngineError> {
        match self.0.as_mut_slice() {
            [] => NoNoise.randn(shape, kind, device),
            [single] => single.randn(shape, kind, device),
            generators => {
                let batch = shape.first().copied().unwrap_or(0);
                if usize::try_from(batch).ok() != Some(generators.len()) {
                    return Err(EngineError::InvalidInput(format!(
                        "{} generators given for a batch of {batch}",
                        generators.len()
                    )));
                }
                let mut one = shape.to_vec();
                one[0] = 1;
                let parts = generators
                    .iter_mut()
                    .map(|generator| generator.randn_cpu(&one, kind))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Tensor::f_cat(&parts, 0)?.f_to_device(device)?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn values(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(&t.flatten(0, -1)).unwrap()
    }

    #[test]
    fn interleaved_generators_keep_their_own_streams() {
        let mut a = CpuGenerator::new(7);
        let a1 = values(&a.randn_cpu(&[20], Kind::Float).unwrap());
        let a2 = values(&a.randn_cpu(&[3], Kind::Float).unwrap());

        let mut b = CpuGenerator::new(7);
        let mut other = CpuGenerator::new(8);
        let b1 = values(&b.randn_cpu(&[20], Kind::Float).unwrap());
        drop(other.randn_cpu(&[50], Kind::Float).unwrap());
        let b2 = values(&b.randn_cpu(&[3], Kind::Float).unwrap());
        assert_eq!(a1, b1);
        assert_eq!(a2, b2);
        assert_ne!(a1, values(&other.randn_cpu(&[20], Kind::Float).unwrap()));
    }

    #[test]
    fn generator_list_draws_one_image_per_generator() {
        let mut list = Generators::from_seeds(&[1, 2]);
        let both = list.randn(&[2, 3, 4], Kind::Float, Device::Cpu).unwrap();
        let one = CpuGenerator::new(2)
            .randn_cpu(&[1, 3, 4], Kind::Float)
            .unwrap();
        assert_eq!(values(&both.get(1)), values(&one.get(0)));
        assert!(list.randn(&[3, 3, 4], Kind::Float, Device::Cpu).is_err());
        assert!(NoNoise.randn(&[1], Kind::Float, Device::Cpu).is_err());
    }
}
