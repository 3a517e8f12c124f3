//! The `gateway` binary: parses arguments and hands over to `hookgate::cli`.

fn main() -> std::process::ExitCode {
    hookgate::cli::main()
}
