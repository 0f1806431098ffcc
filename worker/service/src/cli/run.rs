//! `inpaint-worker run`: consume jobs until SIGTERM/SIGINT.

use std::path::PathBuf;

use inpaint_worker::settings::Settings;

/// Arguments of `run`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The configuration file (TOML); INPAINT__SECTION__KEY variables override it.
    #[arg(long, env = "INPAINT_CONFIG")]
    config: Option<PathBuf>,
}

/// Loads the settings, starts logging as they say and runs the worker until a shutdown signal.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let settings = Settings::load(args.config.as_deref())?;
    super::init_tracing(settings.logging.format, &settings.logging.filter);
    inpaint_worker::run(settings, inpaint_worker::shutdown_signal()).await?;
    Ok(())
}
