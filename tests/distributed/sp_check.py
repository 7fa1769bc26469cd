"""Run under torchrun (2+ CPU ranks, gloo): for each layout, one sequence split over the ranks
(spikelm.train.sequence_parallel) against the whole sequence on one rank: loss and every
parameter's gradient. Prints one JSON line per layout on rank 0: max loss and gradient differences."""
import json
import os
import sys

import torch
import torch.distributed as dist

from spikelm import SpikeLMConfig, SpikeLMForCausalLM
from spikelm.train.sequence_parallel import SequenceParallel

BASE = dict(vocab_size=61, hidden_size=32, num_hidden_layers=2, intermediate_size=48, num_attention_heads=2,
            max_position_embeddings=64)
HYBRID = dict(mlp_types="swiglu", neuron="none", norm_type="rmsnorm", adaptive_spike_mode="ste")
LAYOUTS = {
    "rwkv4": dict(mixer_types="rwkv4"),
    "gla": dict(mixer_types="gla", **HYBRID),
    "swa": dict(mixer_types="swa", num_key_value_heads=1, sliding_window=5, **HYBRID),
    "ssa": dict(mixer_types="ssa", mlp_types="spiking_mlp", ssa_scale=1.0, ssa_v_th=0.25, lif_v_th=0.3),
    "hybrid": dict(mixer_types=["gla", "swa"], num_key_value_heads=1, sliding_window=6, **HYBRID),
}


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    sp = SequenceParallel(world, rank, world)
    names = sys.argv[1].split(",") if len(sys.argv) > 1 else list(LAYOUTS)
    for name in names:
        torch.manual_seed(0)
        m = SpikeLMForCausalLM(SpikeLMConfig(**{**BASE, **LAYOUTS[name]})).train()
        with torch.no_grad():  # larger weights than the init, so that the neurons spike
            for p in m.parameters():
                if p.dim() == 2:
                    p.normal_(0, 0.5)
        ids = torch.randint(0, 61, (2, 12 * world), generator=torch.Generator().manual_seed(1))
        full = m(input_ids=ids, labels=ids).loss
        full.backward()
        ref = {n: p.grad.clone() for n, p in m.named_parameters()}
        m.zero_grad()
        loss = sp.step(m, {"input_ids": ids}, lambda t: t.backward())
        dist.all_reduce(loss)
        diff = 0.0
        for n, p in m.named_parameters():
            g = torch.zeros_like(p) if p.grad is None else p.grad.clone()
            dist.all_reduce(g)
            diff = max(diff, (g / world - ref[n]).abs().max().item())
        scale = max(g.abs().max().item() for g in ref.values())
        if rank == 0:
            print(json.dumps({"layout": name, "loss": full.item(), "loss_diff": abs(loss.item() / world - full.item()),
                              "grad_diff": diff, "grad_scale": scale}), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
