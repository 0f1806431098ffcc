//! Where stochastic schedulers get their Gaussian noise: the [`NoiseSource`] trait, and
//! [`CpuGenerator`] / [`Generators`], which reproduce PyTorch's `torch.Generator` streams.
//!
//! diffusers draws scheduler noise with `randn_tensor(shape, generator, device, dtype)`: one
//! `torch.randn(shape)` on the (CPU) generator for a single generator, or, for a list of
//! generators, one `torch.randn([1, ...])` per image on that image's generator, concatenated on
//! dim 0. A list of one generator counts as a single generator.
//!
//! `tch` 0.26 exposes no `Generator` object, only libtorch's process-wide default CPU generator
//! (`tch::manual_seed`). [`CpuGenerator`] therefore carries its own copy of what a
//! `torch.Generator` is on the CPU — the mt19937 engine and the cached second Box-Muller value —
//! and computes `torch.randn` for `float32` the way libtorch's CPU kernel does ([`TorchCpuRng`]):
//! no lock, no replay, each image's stream independent of the others.
//!
//! libtorch's float kernel for 16 or more numbers depends on the CPU kernel it dispatches to
//! (its AVX2 build uses its own vectorised log/sin/cos; the default and AVX-512 builds call the C
//! library's, as this module does). So the first draw in a process compares this module's numbers
//! with libtorch's own `randn` for a set of seeds and sizes; if any differs, every [`CpuGenerator`]
//! falls back to libtorch's generator: it records what it has drawn, and when another stream
//! used the global generator in between, it reseeds and replays its own earlier draws before
//! drawing again (cost: the replayed numbers, O(draws²) for interleaved streams). Other element
//! kinds than `float32` always take that path. Every use of the global CPU generator in the
//! process must therefore go through [`CpuGenerator`] or [`with_global_cpu_rng`], which serialise
//! on one lock.
//!
//! Schedulers only see `&mut dyn NoiseSource`; how the noise is produced is the caller's choice.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

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

/// libtorch's `at::mt19937`: the standard 32-bit Mersenne Twister, seeded with the seed's low
/// 32 bits (`torch.Generator.manual_seed` keeps only those for the CPU engine).
#[derive(Clone)]
struct Mt19937 {
    state: Box<[u32; Mt19937::N]>,
    next: usize,
}

impl Mt19937 {
    const N: usize = 624;
    const M: usize = 397;

    fn new(seed: u64) -> Self {
        let mut state = Box::new([0u32; Self::N]);
        state[0] = seed as u32;
        for j in 1..Self::N {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(j as u32);
        }
        Self {
            state,
            next: Self::N,
        }
    }

    fn twist(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        const MATRIX_A: u32 = 0x9908_b0df;
        let s = &mut self.state;
        for i in 0..Self::N {
            let y = (s[i] & UPPER) | (s[(i + 1) % Self::N] & LOWER);
            let mag = if y & 1 == 1 { MATRIX_A } else { 0 };
            s[i] = s[(i + Self::M) % Self::N] ^ (y >> 1) ^ mag;
        }
        self.next = 0;
    }

    fn next_u32(&mut self) -> u32 {
        if self.next >= Self::N {
            self.twist();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }
}

impl std::fmt::Debug for Mt19937 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mt19937")
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

/// How libtorch's float `normal_fill` turns 16 uniforms into 16 normals on this machine: its CPU
/// kernels are compiled once per instruction set and the one matching the CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoxMuller {
    /// The portable kernel (`ATEN_CPU_CAPABILITY=default`): the C library's `logf`, `cosf`, `sinf`.
    Libm,
    /// The AVX2 and AVX-512 kernels: `avx_mathfun.h`'s Cephes-polynomial `log256_ps` and
    /// `sincos256_ps`, with the fused multiply-adds the compiler forms from them.
    AvxMathfun,
}

/// `avx_mathfun.h`, one lane: every operation in the order of the vector code; `mul_add` where
/// GCC (`-ffp-contract=fast`, FMA available) fuses a product into the add or subtract that is
/// its only use.
// The constants are spelled as in avx_mathfun.h (Cephes): rustc rounds the decimal literals to
// f32 as the C compiler does, and keeping the source's digits makes them checkable against it.
#[allow(clippy::excessive_precision, clippy::approx_constant)]
mod avx_mathfun {
    const MIN_NORM_POS: u32 = 0x0080_0000;
    const INV_MANT_MASK: u32 = !0x7f80_0000;
    const SQRTHF: f32 = 0.707_106_781_186_547_524;
    const LOG_P: [f32; 9] = [
        7.037_683_629_2E-2,
        -1.151_461_031_0E-1,
        1.167_699_874_0E-1,
        -1.242_014_084_6E-1,
        1.424_932_278_7E-1,
        -1.666_805_766_5E-1,
        2.000_071_476_5E-1,
        -2.499_999_399_3E-1,
        3.333_333_117_4E-1,
    ];
    const LOG_Q1: f32 = -2.121_944_40e-4;
    const LOG_Q2: f32 = 0.693_359_375;
    const MINUS_DP1: f32 = -0.785_156_25;
    const MINUS_DP2: f32 = -2.418_756_484_985_351_562_5e-4;
    const MINUS_DP3: f32 = -3.774_894_977_445_941_08e-8;
    const SINCOF: [f32; 3] = [-1.951_529_589_1E-4, 8.332_160_873_6E-3, -1.666_665_461_1E-1];
    const COSCOF: [f32; 3] = [
        2.443_315_711_809_948E-5,
        -1.388_731_625_493_765E-3,
        4.166_664_568_298_827E-2,
    ];
    const FOPI: f32 = 1.273_239_544_735_16;

    fn select(mask: bool, value: f32) -> f32 {
        if mask { value } else { 0.0 }
    }

    /// `log256_ps`.
    pub(super) fn log(x: f32) -> f32 {
        let invalid = x <= 0.0;
        // _mm256_max_ps(x, m) returns m unless x > m.
        let min_norm = f32::from_bits(MIN_NORM_POS);
        let x = if x > min_norm { x } else { min_norm };
        let exponent = (x.to_bits() >> 23) as i32;
        let mut x = f32::from_bits((x.to_bits() & INV_MANT_MASK) | 0.5f32.to_bits());
        let mut e = (exponent - 0x7f) as f32;
        e += 1.0;
        let mask = x < SQRTHF;
        let tmp = select(mask, x);
        x -= 1.0;
        e -= select(mask, 1.0);
        x += tmp;
        let z = x * x;
        let mut y = LOG_P[0];
        for p in &LOG_P[1..] {
            y = y.mul_add(x, *p);
        }
        y *= x;
        // y * z + e * q1: GCC fuses the product that comes first in the code, y * z.
        y = y.mul_add(z, e * LOG_Q1);
        y = (-z).mul_add(0.5, y);
        let x = e.mul_add(LOG_Q2, x + y);
        if invalid { f32::NAN } else { x }
    }

    /// `sincos256_ps`: (sin, cos).
    pub(super) fn sincos(x: f32) -> (f32, f32) {
        const SIGN: u32 = 0x8000_0000;
        let mut sign_sin = x.to_bits() & SIGN;
        let mut x = f32::from_bits(x.to_bits() & !SIGN);
        let y = x * FOPI;
        // _mm256_cvttps_epi32: truncation; out of range gives i32::MIN, as `as` does not, but
        // the arguments here are in [0, 2pi).
        let mut j = y as i32;
        j = (j.wrapping_add(1)) & !1;
        let y = j as f32;
        let swap_sign_sin = ((j & 4) as u32) << 29;
        let poly_mask = (j & 2) == 0;
        x = y.mul_add(MINUS_DP1, x);
        x = y.mul_add(MINUS_DP2, x);
        x = y.mul_add(MINUS_DP3, x);
        let sign_cos = ((!(j.wrapping_sub(2)) & 4) as u32) << 29;
        sign_sin ^= swap_sign_sin;

        let z = x * x;
        let mut yc = COSCOF[0].mul_add(z, COSCOF[1]);
        yc = yc.mul_add(z, COSCOF[2]);
        yc *= z;
        // y * z - z * 0.5: the first product is fused (it comes first in the code).
        yc = yc.mul_add(z, -(z * 0.5));
        yc += 1.0;

        let mut ys = SINCOF[0].mul_add(z, SINCOF[1]);
        ys = ys.mul_add(z, SINCOF[2]);
        ys *= z;
        ys = ys.mul_add(x, x);

        let ysin2 = select(poly_mask, ys);
        let ysin1 = select(!poly_mask, yc);
        let ys = ys - ysin2;
        let yc = yc - ysin1;
        let sin = ysin1 + ysin2;
        let cos = yc + ys;
        (
            f32::from_bits(sin.to_bits() ^ sign_sin),
            f32::from_bits(cos.to_bits() ^ sign_cos),
        )
    }
}

/// A `torch.Generator()` on the CPU (`CPUGeneratorImpl`): the engine plus the cached second value
/// of the double-precision Box-Muller pair, with libtorch's `randn` for `float32` on top.
#[derive(Clone, Debug)]
pub struct TorchCpuRng {
    engine: Mt19937,
    next_double_normal: Option<f64>,
}

impl TorchCpuRng {
    /// `torch.Generator().manual_seed(seed)`.
    pub fn new(seed: u64) -> Self {
        Self {
            engine: Mt19937::new(seed),
            next_double_normal: None,
        }
    }

    /// `CPUGeneratorImpl::random64`: two 32-bit draws, the first one high.
    fn random64(&mut self) -> u64 {
        let hi = u64::from(self.engine.next_u32());
        let lo = u64::from(self.engine.next_u32());
        (hi << 32) | lo
    }

    /// `at::uniform_real_distribution<float>(0, 1)`: 24 random bits times 2^-24.
    fn uniform_f32(&mut self) -> f32 {
        (self.engine.next_u32() & 0x00ff_ffff) as f32 * (1.0 / 16_777_216.0)
    }

    /// `at::uniform_real_distribution<double>(0, 1)`: 53 random bits times 2^-53.
    fn uniform_f64(&mut self) -> f64 {
        (self.random64() & ((1u64 << 53) - 1)) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    /// `at::normal_distribution<double>(0, 1)`: Box-Muller, the sine half cached for the next call.
    fn normal_f64(&mut self) -> f64 {
        let (mean, std) = (0.0f64, 1.0f64);
        if let Some(cached) = self.next_double_normal.take() {
            return cached * std + mean;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.next_double_normal = Some(r * theta.sin());
        r * theta.cos() * std + mean
    }

    /// libtorch's `normal_fill_16` for float: Box-Muller on 8 + 8 uniforms, in place.
    fn normal_fill_16(data: &mut [f32], transform: BoxMuller) {
        let (mean, std) = (0.0f32, 1.0f32);
        match transform {
            BoxMuller::Libm => {
                for j in 0..8 {
                    let u1 = 1.0 - data[j];
                    let u2 = data[j + 8];
                    let radius = (-2.0 * u1.ln()).sqrt();
                    // `2.0f * c10::pi<double> * u2` is computed in double, then stored as float.
                    let theta = (2.0 * std::f64::consts::PI * f64::from(u2)) as f32;
                    data[j] = radius * theta.cos() * std + mean;
                    data[j + 8] = radius * theta.sin() * std + mean;
                }
            }
            BoxMuller::AvxMathfun => {
                let two_pi = (2.0 * std::f64::consts::PI) as f32;
                for j in 0..8 {
                    let u1 = 1.0 - data[j];
                    let u2 = data[j + 8];
                    let radius = (-2.0 * avx_mathfun::log(u1)).sqrt();
                    let (sin, cos) = avx_mathfun::sincos(two_pi * u2);
                    data[j] = (radius * cos).mul_add(std, mean);
                    data[j + 8] = (radius * sin).mul_add(std, mean);
                }
            }
        }
    }

    /// `torch.randn(n, generator=self)` for `float32` on the CPU (libtorch's `normal_kernel`):
    /// 16 or more numbers go through `normal_fill` (all uniforms first, Box-Muller per block of
    /// 16, a partial last block recomputed from 16 fresh uniforms), fewer through the double
    /// Box-Muller one number at a time.
    pub fn randn_f32(&mut self, n: usize, transform: BoxMuller) -> Vec<f32> {
        if n < 16 {
            return (0..n).map(|_| self.normal_f64() as f32).collect();
        }
        let mut data: Vec<f32> = (0..n).map(|_| self.uniform_f32()).collect();
        for block in data.chunks_exact_mut(16) {
            Self::normal_fill_16(block, transform);
        }
        if !n.is_multiple_of(16) {
            let tail = &mut data[n - 16..];
            for value in tail.iter_mut() {
                *value = self.uniform_f32();
            }
            Self::normal_fill_16(tail, transform);
        }
        data
    }
}

/// Which [`BoxMuller`] variant gives libtorch's own `randn` numbers on this machine, if any:
/// found once per process by comparing with the global generator, for seeds and sizes covering
/// every path of the kernel (the double Box-Muller cache carried across draws, whole and partial
/// blocks of 16).
pub fn libtorch_box_muller() -> Option<BoxMuller> {
    static FOUND: OnceLock<Option<BoxMuller>> = OnceLock::new();
    *FOUND.get_or_init(|| {
        let mut reasons = Vec::new();
        for variant in [BoxMuller::AvxMathfun, BoxMuller::Libm] {
            match with_global_cpu_rng(|| compare_with_libtorch(variant)) {
                Ok(()) => {
                    tracing::debug!(?variant, "CPU noise: computed in-process, as libtorch does");
                    return Some(variant);
                }
                Err(why) => reasons.push(format!("{variant:?}: {why}")),
            }
        }
        tracing::warn!(
            reasons = %reasons.join("; "),
            "CPU noise: libtorch's randn matches no known kernel; falling back to libtorch's \
             global generator with replay (slower for batches)"
        );
        None
    })
}

/// The comparison behind [`libtorch_box_muller`]; the caller holds the global generator.
fn compare_with_libtorch(variant: BoxMuller) -> Result<(), String> {
    // Rare last-bit differences need many numbers to show: a wrong fused multiply-add in the
    // logarithm changed 2 of 16384. So the check includes SD-size latents (4 x 64 x 64).
    const SIZES: [usize; 13] = [1, 3, 16, 5, 17, 31, 2, 48, 100, 15, 1024, 257, 16384];
    for seed in [0u64, 1, 42, 0xffff_ffff, 1 << 40, 987_654_321] {
        tch::manual_seed(seed as i64);
        let mut native = TorchCpuRng::new(seed);
        for n in SIZES {
            let want = Tensor::f_randn([n as i64], (Kind::Float, Device::Cpu))
                .and_then(|t| Vec::<f32>::try_from(&t))
                .map_err(|e| e.to_string())?;
            let got = native.randn_f32(n, variant);
            let same = want.len() == got.len()
                && want
                    .iter()
                    .zip(&got)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
            if !same {
                return Err(format!("seed {seed}: {n} numbers differ"));
            }
        }
    }
    Ok(())
}

/// The equivalent of `torch.Generator().manual_seed(seed)`: an independent CPU random stream.
#[derive(Debug)]
pub struct CpuGenerator {
    id: u64,
    seed: u64,
    /// This stream's own state while it is computed in-process; `None` once it continues on
    /// libtorch's global generator (fallback, see the module doc).
    native: Option<TorchCpuRng>,
    /// Every draw so far (shape, kind), replayed to restore the stream on the global generator.
    history: Vec<(Vec<i64>, Kind)>,
}

impl CpuGenerator {
    /// A fresh stream seeded like `torch.Generator().manual_seed(seed)`.
    pub fn new(seed: u64) -> Self {
        Self {
            id: NEXT_GENERATOR_ID.fetch_add(1, Ordering::Relaxed),
            seed,
            native: Some(TorchCpuRng::new(seed)),
            history: Vec::new(),
        }
    }

    /// The same stream, always drawn from libtorch's global generator with replay: the reference
    /// the in-process path is tested against, and the "before" of the noise benchmark.
    pub fn new_replaying(seed: u64) -> Self {
        Self {
            native: None,
            ..Self::new(seed)
        }
    }

    /// The seed this stream started from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// True while the stream is computed in-process (no lock, no replay).
    pub fn is_native(&self) -> bool {
        self.native.is_some() && libtorch_box_muller().is_some()
    }

    /// `torch.randn(shape, generator=self, dtype=kind)` on the CPU.
    pub fn randn_cpu(&mut self, shape: &[i64], kind: Kind) -> Result<Tensor, EngineError> {
        if kind == Kind::Float
            && let Some(transform) = libtorch_box_muller()
            && let Some(native) = self.native.as_mut()
        {
            let numel = shape.iter().try_fold(1usize, |acc, &d| {
                usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
            });
            let numel = numel.ok_or_else(|| {
                EngineError::InvalidInput(format!("cannot draw noise of shape {shape:?}"))
            })?;
            let values = native.randn_f32(numel, transform);
            self.history.push((shape.to_vec(), kind));
            return Ok(Tensor::f_from_slice(&values)?.f_view(shape)?);
        }
        // From here on this stream lives on the global generator (the replay below restores
        // whatever was drawn in-process so far).
        self.native = None;
        self.randn_replaying(shape, kind)
    }

    fn randn_replaying(&mut self, shape: &[i64], kind: Kind) -> Result<Tensor, EngineError> {
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

    /// libtorch's own `randn` on the global generator for `seed`, draw after draw.
    fn libtorch_draws(seed: u64, sizes: &[usize]) -> Vec<Vec<f32>> {
        with_global_cpu_rng(|| {
            tch::manual_seed(seed as i64);
            sizes
                .iter()
                .map(|&n| values(&Tensor::randn([n as i64], (Kind::Float, Device::Cpu))))
                .collect()
        })
    }

    #[test]
    fn in_process_randn_is_bit_identical_to_libtorch_over_seeds_and_sizes() {
        // x86-64 libtorch has the two kernels modelled here (ATEN_CPU_CAPABILITY=default, and
        // avx2/avx512); elsewhere the fallback must be in use instead.
        let Some(variant) = libtorch_box_muller() else {
            assert_ne!(
                std::env::consts::ARCH,
                "x86_64",
                "no Box-Muller variant matches libtorch"
            );
            assert!(!CpuGenerator::new(1).is_native());
            return;
        };
        eprintln!("libtorch's float randn here: {variant:?}");
        // Sizes around every boundary of the kernel (1, odd counts for the cached Box-Muller
        // half, 15/16/17, multiples of 16 and not) and random ones, in random sequences, so the
        // generator state carried between draws is covered too.
        let mut lcg = 0x2545_f491_4f6c_dd1du64;
        let mut next = |bound: u64| {
            lcg = lcg
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (lcg >> 33) % bound
        };
        let mut checked = 0usize;
        let mut mismatches = Vec::new();
        for case in 0..60 {
            let seed = match case {
                0 => 0,
                1 => u64::MAX,
                2 => 0xffff_ffff,
                3 => 1 << 32,
                _ => next(u64::from(u32::MAX)) * (1 + next(1 << 20)),
            };
            let sizes: Vec<usize> = (0..1 + next(12))
                .map(|_| match next(4) {
                    0 => 1 + next(17) as usize,
                    1 => 16 * (1 + next(8) as usize),
                    2 => 1 + next(3000) as usize,
                    _ => 4 * 64 * 64,
                })
                .collect();
            let want = libtorch_draws(seed, &sizes);
            let mut native = TorchCpuRng::new(seed);
            for (n, want) in sizes.iter().zip(&want) {
                let got = native.randn_f32(*n, variant);
                checked += n;
                let same = got.len() == want.len()
                    && got
                        .iter()
                        .zip(want)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                if !same {
                    let bad: Vec<(usize, f32, f32)> = got
                        .iter()
                        .zip(want)
                        .enumerate()
                        .filter(|(_, (a, b))| a.to_bits() != b.to_bits())
                        .map(|(i, (a, b))| (i, *a, *b))
                        .take(3)
                        .collect();
                    let count = got
                        .iter()
                        .zip(want)
                        .filter(|(a, b)| a.to_bits() != b.to_bits())
                        .count();
                    mismatches.push(format!(
                        "seed {seed} sizes {sizes:?}: draw of {n}: {count} differ, first {bad:?}"
                    ));
                }
            }
        }
        assert!(checked > 100_000, "{checked}");
        assert!(mismatches.is_empty(), "{variant:?}: {mismatches:#?}");
        assert!(CpuGenerator::new(1).is_native());
    }

    #[test]
    fn in_process_and_replaying_generators_agree_interleaved() {
        // B streams drawn round-robin, as the batch loop does, both ways; plus a non-float draw
        // in the middle, which moves an in-process stream onto libtorch's generator.
        let seeds = [3u64, 9, 27, 81];
        let mut fast: Vec<CpuGenerator> = seeds.iter().map(|&s| CpuGenerator::new(s)).collect();
        let mut slow: Vec<CpuGenerator> = seeds
            .iter()
            .map(|&s| CpuGenerator::new_replaying(s))
            .collect();
        for step in 0..6 {
            let shape = [1, 4, 3 + step, 5];
            for (f, s) in fast.iter_mut().zip(slow.iter_mut()) {
                let kind = if step == 3 && f.seed() == 9 {
                    Kind::Double
                } else {
                    Kind::Float
                };
                let a = f.randn_cpu(&shape, kind).unwrap().to_kind(Kind::Double);
                let b = s.randn_cpu(&shape, kind).unwrap().to_kind(Kind::Double);
                assert_eq!(a.size(), b.size());
                let (a, b) = (
                    Vec::<f64>::try_from(&a.flatten(0, -1)).unwrap(),
                    Vec::<f64>::try_from(&b.flatten(0, -1)).unwrap(),
                );
                assert!(
                    a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "seed {} step {step}",
                    f.seed()
                );
            }
        }
        assert!(
            !fast[1].is_native(),
            "a double draw moves the stream to libtorch"
        );
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
