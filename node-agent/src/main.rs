//! `vllm-node-agent`: publishes what NVML sees on this node's GPUs, and launches vLLM in a pod.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "vllm-node-agent",
    version,
    about = "NVML reporter and vLLM launcher for vllm-operator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Poll NVML and publish this node's GpuNode.
    Run,
    /// Print the GPUs as the GpuNode status would carry them.
    Probe,
    /// Fix --gpu-memory-utilization from NVML and exec the command.
    Launch,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    eprintln!("vllm-node-agent: {:?} is not implemented yet", cli.command);
    ExitCode::from(1)
}
