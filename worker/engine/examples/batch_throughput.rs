//! Images per second of N requests run one after another ([`InpaintPipeline::run`]) against the
//! same requests in one loop ([`InpaintPipeline::run_batch`]), on a model folder, CPU f32, and a
//! check that both give the same bits.
//!
//!     cargo run -p inpaint-engine --example batch_throughput -- MODEL_DIR [N] [STEPS] [SIZE]

#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::time::Instant;

use image::{GrayImage, Luma, Rgb, RgbImage};
use inpaint_engine::model_folder::LoadOptions;
use inpaint_engine::pipeline::{
    BatchItem, BatchNoise, InpaintPipeline, InpaintRequest, StepControl,
};
use inpaint_engine::schedulers::SchedulerKind;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let folder = PathBuf::from(args.first().ok_or("usage: MODEL_DIR [N] [STEPS] [SIZE]")?);
    let n: usize = args.get(1).map_or(Ok(8), |a| a.parse())?;
    let steps: usize = args.get(2).map_or(Ok(10), |a| a.parse())?;
    let size: u32 = args.get(3).map_or(Ok(64), |a| a.parse())?;
    let pipeline = InpaintPipeline::load(&folder, &LoadOptions::default())?;
    let requests: Vec<InpaintRequest> = (0..n)
        .map(|i| InpaintRequest {
            prompt: format!("request number {i}"),
            negative_prompt: None,
            image: Some(RgbImage::from_fn(size, size, |x, y| {
                Rgb([(x * 3 + i as u32) as u8, (y * 5) as u8, (x ^ y) as u8])
            })),
            mask: Some(GrayImage::from_fn(size, size, |x, _| {
                Luma([if x > size / 3 { 255 } else { 0 }])
            })),
            width: size,
            height: size,
            num_inference_steps: steps,
            guidance_scale: if i % 3 == 2 { 1.0 } else { 7.5 },
            strength: 1.0,
            eta: 0.0,
            scheduler: SchedulerKind::EulerAncestral,
            seeds: vec![i as u64],
            batch_noise: BatchNoise::PerImage,
        })
        .collect();
    let start = Instant::now();
    let mut alone = Vec::new();
    for r in &requests {
        alone.push(pipeline.run(r, &mut |_, _| StepControl::Continue)?);
    }
    let sequential = start.elapsed().as_secs_f64();
    let mut callbacks: Vec<_> = requests
        .iter()
        .map(|_| |_: usize, _: usize| StepControl::Continue)
        .collect();
    let mut items: Vec<BatchItem<'_, '_>> = requests
        .iter()
        .zip(callbacks.iter_mut())
        .map(|(request, on_step)| BatchItem { request, on_step })
        .collect();
    let start = Instant::now();
    let batched = pipeline.run_batch(&mut items)?;
    let together = start.elapsed().as_secs_f64();
    let mut identical = 0;
    for (a, b) in alone.iter().zip(batched) {
        if b.is_ok_and(|b| b.images == a.images && a.latents.equal(&b.latents)) {
            identical += 1;
        }
    }
    println!(
        "{} x {size}x{size}, {steps} steps, euler_ancestral, 2/3 with guidance: one by one \
         {sequential:.2} s ({:.2} images/s), one batch {together:.2} s ({:.2} images/s), \
         {:.2}x; bit-identical {identical}/{n}",
        folder.display(),
        n as f64 / sequential,
        n as f64 / together,
        sequential / together,
    );
    Ok(())
}
