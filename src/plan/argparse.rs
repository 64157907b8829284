//! `vllm serve`'s own argument parsing, as far as the operator reads it: which user argument
//! vLLM takes as which option, so that the flags the operator owns can be removed and the
//! memory-relevant ones sized, whatever spelling the user chose.
//!
//! What vLLM does, release by release (read in the wheels, `vllm/` tree):
//! - From 0.5.1 `FlexibleArgumentParser` turns `_` into `-` in every `--name` before argparse
//!   sees it (0.6.4 `vllm/utils.py` `parse_args`: the whole key; 0.33.0
//!   `vllm/utils/argparse_utils.py:378-394`: up to the first `.`, the rest being a JSON path).
//!   0.5.0.x parses with a plain `argparse.ArgumentParser` (`entrypoints/openai/cli_args.py`).
//! - No release passes `allow_abbrev=False`, so argparse takes any prefix that starts exactly
//!   one option (`--gpu-mem`); a prefix shared by two options is an error ("ambiguous
//!   option"), which vLLM reports itself. The shortest unique prefix per release is in the
//!   generated [`super::vllm_options::ROWS`] (`scripts/vllm-options.py`).
//! - argparse keeps the last occurrence of a store option.
//! - `--config FILE` (only that exact token: `"--config" in args`, 0.6.0+ `utils.py`
//!   `_pull_args_from_config`; 0.33.0 `argparse_utils.py:371, 549-630`) inserts the YAML's
//!   keys right after `serve MODEL`, before every command-line argument: the command line wins.
//! - `--device-memory-utilization` is a second name of `--gpu-memory-utilization` from 0.31.0
//!   (`vllm/engine/arg_utils.py:1390` in 0.33.0, `dest="gpu_memory_utilization"`).
//! - `--enforce-eager` has a `--no-enforce-eager` twin where it is a `BooleanOptionalAction`
//!   (0.10+: generated from `ModelConfig.enforce_eager: bool`, `arg_utils.py` `_compute_kwargs`).

use std::fmt;

use super::vllm_options::ROWS;

/// A vLLM release `major.minor.patch[.post]` (`.postN` and a fourth number both count in the
/// last place).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Release(pub u32, pub u32, pub u32, pub u32);

impl Release {
    /// The newest release read; unknown tags (`latest`, digests) are taken as this one.
    pub const NEWEST: Release = Release(0, 33, 0, 0);
    /// `FlexibleArgumentParser` (underscores read as dashes) from here on.
    pub const FLEXIBLE_PARSER: Release = Release(0, 5, 1, 0);

    /// `0.11.0`, `v0.10.1.1`, `0.6.4.post1`, `0.12.0rc1`; None when it is not a version.
    pub fn parse(text: &str) -> Option<Release> {
        let v = text.trim().trim_start_matches('v');
        let mut nums = [0u32; 4];
        let mut parts = v.split(['.', '-', '+']);
        for (i, slot) in nums.iter_mut().enumerate() {
            let Some(part) = parts.next() else { break };
            let part = part.strip_prefix("post").unwrap_or(part);
            let digits = &part[..part
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(part.len())];
            match digits.parse() {
                Ok(n) => *slot = n,
                Err(_) if i >= 2 => break,
                Err(_) => return None,
            }
        }
        Some(Release(nums[0], nums[1], nums[2], nums[3]))
    }

    /// The release of an image such as `vllm/vllm-openai:v0.11.0`; the newest for a tag that
    /// is not a version.
    pub fn from_image(image: &str) -> Release {
        let name = image.split('@').next().unwrap_or(image);
        let tag = match name.rsplit_once(':') {
            // `host:5000/repo` has a port, not a tag.
            Some((_, t)) if !t.contains('/') => t,
            _ => "",
        };
        Release::parse(tag).unwrap_or(Release::NEWEST)
    }
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)?;
        if self.3 > 0 {
            write!(f, ".post{}", self.3)?;
        }
        Ok(())
    }
}

/// The options the operator reads, by their argparse `dest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dest {
    TensorParallelSize,
    PipelineParallelSize,
    Quantization,
    KvCacheDtype,
    MaxModelLen,
    GpuMemoryUtilization,
    MaxNumSeqs,
    MaxNumBatchedTokens,
    EnforceEager,
    BlockSize,
    KvCacheMemoryBytes,
    CpuOffloadGb,
}

impl Dest {
    /// Whether the option takes a value (all but `--enforce-eager`).
    pub fn takes_value(self) -> bool {
        self != Dest::EnforceEager
    }

    /// The canonical option string.
    pub fn flag(self) -> &'static str {
        match self {
            Dest::TensorParallelSize => "--tensor-parallel-size",
            Dest::PipelineParallelSize => "--pipeline-parallel-size",
            Dest::Quantization => "--quantization",
            Dest::KvCacheDtype => "--kv-cache-dtype",
            Dest::MaxModelLen => "--max-model-len",
            Dest::GpuMemoryUtilization => "--gpu-memory-utilization",
            Dest::MaxNumSeqs => "--max-num-seqs",
            Dest::MaxNumBatchedTokens => "--max-num-batched-tokens",
            Dest::EnforceEager => "--enforce-eager",
            Dest::BlockSize => "--block-size",
            Dest::KvCacheMemoryBytes => "--kv-cache-memory-bytes",
            Dest::CpuOffloadGb => "--cpu-offload-gb",
        }
    }
}

/// One generated row: `option` exists from `since` to before `before`, and argparse takes
/// any prefix of it at least `unique_prefix` characters long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionRow {
    pub dest: Dest,
    pub option: &'static str,
    pub since: Release,
    pub before: Option<Release>,
    pub unique_prefix: usize,
    pub neighbour: &'static str,
}

impl OptionRow {
    /// The oldest release the table was generated from.
    const OLDEST_READ: Release = Release(0, 5, 0, 1);

    fn holds(&self, release: Release) -> bool {
        // Releases older than every release read are parsed with the oldest rows.
        let from = if self.since == Self::OLDEST_READ {
            Release(0, 0, 0, 0)
        } else {
            self.since
        };
        from <= release && self.before.is_none_or(|b| release < b)
    }
}

/// Which of the operator's options `name` (the part before any `=`, underscores already
/// turned into dashes where vLLM does) is, in `release`.
fn resolve(name: &str, release: Release) -> Option<Dest> {
    let rows = ROWS.iter().filter(|r| r.holds(release));
    let mut found = None;
    for r in rows {
        if r.option == name {
            return Some(r.dest);
        }
        if name.len() >= r.unique_prefix
            && name.len() < r.option.len()
            && r.option.starts_with(name)
        {
            found = Some(r.dest);
        }
    }
    found
}

/// One user argument vLLM reads as an operator-relevant option.
#[derive(Clone, Debug, PartialEq)]
pub struct Occurrence {
    pub dest: Dest,
    /// The tokens as written, joined by a space (`--gpu-mem 0.9`, `-qawq`).
    pub written: String,
    /// The value; None for a flag (or a value-taking option with nothing after it).
    pub value: Option<String>,
    /// `--no-enforce-eager`.
    pub negated: bool,
    /// Where it starts in the arguments, and how many tokens it spans (1 or 2).
    pub at: usize,
    pub tokens: usize,
}

/// User arguments split into what vLLM reads as one of [`Dest`] and everything else.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scan {
    pub found: Vec<Occurrence>,
    /// Every other token, in order.
    pub rest: Vec<String>,
    /// `--config FILE`, exactly as vLLM detects it.
    pub config_file: Option<String>,
}

impl Scan {
    /// The value argparse keeps for `dest`: the last occurrence.
    pub fn last(&self, dest: Dest) -> Option<&Occurrence> {
        self.found.iter().rev().find(|o| o.dest == dest)
    }
}

/// vLLM's underscore rule for one `--key` (without its `=value`).
fn normalise_key(key: &str, release: Release) -> String {
    if release < Release::FLEXIBLE_PARSER {
        return key.to_string();
    }
    // Underscores become dashes up to the first '.' (what follows is a JSON path).
    match key.split_once('.') {
        Some((head, tail)) => format!("{}.{tail}", head.replace('_', "-")),
        None => key.replace('_', "-"),
    }
}

/// A token argparse would take as a value rather than an option: not starting with '-', or
/// a negative number (no vLLM option looks like one).
fn is_value(token: &str) -> bool {
    !token.starts_with('-') || token[1..].parse::<f64>().is_ok()
}

/// Split `args` (everything after `vllm serve MODEL`) the way vLLM `release` reads them.
pub fn scan(args: &[String], release: Release) -> Scan {
    let mut out = Scan::default();
    let mut i = 0;
    while i < args.len() {
        let token = &args[i];
        if token == "--" {
            // argparse: everything after `--` is positional.
            out.rest.extend(args[i..].iter().cloned());
            break;
        }
        if token == "--config" && release >= Release(0, 6, 0, 0) {
            out.config_file = args.get(i + 1).cloned();
        }
        let hit = if let Some(body) = token.strip_prefix("--") {
            let (key, inline) = match body.split_once('=') {
                Some((k, v)) => (k, Some(v.to_string())),
                None => (body, None),
            };
            let key = normalise_key(&format!("--{key}"), release);
            if key == "--no-enforce-eager" {
                Some((Dest::EnforceEager, inline, true))
            } else if key.contains('.') {
                None
            } else {
                resolve(&key, release).map(|d| (d, inline, false))
            }
        } else if token.starts_with('-') && token.len() > 1 && !is_value(token) {
            let (key, inline) = match token.split_once('=') {
                Some((k, v)) => (k, Some(v.to_string())),
                None => (token.as_str(), None),
            };
            match resolve(key, release) {
                Some(d) => Some((d, inline, false)),
                // `-qawq`: a two-character option with its value attached.
                None if inline.is_none() && token.len() > 2 => resolve(&token[..2], release)
                    .filter(|d| d.takes_value())
                    .filter(|_| ROWS.iter().any(|r| r.option == &token[..2]))
                    .map(|d| (d, Some(token[2..].to_string()), false)),
                None => None,
            }
        } else {
            None
        };
        let Some((dest, inline, negated)) = hit else {
            out.rest.push(token.clone());
            i += 1;
            continue;
        };
        let (value, used) = match inline {
            Some(v) => (Some(v), 1),
            None if dest.takes_value() && !negated => match args.get(i + 1) {
                Some(next) if is_value(next) => (Some(next.clone()), 2),
                _ => (None, 1),
            },
            None => (None, 1),
        };
        out.found.push(Occurrence {
            dest,
            written: args[i..i + used].join(" "),
            value,
            negated,
            at: i,
            tokens: used,
        });
        i += used;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn dests(args: &[&str], r: Release) -> Vec<(Dest, Option<String>)> {
        scan(&s(args), r)
            .found
            .into_iter()
            .map(|o| (o.dest, o.value))
            .collect()
    }

    const V0_11: Release = Release(0, 11, 0, 0);
    const V0_30: Release = Release(0, 30, 0, 0);
    const V0_33: Release = Release::NEWEST;

    #[test]
    fn releases_parse_from_versions_and_image_tags() {
        assert_eq!(Release::parse("v0.10.1.1"), Some(Release(0, 10, 1, 1)));
        assert_eq!(Release::parse("0.6.4.post1"), Some(Release(0, 6, 4, 1)));
        assert_eq!(Release::parse("0.12.0rc1"), Some(Release(0, 12, 0, 0)));
        assert_eq!(Release::parse("latest"), None);
        assert_eq!(
            Release::from_image("vllm/vllm-openai:v0.11.0"),
            Release(0, 11, 0, 0)
        );
        assert_eq!(Release::from_image("vllm/vllm-openai:latest"), V0_33);
        assert_eq!(Release::from_image("reg:5000/vllm"), V0_33);
        assert_eq!(
            Release::from_image("vllm/vllm-openai@sha256:abcd"),
            Release::NEWEST
        );
        assert_eq!(Release(0, 6, 4, 1).to_string(), "0.6.4.post1");
    }

    #[test]
    fn underscores_prefixes_and_both_value_forms() {
        let got = dests(
            &[
                "--gpu_memory_utilization",
                "0.9",
                "--gpu-mem=0.8",
                "--tensor_parallel_size=2",
                "-tp",
                "4",
                "-q",
                "awq",
                "-qgptq",
                "--max_num_seqs",
                "64",
                "--enforce_eager",
                "--no-enforce-eager",
                "--port",
                "8000",
            ],
            V0_11,
        );
        use Dest::*;
        assert_eq!(
            got,
            [
                (GpuMemoryUtilization, Some("0.9".into())),
                (GpuMemoryUtilization, Some("0.8".into())),
                (TensorParallelSize, Some("2".into())),
                (TensorParallelSize, Some("4".into())),
                (Quantization, Some("awq".into())),
                (Quantization, Some("gptq".into())),
                (MaxNumSeqs, Some("64".into())),
                (EnforceEager, None),
                (EnforceEager, None),
            ]
        );
        let sc = scan(
            &s(&["--enforce-eager", "--no_enforce_eager", "--port", "1"]),
            V0_11,
        );
        assert!(!sc.found[0].negated && sc.found[1].negated);
        assert_eq!(sc.rest, s(&["--port", "1"]));
    }

    #[test]
    fn prefixes_follow_each_releases_option_list() {
        // 0.11.0: --quantization is the only option starting "--q"; 0.22.0 adds
        // --quantization-config, so "--quant" is ambiguous there and vLLM itself refuses it.
        assert_eq!(
            dests(&["--quant", "awq"], V0_11),
            [(Dest::Quantization, Some("awq".into()))]
        );
        assert!(dests(&["--quant", "awq"], V0_33).is_empty());
        // 0.26.0 adds --max-num-scheduled-tokens: "--max-num-s" no longer names one option.
        assert_eq!(
            dests(&["--max-num-s", "8"], V0_11),
            [(Dest::MaxNumSeqs, Some("8".into()))]
        );
        assert!(dests(&["--max-num-s", "8"], V0_33).is_empty());
        assert_eq!(
            dests(&["--max-num-se", "8"], V0_33),
            [(Dest::MaxNumSeqs, Some("8".into()))]
        );
        // The alias exists from 0.31.0 only.
        assert!(dests(&["--device-memory-utilization", "0.5"], V0_30).is_empty());
        assert_eq!(
            dests(&["--device-memory-utilization", "0.5"], V0_33),
            [(Dest::GpuMemoryUtilization, Some("0.5".into()))]
        );
        // An exact option is never a prefix match of a longer one.
        assert!(dests(&["--kv-cache-dtype-skip-layers", "0"], V0_33).is_empty());
        assert_eq!(
            dests(&["--kv-cache-dtype", "fp8"], V0_33),
            [(Dest::KvCacheDtype, Some("fp8".into()))]
        );
        // Too short to be unique anywhere.
        assert!(dests(&["--max", "8", "--gp"], V0_11).len() == 1);
    }

    #[test]
    fn the_generated_table_is_consistent() {
        for r in ROWS {
            assert!(r.unique_prefix <= r.option.len(), "{r:?}");
            // The neighbour is what forces the length: it shares all but the last character
            // of the prefix, or all of an option that is only taken whole.
            let common = r
                .option
                .chars()
                .zip(r.neighbour.chars())
                .take_while(|(a, b)| a == b)
                .count();
            assert!(
                common + 1 == r.unique_prefix
                    || (r.unique_prefix == r.option.len() && r.neighbour.starts_with(r.option)),
                "{r:?}"
            );
            assert!(r.before.is_none_or(|b| r.since < b), "{r:?}");
            // Runs of one option never overlap.
            for o in ROWS.iter().filter(|o| o.option == r.option && *o != r) {
                assert!(
                    o.before.is_some_and(|b| b <= r.since)
                        || r.before.is_some_and(|b| b <= o.since),
                    "{r:?} overlaps {o:?}"
                );
            }
            assert_eq!(resolve(r.option, r.since), Some(r.dest));
        }
        for dest in [
            Dest::TensorParallelSize,
            Dest::PipelineParallelSize,
            Dest::Quantization,
            Dest::KvCacheDtype,
            Dest::MaxModelLen,
            Dest::GpuMemoryUtilization,
            Dest::MaxNumSeqs,
            Dest::MaxNumBatchedTokens,
            Dest::EnforceEager,
            Dest::BlockSize,
            Dest::KvCacheMemoryBytes,
            Dest::CpuOffloadGb,
        ] {
            assert_eq!(resolve(dest.flag(), Release::NEWEST), Some(dest));
        }
    }

    #[test]
    fn plain_argparse_before_0_5_1_keeps_underscores() {
        let old = Release(0, 5, 0, 1);
        assert!(dests(&["--gpu_memory_utilization", "0.9"], old).is_empty());
        assert_eq!(
            dests(&["--gpu-memory-utilization", "0.9"], old),
            [(Dest::GpuMemoryUtilization, Some("0.9".into()))]
        );
    }

    #[test]
    fn config_file_dotted_json_and_double_dash() {
        let sc = scan(
            &s(&[
                "--config",
                "c.yaml",
                "--compilation_config.cudagraph_mode",
                "NONE",
                "--",
                "--max-num-seqs",
                "4",
            ]),
            V0_33,
        );
        assert_eq!(sc.config_file.as_deref(), Some("c.yaml"));
        assert!(sc.found.is_empty(), "{:?}", sc.found);
        // `--config=FILE` is not pulled by vLLM (it checks the exact token).
        assert_eq!(scan(&s(&["--config=c.yaml"]), V0_33).config_file, None);
    }

    #[test]
    fn a_value_option_at_the_end_or_before_an_option_has_no_value() {
        let sc = scan(
            &s(&["--max-num-seqs", "--port", "1", "--block-size"]),
            V0_11,
        );
        assert_eq!(sc.found.len(), 2);
        assert!(sc.found.iter().all(|o| o.value.is_none()));
        assert_eq!(sc.rest, s(&["--port", "1"]));
        // A negative number is a value (vLLM's `--max-model-len -1`).
        let sc = scan(&s(&["--max-model-len", "-1"]), V0_33);
        assert_eq!(sc.found[0].value.as_deref(), Some("-1"));
    }
}
