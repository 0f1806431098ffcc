//! The `inpaint-worker` command line: parses the arguments and hands them to the subcommand's
//! module in [`cli`]. A new subcommand is one module there, one variant here and one match arm.

mod cli;

use clap::{Parser, Subcommand};
use inpaint_worker::inpaint_cli::InpaintArgs;

#[derive(Parser)]
#[command(version, about = "Queue-driven Stable Diffusion 1.5 inpainting worker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume jobs until SIGTERM/SIGINT.
    Run(cli::run::Args),
    /// Publish one job, uploading local image and mask files first; optionally wait for the
    /// result and print it.
    Submit(cli::submit::Args),
    /// Print the JSON Schemas of the job and result messages.
    Schema,
    /// Inpaint local files without a broker: the worker's job flow, chain rules and encoder.
    Inpaint(Box<InpaintArgs>),
    /// Embed or detect the invisible watermark (dwtDct, as the invisible-watermark package).
    Watermark(cli::watermark::Args),
    /// One round trip through RabbitMQ, S3 and libtorch, to check a deployment.
    Smoke(cli::smoke::Args),
    /// Measure this machine: load, text encoder, UNet step per batch size, VAE, images/s,
    /// memory; a backlog through the batching inference thread; or a device-vs-CPU comparison.
    Bench(Box<inpaint_worker::bench::BenchArgs>),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => cli::run::run(args).await,
        Command::Submit(args) => cli::submit::run(args).await,
        Command::Schema => cli::schema::run(),
        Command::Inpaint(args) => cli::inpaint::run(&args).await,
        Command::Watermark(args) => cli::watermark::run(args),
        Command::Smoke(args) => cli::smoke::run(args).await,
        Command::Bench(args) => cli::bench::run(*args).await,
    }
}
