"""Measure how close a converted GLA layer starts to the softmax attention it replaces, for
several initialisations of its new parameters (gate memory, head-norm weight).

Not a test (pytest does not collect it): ``python tests/convert/gla_init_measure.py [--steps N]``.
It trains a small Llama (4 layers, D=128, 4 heads / 2 KV heads) on tiny Shakespeare for a few
hundred steps on the CPU, saves it, converts it with ``layout="swa,gla,swa,swa"`` (one layer
linear, the rest exact) and ``layout="hybrid"`` under each init, and prints

* the validation loss (nats/token) of each converted model next to the source's;
* the relative difference ``||attn_gla(h) - attn_softmax(h)|| / ||attn_softmax(h)||`` of layer 1's
  output on the source model's own normed hidden states;
* the ratio of output RMS (GLA / softmax) at that layer.

The "fla default" row is spikelm's generic init (``_init_weights``: gate weights N(0, 0.02),
bias 0, head-norm weight 1), i.e. what an untuned conversion would start from.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def train_source(root: Path, steps: int, seed: int = 0, source: Path | None = None):
    """Train (or, with ``source``, load a previously trained) source model; returns (dir, model, val blocks)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from spikelm.data import train_bpe_tokenizer_from_iterator

    text = Path(os.environ.get("TINYSHAKESPEARE", "/work/shared/data/tinyshakespeare/input.txt")).read_text()
    cut = int(len(text) * 0.9)
    L, B = 128, 16
    if source is not None:
        tok = AutoTokenizer.from_pretrained(source)
        val = torch.tensor(tok(text[cut:])["input_ids"])
        n = (len(val) - 1) // L
        return source, AutoModelForCausalLM.from_pretrained(source).eval(), val[: n * L].view(n, L)
    tok = train_bpe_tokenizer_from_iterator([text[:cut]], vocab_size=512, model_max_length=256)
    ids = torch.tensor(tok(text[:cut])["input_ids"])
    val = torch.tensor(tok(text[cut:])["input_ids"])
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, eos_token_id=0,
                      pad_token_id=0, bos_token_id=None)
    model = AutoModelForCausalLM.from_config(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    t0 = time.time()
    for step in range(steps):
        lr = 3e-3 * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, len(ids) - L - 1, (B,))
        x = torch.stack([ids[s:s + L] for s in starts])
        loss = model(x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"train step {step} loss {loss.item():.3f} ({time.time() - t0:.0f}s)", file=sys.stderr)
    model.eval()
    src = root / "src"
    model.save_pretrained(src, max_shard_size="200KB")
    tok.save_pretrained(src)
    n = (len(val) - 1) // L
    return src, model, val[: n * L].view(n, L)


@torch.no_grad()
def val_loss(model, val: torch.Tensor) -> float:
    losses = [model(val[i:i + 16], labels=val[i:i + 16]).loss.item() for i in range(0, len(val), 16)]
    return sum(losses) / len(losses)


@torch.no_grad()
def layer_diff(src_model, conv_model, val: torch.Tensor, layer: int) -> tuple[float, float]:
    """Relative difference and RMS ratio of layer ``layer``'s attention output (GLA vs softmax)."""
    h = src_model(val[:16], output_hidden_states=True).hidden_states[layer]
    sl = src_model.model.layers[layer]
    x = sl.input_layernorm(h)
    pos = torch.arange(x.shape[1])[None].expand(x.shape[0], -1)
    cos_sin = src_model.model.rotary_emb(x, pos)
    ref = sl.self_attn(x, position_embeddings=cos_sin, attention_mask=None)[0]
    out = conv_model.model.blocks[layer].att(x)[0]
    return float((out - ref).norm() / ref.norm()), float(out.pow(2).mean().sqrt() / ref.pow(2).mean().sqrt())


def multiscale(model, lo: float = 4.0, hi: float = 256.0) -> None:
    """Per-head gate memories log-spaced from ``lo`` to ``hi`` tokens (RetNet-style multi-scale decay)."""
    from spikelm.convert.mapping import gate_bias_for_memory

    with torch.no_grad():
        for blk in model.model.blocks:
            if blk.mixer_type == "gla":
                H, K = blk.att.heads, blk.att.key_dim
                mems = torch.logspace(math.log10(lo), math.log10(hi), H)
                b = torch.tensor([gate_bias_for_memory(float(m), blk.att.normalizer) for m in mems])
                blk.att.g_proj[1].bias.copy_(b.repeat_interleave(K))


def fla_default(model) -> None:
    with torch.no_grad():
        for blk in model.model.blocks:
            if blk.mixer_type == "gla":
                blk.att.g_proj[0].weight.normal_(0, 0.02)
                blk.att.g_proj[1].weight.normal_(0, 0.02)
                blk.att.g_proj[1].bias.zero_()
                blk.att.g_norm.weight.fill_(1.0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--source", type=Path, default=None, help="reuse a source model saved by an earlier run")
    p.add_argument("--memories", default="16,64,512,4096,1e6", help="gate memories (tokens) to try")
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    from transformers import AutoModelForCausalLM

    import spikelm  # noqa: F401 (registers the Auto classes)
    from spikelm.convert import convert_checkpoint

    root = Path(tempfile.mkdtemp())
    src, model, val = train_source(root, a.steps, source=a.source)
    print(f"source model: {src}")
    print(f"source val loss {val_loss(model, val):.4f} nats/token ({val.numel()} tokens)")
    mems = [float(m) for m in a.memories.split(",")]
    variants = ([("fla default", None, "ones")] + [(f"memory {m:g}, norm {n}", m, n) for n in ("ones", "v_rms")
                                                   for m in mems] + [("multiscale 4..256, norm v_rms", "ms", "v_rms")])
    print(f"{'init':28s} {'1 GLA layer':>12s} {'hybrid':>10s} {'rel diff L1':>12s} {'rms ratio':>10s}")
    for k, (label, memory, norm) in enumerate(variants):
        row = []
        for j, layout in enumerate(("swa,gla,swa,swa", "hybrid")):
            out = root / f"out{k}-{j}"
            convert_checkpoint(src, out, layout=layout, spiking="off",
                               gla_memory=memory if isinstance(memory, float) else 512.0, gla_norm_init=norm)
            conv = AutoModelForCausalLM.from_pretrained(out).eval()
            if memory is None:
                fla_default(conv)
            elif memory == "ms":
                multiscale(conv)
            row.append(val_loss(conv, val))
            if j == 0:
                diff = layer_diff(model, conv, val, 1)
        print(f"{label:28s} {row[0]:12.4f} {row[1]:10.4f} {diff[0]:12.3f} {diff[1]:10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
