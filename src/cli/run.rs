//! `vllm-operator run`: the controller, as the Helm chart starts it.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use crate::controller::context::{GpuAllocation, Settings};
use crate::controller::runner::{self, RunConfig};
use crate::model::hub::{DEFAULT_ENDPOINT, HubClient};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Run the controller only while holding the Lease (several replicas: one active).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    #[arg(long, default_value = "vllm-operator-leader")]
    pub lease_name: String,
    /// Namespace of the Lease; defaults to the kubeconfig's namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// GpuNode reports older than this are not trusted for placement.
    #[arg(long, default_value_t = 90)]
    pub stale_after_seconds: u64,
    /// Reservations the node agent has not confirmed within this long are dropped.
    #[arg(long, default_value_t = 300)]
    pub reservation_timeout_seconds: u64,
    /// The vllm-node-agent image whose launcher is copied into every vLLM pod.
    #[arg(long)]
    pub launcher_image: String,
    /// Read Node objects (labels, taints, allocatable GPUs) for placement.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub watch_nodes: bool,
    /// Hugging Face Hub (or mirror) for config.json of models not in the catalog.
    #[arg(long, env = "HF_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    pub hub_endpoint: String,
    #[arg(long, default_value_t = 10)]
    pub hub_timeout_seconds: u64,
    /// How GPUs are given to vLLM pods: `auto` pins exact GPUs with a ResourceClaim on nodes
    /// whose GPUs the NVIDIA DRA driver publishes (Kubernetes 1.34+, resource.k8s.io/v1) and
    /// uses the device plugin elsewhere; `dra` places on such nodes only; `device-plugin`
    /// never reads ResourceSlices.
    #[arg(long, value_enum, default_value_t = GpuAllocation::Auto)]
    pub gpu_allocation: GpuAllocation,
}

pub fn run(args: &RunArgs) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let identity = args.identity.clone().unwrap_or_else(|| {
        std::env::var("HOSTNAME")
            .unwrap_or_else(|_| format!("vllm-operator-{}", std::process::id()))
    });
    let config = RunConfig {
        metrics_addr: args.metrics_addr,
        leader_election: args.leader_election,
        lease_name: args.lease_name.clone(),
        lease_namespace: args.lease_namespace.clone(),
        identity,
        watch_nodes: args.watch_nodes,
        settings: Settings {
            launcher_image: args.launcher_image.clone(),
            stale_after: Duration::from_secs(args.stale_after_seconds),
            reservation_timeout: Duration::from_secs(args.reservation_timeout_seconds),
            gpu_allocation: args.gpu_allocation,
        },
        hub: HubClient {
            endpoint: args.hub_endpoint.clone(),
            token: None,
            timeout: Duration::from_secs(args.hub_timeout_seconds.max(1)),
        },
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vllm-operator run: tokio runtime: {e}");
            return ExitCode::from(super::EXIT_BAD_INPUT);
        }
    };
    match runtime.block_on(runner::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vllm-operator run: {e}");
            ExitCode::from(super::EXIT_BAD_INPUT)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command};
    use crate::controller::context::GpuAllocation;

    #[test]
    fn the_charts_arguments_parse() {
        let cli = Cli::try_parse_from([
            "vllm-operator",
            "run",
            "--metrics-addr=0.0.0.0:8080",
            "--leader-election=false",
            "--lease-name=vllm-operator-leader",
            "--stale-after-seconds=90",
            "--launcher-image=ghcr.io/vllm-operator/vllm-node-agent:0.1.0",
            "--gpu-allocation=auto",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert!(!args.leader_election);
        assert_eq!(args.stale_after_seconds, 90);
        assert_eq!(
            args.launcher_image,
            "ghcr.io/vllm-operator/vllm-node-agent:0.1.0"
        );
        assert_eq!(args.metrics_addr.port(), 8080);
        assert_eq!(args.gpu_allocation, GpuAllocation::Auto);
    }

    #[test]
    fn gpu_allocation_takes_the_three_modes_and_nothing_else() {
        let parse = |v: &str| {
            Cli::try_parse_from([
                "vllm-operator",
                "run",
                "--launcher-image=img",
                &format!("--gpu-allocation={v}"),
            ])
            .map(|cli| match cli.command {
                Command::Run(args) => args.gpu_allocation,
                _ => panic!("not run"),
            })
        };
        assert_eq!(parse("auto").unwrap(), GpuAllocation::Auto);
        assert_eq!(parse("dra").unwrap(), GpuAllocation::Dra);
        assert_eq!(parse("device-plugin").unwrap(), GpuAllocation::DevicePlugin);
        assert!(parse("exact").is_err());
    }
}
