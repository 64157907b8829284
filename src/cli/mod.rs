//! The `vllm-operator` command line: thin wiring over the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

pub mod estimate;
pub mod plan;
pub mod render;
pub mod run;
pub mod simulate;

/// Exit code for bad input (unreadable files, malformed resources, unknown flags values).
pub const EXIT_BAD_INPUT: u8 = 1;
/// Exit code for a well-formed request that cannot be satisfied (invalid shape, unplaced replica).
pub const EXIT_INFEASIBLE: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "vllm-operator",
    version,
    about = "Places vLLM servers on GPUs by measured free memory"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the controller against the cluster in the current kubeconfig.
    Run(run::RunArgs),
    /// Print the CustomResourceDefinitions as YAML.
    Crd {
        /// Write one file per CRD into each of these directories instead of printing.
        #[arg(long = "out-dir")]
        out_dirs: Vec<PathBuf>,
    },
    /// Memory breakdown of one model and shape, as vLLM will count it.
    Estimate(estimate::EstimateArgs),
    /// Place VllmDeployments on a fleet file and print the decisions.
    Plan(plan::PlanArgs),
    /// Print every object the controller would create or update for VllmDeployments placed
    /// on a fleet file (Service, released Pods), as one YAML `List` or JSON.
    Render(render::RenderArgs),
    /// Run the controller's decision loop on an in-memory cluster until it settles.
    Simulate(simulate::SimulateArgs),
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Json,
    Table,
}

pub fn main() -> ExitCode {
    // clap exits 2 on a usage error; here 2 means "does not fit", so a bad flag is bad input.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    match cli.command {
        Command::Crd { out_dirs } => crd(&out_dirs),
        Command::Estimate(args) => estimate::run(&args),
        Command::Plan(args) => plan::run(&args),
        Command::Render(args) => render::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Simulate(args) => simulate::run_command(&args),
    }
}

/// Print clap's message; `--help` and `--version` succeed, anything else is bad input.
pub fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let _ = e.print();
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
        _ => ExitCode::from(EXIT_BAD_INPUT),
    }
}

fn crd(out_dirs: &[PathBuf]) -> ExitCode {
    if !out_dirs.is_empty() {
        return match crate::crdgen::write_crd_files(out_dirs) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vllm-operator crd: {e}");
                ExitCode::from(EXIT_BAD_INPUT)
            }
        };
    }
    match crate::crdgen::all_crds_yaml() {
        Ok(text) => {
            let mut out = std::io::stdout().lock();
            if let Err(e) = out.write_all(text.as_bytes()) {
                eprintln!("vllm-operator crd: cannot write to stdout: {e}");
                return ExitCode::from(EXIT_BAD_INPUT);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vllm-operator crd: cannot render the CRDs as YAML: {e}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}

/// Write command output to stdout; a closed pipe (`| head`) is not an error worth a panic.
pub fn emit(text: &str) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("vllm-operator: cannot write to stdout: {e}");
    }
}
