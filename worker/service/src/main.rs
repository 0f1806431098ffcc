//! The `inpaint-worker` command line.

use clap::{Parser, Subcommand};
use inpaint_engine::DeviceSpec;
use inpaint_queue::BrokerConfig;
use inpaint_storage::{S3Config, StorageConfig};
use inpaint_worker::smoke::{SmokeSettings, run_smoke};

#[derive(Parser)]
#[command(version, about = "Queue-driven Stable Diffusion 1.5 inpainting worker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Smoke {
            amqp_url,
            s3_endpoint,
            s3_region,
            bucket,
            device,
        } => {
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
            #[allow(clippy::print_stdout)]
            {
                println!("{}", serde_json::to_string_pretty(&report)?);
            }
        }
    }
    Ok(())
}
