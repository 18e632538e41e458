//! The `credproxy` binary; see `credproxy --help`.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    credproxy::cli::main()
}
