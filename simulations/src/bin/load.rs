//! `panshi-load`: the load harness. Everything lives in `panshi_simulations::load`; this
//! file parses the command line, builds the runtime and turns the outcome into an exit code.

use std::process::ExitCode;

use clap::Parser;
use panshi_simulations::load::{self, cli::Cli};

fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = cli.validate() {
        eprintln!("panshi-load: {error:#}");
        return ExitCode::from(2);
    }
    let runtime = match runtime(cli.load.threads) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("panshi-load: building the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(load::run(cli, load::command_line())) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("panshi-load: a check failed");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("panshi-load: {error:#}");
            ExitCode::FAILURE
        }
    }
}
