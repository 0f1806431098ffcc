//! The binary's subcommands, one module each: its arguments (`Args`, clap) and its `run`. Only
//! `main.rs` compiles these modules; what a command does lives in the library (`run`,
//! [`inpaint_worker::submit`], [`inpaint_worker::inpaint_cli`], ...), so tests reach it without
//! the command line.

pub mod bench;
pub mod inpaint;
pub mod run;
pub mod schema;
pub mod smoke;
pub mod submit;
pub mod watermark;

use inpaint_worker::settings::LogFormat;

/// Logs to stderr in `format`; `RUST_LOG` wins over `filter`, an empty `filter` means the
/// default (`info`, lapin off).
pub fn init_tracing(format: LogFormat, filter: &str) {
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
