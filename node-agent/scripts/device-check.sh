#!/usr/bin/env bash
# Checks vllm-node-agent against real NVML on a machine with an NVIDIA GPU.
# Usage: device-check.sh /path/to/vllm-node-agent
# Needs: nvidia-smi, python3 with torch (CUDA). No Rust toolchain. Runs in well under 5 minutes.
set -euo pipefail

BIN=${1:?usage: device-check.sh /path/to/vllm-node-agent}
MIB=$((1024 * 1024))
TOLERANCE=$((64 * MIB))
WORK=$(mktemp -d)
HOLDER_PID=""
cleanup() {
    if [[ -n "$HOLDER_PID" ]]; then kill "$HOLDER_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
pass() { echo "ok: $*"; }

field() { # field JSON_FILE INDEX PYTHON_EXPR_ON_g
    python3 -c "import json,sys; g=json.load(open(sys.argv[1]))[int(sys.argv[2])]; print($3)" "$1" "$2"
}

# 1. probe vs nvidia-smi (MiB), GPU 0.
"$BIN" probe -o json >"$WORK/probe.json" || fail "probe exited $?"
"$BIN" probe -o table
IFS=', ' read -r smi_index smi_uuid smi_total smi_free < <(nvidia-smi --query-gpu=index,uuid,memory.total,memory.free --format=csv,noheader,nounits | head -n1)
p_uuid=$(field "$WORK/probe.json" 0 'g["uuid"]')
p_total=$(field "$WORK/probe.json" 0 'g["memory"]["totalBytes"]')
p_free=$(field "$WORK/probe.json" 0 'g["memory"]["freeBytes"]')
[[ "$p_uuid" == "$smi_uuid" ]] || fail "uuid probe=$p_uuid nvidia-smi=$smi_uuid"
d_total=$(( p_total - smi_total * MIB )); d_total=${d_total#-}
d_free=$(( p_free - smi_free * MIB )); d_free=${d_free#-}
(( d_total < MIB )) || fail "total differs by $d_total bytes (probe $p_total, nvidia-smi ${smi_total} MiB)"
(( d_free <= TOLERANCE )) || fail "free differs by $d_free bytes (probe $p_free, nvidia-smi ${smi_free} MiB)"
pass "GPU $smi_index total $p_total B, free $p_free B (nvidia-smi: ${smi_free} MiB, diff $d_free B)"

# 2. A torch process holding ~4 GiB: probe must see the drop and the pid.
hold() { # hold BYTES: starts a holder in the background, sets HOLDER_PID, waits until allocated
    python3 -c '
import sys, time, torch
x = torch.empty(int(sys.argv[1]), dtype=torch.uint8, device="cuda:0")
torch.cuda.synchronize()
open(sys.argv[2], "w").write("ready")
time.sleep(600)
' "$1" "$WORK/ready" &
    HOLDER_PID=$!
    for _ in $(seq 1 120); do [[ -f "$WORK/ready" ]] && return 0; sleep 0.5; done
    fail "holder did not allocate"
}
release() { kill "$HOLDER_PID" 2>/dev/null || true; wait "$HOLDER_PID" 2>/dev/null || true; HOLDER_PID=""; rm -f "$WORK/ready"; sleep 2; }

hold $((4096 * MIB))
"$BIN" probe -o json >"$WORK/held.json"
h_free=$(field "$WORK/held.json" 0 'g["memory"]["freeBytes"]')
drop=$(( p_free - h_free ))
(( drop >= 4096 * MIB )) || fail "free dropped by only $drop bytes with a 4 GiB holder"
pids=$(field "$WORK/held.json" 0 '" ".join(str(p["pid"]) for p in g.get("processes", []))')
if [[ " $pids " == *" $HOLDER_PID "* ]]; then
    pass "holder pid $HOLDER_PID seen, free dropped $drop B"
else
    # In a container without the host PID namespace NVML reports host pids.
    [[ -n "$pids" ]] || fail "no process listed while the holder runs"
    pass "free dropped $drop B; processes $pids (holder $HOLDER_PID, pid namespaces differ)"
fi
release

# 3. launch: vLLM's startup check inside the launched command.
CHECK='
import math, sys, torch
u = None
for i, a in enumerate(sys.argv):
    if a == "--gpu-memory-utilization": u = float(sys.argv[i + 1])
    elif a.startswith("--gpu-memory-utilization="): u = float(a.split("=", 1)[1])
torch.cuda.init(); torch.zeros(1, device="cuda:0")
free, total = torch.cuda.mem_get_info()
need = math.ceil(total * u)
print(f"u={u} free={free} need={need}")
sys.exit(0 if free >= need else 3)
'
GIB=$((1024 * MIB))
PLAN="{\"required_bytes\":$GIB,\"min_kv_bytes\":$GIB,\"startup_overhead_bytes\":$((1024 * MIB)),\"headroom_bytes\":$((256 * MIB)),\"max_utilization\":0.95,\"strategy\":\"MaximizeCache\"}"
total_bytes=$p_total
eat=$(( total_bytes * 25 / 100 ))
hold "$eat"
export NVIDIA_VISIBLE_DEVICES=0
export CUDA_VISIBLE_DEVICES=0
"$BIN" launch --plan "$PLAN" --termination-log "$WORK/term" -- python3 -c "$CHECK" --gpu-memory-utilization 0.9 \
    || fail "launched startup check failed: $(cat "$WORK/term" 2>/dev/null)"
pass "launch with the launcher's utilization passes vLLM's startup check while 25% is held"
if python3 -c "$CHECK" --gpu-memory-utilization 0.9; then
    fail "fixed 0.9 passed although 25% of the GPU is held"
fi
pass "fixed 0.9 fails as vLLM would"
# CDI nodes: the NVIDIA container toolkit writes NVIDIA_VISIBLE_DEVICES=void while injecting the
# GPUs; a host index names no container GPU. Both must still check what NVML shows.
for visible in void 7; do
    NVIDIA_VISIBLE_DEVICES=$visible "$BIN" launch --plan "$PLAN" --termination-log "$WORK/term-$visible" -- true \
        || fail "launch with NVIDIA_VISIBLE_DEVICES=$visible refused: $(cat "$WORK/term-$visible" 2>/dev/null)"
done
pass "NVIDIA_VISIBLE_DEVICES=void and a host index still check the GPUs NVML shows"
release
echo "device-check: all passed"
