fn main() -> std::process::ExitCode {
    sbctl::main()
}
