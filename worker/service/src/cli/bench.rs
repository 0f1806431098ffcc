//! `inpaint-worker bench`: size this machine (see [`inpaint_worker::bench`]).

use inpaint_worker::bench::{self, BenchArgs};
use inpaint_worker::settings::LogFormat;

/// Runs the bench (or `--compare-cpu`) and prints its table or JSON; `--compare-cpu` fails when
/// the images are further apart than the tolerance.
#[allow(
    clippy::print_stdout,
    reason = "the command's output is its result on stdout"
)]
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    super::init_tracing(LogFormat::Text, "warn");
    if args.compare_cpu {
        let comparison =
            tokio::task::spawn_blocking(move || bench::compare_cpu(&args).map(|c| (c, args.json)))
                .await??;
        let (comparison, json) = comparison;
        if json {
            println!("{}", serde_json::to_string_pretty(&comparison)?);
        } else {
            print!("{}", comparison.table());
        }
        anyhow::ensure!(
            comparison.passed,
            "mean difference {:.3} above the tolerance {:.3}",
            comparison.worst_mean,
            comparison.tolerance
        );
        return Ok(());
    }
    let (report, args) =
        tokio::task::spawn_blocking(move || bench::run(&args).map(|r| (r, args))).await??;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}
