fn main() -> std::process::ExitCode {
    vllm_operator::cli::main()
}
