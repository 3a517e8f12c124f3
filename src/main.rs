//! The `gateway` binary: parses arguments and hands over to `hookgate::cli`.
//!
//! The allocator is mimalloc: loading 100,000 rules is more than twice as fast as with the system
//! allocator, whose frees dominated the profile (`docs/performance.md`).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // One-shot commands (`check`, `test`, ...) exit soon: returning memory would only cost them time.
    let serving = std::env::args_os()
        .skip(1)
        .find(|a| !a.to_string_lossy().starts_with('-'))
        .is_some_and(|a| a == "serve");
    if serving {
        hookgate::memory::tune_for_serving();
    }
    hookgate::cli::main()
}
