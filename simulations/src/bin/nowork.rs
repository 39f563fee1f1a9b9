//! `panshi-nowork`: the purchase endpoints with fixed answers, the ceiling Panshi is
//! measured against (`panshi_simulations::nowork`). Takes `serve --listen ADDR` like
//! `panshi`, so `panshi-load` can spawn either; other arguments (`--data`) are ignored.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use panshi_simulations::nowork;

#[derive(Parser, Debug)]
#[command(
    name = "panshi-nowork",
    about = "Panshi's purchase endpoints with fixed answers and no work: the HTTP ceiling"
)]
struct Cli {
    /// Accepted for the command line `panshi serve` takes.
    #[arg(value_parser = ["serve"])]
    command: Option<String>,
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Accepted and ignored: the no-work server keeps nothing.
    #[arg(long)]
    data: Option<std::path::PathBuf>,
    /// actix worker threads; 0 means one per core, as Panshi's default.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=nowork::WORKERS_MAX as u64))]
    workers: u64,
}

// The same allocator as `panshi`, so the ceiling is measured on equal terms.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Like `panshi`: no transparent huge pages (their zeroing cost a fifth of the CPU in a
    // flash sale's opening), so the ceiling is measured on equal terms.
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    let cli = Cli::parse();
    let workers = match cli.workers {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n as usize,
    };
    let served = nowork::listen(cli.listen).and_then(|listener| nowork::serve(listener, workers));
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("panshi-nowork: {error}");
            ExitCode::FAILURE
        }
    }
}
