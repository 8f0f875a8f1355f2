use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    campaign_push::failpoint::setup();
    match campaign_push::cli::Cli::parse().run() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
