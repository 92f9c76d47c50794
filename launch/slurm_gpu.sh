#!/usr/bin/env bash
# Multi-node GPU training under SLURM: one task per node, each driving all of its node's GPUs.
#   sbatch --nodes=4 launch/slurm_gpu.sh --config=configs/joint_grpo.py:base \
#       --workdir=/shared/runs/joint --config.data.train=... --config.init.reader=...
# Arguments go to `python -m lapdog_jax.main`; the workdir must be on a filesystem every node
# sees. Inside `srun`, lapdog_jax.distributed.initialize() lets jax.distributed.initialize()
# read the coordinator, process count and index from SLURM's variables.
#SBATCH --job-name=lapdog_jax
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

if [[ $# -eq 0 ]]; then
  echo "usage: sbatch [--nodes=N] $0 --config=... --workdir=... [more flags]" >&2
  exit 2
fi
# Activate the environment here if the job does not inherit it, e.g.
# source "$HOME/venvs/lapdog_jax/bin/activate"

echo "job ${SLURM_JOB_ID}: ${SLURM_JOB_NUM_NODES} nodes: ${SLURM_JOB_NODELIST}"
# --kill-on-bad-exit: one failed process ends the step instead of leaving the others blocked
# in a collective until the time limit.
srun --kill-on-bad-exit=1 --ntasks-per-node=1 python -m lapdog_jax.main "$@"
