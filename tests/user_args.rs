//! User arguments and environment read the way the image's vLLM reads them: owned flags in
//! every spelling replaced and emitted last, memory arguments sized, the rest refused by name.

use std::collections::BTreeMap;

use vllm_operator::api::{PodRef, Sharing, VllmDeploymentSpec};
use vllm_operator::model::catalog::lookup;
use vllm_operator::model::{Architecture, VllmFamily};
use vllm_operator::plan::fleet::{Fleet, FleetNode, Gpu};
use vllm_operator::plan::{Decision, Ledger, Placement, Request, plan_replica};

const H100_TOTAL: u64 = 85_520_809_984;
const H100_RESERVED: u64 = 493_879_296;

fn h100_node() -> Fleet {
    let gpus = (0..2)
        .map(|index| Gpu {
            index,
            uuid: format!("GPU-{index:04}"),
            product: "NVIDIA H100 80GB HBM3".into(),
            compute_capability: Some((9, 0)),
            total_bytes: H100_TOTAL,
            free_bytes: H100_TOTAL - H100_RESERVED,
            reserved_bytes: H100_RESERVED,
            allocated_to: None,
            foreign_bytes: 0,
            processes: Vec::new(),
            mig_device: false,
            dra: None,
        })
        .collect();
    Fleet {
        nodes: vec![FleetNode {
            name: "h100".into(),
            sharing: Sharing::Exclusive,
            gpus,
            labels: BTreeMap::new(),
            taints: Vec::new(),
            allocatable_gpus: None,
            allocatable_ephemeral_bytes: None,
            ineligible: None,
            observed_at: None,
        }],
        ..Default::default()
    }
}

fn arch() -> Architecture {
    lookup("meta-llama/Llama-3.1-8B-Instruct")
        .unwrap()
        .architecture()
        .unwrap()
}

fn spec(yaml_tail: &str) -> VllmDeploymentSpec {
    serde_norway::from_str(&format!(
        "model: {{name: meta-llama/Llama-3.1-8B-Instruct}}\n{yaml_tail}"
    ))
    .unwrap()
}

fn plan(spec: &VllmDeploymentSpec, family: VllmFamily) -> Decision {
    let arch = arch();
    let req = Request {
        pod: PodRef {
            namespace: "default".into(),
            name: "p".into(),
        },
        arch: &arch,
        spec,
        family,
        avoid: &[],
        gpu_allocation: Default::default(),
    };
    plan_replica(&h100_node(), &Ledger::default(), &req)
}

fn placed(d: Decision) -> Placement {
    match d {
        Decision::Placed(p) => *p,
        Decision::Refused(r) => panic!("refused: {r:#?}"),
    }
}

fn refused(d: Decision) -> Vec<String> {
    match d {
        Decision::Placed(p) => panic!("placed: {:?}", p.command),
        Decision::Refused(r) => r,
    }
}

#[test]
fn memory_arguments_reach_the_estimate() {
    // vLLM 0.33.0: `_` -> `-` (vllm/utils/argparse_utils.py:378-394), "4k" = 4000
    // (human_readable_int, same file :30-74), the last --max-num-seqs wins.
    let s = spec(
        "image: vllm/vllm-openai:v0.33.0\nargs: [--max-num-seqs, '64', --max_num_seqs=512, --max_num_batched_tokens=4k, --enforce-eager, --block-size, '32']",
    );
    let p = placed(plan(&s, VllmFamily::V0_21));
    assert_eq!(p.shape.max_num_seqs, Some(512));
    assert_eq!(p.shape.max_num_batched_tokens, Some(4000));
    assert!(p.shape.enforce_eager);
    assert_eq!(p.estimate.max_num_seqs, 512);
    assert_eq!(p.estimate.max_num_batched_tokens, 4000);
    assert_eq!(p.estimate.cuda_graph_bytes, 0, "--enforce-eager: no graphs");
    assert_eq!(p.estimate.block_size, 32);
    // The memory arguments stay on the command line for vLLM.
    assert!(p.command.contains(&"--max_num_seqs=512".to_string()));
    // Without them: vLLM's defaults for an 80 GiB GPU (8192 tokens, 1024 sequences).
    let p = placed(plan(
        &spec("image: vllm/vllm-openai:v0.33.0"),
        VllmFamily::V0_21,
    ));
    assert_eq!(p.estimate.max_num_seqs, 1024);
    assert_eq!(p.estimate.block_size, 16);
    assert!(p.estimate.cuda_graph_bytes > 0);
}

#[test]
fn memory_arguments_the_operator_cannot_size_are_refused_by_name() {
    for (args, flag) in [
        (
            "[--kv-cache-memory-bytes, 20G]",
            "--kv-cache-memory-bytes 20G",
        ),
        ("[--kv_cache_memory=20G]", "--kv_cache_memory=20G"),
        ("[-pp, '2']", "-pp 2"),
        ("[--pipeline-parallel-size=2]", "--pipeline-parallel-size=2"),
        ("[--cpu-offload-gb, '8']", "--cpu-offload-gb 8"),
    ] {
        let s = spec(&format!("image: vllm/vllm-openai:v0.33.0\nargs: {args}"));
        let why = refused(plan(&s, VllmFamily::V0_21));
        assert_eq!(why.len(), 1);
        assert!(why[0].contains(flag), "{why:?}");
    }
}

#[test]
fn vllm_use_v1_0_plans_the_v0_engine_where_it_exists_and_is_refused_where_not() {
    // 0.8.0-0.10.x: VLLM_USE_V1=0 selects V0 (vllm/envs.py, default "1" from 0.8.0).
    let s = spec("image: vllm/vllm-openai:v0.10.1\nenv: [{name: VLLM_USE_V1, value: '0'}]");
    let p = placed(plan(&s, VllmFamily::parse("0.10.1").unwrap()));
    assert!(p.shape.v0_engine);
    // V0's defaults (256 sequences) with the release's other rules.
    assert_eq!(p.estimate.max_num_seqs, 256);
    assert!(!p.estimate.cuda_graphs_in_budget);
    // 0.8.5 charges other processes' memory to the budget in its V1 worker, but its V0
    // worker (vllm/worker/worker.py, same code as 0.7.3) profiles per instance.
    let v085 = VllmFamily::parse("0.8.5").unwrap();
    let default = placed(plan(&spec("image: vllm/vllm-openai:v0.8.5"), v085));
    assert!(default.estimate.others_in_budget);
    let s = spec("image: vllm/vllm-openai:v0.8.5\nenv: [{name: VLLM_USE_V1, value: '0'}]");
    let v0 = placed(plan(&s, v085));
    assert!(!v0.estimate.others_in_budget);
    // 0.11.0 has only V1 and raises on VLLM_USE_V1=0 (vllm/v1/engine/async_llm.py:89-94).
    let s = spec("image: vllm/vllm-openai:v0.11.0\nenv: [{name: VLLM_USE_V1, value: '0'}]");
    let why = refused(plan(&s, VllmFamily::V0_11));
    assert!(why[0].contains("VLLM_USE_V1=0"), "{why:?}");
}

#[test]
fn owned_flags_in_any_spelling_are_replaced_and_the_planned_ones_come_last() {
    let s = spec(
        "image: vllm/vllm-openai:v0.33.0\nargs: [--gpu_memory_utilization, '0.95', --device-memory-utilization=0.9, --tensor_parallel_size=8, --enable-prefix-caching, --config, /etc/vllm/serve.yaml]",
    );
    let p = placed(plan(&s, VllmFamily::V0_21));
    assert_eq!(
        p.replaced_args,
        [
            "--gpu_memory_utilization 0.95",
            "--device-memory-utilization=0.9",
            "--tensor_parallel_size=8"
        ]
    );
    let cmd = &p.command;
    assert_eq!(
        cmd[3..6],
        [
            "--enable-prefix-caching",
            "--config",
            "/etc/vllm/serve.yaml"
        ]
    );
    assert_eq!(cmd[6..8], ["--tensor-parallel-size", "1"]);
    // The config file could set quantization; the plan says none (vLLM's "None").
    assert_eq!(cmd[8..10], ["--quantization", "None"]);
    assert_eq!(cmd[cmd.len() - 2], "--gpu-memory-utilization");
}
