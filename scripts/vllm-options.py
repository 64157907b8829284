#!/usr/bin/env python3
"""Print the option strings `vllm serve` (or the OpenAI api_server before `vllm serve`
existed) accepts in one vLLM release, read statically from the release's own Python with
`ast` (vLLM itself cannot be imported without torch and a GPU stack).

Usage: scripts/vllm-options.py /work/vllm-src/0.33.0 > options.txt
       scripts/vllm-options.py --table DIR... > src/plan/vllm_options.rs

Where the options come from (the files `make_arg_parser` reads, per release):
- every string literal starting with '-' passed to an `add_argument(...)` call in
  vllm/engine/arg_utils.py (EngineArgs/AsyncEngineArgs.add_cli_args), the frontend
  cli_args.py (entrypoints/openai, entrypoints/launchers or entrypoints/common) and
  entrypoints/cli/serve.py;
- from 0.10 the frontend options are generated from the annotated fields of the
  `FrontendArgs` dataclass (and its base `BaseFrontendArgs`): `--{field.replace('_', '-')}`.
`--no-X` (BooleanOptionalAction) and the `--enable-X`/`--disable-X` inverses (0.33's
EnableDisableAction) are not listed: they only share the prefixes `--n`, `--en`, `--di` with
other options, so they never change the shortest unique prefix of a flag read here.
"""
import ast
import os
import sys

FRONTEND = [
    "vllm/entrypoints/openai/cli_args.py",
    "vllm/entrypoints/launchers/cli_args.py",
    "vllm/entrypoints/common/cli_args.py",
]
FILES = [
    "vllm/engine/arg_utils.py",
    "vllm/entrypoints/cli/serve.py",
    "vllm/scripts.py",
] + FRONTEND


def options(root):
    found = set()
    for rel in FILES:
        path = os.path.join(root, rel)
        if not os.path.exists(path):
            continue
        tree = ast.parse(open(path).read())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add_argument"
            ):
                for a in node.args:
                    if isinstance(a, ast.Constant) and isinstance(a.value, str):
                        if a.value.startswith("-"):
                            found.add(a.value)
            if (
                rel in FRONTEND
                and isinstance(node, ast.ClassDef)
                and node.name in ("FrontendArgs", "BaseFrontendArgs")
            ):
                for item in node.body:
                    if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                        name = item.target.id
                        if not name.startswith("_"):
                            found.add("--" + name.replace("_", "-"))
    return sorted(found)


# dest -> the option strings vLLM registers for it (all releases together; a string absent
# from a release's list is skipped for that release).
READ = {
    "tensor_parallel_size": ["--tensor-parallel-size", "-tp"],
    "pipeline_parallel_size": ["--pipeline-parallel-size", "-pp"],
    "quantization": ["--quantization", "-q"],
    "kv_cache_dtype": ["--kv-cache-dtype"],
    "max_model_len": ["--max-model-len"],
    "gpu_memory_utilization": ["--gpu-memory-utilization", "--device-memory-utilization"],
    "max_num_seqs": ["--max-num-seqs"],
    "max_num_batched_tokens": ["--max-num-batched-tokens"],
    "enforce_eager": ["--enforce-eager"],
    "block_size": ["--block-size"],
    "kv_cache_memory_bytes": ["--kv-cache-memory-bytes"],
    "cpu_offload_gb": ["--cpu-offload-gb"],
}


def shortest_unique(opt, opts):
    """argparse (allow_abbrev) takes a prefix when exactly one option starts with it."""
    others = [o for o in opts if o != opt]
    near = max(others, key=lambda o: (len(os.path.commonprefix([o, opt])), o))
    # A prefix is unique once it is longer than what `near` shares with `opt`; when `near`
    # starts with all of `opt` (e.g. --kv-cache-dtype-skip-layers), only the exact string works.
    return min(len(os.path.commonprefix([near, opt])) + 1, len(opt)), near


def version_key(v):
    parts = []
    for p in v.replace(".post", ".").split("."):
        parts.append(int(p) if p.isdigit() else 0)
    return tuple(parts + [0] * (4 - len(parts)))


def table(roots):
    """One row per run of consecutive releases in which an option exists with the same
    shortest unique prefix (the neighbour named is the one of the run's first release)."""
    per_option = {}
    versions = sorted(
        (os.path.basename(r.rstrip("/")) for r in roots), key=version_key
    )
    by_version = {os.path.basename(r.rstrip("/")): r for r in roots}
    for v in versions:
        opts = options(by_version[v])
        for dest, strings in READ.items():
            for s in strings:
                per_option.setdefault((dest, s), []).append(
                    (v, shortest_unique(s, opts) if s in opts else None)
                )
    rows = []
    for (dest, s), seq in per_option.items():
        run = None  # (since, prefix, neighbour)
        for v, ans in seq + [(None, None)]:
            if run and (ans is None or ans[0] != run[1]):
                rows.append((dest, s, run[0], v, run[1], run[2]))
                run = None
            if ans is not None and run is None:
                run = (v, ans[0], ans[1])
    return versions, rows


def release(v):
    k = version_key(v)
    return f"Release({k[0]}, {k[1]}, {k[2]}, {k[3]})"


def main():
    args = sys.argv[1:]
    if args and args[0] == "--table":
        versions, rows = table(args[1:])
        print("//! Generated by `scripts/vllm-options.py --table DIR...` (one unpacked wheel per DIR) from the")
        print("//! option strings of `vllm serve` in vLLM " + ", ".join(versions) + ":")
        print("//! vllm/engine/arg_utils.py and the frontend cli_args.py of each release. Do not edit;")
        print("//! regenerate. A row holds from `since` up to (not including) `before`, the next release")
        print("//! read whose answer differs; `unique_prefix` is the shortest prefix argparse")
        print("//! (allow_abbrev) resolves to the option, forced by `neighbour`.")
        print()
        print("use super::argparse::{Dest, OptionRow, Release};")
        print()
        print("#[rustfmt::skip]")
        print("pub(crate) const ROWS: &[OptionRow] = &[")
        for dest, s, since, before, n, near in rows:
            b = f"Some({release(before)})" if before else "None"
            print(
                f'    OptionRow {{ dest: Dest::{camel(dest)}, option: "{s}", since: {release(since)}, before: {b}, unique_prefix: {n}, neighbour: "{near}" }},'
            )
        print("];")
        return
    for o in options(args[0]):
        print(o)


def camel(s):
    return "".join(p.capitalize() for p in s.split("_"))


if __name__ == "__main__":
    main()
