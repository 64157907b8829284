//! The simulated cluster on the DRA path (sim::World), independent of how the planner chooses:
//! a pod whose placement names exact GPUs runs on exactly those and its memory is charged to
//! them; a claim for a GPU another pod holds cannot be allocated (the pod is stuck, as the
//! scheduler's DRA plugin leaves it); a device-plugin pod keeps the kubelet's pick (the lowest
//! unallocated GPU), whatever the planner had in mind.

use std::path::PathBuf;

use vllm_operator::api::PodRef;
use vllm_operator::cli::plan::{fleet_time, load, offline_architecture, read_fleet};
use vllm_operator::controller::decide::{Action, PodPhase, StuckKind, placement_status};
use vllm_operator::plan::fleet::Fleet;
use vllm_operator::plan::{
    Decision, ExactGpu, GpuAllocation, Ledger, Placement, Request, plan_replica,
};
use vllm_operator::sim::World;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const FLEET: &str = "examples/dra-exact-gpus/fleet.yaml";
const NS: &str = "default";
const DEP: &str = "llama-8b";

/// A real placement for one replica of the example's 8B model on the example node, planned on
/// the device-plugin path with GPU 0 (60 GiB held outside Kubernetes) avoided, so that it fits.
fn placement(fleet: &Fleet) -> Placement {
    let deps =
        vllm_operator::cli::plan::read_deployments(&[root().join("examples/llama-3.1-8b.yaml")])
            .unwrap();
    let mut d = deps[0].clone();
    d.spec.tensor_parallel.sizes = vec![1];
    let arch = offline_architecture(&d).unwrap();
    let gpu0 = fleet.nodes[0].gpus[0].uuid.clone();
    let avoid = [("h100-dra".to_string(), gpu0)];
    let req = Request {
        pod: PodRef {
            namespace: NS.into(),
            name: "probe".into(),
        },
        arch: &arch,
        spec: &d.spec,
        family: vllm_operator::cli::plan::family_from_image(&d.spec.image),
        avoid: &avoid,
        gpu_allocation: GpuAllocation::DevicePlugin,
    };
    match plan_replica(fleet, &Ledger::default(), &req) {
        Decision::Placed(p) => *p,
        Decision::Refused(r) => panic!("{r:?}"),
    }
}

fn exact(fleet: &Fleet, index: usize) -> ExactGpu {
    let g = &fleet.nodes[0].gpus[index];
    ExactGpu {
        index: g.index,
        uuid: g.uuid.clone(),
        device: g.dra.clone().expect("published by the example's slice"),
    }
}

fn release(world: &mut World, pod: &str, replica: u32, p: &Placement) {
    world.apply(
        NS,
        DEP,
        Action::CreateGated {
            pod: pod.into(),
            replica,
        },
    );
    world.apply(
        NS,
        DEP,
        Action::Release {
            pod: pod.into(),
            placement: Box::new(p.clone()),
            status: placement_status(pod, p, p.reason.clone()),
        },
    );
}

fn free(world: &World) -> Vec<u64> {
    world
        .gpu_table()
        .iter()
        .map(|(_, _, m)| m.free_bytes)
        .collect()
}

#[test]
fn exact_gpus_are_the_ones_a_pod_runs_on_and_a_held_one_cannot_be_claimed() {
    let (_, fleet, _) = load(&[], &root().join(FLEET), None, 120).unwrap();
    let gpunodes = read_fleet(&root().join(FLEET)).unwrap().gpunodes;
    let start = fleet_time(&gpunodes).unwrap();
    let mut world = World::new(gpunodes, start);
    let before = free(&world);

    let mut on_2 = placement(&fleet);
    on_2.exact_gpus = vec![exact(&fleet, 2)];
    release(&mut world, "llama-8b-0-a", 0, &on_2);
    let events = world.start_pending(start);
    assert!(
        events
            .iter()
            .any(|(_, r, m, _)| r == "Started" && m.contains("GPUs [2] (exact")),
        "{events:?}"
    );
    let pod = &world.pods[0];
    assert_eq!(pod.phase, PodPhase::Running);
    assert_eq!(pod.held.len(), 1);
    assert_eq!(pod.held[0].0, 2);
    let after = free(&world);
    // Only GPU 2 is charged, by what the pod holds; GPUs 0, 1 and 3 are untouched, though the
    // kubelet would have handed out GPU 0 (the lowest unallocated) on the device-plugin path.
    assert_eq!(after[2], before[2] - pod.held[0].1);
    for i in [0, 1, 3] {
        assert_eq!(after[i], before[i], "GPU {i}");
    }

    // A second claim for GPU 2, which the first pod holds: the scheduler cannot allocate it.
    release(&mut world, "llama-8b-1-a", 1, &on_2);
    world.start_pending(start);
    match &world.pods[1].phase {
        PodPhase::Stuck {
            kind: StuckKind::ClaimUnallocatable,
            reason,
        } => assert!(reason.contains("cannot allocate all claims"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(free(&world), after);
}

#[test]
fn a_device_plugin_pod_gets_the_kubelets_pick_not_the_planners_favourite() {
    let (_, fleet, _) = load(&[], &root().join(FLEET), None, 120).unwrap();
    let gpunodes = read_fleet(&root().join(FLEET)).unwrap().gpunodes;
    let start = fleet_time(&gpunodes).unwrap();
    let mut world = World::new(gpunodes, start);
    // Planned for GPUs 1-3 (GPU 0 avoided), but the device plugin hands out GPU 0, the lowest
    // unallocated one, where 60 GiB are held: the launcher refuses to start.
    let p = placement(&fleet);
    assert!(p.exact_gpus.is_empty());
    release(&mut world, "llama-8b-0-a", 0, &p);
    let events = world.start_pending(start);
    assert!(
        events
            .iter()
            .any(|(_, r, m, _)| r == "LauncherRefused" && m.contains("GPU 0")),
        "{events:?}"
    );
    assert_eq!(world.launcher_refusals, 1);
}
