//! The `credproxy` binary; see `credproxy --help`.

fn main() -> std::process::ExitCode {
    credproxy::cli::main()
}
