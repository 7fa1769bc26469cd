#!/usr/bin/env bash
# Launch `spikelm train` with the DeepSpeed launcher over the hosts of a hostfile
# (lines "host slots=8"; passwordless ssh between hosts, as DeepSpeed requires).
#
#   launch/deepspeed.sh launch/hostfile.example spikegpt-216m --train.run_dir runs/216m
#   HOSTFILE= launch/deepspeed.sh "" shakespeare       # local machine only, all its GPUs
set -euo pipefail
HOSTFILE="${1?usage: launch/deepspeed.sh HOSTFILE|'' RECIPE [--key value ...]}"
shift
ARGS=()
[[ -n "$HOSTFILE" ]] && ARGS+=(--hostfile "$HOSTFILE")
exec deepspeed "${ARGS[@]}" --no_local_rank --master_port "${MASTER_PORT:-29500}" --module spikelm.cli train "$@"
