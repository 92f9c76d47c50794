#!/usr/bin/env bash
# Training on a Cloud TPU pod slice: the same command on every TPU VM worker.
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh install
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh run \
#       --config=configs/joint_grpo.py:base --workdir=gs://my-bucket/runs/joint ...
# The repository must already be at $REPO_DIR on every worker (e.g. `git clone` through
# `gcloud compute tpus tpu-vm ssh --worker=all`). `run` passes its arguments to
# `python -m lapdog_jax.main`; lapdog_jax.distributed.initialize() then lets
# jax.distributed.initialize() find the workers from the TPU metadata.
# Environment: TPU_NAME, ZONE (required), PROJECT, REPO_DIR (default lapdog_jax, relative to
# the home directory), PYTHON (default python3).
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME to the TPU VM name}"
: "${ZONE:?set ZONE to the TPU zone}"
REPO_DIR=${REPO_DIR:-lapdog_jax}
PYTHON=${PYTHON:-python3}
extra=()
[[ -n "${PROJECT:-}" ]] && extra+=("--project=${PROJECT}")

on_all_workers() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" "${extra[@]}" --worker=all \
    --command="$1"
}

case "${1:-}" in
  install)
    on_all_workers "cd $(printf %q "$REPO_DIR") && $PYTHON -m pip install -r requirements.txt \
&& $PYTHON -m pip install -U 'jax[tpu]==0.10.2'"
    ;;
  run)
    shift
    on_all_workers "cd $(printf %q "$REPO_DIR") && $PYTHON -m lapdog_jax.main$(printf ' %q' "$@")"
    ;;
  *)
    echo "usage: TPU_NAME=... ZONE=... $0 install | run --config=... --workdir=gs://..." >&2
    exit 2
    ;;
esac
