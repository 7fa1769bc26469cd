"""LoRA through peft: targets, only adapters train, merge == adapter, standalone export, bad targets."""
import json

import pytest
import torch
from torch import nn

from spikelm.finetune import InstructionDataset, apply_lora, linear_module_names, merge_adapter_dir, merge_lora
from spikelm.finetune import resolve_lora_targets, save_merged, shakespeare_qa_path
from spikelm.models import SpikeLMForCausalLM

from .conftest import MAX_LEN, tiny_config


@pytest.mark.parametrize("flavour", ["debug", "spikformer-debug", "hybrid-debug"])
def test_default_targets_are_the_layer_projections_only(flavour):
    model = SpikeLMForCausalLM(tiny_config(300, flavour))
    targets = resolve_lora_targets(model)
    linear = linear_module_names(model)
    assert targets and set(targets) <= set(linear)
    assert "head" not in targets and not any(".g_proj." in t for t in targets)
    assert all(t.startswith("model.blocks.") for t in targets)
    per_layer = {"debug": 7, "spikformer-debug": 6, "hybrid-debug": 7}[flavour]  # att + ffn projections
    assert len(targets) == per_layer * model.config.num_hidden_layers


def test_bad_targets_list_the_linear_module_names():
    model = SpikeLMForCausalLM(tiny_config(300))
    with pytest.raises(ValueError, match=r"'qkv_proj' matches no module.*key, value, receptance, output, head"):
        apply_lora(model, target_modules=["key", "qkv_proj"])
    with pytest.raises(ValueError, match=r"'lif1' matches model\.blocks\.0\.lif1 \(LIF\), not an nn\.Linear"):
        resolve_lora_targets(model, ["lif1"])
    with pytest.raises(ValueError, match="not an nn.Linear"):
        resolve_lora_targets(model, ["embeddings"])
    with pytest.raises(ValueError, match="matches no module"):
        resolve_lora_targets(model, r".*\.qkv")
    assert resolve_lora_targets(model, r"model\.blocks\.1\.att\.(key|value)") == [
        "model.blocks.1.att.key", "model.blocks.1.att.value"]
    assert resolve_lora_targets(model, ["head"]) == ["head"]
    # a head tied to the token embedding is no target: the merge would change the embeddings too
    tied = SpikeLMForCausalLM(tiny_config(300).__class__(**{**tiny_config(300).to_dict(), "tie_word_embeddings": True}))
    assert tied.head.weight is tied.get_input_embeddings().weight
    with pytest.raises(ValueError, match="shared with another module.*tie_word_embeddings"):
        resolve_lora_targets(tied, ["head"])
    assert "head" not in linear_module_names(tied) and resolve_lora_targets(tied, ["key"])


def _batch(tok, n=8):
    ds = InstructionDataset(shakespeare_qa_path("train"), tok, max_length=MAX_LEN, packing="pack")
    return {k: torch.stack([ds[i][k] for i in range(n)]) for k in ds[0]}


def test_lora_trains_only_adapters_and_merges_to_the_same_logits(tok, pretrained, tmp_path):
    before = {k: v.clone() for k, v in pretrained.state_dict().items()}
    model = apply_lora(pretrained, r=4, alpha=8)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    batch = _batch(tok)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = model(**batch, use_cache=False).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    # base weights (linear, neurons, norms, embeddings, RWKV vectors): bit-identical; adapters moved
    base = model.get_base_model()
    for name, p in base.named_parameters():
        if "lora_" in name:
            continue
        key = name.replace(".base_layer.", ".")
        assert torch.equal(p, before[key]), name
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if ".lora_B." in n)

    model.eval()
    with torch.no_grad():
        adapter_logits = model(**batch, use_cache=False).logits
    prompt = tok.apply_chat_template([{"role": "user", "content": "Who says: \"Go.\"?"}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)["input_ids"]
    adapter_gen = model.generate(prompt, max_new_tokens=8, do_sample=False)  # peft wrapper + our recurrent cache
    out = save_merged(model, tok, tmp_path / "merged")  # non-destructive: merges a copy
    with pytest.raises(FileExistsError, match="never overwritten"):
        save_merged(model, tok, out)
    model.save_pretrained(tmp_path / "adapter")
    merged = merge_lora(model)
    assert type(merged) is SpikeLMForCausalLM
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert all(type(merged.get_submodule(n)) is nn.Linear for n in linear_module_names(merged))
    merged.eval()
    with torch.no_grad():
        merged_logits = merged(**batch, use_cache=False).logits
    assert (merged_logits - adapter_logits).abs().max().item() < 1e-5
    assert torch.equal(merged.generate(prompt, max_new_tokens=8, do_sample=False), adapter_gen)

    # the standalone directory: no peft files, reloads with the Auto class, same logits
    from transformers import AutoModelForCausalLM

    assert not (out / "adapter_config.json").exists() and (out / "chat_template.jinja").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(reloaded) is SpikeLMForCausalLM
    with torch.no_grad():
        assert (reloaded(**batch, use_cache=False).logits - adapter_logits).abs().max().item() < 1e-5

    # `spikelm export --merge-lora`: saved adapter + base directory -> standalone directory
    base_dir = tmp_path / "base"
    fresh = SpikeLMForCausalLM(pretrained.config)
    fresh.load_state_dict(before)
    fresh.save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    exported = merge_adapter_dir(tmp_path / "adapter", base_dir, tmp_path / "exported")
    again = AutoModelForCausalLM.from_pretrained(exported).eval()
    with torch.no_grad():
        assert (again(**batch, use_cache=False).logits - adapter_logits).abs().max().item() < 1e-5
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        merge_adapter_dir(base_dir, base_dir, tmp_path / "x")
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4
