//! The `comfy-reality` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc rather than the C library's allocator: the job path allocates in
/// many small pieces from a few threads, where glibc's arenas cost 5-10% of the
/// runtime's CPU per job (PERFORMANCE.md, "mimalloc, descriptor names only").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = comfy_reality::cli::Cli::parse();
    match comfy_reality::cli::main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
