//! `inpaint-worker submit`: publish one job, optionally wait for its result.

use std::path::PathBuf;
use std::time::Duration;

use inpaint_worker::settings::Settings;
use inpaint_worker::submit::{SubmitRequest, submit};

/// Arguments of `submit`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The worker's configuration file (broker, storage, topology names).
    #[arg(long, env = "INPAINT_CONFIG")]
    config: Option<PathBuf>,
    /// A job file (JSON); without it a minimal job is built from the options.
    #[arg(long)]
    job: Option<PathBuf>,
    /// The image: s3://bucket/key or a local file to upload.
    #[arg(long)]
    image: Option<String>,
    /// The mask: s3://bucket/key or a local file to upload.
    #[arg(long)]
    mask: Option<String>,
    /// The prompt (replaces the job file's).
    #[arg(long)]
    prompt: Option<String>,
    /// Bucket for uploads (default: the first of allow.read_buckets).
    #[arg(long)]
    upload_bucket: Option<String>,
    /// Output bucket when the job names none (default: the first of allow.write_buckets).
    #[arg(long)]
    output_bucket: Option<String>,
    /// Wait up to this many seconds for the result and print it.
    #[arg(long)]
    wait: Option<u64>,
}

/// Publishes the job; prints the result when waiting for it, else the job id.
#[allow(
    clippy::print_stdout,
    reason = "the command's output is its result on stdout"
)]
pub async fn run(args: Args) -> anyhow::Result<()> {
    let settings = Settings::load(args.config.as_deref())?;
    super::init_tracing(settings.logging.format, &settings.logging.filter);
    let request = SubmitRequest {
        job_file: args.job,
        image: args.image,
        mask: args.mask,
        prompt: args.prompt,
        upload_bucket: args.upload_bucket,
        output_bucket: args.output_bucket,
        wait: args.wait.map(Duration::from_secs),
    };
    let (job_id, result) = submit(&settings, &request).await?;
    match result {
        Some(result) => println!("{}", serde_json::to_string_pretty(&result)?),
        None => println!("{job_id}"),
    }
    Ok(())
}
