//! `vllm-node-agent`: publishes what NVML sees on this node's GPUs, and launches vLLM in a pod.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use vllm_node_agent::agent::{AgentConfig, run};
use vllm_node_agent::launch::{
    self, Decision, EXIT_INSUFFICIENT, PLAN_ENV, decide, format_utilization, refusal_line,
    rewrite_args, select_gpus,
};
use vllm_node_agent::nvml::{DEFAULT_LIB, GpuInventory, LIB_ENV, NvmlInventory};
use vllm_node_agent::publish::Thresholds;
use vllm_operator::api::GpuInfo;
use vllm_operator::fit::LaunchPlan;

#[derive(Parser, Debug)]
#[command(
    name = "vllm-node-agent",
    version,
    about = "NVML reporter and vLLM launcher for vllm-operator"
)]
struct Cli {
    /// Path of the NVML library.
    #[arg(long, global = true, env = LIB_ENV, default_value = DEFAULT_LIB)]
    nvml_lib: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Poll NVML and publish this node's GpuNode.
    Run(RunArgs),
    /// Print the GPUs as the GpuNode status would carry them.
    Probe {
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Json)]
        output: Output,
        /// Read NVML this many times and print CPU time per read and peak RSS (benchmark).
        #[arg(long, hide = true)]
        bench_polls: Option<u32>,
    },
    /// Fix --gpu-memory-utilization from NVML and exec the command.
    Launch(LaunchArgs),
    /// Copy this binary to DEST (the vLLM pod's init container; the image has no `cp`).
    Install { dest: PathBuf },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    #[arg(long, default_value_t = 1000)]
    poll_interval_ms: u64,
    #[arg(long, default_value_t = 30)]
    heartbeat_seconds: u64,
    #[arg(long, default_value_t = 268_435_456)]
    threshold_bytes: u64,
    #[arg(long, default_value_t = 1.0)]
    threshold_percent: f64,
    #[arg(long, default_value = "0.0.0.0:9400")]
    metrics_addr: SocketAddr,
    #[arg(long, default_value = "/var/lib/kubelet/pod-resources/kubelet.sock")]
    pod_resources_socket: PathBuf,
    #[arg(long, default_value = "/proc")]
    proc_root: PathBuf,
}

#[derive(clap::Args, Debug)]
struct LaunchArgs {
    /// The LaunchPlan JSON written by the controller.
    #[arg(long, env = PLAN_ENV)]
    plan: Option<String>,
    /// A file holding the LaunchPlan JSON (the controller's `vllm-operator.io/launch-plan`
    /// annotation through a downward-API volume); wins over --plan.
    #[arg(long)]
    plan_file: Option<PathBuf>,
    /// A file holding a JSON array of arguments appended to the command (the controller's
    /// `vllm-operator.io/args` annotation).
    #[arg(long)]
    args_file: Option<PathBuf>,
    /// A file holding the planned GPU UUIDs, comma separated (the controller's
    /// `vllm-operator.io/gpu-uuids` annotation, set on the DRA path): the launcher refuses
    /// to start when NVML shows other GPUs. Empty or absent: no check.
    #[arg(long)]
    gpu_uuids_file: Option<PathBuf>,
    #[arg(long, default_value = "/dev/termination-log")]
    termination_log: PathBuf,
    /// The command to exec, e.g. `vllm serve MODEL ...`.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Output {
    Json,
    Table,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Probe {
            output,
            bench_polls,
        } => probe(&cli.nvml_lib, output, bench_polls),
        Command::Launch(args) => launch_cmd(&cli.nvml_lib, args),
        Command::Install { dest } => match launch::install(&dest) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vllm-node-agent install {}: {e}", dest.display());
                ExitCode::from(1)
            }
        },
        Command::Run(args) => run_cmd(&cli.nvml_lib, args),
    }
}

fn probe(lib: &str, output: Output, bench_polls: Option<u32>) -> ExitCode {
    let inventory = match NvmlInventory::open(lib) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("vllm-node-agent: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(n) = bench_polls {
        return bench(&inventory, n);
    }
    let snapshot = match inventory.snapshot() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vllm-node-agent: {e}");
            return ExitCode::from(1);
        }
    };
    match output {
        Output::Json => match serde_json::to_string_pretty(&snapshot.gpus) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("vllm-node-agent: encoding JSON: {e}");
                return ExitCode::from(1);
            }
        },
        Output::Table => print_table(&snapshot.gpus),
    }
    ExitCode::SUCCESS
}

fn print_table(gpus: &[GpuInfo]) {
    const GIB: f64 = (1u64 << 30) as f64;
    println!(
        "{:<5} {:<42} {:<26} {:>4} {:>9} {:>9} {:>9} {:>5}",
        "INDEX", "UUID", "PRODUCT", "CC", "TOTAL", "FREE", "RESERVED", "PROCS"
    );
    for g in gpus {
        println!(
            "{:<5} {:<42} {:<26} {:>4} {:>9.2} {:>9.2} {:>9.2} {:>5}",
            g.index,
            g.uuid,
            g.product,
            g.compute_capability,
            g.memory.total_bytes as f64 / GIB,
            g.memory.free_bytes as f64 / GIB,
            g.memory.reserved_bytes as f64 / GIB,
            g.processes.len()
        );
    }
}

/// CPU time per NVML read (user+sys from getrusage-equivalent /proc/self/stat) and VmHWM.
fn bench(inventory: &NvmlInventory, polls: u32) -> ExitCode {
    let cpu_before = vllm_node_agent::selfstat::cpu_seconds();
    let started = std::time::Instant::now();
    let mut gpus = 0;
    for _ in 0..polls {
        match inventory.snapshot() {
            Ok(s) => gpus = s.gpus.len(),
            Err(e) => {
                eprintln!("vllm-node-agent: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let cpu = vllm_node_agent::selfstat::cpu_seconds() - cpu_before;
    let hwm = vllm_node_agent::selfstat::peak_rss_line();
    println!(
        "polls={polls} gpus={gpus} cpu_per_poll_us={:.1} wall_per_poll_us={:.1} {hwm}",
        cpu * 1e6 / polls.max(1) as f64,
        started.elapsed().as_secs_f64() * 1e6 / polls.max(1) as f64
    );
    ExitCode::SUCCESS
}

fn termination(path: &std::path::Path, line: &str) {
    eprintln!("{line}");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

fn launch_cmd(lib: &str, args: LaunchArgs) -> ExitCode {
    let fail = |line: String| {
        termination(&args.termination_log, &line);
        ExitCode::from(1)
    };
    let plan_json = match launch::plan_text(args.plan.as_deref(), args.plan_file.as_deref()) {
        Ok(text) => text,
        Err(e) => return fail(format!("vllm-operator: bad-plan: {e}")),
    };
    let mut command = args.command.clone();
    if let Some(path) = &args.args_file {
        let extra = vllm_operator::validate::read_text(
            path,
            vllm_operator::validate::MAX_PLAN_BYTES,
            "an args file",
        )
        .map_err(|e| format!("--args-file {e}"))
        .and_then(|text| launch::parse_args_file(&text));
        match extra {
            Ok(extra) => command.extend(extra),
            Err(e) => return fail(format!("vllm-operator: bad-args: {e}")),
        }
    }
    if let Err(e) = launch::check_command_config(&command) {
        return fail(format!("vllm-operator: bad-args: {e}"));
    }
    let plan: LaunchPlan = match serde_json::from_str(&plan_json) {
        Ok(p) => p,
        Err(e) => return fail(format!("vllm-operator: bad-plan: {e}")),
    };
    let planned = match &args.gpu_uuids_file {
        None => Vec::new(),
        Some(path) => match vllm_operator::validate::read_text(
            path,
            vllm_operator::validate::MAX_PLAN_BYTES,
            "a GPU list",
        )
        .map_err(|e| format!("--gpu-uuids-file {e}"))
        .and_then(|text| launch::parse_gpu_uuids(&text))
        {
            Ok(planned) => planned,
            Err(e) => return fail(format!("vllm-operator: bad-plan: {e}")),
        },
    };
    let snapshot = match NvmlInventory::open(lib).and_then(|i| i.snapshot()) {
        Ok(s) => s,
        Err(e) => return fail(format!("vllm-operator: nvml-failed: {e}")),
    };
    let visible = std::env::var("NVIDIA_VISIBLE_DEVICES").ok();
    let gpus = match select_gpus(&snapshot.gpus, visible.as_deref()) {
        Ok(selection) => {
            if !selection.unseen.is_empty() {
                eprintln!(
                    "vllm-operator: NVIDIA_VISIBLE_DEVICES names {}, which NVML does not show; checking the GPUs it does show",
                    selection.unseen.join(",")
                );
            }
            selection.gpus
        }
        Err(e) => return fail(format!("vllm-operator: no-gpu: {e}")),
    };
    if let Err(line) = launch::check_planned_gpus(&planned, &gpus) {
        // Like a memory refusal: the controller re-plans on fresh data (EX_TEMPFAIL).
        termination(&args.termination_log, &line);
        return ExitCode::from(EXIT_INSUFFICIENT);
    }
    match decide(&gpus, &plan) {
        Decision::Refuse {
            index,
            uuid,
            shortfall,
        } => {
            termination(
                &args.termination_log,
                &refusal_line(index, &uuid, &shortfall),
            );
            ExitCode::from(EXIT_INSUFFICIENT)
        }
        Decision::Launch {
            utilization_pct,
            worst_uuid,
        } => {
            let value = format_utilization(utilization_pct);
            let (program, rest) = match command.split_first() {
                Some(split) => split,
                None => return fail("vllm-operator: no command to launch".to_string()),
            };
            let (new_args, old) = rewrite_args(rest, &value);
            eprintln!(
                "vllm-operator: {} {} -> {value}: {worst_uuid} is the tightest of {} GPU(s) ({:?} strategy)",
                launch::FLAG,
                old.as_deref().unwrap_or("(unset)"),
                gpus.len(),
                plan.strategy
            );
            let err = std::process::Command::new(program).args(&new_args).exec();
            fail(format!("vllm-operator: exec {program} failed: {err}"))
        }
    }
}

fn run_cmd(lib: &str, args: RunArgs) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vllm-node-agent: tokio runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let config = AgentConfig {
        node_name: args.node_name,
        poll_interval: Duration::from_millis(args.poll_interval_ms.max(1)),
        thresholds: Thresholds {
            bytes: args.threshold_bytes,
            percent: args.threshold_percent,
            heartbeat: Duration::from_secs(args.heartbeat_seconds),
        },
        metrics_addr: args.metrics_addr,
        pod_resources_socket: args.pod_resources_socket,
        proc_root: args.proc_root,
    };
    let lib = lib.to_string();
    let result = runtime.block_on(async move {
        // No watches: every call may carry a read timeout.
        let mut kube_config = kube::Config::infer().await.map_err(|e| e.to_string())?;
        kube_config.connect_timeout = Some(Duration::from_secs(10));
        kube_config.read_timeout = Some(vllm_node_agent::publish::CALL_TIMEOUT);
        kube_config.write_timeout = Some(vllm_node_agent::publish::CALL_TIMEOUT);
        kube_config.reset_reader_on_write = true;
        let client = kube::Client::try_from(kube_config).map_err(|e| e.to_string())?;
        // NVML missing is a condition on the GpuNode, not a crash: retry opening it in the loop.
        let inventory: Arc<dyn GpuInventory> = Arc::new(vllm_node_agent::nvml::LazyNvml::new(lib));
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            vllm_operator::ops::shutdown_signal().await;
            let _ = tx.send(true);
        });
        run(config, inventory, client, rx)
            .await
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vllm-node-agent: {e}");
            ExitCode::from(1)
        }
    }
}
