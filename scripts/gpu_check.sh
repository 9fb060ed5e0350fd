#!/usr/bin/env bash
# The GPU check of issue 19, for a machine with an NVIDIA GPU: the binaries built here, a fake
# ComfyUI, and a stand-in for its process that really holds GPU memory (a few lines of torch), so
# that NVML's gauges move and the task is attributed that process's peak GPU memory.
#
#   ./scripts/gpu_check.sh [BIN_DIR]     # BIN_DIR holds comfy-reality and comfy-reality-fake-comfyui
#                                        # (default target/release)
#
# It prints what it sees and exits non-zero when an expectation fails. Without a GPU (or torch)
# it still runs and shows why GetRuntimeInfo lists no local GPUs. Every process it starts is
# stopped by its pid on exit.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin_dir="${1:-target/release}"
server_bin="$bin_dir/comfy-reality"
fake_bin="$bin_dir/comfy-reality-fake-comfyui"
work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n==> %s\n' "$*"; }

# first_line FILE: waits (bounded: a hang guard) for FILE's first line and prints it.
first_line() {
  local file="$1" n=0
  until [[ -s "$file" ]] && head -n1 "$file" | grep -q .; do
    n=$((n + 1))
    if ((n > 600)); then echo "no line in $file" >&2; return 1; fi
    sleep 0.05
  done
  head -n1 "$file"
}

# nth_line FILE N: like first_line, for line N.
nth_line() {
  local file="$1" line="$2" n=0
  until [[ "$(wc -l <"$file")" -ge "$line" ]]; do
    n=$((n + 1))
    if ((n > 600)); then echo "no line $line in $file" >&2; return 1; fi
    sleep 0.05
  done
  sed -n "${line}p" "$file"
}

step "GPUs on this machine"
nvidia-smi -L 2>/dev/null || echo "(no nvidia-smi)"

holder_pid=""
step "a process that holds GPU memory (torch)"
if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  # Holds 1 GiB, then 3 GiB once $work/more exists, until killed.
  python3 - "$work" >"$work/holder.log" 2>&1 <<'EOF' &
import os, sys, time, torch
work = sys.argv[1]
held = [torch.empty(1 << 30, dtype=torch.uint8, device="cuda")]
torch.cuda.synchronize()
open(os.path.join(work, "holder.ready"), "w").close()
while not os.path.exists(os.path.join(work, "more")):
    time.sleep(0.05)
held.append(torch.empty(2 << 30, dtype=torch.uint8, device="cuda"))
torch.cuda.synchronize()
open(os.path.join(work, "holder.more"), "w").close()
while True:
    time.sleep(1)
EOF
  holder_pid=$!
  pids+=("$holder_pid")
  n=0
  until [[ -e "$work/holder.ready" ]]; do
    n=$((n + 1)); if ((n > 1200)); then cat "$work/holder.log"; exit 1; fi; sleep 0.05
  done
  echo "pid $holder_pid holds 1 GiB"
else
  echo "(no torch with CUDA here: nothing to attribute; the rest still runs)"
fi

step "a fake ComfyUI reporting a CUDA device"
"$fake_bin" --port 0 --device-type cuda --vram-total-mb 81920 --time-scale 1 >"$work/fake.out" 2>"$work/fake.err" &
pids+=("$!")
fake_url="$(first_line "$work/fake.out" | awk '{print $NF}')"
echo "$fake_url"

step "comfy-reality serve, its backend's process = the torch holder"
cat >"$work/config.toml" <<EOF
[service]
data_dir = "$work/data"
[executor]
gpu_sample_interval_seconds = 0.2
[scheduling]
probe_interval_seconds = 0.2
[[servers]]
name = "fake-cuda"
url = "$fake_url"
${holder_pid:+pid = $holder_pid}
EOF
"$server_bin" serve --config "$work/config.toml" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
  >"$work/serve.out" 2>"$work/serve.err" &
pids+=("$!")
grpc="$(first_line "$work/serve.out" | awk '{print $NF}')"
metrics="$(nth_line "$work/serve.out" 2 | awk '{print $NF}')"
echo "grpc $grpc, metrics $metrics"
grep -h '"no local gpu monitoring"\|"local gpus found"' "$work/serve.err" || true

gauges() { curl -fsS "$metrics" | grep -E '^comfy_reality_(gpu_|backend_vram|backend_torch)' || true; }
step "gauges (1 GiB held)"
sleep 1
gauges

cat >"$work/workflow.json" <<'EOF'
{"1": {"class_type": "TestDelay", "inputs": {"seconds": 3, "steps": 3, "nonce": 19}}}
EOF
step "a 3-second task; the holder takes 2 GiB more while it runs"
"$server_bin" submit "$work/workflow.json" --server "$grpc" --output json >"$work/submit.json"
execution="$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d.get("id") or d["execution"]["id"])' "$work/submit.json")"
echo "execution $execution"
sleep 1
[[ -n "$holder_pid" ]] && touch "$work/more"
n=0
until "$server_bin" get "$execution" --server "$grpc" --output json >"$work/get.json" 2>/dev/null \
  && python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d=d.get("execution",d); sys.exit(0 if d["status"] in ("TASK_STATUS_COMPLETED","TASK_STATUS_FAILED","TASK_STATUS_CANCELLED","COMPLETED","FAILED","CANCELLED") else 1)' "$work/get.json"; do
  n=$((n + 1)); if ((n > 600)); then cat "$work/get.json"; exit 1; fi; sleep 0.1
done

step "gauges (3 GiB held)"
gauges

step "the task's gpu_memory_mb"
python3 - "$work/get.json" "$holder_pid" <<'EOF'
import json, sys
data = json.load(open(sys.argv[1]))
execution = data.get("execution", data)
root = execution.get("root_task_id") or execution.get("rootTaskId")
tasks = execution.get("tasks", [])
root_task = next((t for t in tasks if t.get("id") == root), tasks[0] if tasks else {})
metrics = root_task.get("metrics", {})
mb = metrics.get("gpu_memory_mb", metrics.get("gpuMemoryMb"))
print("status", execution.get("status"), "gpu_memory_mb", mb)
if sys.argv[2] and not (mb and mb >= 3000):
    sys.exit("expected about 3072 MiB (the holder's peak) and more than 1024")
EOF

step "the task's gpu_memory_mb metric event"
"$server_bin" events --server "$grpc" --output json 2>/dev/null | grep -i 'gpu_memory_mb' | tail -n 3 || echo "(none)"
echo "done"
