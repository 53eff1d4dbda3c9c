//! `bamf`: the BAMF command-line client (see the `bamf_cli` crate).

fn main() -> std::process::ExitCode {
    bamf_cli::main()
}
