//! The in-pod launcher: fix `--gpu-memory-utilization` from NVML at the last moment, then exec.

use std::path::Path;

use vllm_operator::api::GpuInfo;
use vllm_operator::fit::{GpuMemoryView, LaunchPlan, Shortfall, choose_for_gpus};
use vllm_operator::plan::argparse::{Dest, Release, Scan, scan};

/// Exit status when the model no longer fits (EX_TEMPFAIL: re-plan and retry).
pub const EXIT_INSUFFICIENT: u8 = 75;
pub const FLAG: &str = "--gpu-memory-utilization";
pub const PLAN_ENV: &str = "VLLM_OPERATOR_PLAN";

const GIB: f64 = (1u64 << 30) as f64;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SelectError {
    #[error("NVML reports no GPU in this container (NVIDIA_VISIBLE_DEVICES={0})")]
    NoGpu(String),
}

/// The GPUs this container received, and the UUIDs `NVIDIA_VISIBLE_DEVICES` named that NVML
/// does not show (logged, never fatal).
#[derive(Debug, PartialEq)]
pub struct Selection<'a> {
    pub gpus: Vec<&'a GpuInfo>,
    pub unseen: Vec<String>,
}

/// The GPUs to check: exactly what NVML enumerates inside the container, because the runtime
/// exposes only the allocated devices. `NVIDIA_VISIBLE_DEVICES` only narrows by UUID:
/// - `void` (and empty) is what the NVIDIA container toolkit writes into every CDI spec's
///   common edits while injecting the GPUs as CDI devices (nvidia-container-toolkit
///   `pkg/nvcdi/wrapper.go` `GetCommonEdits`, read at d34b304; `internal/config/image/devices.go`
///   `NewVisibleDevices` maps `""`/`void` to "no envvar-requested device"), so it says nothing
///   about what was injected;
/// - indices name **host** GPUs (k8s-device-plugin `DEVICE_ID_STRATEGY=index`,
///   `internal/plugin/server.go` `uniqueDeviceIDsFromAnnotatedDeviceIDs`, read at 1b826ac),
///   while NVML in the container numbers the visible devices from 0: an index cannot be
///   matched, so indices, `all` and `none` do not narrow;
/// - `GPU-…` and `MIG-…` UUIDs are the same inside and outside, and narrow the list.
///
/// Where MIG is on, the MIG devices are the GPUs and their parent is skipped.
pub fn select_gpus<'a>(
    gpus: &'a [GpuInfo],
    visible: Option<&str>,
) -> Result<Selection<'a>, SelectError> {
    let usable: Vec<&GpuInfo> = gpus
        .iter()
        .filter(|g| g.mig_mode.as_deref() != Some("Enabled"))
        .collect();
    let uuids: Vec<&str> = visible
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|id| id.starts_with("GPU-") || id.starts_with("MIG-"))
        .collect();
    let unseen: Vec<String> = uuids
        .iter()
        .filter(|id| !usable.iter().any(|g| g.uuid == **id))
        .map(|id| id.to_string())
        .collect();
    let named: Vec<&GpuInfo> = usable
        .iter()
        .copied()
        .filter(|g| uuids.contains(&g.uuid.as_str()))
        .collect();
    // UUIDs that match nothing NVML shows cannot remove the GPUs NVML does show.
    let chosen = if named.is_empty() { usable } else { named };
    if chosen.is_empty() {
        return Err(SelectError::NoGpu(
            visible.map_or_else(|| "(unset)".to_string(), str::to_string),
        ));
    }
    Ok(Selection {
        gpus: chosen,
        unseen,
    })
}

/// The utilization every given GPU passes, or the first that cannot hold the model.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Hundredths, and the GPU that set it.
    Launch {
        utilization_pct: u64,
        worst_uuid: String,
    },
    Refuse {
        index: u32,
        uuid: String,
        shortfall: Shortfall,
    },
}

pub fn decide(gpus: &[&GpuInfo], plan: &LaunchPlan) -> Decision {
    let views: Vec<GpuMemoryView> = gpus.iter().map(|gpu| (&gpu.memory).into()).collect();
    // The planner's own rule: one utilization for every rank, bounded by the tightest GPU.
    match choose_for_gpus(&views, plan) {
        Ok((fit, limiting)) => Decision::Launch {
            utilization_pct: fit.utilization_pct,
            worst_uuid: gpus[limiting].uuid.clone(),
        },
        Err((i, shortfall)) => match gpus.get(i) {
            Some(gpu) => Decision::Refuse {
                index: gpu.index,
                uuid: gpu.uuid.clone(),
                shortfall,
            },
            None => Decision::Refuse {
                index: 0,
                uuid: String::new(),
                shortfall: Shortfall {
                    needed_free_bytes: plan.required_bytes.saturating_add(plan.min_kv_bytes),
                    free_bytes: 0,
                },
            },
        },
    }
}

/// `0.87` from 87.
pub fn format_utilization(pct: u64) -> String {
    format!("{}.{:02}", pct / 100, pct % 100)
}

/// Removes every argument vLLM would read as `--gpu-memory-utilization` (underscores, unique
/// prefixes, `=`, the 0.31+ alias `--device-memory-utilization`: see
/// `vllm_operator::plan::argparse`) and appends `--gpu-memory-utilization value` last, where
/// argparse's last-occurrence rule makes it win. Returns the new args and the value vLLM would
/// otherwise have used (the last one), if any.
///
/// The image's release is not known here, so the option table of the newest release is used:
/// `--gpu-memory-utilization`'s shortest unique prefix (`--gp`) is the same in every release
/// read, and the alias is an error before 0.31, so removing it there only helps.
pub fn rewrite_args(args: &[String], value: &str) -> (Vec<String>, Option<String>) {
    let scan = scan(args, Release::NEWEST);
    let gmu: Vec<_> = scan
        .found
        .iter()
        .filter(|o| o.dest == Dest::GpuMemoryUtilization)
        .collect();
    let old = gmu.last().and_then(|o| o.value.clone());
    let mut out: Vec<String> = args
        .iter()
        .enumerate()
        .filter(|(i, _)| !gmu.iter().any(|o| (o.at..o.at + o.tokens).contains(i)))
        .map(|(_, a)| a.clone())
        .collect();
    out.push(FLAG.to_string());
    out.push(value.to_string());
    (out, old)
}

/// Options the planner sized from `spec.args`: a `--config` file that sets one of them would
/// change memory behind the plan's back (the options the operator owns are emitted on the
/// command line, which wins over the file).
const SIZED_FROM_ARGS: [Dest; 7] = [
    Dest::MaxNumSeqs,
    Dest::MaxNumBatchedTokens,
    Dest::EnforceEager,
    Dest::BlockSize,
    Dest::KvCacheMemoryBytes,
    Dest::CpuOffloadGb,
    Dest::PipelineParallelSize,
];

/// The arguments vLLM makes of a `--config` YAML: `load_config_file` in
/// vllm/utils/argparse_utils.py (0.33.0:632-672; 0.6.0+ `vllm/utils.py`): `true` -> `--key`,
/// `false` -> `--no-key` (dropped here: it only restores a default), a list -> `--key a b`,
/// anything else -> `--key value`.
fn config_args(yaml: &str) -> Result<Vec<String>, String> {
    let doc: serde_norway::Value =
        serde_norway::from_str(yaml).map_err(|e| format!("not YAML: {e}"))?;
    let serde_norway::Value::Mapping(map) = doc else {
        return Err("not a YAML mapping of options".into());
    };
    let mut out = Vec::new();
    for (key, value) in map {
        let Some(key) = key.as_str() else { continue };
        let flag = format!("--{key}");
        match value {
            serde_norway::Value::Bool(true) => out.push(flag),
            serde_norway::Value::Bool(false) => {}
            serde_norway::Value::Sequence(items) => {
                out.push(flag);
                out.extend(items.iter().map(scalar));
            }
            other => {
                out.push(flag);
                out.push(scalar(&other));
            }
        }
    }
    Ok(out)
}

fn scalar(value: &serde_norway::Value) -> String {
    match value {
        serde_norway::Value::String(s) => s.clone(),
        serde_norway::Value::Number(n) => n.to_string(),
        serde_norway::Value::Bool(b) => if *b { "True" } else { "False" }.to_string(),
        serde_norway::Value::Null => "None".to_string(),
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}

/// Refuse a `--config` file that sets a memory option the planner did not see (it sized
/// `spec.args` only); the same option on the command line wins over the file, so only the
/// file's options the command line leaves unset count.
pub fn check_config_file(cli: &Scan, yaml: &str) -> Result<(), String> {
    let from_file = scan(&config_args(yaml)?, Release::NEWEST);
    let unseen: Vec<&str> = from_file
        .found
        .iter()
        .filter(|o| SIZED_FROM_ARGS.contains(&o.dest) && cli.last(o.dest).is_none())
        .map(|o| o.written.as_str())
        .collect();
    if unseen.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the --config file sets `{}`, which changes GPU memory and was not planned for; move it to spec.args",
            unseen.join("`, `")
        ))
    }
}

/// `check_config_file` for the `--config FILE` of a command, reading the file.
pub fn check_command_config(args: &[String]) -> Result<(), String> {
    let cli = scan(args, Release::NEWEST);
    let Some(path) = cli.config_file.clone() else {
        return Ok(());
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read the --config file {path}: {e}"))?;
    check_config_file(&cli, &text).map_err(|e| format!("{path}: {e}"))
}

/// The termination-log line for a refusal.
pub fn refusal_line(index: u32, uuid: &str, shortfall: &Shortfall) -> String {
    format!(
        "vllm-operator: insufficient-gpu-memory: GPU {index} ({uuid}) needs {} bytes free ({:.2} GiB), has {} bytes free ({:.2} GiB)",
        shortfall.needed_free_bytes,
        shortfall.needed_free_bytes as f64 / GIB,
        shortfall.free_bytes,
        shortfall.free_bytes as f64 / GIB,
    )
}

/// The plan JSON: from `--plan-file` (the controller's downward-API file) when given, else
/// from `--plan` / `VLLM_OPERATOR_PLAN`.
pub fn plan_text(plan: Option<&str>, plan_file: Option<&Path>) -> Result<String, String> {
    match (plan_file, plan) {
        (Some(path), _) => {
            // Bounded: `--plan-file /dev/zero` (or any runaway file) must not read forever.
            let text = vllm_operator::validate::read_text(
                path,
                vllm_operator::validate::MAX_PLAN_BYTES,
                "a launch plan",
            )
            .map_err(|e| format!("--plan-file {e}"))?;
            if text.trim().is_empty() {
                return Err(format!(
                    "--plan-file {} is empty: the pod started before the controller released it",
                    path.display()
                ));
            }
            Ok(text)
        }
        (None, Some(text)) => Ok(text.to_string()),
        (None, None) => Err(format!("no --plan-file, no --plan and no {PLAN_ENV}")),
    }
}

/// Arguments to append to the command: a JSON array of strings (the controller's
/// `vllm-operator.io/args` annotation, seen through a downward-API file).
pub fn parse_args_file(text: &str) -> Result<Vec<String>, String> {
    if text.trim().is_empty() {
        return Err(
            "the args file is empty: the pod started before the controller released it".into(),
        );
    }
    serde_json::from_str(text)
        .map_err(|e| format!("the args file is not a JSON array of strings: {e}"))
}

/// The planned GPU UUIDs: the controller's `vllm-operator.io/gpu-uuids` annotation (comma
/// separated), seen through a downward-API file. Empty on the device-plugin path, where the
/// kubelet chooses the GPUs and there is nothing to compare with.
pub fn parse_gpu_uuids(text: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for id in text
        .trim()
        .split(',')
        .map(str::trim)
        .filter(|id| !id.is_empty())
    {
        let well_formed = id.strip_prefix("GPU-").is_some_and(|rest| {
            !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
        });
        if !well_formed {
            return Err(format!("the planned GPU list holds {id:?}, not a GPU UUID"));
        }
        if !out.iter().any(|o| o == id) {
            out.push(id.to_string());
        }
    }
    Ok(out)
}

/// The GPUs the runtime gave this container must be exactly the planned ones (DRA path): the
/// planner sized the model and the utilization on those GPUs only, so any other GPU (or one
/// missing) makes the plan wrong. `Err` carries the termination-log line.
pub fn check_planned_gpus(planned: &[String], shown: &[&GpuInfo]) -> Result<(), String> {
    if planned.is_empty() {
        return Ok(());
    }
    let mut have: Vec<&str> = shown.iter().map(|g| g.uuid.as_str()).collect();
    let mut want: Vec<&str> = planned.iter().map(String::as_str).collect();
    have.sort_unstable();
    want.sort_unstable();
    if have == want {
        return Ok(());
    }
    let missing: Vec<&str> = want.iter().copied().filter(|u| !have.contains(u)).collect();
    let extra: Vec<&str> = have.iter().copied().filter(|u| !want.contains(u)).collect();
    Err(format!(
        "{WRONG_GPUS} planned {}; NVML shows {}{}{}",
        want.join(","),
        if have.is_empty() {
            "none".to_string()
        } else {
            have.join(",")
        },
        if missing.is_empty() {
            String::new()
        } else {
            format!("; missing {}", missing.join(","))
        },
        if extra.is_empty() {
            String::new()
        } else {
            format!("; not planned {}", extra.join(","))
        },
    ))
}

/// The termination-message prefix when the runtime gave other GPUs than planned.
pub const WRONG_GPUS: &str = "vllm-operator: wrong-gpus:";

/// Copy this executable to `dest` (mode 0755), through a temporary name so a reader never
/// sees half a binary. The launcher image is distroless: no `cp` to do it.
pub fn install(dest: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let exe = std::env::current_exe()?;
    let tmp = dest.with_extension("partial");
    std::fs::copy(&exe, &tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, dest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vllm_operator::api::{GpuMemory, MemoryStrategy};

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn rewrites_the_separate_value_form_and_puts_the_flag_last() {
        let (args, old) = rewrite_args(
            &s(&[
                "serve",
                "m",
                "--gpu-memory-utilization",
                "0.9",
                "--port",
                "8000",
            ]),
            "0.77",
        );
        assert_eq!(
            args,
            s(&[
                "serve",
                "m",
                "--port",
                "8000",
                "--gpu-memory-utilization",
                "0.77"
            ])
        );
        assert_eq!(old.as_deref(), Some("0.9"));
    }

    #[test]
    fn rewrites_every_spelling_vllm_reads() {
        // vllm/utils/argparse_utils.py (0.33.0): `_` -> `-`; argparse allow_abbrev; the alias
        // --device-memory-utilization (vllm/engine/arg_utils.py:1390, 0.31+).
        let (args, old) = rewrite_args(
            &s(&[
                "serve",
                "--gpu-memory-utilization=0.95",
                "m",
                "--gpu_memory_utilization",
                "0.93",
                "--gpu-mem",
                "0.92",
                "--device-memory-utilization=0.91",
            ]),
            "0.50",
        );
        assert_eq!(args, s(&["serve", "m", "--gpu-memory-utilization", "0.50"]));
        assert_eq!(old.as_deref(), Some("0.91"));
    }

    #[test]
    fn appends_when_absent() {
        let (args, old) = rewrite_args(&s(&["serve", "m"]), "0.08");
        assert_eq!(args, s(&["serve", "m", "--gpu-memory-utilization", "0.08"]));
        assert_eq!(old, None);
        assert_eq!(format_utilization(8), "0.08");
        assert_eq!(format_utilization(100), "1.00");
    }

    #[test]
    fn config_file_memory_options_must_come_from_spec_args() {
        let yaml = "max_num_seqs: 512\nenforce-eager: true\nquantization: awq\nport: 8000\n";
        let cli = scan(&s(&["serve", "m", "--config", "c.yaml"]), Release::NEWEST);
        let err = check_config_file(&cli, yaml).unwrap_err();
        assert!(
            err.contains("`--max_num_seqs 512`, `--enforce-eager`"),
            "{err}"
        );
        // Set on the command line too: the command line wins, the plan saw it.
        let cli = scan(
            &s(&[
                "--config",
                "c.yaml",
                "--max-num-seqs",
                "8",
                "--enforce-eager",
            ]),
            Release::NEWEST,
        );
        assert_eq!(check_config_file(&cli, yaml), Ok(()));
        // Owned options (quantization) are emitted on the command line by the operator, and
        // `false` only restores a default.
        assert_eq!(
            check_config_file(&cli, "quantization: fp8\nenforce_eager: false\n"),
            Ok(())
        );
        assert!(check_config_file(&cli, "- a\n").is_err());
    }

    fn gpu(index: u32, uuid: &str, total: u64, free: u64) -> GpuInfo {
        GpuInfo {
            index,
            uuid: uuid.into(),
            memory: GpuMemory {
                total_bytes: total,
                free_bytes: free,
                used_bytes: total - free,
                reserved_bytes: 0,
            },
            ..GpuInfo::default()
        }
    }

    fn mig(index: u32, uuid: &str, parent: &str) -> GpuInfo {
        GpuInfo {
            parent_uuid: Some(parent.into()),
            ..gpu(index, uuid, 10, 10)
        }
    }

    fn uuids(sel: &Selection) -> Vec<String> {
        sel.gpus.iter().map(|g| g.uuid.clone()).collect()
    }

    #[test]
    fn uuids_narrow_and_everything_else_keeps_what_nvml_shows() {
        let gpus = vec![gpu(0, "GPU-a", 1, 1), gpu(1, "GPU-b", 1, 1)];
        for all in [
            None,
            Some("all"),
            Some(""),
            Some("none"),
            Some("void"),
            Some("0,1"),
        ] {
            assert_eq!(
                uuids(&select_gpus(&gpus, all).unwrap()),
                ["GPU-a", "GPU-b"],
                "{all:?}"
            );
        }
        let sel = select_gpus(&gpus, Some("GPU-b")).unwrap();
        assert_eq!(uuids(&sel), ["GPU-b"]);
        assert!(sel.unseen.is_empty());
        // A UUID NVML does not show is reported, and cannot hide the GPUs it does show.
        let sel = select_gpus(&gpus, Some("GPU-z")).unwrap();
        assert_eq!(uuids(&sel), ["GPU-a", "GPU-b"]);
        assert_eq!(sel.unseen, ["GPU-z"]);
        assert_eq!(
            select_gpus(&[], Some("void")),
            Err(SelectError::NoGpu("void".into()))
        );
    }

    #[test]
    fn cdi_void_and_host_indices_check_the_gpus_nvml_enumerates() {
        // CDI node: the toolkit writes NVIDIA_VISIBLE_DEVICES=void and injects the GPU.
        let one = vec![gpu(0, "GPU-only", 1, 1)];
        assert_eq!(
            uuids(&select_gpus(&one, Some("void")).unwrap()),
            ["GPU-only"]
        );
        // DEVICE_ID_STRATEGY=index: host GPU 3 is container GPU 0.
        assert_eq!(uuids(&select_gpus(&one, Some("3")).unwrap()), ["GPU-only"]);
        assert_eq!(
            uuids(&select_gpus(&one, Some("3,5")).unwrap()),
            ["GPU-only"]
        );
    }

    #[test]
    fn mig_devices_are_named_by_their_own_uuid() {
        let mut parent = gpu(0, "GPU-p", 80, 80);
        parent.mig_mode = Some("Enabled".into());
        let gpus = vec![parent, mig(0, "MIG-x", "GPU-p"), mig(1, "MIG-y", "GPU-p")];
        assert_eq!(
            uuids(&select_gpus(&gpus, Some("MIG-y")).unwrap()),
            ["MIG-y"]
        );
        assert_eq!(
            uuids(&select_gpus(&gpus, Some("void")).unwrap()),
            ["MIG-x", "MIG-y"]
        );
    }

    #[test]
    fn worst_gpu_sets_the_utilization() {
        const GIB: u64 = 1 << 30;
        let plan = LaunchPlan {
            required_bytes: 3 * GIB,
            min_kv_bytes: GIB,
            startup_overhead_bytes: 512 << 20,
            headroom_bytes: 256 << 20,
            max_utilization: 0.95,
            strategy: MemoryStrategy::MaximizeCache,
            others_in_budget: false,
        };
        let a = gpu(0, "GPU-a", 8 * GIB, 8 * GIB);
        let b = gpu(1, "GPU-b", 8 * GIB, 7_430_346_834);
        match decide(&[&a, &b], &plan) {
            Decision::Launch {
                utilization_pct,
                worst_uuid,
            } => {
                assert_eq!(worst_uuid, "GPU-b");
                assert!(utilization_pct < 86);
            }
            other => panic!("{other:?}"),
        }
        let c = gpu(2, "GPU-c", 8 * GIB, 2 * GIB);
        assert!(matches!(
            decide(&[&a, &c], &plan),
            Decision::Refuse { index: 2, .. }
        ));
    }

    #[test]
    fn plan_file_wins_over_the_env_and_empty_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("launch-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("launch-plan");
        std::fs::write(&file, "{\"a\":1}").unwrap();
        assert_eq!(plan_text(Some("env"), Some(&file)).unwrap(), "{\"a\":1}");
        assert_eq!(plan_text(Some("env"), None).unwrap(), "env");
        assert!(plan_text(None, None).unwrap_err().contains(PLAN_ENV));
        std::fs::write(&file, "").unwrap();
        assert!(
            plan_text(None, Some(&file))
                .unwrap_err()
                .contains("before the controller released it")
        );
        assert!(
            plan_text(None, Some(&dir.join("missing")))
                .unwrap_err()
                .contains("cannot read")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_plan_file_that_never_ends_is_refused_at_the_limit() {
        let err = plan_text(None, Some(Path::new("/dev/zero"))).unwrap_err();
        assert!(err.contains("larger than"), "{err}");
    }

    #[test]
    fn planned_gpus_must_be_exactly_the_gpus_nvml_shows() {
        let a = gpu(0, "GPU-aa", 80 << 30, 80 << 30);
        let b = gpu(1, "GPU-bb", 80 << 30, 80 << 30);
        let planned = parse_gpu_uuids(" GPU-bb,GPU-aa\n").unwrap();
        assert_eq!(planned, s(&["GPU-bb", "GPU-aa"]));
        // Same set, any order.
        assert_eq!(check_planned_gpus(&planned, &[&a, &b]), Ok(()));
        // One missing, one other.
        let c = gpu(2, "GPU-cc", 80 << 30, 80 << 30);
        let err = check_planned_gpus(&planned, &[&a, &c]).unwrap_err();
        assert_eq!(
            err,
            "vllm-operator: wrong-gpus: planned GPU-aa,GPU-bb; NVML shows GPU-aa,GPU-cc; missing GPU-bb; not planned GPU-cc"
        );
        // A GPU too many is wrong too: the utilization was planned on two.
        assert!(check_planned_gpus(&planned, &[&a, &b, &c]).is_err());
        // Nothing planned (device-plugin path, empty file): nothing to check.
        assert_eq!(parse_gpu_uuids("").unwrap(), Vec::<String>::new());
        assert_eq!(check_planned_gpus(&[], &[&c]), Ok(()));
        assert!(parse_gpu_uuids("GPU-aa,0").is_err());
        assert!(parse_gpu_uuids("GPU-\"x").is_err());
    }

    #[test]
    fn args_file_is_a_json_array() {
        assert_eq!(
            parse_args_file("[\"--tensor-parallel-size\",\"2\"]").unwrap(),
            s(&["--tensor-parallel-size", "2"])
        );
        assert!(parse_args_file("").unwrap_err().contains("empty"));
        assert!(
            parse_args_file("--tp 2")
                .unwrap_err()
                .contains("JSON array")
        );
    }

    #[test]
    fn install_copies_this_executable_executable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("launch-install-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dest = dir.join("vllm-node-agent");
        install(&dest).unwrap();
        let meta = std::fs::metadata(&dest).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o755);
        assert_eq!(
            meta.len(),
            std::fs::metadata(std::env::current_exe().unwrap())
                .unwrap()
                .len()
        );
        assert!(!dest.with_extension("partial").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
