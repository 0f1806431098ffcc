//! The `inpaint-worker` command line: parse, set up logging, load settings, hand over to the
//! library.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use inpaint_engine::DeviceSpec;
use inpaint_queue::BrokerConfig;
use inpaint_storage::{S3Config, StorageConfig};
use inpaint_worker::inpaint_cli::{InpaintArgs, inpaint, result_path};
use inpaint_worker::settings::{LogFormat, Settings};
use inpaint_worker::smoke::{SmokeSettings, run_smoke};
use inpaint_worker::submit::{SubmitRequest, submit};
use inpaint_worker::watermark_cli::WatermarkAction;

#[derive(Parser)]
#[command(version, about = "Queue-driven Stable Diffusion 1.5 inpainting worker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume jobs until SIGTERM/SIGINT.
    Run {
        /// The configuration file (TOML); INPAINT__SECTION__KEY variables override it.
        #[arg(long, env = "INPAINT_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Publish one job, uploading local image and mask files first; optionally wait for the
    /// result and print it.
    Submit {
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
    },
    /// Print the JSON Schemas of the job and result messages.
    Schema,
    /// Inpaint local files without a broker: the worker's job flow, chain rules and encoder.
    Inpaint(Box<InpaintArgs>),
    /// Embed or detect the invisible watermark (dwtDct, as the invisible-watermark package).
    Watermark {
        #[command(subcommand)]
        action: WatermarkAction,
    },
    /// One round trip through RabbitMQ, S3 and libtorch, to check a deployment.
    Smoke {
        /// AMQP URL of the broker.
        #[arg(
            long,
            env = "INPAINT_AMQP_URL",
            default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
        )]
        amqp_url: String,
        /// S3 endpoint URL; credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
        #[arg(
            long,
            env = "INPAINT_S3_ENDPOINT",
            default_value = "http://127.0.0.1:3900"
        )]
        s3_endpoint: String,
        /// S3 region.
        #[arg(long, env = "INPAINT_S3_REGION", default_value = "garage")]
        s3_region: String,
        /// Bucket to write `smoke/<job id>/{input,output}.png` to.
        #[arg(long, env = "INPAINT_S3_BUCKET", default_value = "inpaint-dev")]
        bucket: String,
        /// Device for the libtorch step: auto, cpu, cuda or cuda:N.
        #[arg(long, default_value = "auto")]
        device: DeviceSpec,
    },
}

fn init_tracing(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        if filter.is_empty() {
            // lapin logs a lost connection at ERROR from its I/O loop; the same failure reaches
            // the worker as an Err, which it handles (reconnects) and logs once per outage.
            "info,lapin=off".into()
        } else {
            filter.into()
        }
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

#[allow(
    clippy::print_stdout,
    reason = "the command's output is its result on stdout"
)]
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run { config } => {
            let settings = Settings::load(config.as_deref())?;
            init_tracing(settings.logging.format, &settings.logging.filter);
            inpaint_worker::run(settings, inpaint_worker::shutdown_signal()).await?;
        }
        Command::Submit {
            config,
            job,
            image,
            mask,
            prompt,
            upload_bucket,
            output_bucket,
            wait,
        } => {
            let settings = Settings::load(config.as_deref())?;
            init_tracing(settings.logging.format, &settings.logging.filter);
            let request = SubmitRequest {
                job_file: job,
                image,
                mask,
                prompt,
                upload_bucket,
                output_bucket,
                wait: wait.map(Duration::from_secs),
            };
            let (job_id, result) = submit(&settings, &request).await?;
            match result {
                Some(result) => println!("{}", serde_json::to_string_pretty(&result)?),
                None => println!("{job_id}"),
            }
        }
        Command::Schema => {
            println!("{}", inpaint_job::job_schema_json());
            println!("{}", inpaint_job::result_schema_json());
        }
        Command::Inpaint(args) => {
            init_tracing(LogFormat::Text, "");
            let (written, _) = inpaint(&args).await?;
            for path in written {
                println!("{}", path.display());
            }
            println!("{}", result_path(&args.output).display());
        }
        Command::Watermark { action } => inpaint_worker::watermark_cli::run(action)?,
        Command::Smoke {
            amqp_url,
            s3_endpoint,
            s3_region,
            bucket,
            device,
        } => {
            init_tracing(LogFormat::Text, "");
            let settings = SmokeSettings {
                broker: BrokerConfig {
                    url: amqp_url,
                    ..BrokerConfig::default()
                },
                storage: StorageConfig::S3(S3Config {
                    allow_http: s3_endpoint.starts_with("http://"),
                    endpoint: Some(s3_endpoint),
                    region: Some(s3_region),
                    path_style: true,
                    ..S3Config::default()
                }),
                bucket,
                device,
            };
            let report = run_smoke(&settings).await?;
            tracing::info!(job_id = %report.job_id, elapsed_ms = report.elapsed_ms, "smoke run passed");
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
    }
    Ok(())
}
