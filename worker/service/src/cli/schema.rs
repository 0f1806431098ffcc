//! `inpaint-worker schema`: print the JSON Schemas of the job and result messages.

/// Prints the job schema, then the result schema.
#[allow(
    clippy::print_stdout,
    reason = "the command's output is its result on stdout"
)]
pub fn run() -> anyhow::Result<()> {
    println!("{}", inpaint_job::job_schema_json());
    println!("{}", inpaint_job::result_schema_json());
    Ok(())
}
