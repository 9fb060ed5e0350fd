#!/usr/bin/env bash
# grpcurl and grpc-health-probe against the real server (started here on a free port with the
# fake ComfyUI): list, describe, unary calls, two streams, an INVALID_ARGUMENT with its field
# violations, and the "", liveness and readiness probes. Binaries from $COMFY_REALITY_BIN and
# $COMFY_REALITY_FAKE_BIN (default target/debug/...). Installs grpcurl and grpc-health-probe
# into .tools/bin first (see scripts/sdk/go.sh).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."

# shellcheck source=scripts/tools.sh
source scripts/tools.sh
# shellcheck source=scripts/sdk/go.sh
source scripts/sdk/go.sh

sdk_go_install_grpc_tools

server_bin="${COMFY_REALITY_BIN:-$PWD/target/debug/comfy-reality}"
fake_bin="${COMFY_REALITY_FAKE_BIN:-$PWD/target/debug/comfy-reality-fake-comfyui}"
grpcurl="$TOOLS_DIR/bin/grpcurl"
probe="$TOOLS_DIR/bin/grpc-health-probe"

work="$(mktemp -d)"
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*" >&2
  for log in "$work"/*.log; do
    [[ -s "$log" ]] && { echo "--- $log" >&2; tail -n 40 "$log" >&2; }
  done
  exit 1
}

# The clean environment of the Rust tests: no COMFY_REALITY_* configuration leaks into the
# processes started here.
clean_env=()
while IFS= read -r variable; do
  clean_env+=(-u "$variable")
done < <(compgen -e | grep '^COMFY_REALITY' || true)

# start NAME PREFIX COMMAND...: runs COMMAND with its stdout on a pipe and reads the first line,
# which must start with PREFIX; sets $started to the rest of that line. The pipe stays open (the
# process never blocks on it) until the script ends.
start() {
  local name="$1" prefix="$2" fd line
  shift 2
  exec {fd}< <(exec env "${clean_env[@]}" "$@" 2>"$work/$name.log")
  pids+=("$!")
  if ! IFS= read -r -t 60 line <&"$fd"; then
    fail "$name printed no address line"
  fi
  [[ "$line" == "$prefix"* ]] || fail "$name's first line is not '$prefix...': $line"
  started="${line#"$prefix"}"
}

start fake "comfy-reality-fake-comfyui listening on " \
  "$fake_bin" --port 0 --time-scale 0.05 --output-dir "$work/comfyui-output"
comfyui="$started"
start server "comfy-reality listening on " \
  "$server_bin" serve --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
  --comfyui "$comfyui" --data-dir "$work/data"
addr="$started"
echo "server on $addr, fake ComfyUI on $comfyui"

# call EXPECTED_STATUS ARGS...: grpcurl -plaintext ARGS against the server; its output (stdout and
# stderr) in $out; fails unless it exits with EXPECTED_STATUS (64 + the gRPC code on an RPC error).
call() {
  local expected="$1" status=0
  shift
  out="$("$grpcurl" -plaintext "$@" 2>&1)" || status=$?
  [[ "$status" == "$expected" ]] \
    || fail "grpcurl $* exited $status, expected $expected; output:"$'\n'"$out"
}

# expect TEXT: $out contains TEXT (fixed string).
expect() {
  grep -qF -- "$1" <<<"$out" || fail "expected '$1' in:"$'\n'"$out"
}

step "grpcurl list"
call 0 "$addr" list
for service in AdminService EventService ExecutionService TaskService WorkflowService; do
  grep -qx "comfyreality.runtime.v1.$service" <<<"$out" || fail "list lacks $service:"$'\n'"$out"
done
grep -qx "grpc.health.v1.Health" <<<"$out" || fail "list lacks grpc.health.v1.Health:"$'\n'"$out"

step "grpcurl describe comfyreality.runtime.v1.ExecutionService"
call 0 "$addr" describe comfyreality.runtime.v1.ExecutionService
expect "comfyreality.runtime.v1.ExecutionService is a service:"
for rpc in ExecuteWorkflow GetExecution ListExecutions CancelExecution GetArtifact; do
  expect "rpc $rpc ("
done
expect "returns ( stream .comfyreality.runtime.v1.GetArtifactResponse )"

step "ExecuteWorkflow (inline workflow_json), WatchExecution to the end, GetExecution"
workflow='{\"1\": {\"class_type\": \"EmptyImage\", \"inputs\": {\"width\": 64, \"height\": 48, \"batch_size\": 1, \"color\": 7691863}}, \"2\": {\"class_type\": \"ImageInvert\", \"inputs\": {\"image\": [\"1\", 0]}}, \"3\": {\"class_type\": \"SaveImage\", \"inputs\": {\"images\": [\"2\", 0], \"filename_prefix\": \"grpcurl\"}}}'
call 0 -d "{\"workflow_json\": \"$workflow\", \"tags\": [\"grpcurl\"]}" \
  "$addr" comfyreality.runtime.v1.ExecutionService/ExecuteWorkflow
id="$(sed -n 's/^    "id": "\([0-9a-f-]*\)",$/\1/p' <<<"$out" | head -n 1)"
[[ -n "$id" ]] || fail "no execution id in:"$'\n'"$out"
expect '"tags": ['
# WatchExecution ends with OK once the execution has ended: a stream that must finish by itself.
call 0 -max-time 30 -d "{\"id\": \"$id\"}" "$addr" comfyreality.runtime.v1.EventService/WatchExecution
expect "TASK_STATUS_COMPLETED"
call 0 -d "{\"id\": \"$id\"}" "$addr" comfyreality.runtime.v1.ExecutionService/GetExecution
expect "\"id\": \"$id\""
expect '"status": "TASK_STATUS_COMPLETED"'
expect '"grpcurl_00001_.png"'

step "GetArtifact streams the PNG the fake wrote"
call 0 -d "{\"execution_id\": \"$id\", \"path\": \"grpcurl_00001_.png\"}" \
  "$addr" comfyreality.runtime.v1.ExecutionService/GetArtifact
expect '"contentType": "image/png"'
png="$work/comfyui-output/comfy-reality/$id/grpcurl_00001_.png"
[[ -f "$png" ]] || fail "the fake wrote no $png"
expect "\"size\": \"$(wc -c <"$png" | tr -d ' ')\""
expect "\"data\": \"$(head -c 48 "$png" | base64 -w 0)"

step "SubscribeEvents from sequence 0 replays the history (ended by -max-time)"
call 68 -max-time 2 -d "{\"after_sequence\": 0, \"include_node_events\": true}" \
  "$addr" comfyreality.runtime.v1.EventService/SubscribeEvents
expect '"sequence": "1"'
expect '"eventType": "config.loaded"'
expect "\"executionId\": \"$id\""
expect '"eventType": "TASK_EVENT_TYPE_COMPLETED"'
expect "Code: DeadlineExceeded"

step "an unknown execution is NOT_FOUND (exit 64 + 5)"
call 69 -d '{"id": "00000000-0000-0000-0000-000000000000"}' \
  "$addr" comfyreality.runtime.v1.ExecutionService/GetExecution
expect "Code: NotFound"

step "an invalid workflow is INVALID_ARGUMENT (exit 64 + 3) with its field violations"
bad='{\"1\": {\"class_type\": \"EmptyImage\", \"inputs\": {\"width\": 0, \"height\": 48, \"batch_size\": 1, \"color\": 0}}, \"2\": {\"class_type\": \"SaveImage\", \"inputs\": {\"images\": [\"1\", 0], \"filename_prefix\": \"bad\"}}}'
call 67 -d "{\"workflow_json\": \"$bad\"}" "$addr" comfyreality.runtime.v1.ExecutionService/ExecuteWorkflow
expect "Code: InvalidArgument"
expect '"@type": "type.googleapis.com/google.rpc.BadRequest"'
expect '"field": "workflow_json[\"1\"].inputs.width"'
expect '"description": "value 0 is smaller than the minimum 1"'
expect '"reason": "ValidationError"'

step "grpc-health-probe: \"\", liveness and readiness SERVING"
for service in "" liveness readiness; do
  status=0
  out="$("$probe" -addr "$addr" -service "$service" 2>&1)" || status=$?
  [[ "$status" == 0 ]] || fail "grpc-health-probe -service '$service' exited $status: $out"
  expect "status: SERVING"
done
# An unknown service is not SERVING: the probe's exit status for NOT_FOUND is 3.
status=0
out="$("$probe" -addr "$addr" -service no.such.Service 2>&1)" || status=$?
[[ "$status" != 0 ]] || fail "grpc-health-probe -service no.such.Service succeeded: $out"

step "grpcurl and grpc-health-probe checks passed"
