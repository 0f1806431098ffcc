//! Peak host memory of loading one component of a diffusers folder (item: weights load without
//! doubling memory). Prints the weights file size and the process's VmHWM after loading.
//!
//!   cargo run --release -p inpaint-engine --example load_rss -- FOLDER unet|vae|text_encoder

#![allow(clippy::print_stdout)]

use std::path::PathBuf;

use inpaint_engine::model_folder::{LoadOptions, load_text_encoder, load_unet, load_vae};

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let folder = PathBuf::from(args.next().ok_or("FOLDER")?);
    let component = args.next().ok_or("unet|vae|text_encoder")?;
    let file = match component.as_str() {
        "text_encoder" => folder.join("text_encoder/model.safetensors"),
        other => folder
            .join(other)
            .join("diffusion_pytorch_model.safetensors"),
    };
    let size = std::fs::metadata(&file)?.len();
    let before = vm_hwm_kib();
    let options = LoadOptions::default();
    match component.as_str() {
        "unet" => drop(load_unet(&folder, &options)?),
        "vae" => drop(load_vae(&folder, &options)?),
        "text_encoder" => drop(load_text_encoder(&folder, &options)?),
        other => return Err(format!("unknown component {other}").into()),
    }
    let peak = vm_hwm_kib();
    println!(
        "{component}: file {:.0} MiB, VmHWM before load {:.0} MiB, after load {:.0} MiB, ratio peak/file {:.2}",
        size as f64 / 1048576.0,
        before as f64 / 1024.0,
        peak as f64 / 1024.0,
        peak as f64 * 1024.0 / size as f64
    );
    Ok(())
}
