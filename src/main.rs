//! The `hubroute` binary: a thin command-line shell over the workspace crates.
//!
//! Each subcommand lives in its own module under `cli/` and only parses arguments, wires crates
//! together and reports; all behaviour lives in the library crates so tests can drive it directly.

mod allocator;
mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    allocator::tune_for_a_long_running_service();
    let args = cli::Cli::parse();
    cli::init_tracing(args.log_format, args.default_log_filter());
    match cli::run(args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
