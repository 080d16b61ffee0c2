//! The `hawser` binary: parses the command line and hands over to the library.
#![forbid(unsafe_code)]

use clap::Parser;

fn main() {
    let _cli = hawser::cli::Cli::parse();
}
