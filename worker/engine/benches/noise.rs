//! Cost of the stochastic schedulers' noise for a batch of B images over S steps, the way the
//! pipeline draws it (one generator per image, one `[1, 4, 64, 64]` draw per image and step, the
//! images round-robin): libtorch's global generator with replay (before) against the in-process
//! generators (after). `cargo bench -p inpaint-engine --bench noise [-- B S]`.

#![allow(clippy::print_stdout)]

use std::time::Instant;

use inpaint_engine::schedulers::{CpuGenerator, Generators, NoiseSource};
use tch::{Device, Kind, Tensor};

fn run(mut generators: Generators, steps: usize) -> (f64, Tensor) {
    let batch = generators.0.len() as i64;
    let start = Instant::now();
    let mut last = Tensor::zeros([1], (Kind::Float, Device::Cpu));
    for _ in 0..steps {
        last = generators
            .randn(&[batch, 4, 64, 64], Kind::Float, Device::Cpu)
            .expect("randn");
    }
    (start.elapsed().as_secs_f64(), last)
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let batch = args.first().copied().unwrap_or(16);
    let steps = args.get(1).copied().unwrap_or(50);
    let seeds: Vec<u64> = (0..batch as u64).map(|i| 1000 + i).collect();

    let replaying = Generators(
        seeds
            .iter()
            .map(|&s| CpuGenerator::new_replaying(s))
            .collect(),
    );
    let (before, a) = run(replaying, steps);
    let native = Generators::from_seeds(&seeds);
    let in_process = native.0.first().is_some_and(CpuGenerator::is_native);
    let (after, b) = run(native, steps);
    let same = a.equal(&b);
    println!(
        "noise for B={batch} images x S={steps} steps ([1,4,64,64] per image and step): \
         replay {before:.3} s ({:.2} ms/step), in-process {after:.3} s ({:.2} ms/step), \
         {:.1}x; in-process path active: {in_process}; last step identical: {same}",
        before * 1e3 / steps as f64,
        after * 1e3 / steps as f64,
        before / after.max(1e-9),
    );
    assert!(same, "the two paths drew different noise");
}
