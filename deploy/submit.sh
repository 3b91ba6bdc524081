#!/usr/bin/env bash
# Submit `ipg run` (or `ipg sweep` / `ipg attribute`) to a Ray cluster as a job, follow its log, and exit
# with the job's status.
#
#   deploy/submit.sh [--address URL] [--id SUBMISSION_ID] [--no-wait] [--command run|sweep|attribute] [-- IPG_ARGS...]
#
#   deploy/submit.sh -- --config deploy/configs/organism.yaml --out /shared/runs/organism
#   deploy/submit.sh --command sweep -- --spec deploy/sweeps/organism-2x2.yaml --out /shared/sweeps/organism-2x2
#
# The address is the cluster's dashboard/job API (default: RAY_API_SERVER_ADDRESS, else
# http://127.0.0.1:8265). Ray 2.60 clusters keep token authentication on: the client sends the token
# (RAY_AUTH_MODE=token; the token is read from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token).
# Inside the job RAY_ADDRESS is set, so `ipg run` attributes on the cluster's actors (ray.enabled auto).
# The cluster's image or Python environment must have this package installed (deploy/images/); set
# IPG_WORKING_DIR=. to ship the current checkout instead (dev clusters; .venv, runs and .git excluded).
set -euo pipefail

address="${RAY_API_SERVER_ADDRESS:-http://127.0.0.1:8265}"
submission_id=""
command="run"
wait_flag=()  # --no-wait: return once submitted
while [[ $# -gt 0 ]]; do
  case "$1" in
    --address) address="$2"; shift 2 ;;
    --id) submission_id="$2"; shift 2 ;;
    --no-wait) wait_flag=(--no-wait); shift ;;
    --command)
      case "${2:-}" in run|sweep|attribute) command="$2" ;;
        *) echo "submit.sh: --command '${2:-}': use run, sweep or attribute" >&2; exit 2 ;; esac
      shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "submit.sh: unknown option '$1' (ipg arguments go after --)" >&2; exit 2 ;;
  esac
done
submission_id="${submission_id:-ipg-$command-$(date +%Y%m%d-%H%M%S)-$$}"

export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
runtime_env='{"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}}'
if [[ -n "${IPG_WORKING_DIR:-}" ]]; then
  runtime_env="{\"working_dir\": \"${IPG_WORKING_DIR}\", \"excludes\": [\".venv\", \"runs\", \".git\"], \"env_vars\": {\"HF_HUB_OFFLINE\": \"1\", \"PYTHONUNBUFFERED\": \"1\"}}"
fi
ray_bin="${RAY_BIN:-ray}"

# A freshly started head answers HTTP before its job agent is up ("No available agent to submit job"):
# retry that for up to a minute; any other submission error is final.
for attempt in $(seq 1 30); do
  if out=$("$ray_bin" job submit --address "$address" --submission-id "$submission_id" --no-wait \
             --runtime-env-json "$runtime_env" -- ipg "$command" "$@" 2>&1); then
    break
  fi
  if grep -q "No available agent" <<<"$out" && [[ $attempt -lt 30 ]]; then sleep 2; continue; fi
  echo "$out" >&2
  exit 1
done
echo "submitted $submission_id to $address"
if [[ ${#wait_flag[@]} -gt 0 ]]; then exit 0; fi

"$ray_bin" job logs --address "$address" --follow "$submission_id"
status=$("$ray_bin" job status --address "$address" "$submission_id" 2>&1 | tail -n 5)
echo "$status"
grep -qi "succeeded" <<<"$status"
