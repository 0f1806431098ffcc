//! `bench --compare-cpu`: the tiny parity case on a device and precision against the CPU in
//! f32, as a number a GPU host can be held to.

use inpaint_engine::model_folder::LoadOptions;
use inpaint_engine::pipeline::InpaintPipeline;
use inpaint_engine::schedulers::SchedulerKind;
use serde::Serialize;

use super::{BenchArgs, BenchError, continue_always, job};
use crate::settings::embedded_tiny_folder;

/// What `--compare-cpu` measured.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    pub device: String,
    pub precision: String,
    /// Per scheduler: (name, mean absolute difference, largest absolute difference), levels.
    pub schedulers: Vec<(String, f64, u8)>,
    /// The largest mean over the schedulers.
    pub worst_mean: f64,
    pub tolerance: f64,
    pub passed: bool,
}

/// Runs the tiny parity case on the CPU in f32 and as `args` says, and compares the images.
pub fn compare_cpu(args: &BenchArgs) -> Result<Comparison, BenchError> {
    let folder = embedded_tiny_folder()?;
    let reference = InpaintPipeline::load(&folder, &LoadOptions::default())?;
    let options = args.options()?;
    let device = options.device;
    let candidate = InpaintPipeline::load(&folder, &options)?;
    let mut schedulers = Vec::new();
    for scheduler in SchedulerKind::ALL {
        let mut spec = job(64, 64, 8, 3);
        spec.scheduler = scheduler;
        let a = reference.run_job(&spec, &mut continue_always)?;
        let b = candidate.run_job(&spec, &mut continue_always)?;
        let (mut sum, mut count, mut largest) = (0u64, 0u64, 0u8);
        for (x, y) in a.images.iter().zip(&b.images) {
            for (p, q) in x.as_raw().iter().zip(y.as_raw()) {
                let d = p.abs_diff(*q);
                sum += u64::from(d);
                count += 1;
                largest = largest.max(d);
            }
        }
        schedulers.push((
            scheduler.to_string(),
            sum as f64 / count.max(1) as f64,
            largest,
        ));
    }
    let worst_mean = schedulers.iter().map(|s| s.1).fold(0.0, f64::max);
    Ok(Comparison {
        device: format!("{device:?}"),
        precision: candidate.precision_summary(),
        schedulers,
        worst_mean,
        tolerance: args.tolerance,
        passed: worst_mean <= args.tolerance,
    })
}

impl Comparison {
    /// The lines `bench --compare-cpu` prints.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut out = format!(
            "tiny parity case on {} in {} against the CPU in f32 (mean / largest |difference|, levels):\n",
            self.device, self.precision
        );
        for (name, mean, largest) in &self.schedulers {
            let _ = writeln!(out, "  {name:<16} {mean:>7.3} {largest:>4}");
        }
        let _ = writeln!(
            out,
            "worst mean {:.3}, tolerance {:.3}: {}",
            self.worst_mean,
            self.tolerance,
            if self.passed { "passed" } else { "FAILED" }
        );
        out
    }
}
