//! `inpaint-worker smoke`: one round trip through RabbitMQ, S3 and libtorch, to check a
//! deployment ([`inpaint_worker::smoke`] does the work).

use inpaint_engine::DeviceSpec;
use inpaint_queue::BrokerConfig;
use inpaint_storage::{S3Config, StorageConfig};
use inpaint_worker::settings::LogFormat;
use inpaint_worker::smoke::{SmokeSettings, run_smoke};

/// Arguments of `smoke`.
#[derive(clap::Args, Debug)]
pub struct Args {
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
}

/// Runs the round trip and prints its report.
#[allow(
    clippy::print_stdout,
    reason = "the command's output is its result on stdout"
)]
pub async fn run(args: Args) -> anyhow::Result<()> {
    super::init_tracing(LogFormat::Text, "");
    let settings = SmokeSettings {
        broker: BrokerConfig {
            url: args.amqp_url,
            ..BrokerConfig::default()
        },
        storage: StorageConfig::S3(S3Config {
            allow_http: args.s3_endpoint.starts_with("http://"),
            endpoint: Some(args.s3_endpoint),
            region: Some(args.s3_region),
            path_style: true,
            ..S3Config::default()
        }),
        bucket: args.bucket,
        device: args.device,
    };
    let report = run_smoke(&settings).await?;
    tracing::info!(job_id = %report.job_id, elapsed_ms = report.elapsed_ms, "smoke run passed");
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
