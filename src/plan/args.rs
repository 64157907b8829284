//! The `vllm serve` argument list: the operator's memory flags, then the user's arguments with
//! any flag the operator owns taken out (and reported, so the controller can say so).

use crate::api::KvCacheDtype;

/// Flags whose value the planner decides; a user value for them is replaced.
pub const OWNED_FLAGS: [&str; 7] = [
    "--tensor-parallel-size",
    "-tp",
    "--quantization",
    "-q",
    "--kv-cache-dtype",
    "--max-model-len",
    "--gpu-memory-utilization",
];

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

fn owned(flag: &str) -> Option<&'static str> {
    let name = flag.split_once('=').map_or(flag, |(n, _)| n);
    OWNED_FLAGS.iter().copied().find(|f| *f == name)
}

/// Remove owned flags (`--flag value` and `--flag=value`) from `user`; returns what is left
/// and the flags that were removed, as the user wrote them.
pub fn strip_owned(user: &[String]) -> (Vec<String>, Vec<String>) {
    let mut kept = Vec::with_capacity(user.len());
    let mut removed = Vec::new();
    let mut i = 0;
    while i < user.len() {
        let arg = &user[i];
        if owned(arg).is_some() {
            if arg.contains('=') || i + 1 >= user.len() || user[i + 1].starts_with("--") {
                removed.push(arg.clone());
                i += 1;
            } else {
                removed.push(format!("{arg} {}", user[i + 1]));
                i += 2;
            }
            continue;
        }
        kept.push(arg.clone());
        i += 1;
    }
    (kept, removed)
}

/// `vllm serve MODEL --tensor-parallel-size N [--quantization Q] --kv-cache-dtype D
/// --max-model-len L --gpu-memory-utilization U USER_ARGS...`, and the user flags replaced.
pub fn serve_command(
    model: &str,
    flags: &ServeFlags,
    user: &[String],
) -> (Vec<String>, Vec<String>) {
    let (rest, replaced) = strip_owned(user);
    let mut out = vec![
        "vllm".to_string(),
        "serve".to_string(),
        model.to_string(),
        "--tensor-parallel-size".to_string(),
        flags.tensor_parallel_size.to_string(),
    ];
    if let Some(method) = flags.quantization {
        out.push("--quantization".into());
        out.push(method.to_string());
    }
    out.extend([
        "--kv-cache-dtype".to_string(),
        flags.kv_cache_dtype.to_string(),
        "--max-model-len".to_string(),
        flags.max_model_len.to_string(),
        "--gpu-memory-utilization".to_string(),
        format!("{:.2}", flags.gpu_memory_utilization),
    ]);
    out.extend(rest);
    (out, replaced)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn owned_flags_are_replaced_in_both_forms() {
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
        let flags = ServeFlags {
            tensor_parallel_size: 4,
            quantization: Some("fp8"),
            kv_cache_dtype: KvCacheDtype::Auto,
            max_model_len: 8192,
            gpu_memory_utilization: 0.87,
        };
        let (cmd, replaced) = serve_command("m", &flags, &user);
        assert_eq!(
            cmd,
            s(&[
                "vllm",
                "serve",
                "m",
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
                "--enable-prefix-caching",
                "--seed",
                "1"
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
    fn a_trailing_owned_flag_without_value_is_dropped() {
        let (kept, removed) = strip_owned(&s(&["--quantization"]));
        assert!(kept.is_empty());
        assert_eq!(removed, s(&["--quantization"]));
    }
}
