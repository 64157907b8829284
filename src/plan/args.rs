//! The `vllm serve` argument list: the user's arguments with every flag the operator owns
//! taken out (read the way the image's vLLM reads them: see [`super::argparse`]), then the
//! operator's flags **last**, so that they win over anything left (argparse keeps the last
//! occurrence) and over a `--config` file (its values are inserted before the command line).
//! Also the user arguments and environment that change memory, read into what the estimator
//! sizes, or refused with the reason.

use k8s_openapi::api::core::v1::EnvVar;

pub use super::argparse::{Dest, Release, scan};
use crate::api::{KvCacheDtype, ModelSpec};

/// Options whose value the planner decides; a user value for them is replaced.
pub const OWNED: [Dest; 5] = [
    Dest::TensorParallelSize,
    Dest::Quantization,
    Dest::KvCacheDtype,
    Dest::MaxModelLen,
    Dest::GpuMemoryUtilization,
];

/// `--quantization None`: no quantization method, so vLLM reads the checkpoint's own
/// `quantization_config` (what leaving the flag out does). Every release maps the string
/// `"None"` to Python's None and accepts it: 0.5.0.post1 and 0.6.4 `arg_utils.py`
/// `nullable_str` with `choices=[*QUANTIZATION_METHODS, None]`; 0.8.5 `optional_type(str)`
/// with the same choices; 0.10+ `_compute_kwargs` wraps every optional field in
/// `optional_type` (`"" or "None"` -> None) and appends None to its choices (0.11.0
/// `arg_utils.py:84-91`, 0.33.0 `arg_utils.py:173-179, 437-441`).
pub const NO_QUANTIZATION: &str = "None";

/// The memory-relevant choices for one replica.
#[derive(Clone, Debug, PartialEq)]
pub struct ServeFlags {
    pub tensor_parallel_size: u32,
    /// The `--quantization` value; None leaves vLLM to the checkpoint's own format.
    pub quantization: Option<&'static str>,
    pub kv_cache_dtype: KvCacheDtype,
    pub max_model_len: u64,
    pub gpu_memory_utilization: f64,
}

/// Remove the owned options from `user` as vLLM `release` would read them (underscores,
/// unique prefixes, `=` or separate value, `--device-memory-utilization`); returns what is
/// left and the removed arguments as the user wrote them.
pub fn strip_owned(user: &[String], release: Release) -> (Vec<String>, Vec<String>) {
    let owned: Vec<_> = scan(user, release)
        .found
        .into_iter()
        .filter(|o| OWNED.contains(&o.dest))
        .collect();
    let mut kept = Vec::with_capacity(user.len());
    for (i, arg) in user.iter().enumerate() {
        if !owned.iter().any(|o| (o.at..o.at + o.tokens).contains(&i)) {
            kept.push(arg.clone());
        }
    }
    (kept, owned.into_iter().map(|o| o.written).collect())
}

/// `vllm serve MODEL USER_ARGS... --tensor-parallel-size N [--quantization Q]
/// --kv-cache-dtype D --max-model-len L --gpu-memory-utilization U`, and the user arguments
/// replaced. With a `--config` file and no quantization planned, `--quantization None` is
/// emitted too, so a `quantization:` key in the file cannot apply.
pub fn serve_command(
    model: &str,
    flags: &ServeFlags,
    user: &[String],
    release: Release,
) -> (Vec<String>, Vec<String>) {
    let (rest, replaced) = strip_owned(user, release);
    let config = scan(user, release).config_file.is_some();
    let mut out = vec!["vllm".to_string(), "serve".to_string(), model.to_string()];
    out.extend(rest);
    out.extend([
        "--tensor-parallel-size".to_string(),
        flags.tensor_parallel_size.to_string(),
    ]);
    if let Some(method) = flags.quantization {
        out.push("--quantization".into());
        out.push(method.to_string());
    } else if config {
        out.push("--quantization".into());
        out.push(NO_QUANTIZATION.into());
    }
    out.extend([
        "--kv-cache-dtype".to_string(),
        flags.kv_cache_dtype.to_string(),
        "--max-model-len".to_string(),
        flags.max_model_len.to_string(),
        "--gpu-memory-utilization".to_string(),
        format!("{:.2}", flags.gpu_memory_utilization),
    ]);
    (out, replaced)
}

/// What the user's arguments and environment change in the memory the estimator sizes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UserMemory {
    pub max_num_seqs: Option<u64>,
    pub max_num_batched_tokens: Option<u64>,
    pub enforce_eager: bool,
    pub block_size: Option<u64>,
    /// `VLLM_USE_V1=0` on 0.8.0-0.10.x: vLLM runs its V0 engine (sized as 0.7's).
    pub v0_engine: bool,
}

/// vLLM's `human_readable_int` (0.10.2+, `arg_utils.py` in 0.11.0:1740, 0.33.0
/// `utils/argparse_utils.py:30-74`): `k m g t` are powers of 1000 and may carry decimals,
/// `K M G T` powers of 1024 and may not.
fn human_readable_int(text: &str) -> Option<u64> {
    let t = text.trim();
    let last = t.chars().last()?;
    let (number, scale, decimal) = match last {
        'k' => (&t[..t.len() - 1], 1e3, true),
        'm' => (&t[..t.len() - 1], 1e6, true),
        'g' => (&t[..t.len() - 1], 1e9, true),
        't' => (&t[..t.len() - 1], 1e12, true),
        'K' => (&t[..t.len() - 1], 1024f64, false),
        'M' => (&t[..t.len() - 1], (1u64 << 20) as f64, false),
        'G' => (&t[..t.len() - 1], (1u64 << 30) as f64, false),
        'T' => (&t[..t.len() - 1], (1u64 << 40) as f64, false),
        _ => return t.parse().ok(),
    };
    if !number.chars().all(|c| c.is_ascii_digit() || c == '.') || number.is_empty() {
        return None;
    }
    if decimal {
        number.parse::<f64>().ok().map(|n| (n * scale) as u64)
    } else {
        number.parse::<u64>().ok().map(|n| n * scale as u64)
    }
}

/// Read the memory-relevant user arguments (`spec.args`) and environment (`spec.env`) as
/// vLLM `release` would; an argument the operator cannot size is refused with the reason.
/// (`VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS` is read with the version family rules.)
pub fn user_memory(
    args: &[String],
    env: &[EnvVar],
    release: Release,
) -> Result<UserMemory, String> {
    let sc = scan(args, release);
    let mut out = UserMemory::default();
    let value = |dest: Dest| -> Result<Option<(&str, &str)>, String> {
        match sc.last(dest) {
            None => Ok(None),
            Some(o) => match &o.value {
                Some(v) => Ok(Some((o.written.as_str(), v.as_str()))),
                None if dest.takes_value() => Err(format!(
                    "spec.args `{}` has no value (vLLM would refuse to start)",
                    o.written
                )),
                None => Ok(None),
            },
        }
    };
    let positive = |written: &str, v: &str| -> Result<u64, String> {
        v.trim()
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("spec.args `{written}`: not a positive integer"))
    };
    if let Some((w, v)) = value(Dest::MaxNumSeqs)? {
        out.max_num_seqs = Some(positive(w, v)?);
    }
    if let Some((w, v)) = value(Dest::MaxNumBatchedTokens)? {
        let n = if release >= Release(0, 10, 2, 0) {
            human_readable_int(v).filter(|n| *n > 0).ok_or_else(|| {
                format!("spec.args `{w}`: not a positive integer (1k = 1000, 1K = 1024)")
            })?
        } else {
            positive(w, v)?
        };
        out.max_num_batched_tokens = Some(n);
    }
    if let Some((w, v)) = value(Dest::BlockSize)? {
        out.block_size = Some(positive(w, v)?);
    }
    if let Some(o) = sc.last(Dest::EnforceEager) {
        out.enforce_eager = !o.negated;
    }
    if let Some((w, v)) = value(Dest::PipelineParallelSize)?
        && positive(w, v)? > 1
    {
        return Err(format!(
            "spec.args `{w}`: the operator places tensor-parallel replicas on one node and does not plan pipeline stages; use spec.tensorParallel.sizes"
        ));
    }
    if let Some((w, v)) = value(Dest::CpuOffloadGb)? {
        let gib: f64 = v
            .trim()
            .parse()
            .map_err(|_| format!("spec.args `{w}`: not a number of GiB"))?;
        if gib > 0.0 {
            return Err(format!(
                "spec.args `{w}`: weights offloaded to host memory are not sized by the operator; remove it, or allow a quantization in spec.quantization.allowed"
            ));
        }
    }
    if let Some(o) = sc.last(Dest::KvCacheMemoryBytes) {
        // vllm/v1/worker/gpu_worker.py (0.11.0:235-252, 0.33.0:656-681): with it vLLM skips
        // memory profiling and takes exactly that KV cache, while the startup free-memory
        // check still runs with --gpu-memory-utilization.
        return Err(format!(
            "spec.args `{}`: vLLM then skips memory profiling and allocates exactly that KV cache, which the operator does not size; remove it (the operator sizes the KV cache through --gpu-memory-utilization from measured free memory)",
            o.written
        ));
    }
    if let Some(var) = env.iter().rev().find(|e| e.name == "VLLM_USE_V1") {
        out.v0_engine = v1_engine(var, release)?;
    }
    // Read with the family rules (`plan::estimate_cuda_graphs_env`) from 0.18.0, where
    // vLLM reads it as `bool(int(value))` (0.18.0 `envs.py:1635-1637`, 0.33.0 `:2219-2221`):
    // a value the planner cannot see or vLLM cannot read is refused here.
    if let Some(var) = env
        .iter()
        .rev()
        .find(|e| e.name == "VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS")
        && release >= Release(0, 18, 0, 0)
    {
        match var.value.as_deref() {
            None => {
                return Err("spec.env VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS comes from valueFrom, which the planner cannot read; give it a value".into());
            }
            Some(text) if text.trim().parse::<i64>().is_err() => {
                return Err(format!(
                    "spec.env VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS={text:?}: vLLM reads it as an integer and would fail"
                ));
            }
            Some(_) => {}
        }
    }
    Ok(out)
}

/// `VLLM_USE_V1` as vLLM reads it, `bool(int(value))` (`envs.py`); true when it selects the
/// V0 engine. 0.7.x: default 0 (V0), 1 opts into the alpha V1 engine (0.7.3
/// `envs.py:503-504`); 0.8.0-0.10.x: default 1, 0 selects V0 (0.8.0 `envs.py:522-523`,
/// `arg_utils.py` `_is_v1_supported_oracle`); 0.11.0 has no V0 engine and refuses 0
/// (`vllm/v1/engine/async_llm.py:89-94`); 0.12.0 and later no longer read it.
fn v1_engine(var: &EnvVar, release: Release) -> Result<bool, String> {
    if release >= Release(0, 12, 0, 0) {
        return Ok(false);
    }
    let Some(text) = var.value.as_deref() else {
        return Err(
            "spec.env VLLM_USE_V1 comes from valueFrom, which the planner cannot read; give it a value".into(),
        );
    };
    let on = match text.trim().parse::<i64>() {
        Ok(n) => n != 0,
        Err(_) => {
            return Err(format!(
                "spec.env VLLM_USE_V1={text:?}: vLLM reads it as an integer and would fail"
            ));
        }
    };
    match (
        release < Release(0, 8, 0, 0),
        release < Release(0, 11, 0, 0),
        on,
    ) {
        (true, _, true) => Err(format!(
            "spec.env VLLM_USE_V1=1: vLLM {release}'s V1 engine is an alpha the operator does not size; remove it"
        )),
        (true, _, false) => Ok(false),
        (false, true, on) => Ok(!on),
        (false, false, true) => Ok(false),
        (false, false, false) => Err(format!(
            "spec.env VLLM_USE_V1=0: vLLM {release} has no V0 engine and fails at startup; remove it"
        )),
    }
}

/// Where the model cache volume is mounted in the vLLM container.
pub const MODEL_CACHE_DIR: &str = "/model-cache";

/// The model argument of `vllm serve`: the Hugging Face id, or for `spec.model.path` the
/// directory in the cache volume (vLLM loads a directory as a local checkpoint without asking
/// the Hub: vllm/model_executor/model_loader/default_loader.py `is_local = os.path.isdir(..)`,
/// 0.11.0 and 0.33.0).
pub fn served_model(model: &ModelSpec) -> String {
    match &model.path {
        Some(p) => {
            let p = p.trim_start_matches("./").trim_end_matches('/');
            format!("{MODEL_CACHE_DIR}/{p}")
        }
        None => model.name.clone(),
    }
}

/// The option name of one user argument (`--flag` of `--flag=v`) with vLLM's `_` -> `-`
/// (see [`super::argparse`]); None for anything that is not a `--option`.
fn option_name(arg: &str, release: Release) -> Option<String> {
    let key = arg.split_once('=').map_or(arg, |(k, _)| k);
    if !key.starts_with("--") {
        return None;
    }
    Some(if release >= Release::FLEXIBLE_PARSER {
        key.replace('_', "-")
    } else {
        key.to_string()
    })
}

/// Remove every `--revision` (`--revision R`, `--revision=R`, `--revision_...` spellings) from
/// `user`: the revision is `spec.model.revision`, so that the config.json the planner sized and
/// the weights vLLM loads are the same files. Returns what is left and what was removed, as
/// written. Exact option names only: prefixes of `--revision` are not in the generated option
/// table ([`super::vllm_options`]).
pub fn strip_revision(user: &[String], release: Release) -> (Vec<String>, Vec<String>) {
    let mut kept = Vec::with_capacity(user.len());
    let mut removed = Vec::new();
    let mut i = 0;
    while i < user.len() {
        let arg = &user[i];
        if arg == "--" {
            kept.extend(user[i..].iter().cloned());
            break;
        }
        if option_name(arg, release).as_deref() == Some("--revision") {
            let takes_next =
                !arg.contains('=') && user.get(i + 1).is_some_and(|n| !n.starts_with('-'));
            if takes_next {
                removed.push(format!("{arg} {}", user[i + 1]));
                i += 2;
            } else {
                removed.push(arg.clone());
                i += 1;
            }
            continue;
        }
        kept.push(arg.clone());
        i += 1;
    }
    (kept, removed)
}

/// Flags that say which files vLLM loads, emitted after the owned memory flags: `--revision R`
/// and `--tokenizer-revision R` (unless the user chose the tokenizer's) for
/// `spec.model.revision`; for a local `spec.model.path`, `--served-model-name NAME` (unless the
/// user chose one) so that clients keep asking for the model by its name rather than by the
/// directory. All three exist in every release we plan (vllm/engine/arg_utils.py
/// `add_cli_args`, 0.5.0.post1, 0.11.0 and 0.33.0).
pub fn model_flags(model: &ModelSpec, user: &[String], release: Release) -> Vec<String> {
    let user_sets = |flag: &str| {
        user.iter()
            .any(|a| option_name(a, release).as_deref() == Some(flag))
    };
    let mut out = Vec::new();
    if model.path.is_some() {
        if !user_sets("--served-model-name") {
            out.extend(["--served-model-name".to_string(), model.name.clone()]);
        }
    } else if let Some(r) = &model.revision {
        out.extend(["--revision".to_string(), r.clone()]);
        if !user_sets("--tokenizer-revision") {
            out.extend(["--tokenizer-revision".to_string(), r.clone()]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    const V0_11: Release = Release(0, 11, 0, 0);
    const V0_33: Release = Release::NEWEST;

    fn flags(q: Option<&'static str>) -> ServeFlags {
        ServeFlags {
            tensor_parallel_size: 4,
            quantization: q,
            kv_cache_dtype: KvCacheDtype::Auto,
            max_model_len: 8192,
            gpu_memory_utilization: 0.87,
        }
    }

    #[test]
    fn owned_flags_are_replaced_in_both_forms_and_emitted_last() {
        let user = s(&[
            "--enable-prefix-caching",
            "--gpu-memory-utilization",
            "0.9",
            "--max-model-len=4096",
            "-tp",
            "2",
            "--seed",
            "1",
        ]);
        let (cmd, replaced) = serve_command("m", &flags(Some("fp8")), &user, V0_11);
        assert_eq!(
            cmd,
            s(&[
                "vllm",
                "serve",
                "m",
                "--enable-prefix-caching",
                "--seed",
                "1",
                "--tensor-parallel-size",
                "4",
                "--quantization",
                "fp8",
                "--kv-cache-dtype",
                "auto",
                "--max-model-len",
                "8192",
                "--gpu-memory-utilization",
                "0.87",
            ])
        );
        assert_eq!(
            replaced,
            s(&[
                "--gpu-memory-utilization 0.9",
                "--max-model-len=4096",
                "-tp 2"
            ])
        );
    }

    #[test]
    fn spellings_vllm_accepts_are_replaced_too() {
        // vllm/utils/__init__.py FlexibleArgumentParser (0.11.0): `_` -> `-`; argparse's
        // allow_abbrev: unique prefixes; `-q` with its value attached.
        let user = s(&[
            "--gpu_memory_utilization",
            "0.95",
            "--gpu-mem=0.9",
            "--tensor_parallel_size=2",
            "--quant",
            "awq",
            "-qgptq",
            "--kv_cache_dtype",
            "fp8",
            "--max-model",
            "4096",
            "--max_num_seqs",
            "8",
        ]);
        let (rest, replaced) = strip_owned(&user, V0_11);
        assert_eq!(rest, s(&["--max_num_seqs", "8"]));
        assert_eq!(replaced.len(), 7, "{replaced:?}");
        // 0.31+: the alias; 0.33.0: "--quant" is ambiguous (--quantization-config), so vLLM
        // refuses it itself and it is left alone.
        let user = s(&["--device-memory-utilization", "0.5", "--quant", "awq"]);
        let (rest, replaced) = strip_owned(&user, V0_33);
        assert_eq!(rest, s(&["--quant", "awq"]));
        assert_eq!(replaced, s(&["--device-memory-utilization 0.5"]));
        let (rest, _) = strip_owned(&user, Release(0, 30, 0, 0));
        assert_eq!(rest, user);
    }

    #[test]
    fn a_config_file_cannot_bring_back_a_quantization_the_plan_left_out() {
        // vllm/utils/argparse_utils.py (0.33.0) `_pull_args_from_config`: the file's keys go
        // right after `serve MODEL`, so every flag the operator emits later wins, and
        // `--quantization None` is vLLM's "no method" (see NO_QUANTIZATION).
        let user = s(&["--config", "/etc/vllm/serve.yaml"]);
        let (cmd, _) = serve_command("m", &flags(None), &user, V0_33);
        assert_eq!(
            cmd[3..],
            s(&[
                "--config",
                "/etc/vllm/serve.yaml",
                "--tensor-parallel-size",
                "4",
                "--quantization",
                "None",
                "--kv-cache-dtype",
                "auto",
                "--max-model-len",
                "8192",
                "--gpu-memory-utilization",
                "0.87",
            ])
        );
        // Without a config file, no quantization means no flag.
        let (cmd, _) = serve_command("m", &flags(None), &[], V0_33);
        assert!(!cmd.contains(&"--quantization".to_string()));
    }

    #[test]
    fn a_trailing_owned_flag_without_value_is_dropped() {
        let (kept, removed) = strip_owned(&s(&["--quantization"]), V0_11);
        assert!(kept.is_empty());
        assert_eq!(removed, s(&["--quantization"]));
    }

    fn env(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: Some(value.into()),
            ..EnvVar::default()
        }
    }

    #[test]
    fn memory_arguments_are_read_last_one_winning() {
        let args = s(&[
            "--max-num-seqs",
            "64",
            "--max_num_seqs=32",
            "--max-num-batched-tokens",
            "4k",
            "--enforce-eager",
            "--block-size",
            "32",
            "-pp",
            "1",
            "--cpu-offload-gb",
            "0",
        ]);
        let m = user_memory(&args, &[], V0_33).unwrap();
        assert_eq!(
            m,
            UserMemory {
                max_num_seqs: Some(32),
                max_num_batched_tokens: Some(4000),
                enforce_eager: true,
                block_size: Some(32),
                v0_engine: false,
            }
        );
        let m = user_memory(&s(&["--enforce-eager", "--no-enforce-eager"]), &[], V0_33).unwrap();
        assert!(!m.enforce_eager);
        assert_eq!(human_readable_int("2K"), Some(2048));
        assert_eq!(human_readable_int("1.5k"), Some(1500));
        assert_eq!(human_readable_int("1.5K"), None);
        // Before 0.10.2 the value is a plain int.
        assert!(
            user_memory(
                &s(&["--max-num-batched-tokens", "4k"]),
                &[],
                Release(0, 10, 1, 0)
            )
            .is_err()
        );
    }

    #[test]
    fn memory_arguments_the_operator_cannot_size_are_refused_by_name() {
        for (args, needle) in [
            (
                &["--kv-cache-memory-bytes", "8G"][..],
                "--kv-cache-memory-bytes 8G",
            ),
            (&["--kv_cache_memory=8G"][..], "--kv_cache_memory=8G"),
            (&["-pp", "2"][..], "-pp 2"),
            (&["--cpu-offload-gb", "4"][..], "--cpu-offload-gb 4"),
            (&["--max-num-seqs", "lots"][..], "--max-num-seqs lots"),
            (&["--block-size"][..], "--block-size"),
        ] {
            let err = user_memory(&s(args), &[], V0_33).unwrap_err();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn vllm_use_v1_by_release() {
        let v0 = [env("VLLM_USE_V1", "0")];
        let v1 = [env("VLLM_USE_V1", "1")];
        assert!(
            user_memory(&[], &v0, Release(0, 10, 1, 0))
                .unwrap()
                .v0_engine
        );
        assert!(
            !user_memory(&[], &v1, Release(0, 10, 1, 0))
                .unwrap()
                .v0_engine
        );
        assert!(
            !user_memory(&[], &v0, Release(0, 7, 3, 0))
                .unwrap()
                .v0_engine
        );
        assert!(
            user_memory(&[], &v1, Release(0, 7, 3, 0))
                .unwrap_err()
                .contains("alpha")
        );
        assert!(
            user_memory(&[], &v0, V0_11)
                .unwrap_err()
                .contains("no V0 engine")
        );
        assert!(!user_memory(&[], &v0, V0_33).unwrap().v0_engine);
        assert!(user_memory(&[], &[env("VLLM_USE_V1", "yes")], V0_11).is_err());
        let graphs = |v: &str| [env("VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS", v)];
        assert!(user_memory(&[], &graphs("0"), V0_33).is_ok());
        assert!(user_memory(&[], &graphs("true"), V0_33).is_err());
        assert!(user_memory(&[], &graphs("true"), Release(0, 17, 0, 0)).is_ok());
        let from = EnvVar {
            name: "VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS".into(),
            ..EnvVar::default()
        };
        assert!(user_memory(&[], &[from], V0_33).is_err());
    }

    #[test]
    fn the_revision_reaches_vllm_and_a_user_revision_is_replaced() {
        let model = ModelSpec {
            name: "org/m".into(),
            revision: Some("abc123".into()),
            ..Default::default()
        };
        let user = s(&["--revision", "main", "--seed", "1", "--revision=v2"]);
        let (kept, removed) = strip_revision(&user, V0_33);
        assert_eq!(kept, s(&["--seed", "1"]));
        assert_eq!(removed, s(&["--revision main", "--revision=v2"]));
        assert_eq!(
            model_flags(&model, &kept, V0_33),
            s(&["--revision", "abc123", "--tokenizer-revision", "abc123"])
        );
        // Their tokenizer revision (any spelling vLLM reads) is theirs.
        let theirs = s(&["--tokenizer_revision=v2"]);
        assert_eq!(
            model_flags(&model, &theirs, V0_33),
            s(&["--revision", "abc123"])
        );
        assert!(model_flags(&ModelSpec::default(), &[], V0_33).is_empty());
    }

    #[test]
    fn a_local_model_is_served_from_the_cache_under_its_name() {
        let model = ModelSpec {
            name: "org/m".into(),
            path: Some("./models/m/".into()),
            ..Default::default()
        };
        assert_eq!(served_model(&model), "/model-cache/models/m");
        assert_eq!(
            model_flags(&model, &[], V0_33),
            s(&["--served-model-name", "org/m"])
        );
        assert!(model_flags(&model, &s(&["--served-model-name", "x"]), V0_33).is_empty());
    }
}
