//! `inpaint-worker watermark`: embed or detect the invisible watermark (the actions are
//! [`WatermarkAction`], defined with the command in [`inpaint_worker::watermark_cli`]).

use inpaint_worker::watermark_cli::WatermarkAction;

/// Arguments of `watermark`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    action: WatermarkAction,
}

/// Runs the action.
pub fn run(args: Args) -> anyhow::Result<()> {
    inpaint_worker::watermark_cli::run(args.action)?;
    Ok(())
}
