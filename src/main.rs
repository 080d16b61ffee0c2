//! The `hawser` binary: parses the command line and hands over to the library.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use hawser::cli::Cli;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hawser: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(hawser::commands::run(cli.command, cli.log_format)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hawser: {}", hawser::commands::error_line(&e));
            ExitCode::FAILURE
        }
    }
}
