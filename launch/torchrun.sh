#!/usr/bin/env bash
# Launch `spikelm train` with torchrun on one node or many (c10d rendezvous).
# Hyper-parameters live in the recipe; this script only places processes.
#
#   one node, 8 GPUs:     launch/torchrun.sh shakespeare --train.run_dir runs/x
#   node r of N:          NNODES=N NODE_RANK=r MASTER_ADDR=head-node launch/torchrun.sh spikegpt-216m
#   CPU test, 2 ranks:    NPROC_PER_NODE=2 launch/torchrun.sh debug
#
# Environment: NNODES (1), NODE_RANK (0), NPROC_PER_NODE (GPUs on this node, or 1 on CPU),
# MASTER_ADDR (127.0.0.1), MASTER_PORT (29500), RDZV_ID (spikelm).
set -euo pipefail
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
if [[ -z "${NPROC_PER_NODE:-}" ]]; then
  NPROC_PER_NODE=$(python -c "import torch; print(max(torch.cuda.device_count(), 1))")
fi
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
exec torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$NPROC_PER_NODE" \
  --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv_id "${RDZV_ID:-spikelm}" \
  -m spikelm.cli train "$@"
