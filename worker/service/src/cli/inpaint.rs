//! `inpaint-worker inpaint`: one job on local files through the worker's flow (the arguments are
//! [`InpaintArgs`], defined with the command in [`inpaint_worker::inpaint_cli`]).

use inpaint_worker::inpaint_cli::{InpaintArgs, inpaint, result_path};
use inpaint_worker::settings::LogFormat;

/// Runs the job; prints each written image's path, then the result file's.
#[allow(
    clippy::print_stdout,
    reason = "the command's output is its result on stdout"
)]
pub async fn run(args: &InpaintArgs) -> anyhow::Result<()> {
    super::init_tracing(LogFormat::Text, "");
    let (written, _) = inpaint(args).await?;
    for path in written {
        println!("{}", path.display());
    }
    println!("{}", result_path(&args.output).display());
    Ok(())
}
