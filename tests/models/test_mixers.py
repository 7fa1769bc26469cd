"""Every token-mixer layout (ssa, sdsa, gla, swa, the gla+swa hybrid): parallel == recurrent,
chunked prefill == full prefill, cached == uncached generation, left padding, save/load,
pipeline; adaptive spiking modes; spike statistics; config validation; the shipped flavours."""
import pytest
import torch
from transformers import AutoModelForCausalLM, pipeline

from spikelm import SpikeLMConfig, SpikeLMForCausalLM, flavour_config
from spikelm.data import train_bpe_tokenizer_from_iterator
from spikelm.models import FLAVOURS

from .conftest import cache_numel, cache_tensors, spiking_weights

V = 61
BASE = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, intermediate_size=48, num_attention_heads=2,
            max_position_embeddings=64)
# ssa: a larger scale and lower attention threshold than Spikformer's so that the attention
# neuron fires on these short random sequences (the test would otherwise compare zeros), and a
# lower LIF threshold for denser Q, K, V spikes
SPIKFORMER = dict(mlp_types="spiking_mlp", ssa_scale=1.0, ssa_v_th=0.25, lif_v_th=0.3)
HYBRID = dict(mlp_types="swiglu", neuron="none", norm_type="rmsnorm", adaptive_spike_mode="ste")
LAYOUTS = {
    "ssa": dict(mixer_types="ssa", **SPIKFORMER),
    "sdsa": dict(mixer_types="sdsa", **SPIKFORMER),
    "ssa-plif-batchnorm": dict(mixer_types="ssa", neuron="plif", spiking_norm="batchnorm", **SPIKFORMER),
    "gla": dict(mixer_types="gla", attention_bias=True, gla_output_gate=True, **HYBRID),
    "swa": dict(mixer_types="swa", num_key_value_heads=1, sliding_window=5, **HYBRID),
    "hybrid": dict(mixer_types=["gla", "swa"], num_key_value_heads=1, sliding_window=6, **HYBRID),
    "hybrid-lif-channel-mix": dict(mixer_types=["swa", "gla"], mlp_types=["channel_mix", "swiglu"], sliding_window=4),
    # SpikingBrain-76B style: dense then MoE MLPs, routed + shared experts (softmax, top-2 of 4)
    "hybrid-moe": dict(mixer_types=["gla", "swa"], num_key_value_heads=1, sliding_window=6,
                       **{**HYBRID, "mlp_types": ["swiglu", "moe"]}, num_experts=4, num_experts_per_tok=2,
                       num_shared_experts=1, moe_intermediate_size=24),
    # sigmoid router, top-1, a gated shared expert (Qwen2-MoE), LIF block neurons on rwkv4
    "rwkv4-moe": dict(mixer_types="rwkv4", mlp_types="moe", num_experts=3, num_experts_per_tok=1,
                      router_score_func="sigmoid", num_shared_experts=1, shared_expert_gate=True,
                      adaptive_spike_mode="ste"),
}


def make_model(layout: str, **kw) -> SpikeLMForCausalLM:
    torch.manual_seed(0)
    return spiking_weights(SpikeLMForCausalLM(SpikeLMConfig(**{**BASE, **LAYOUTS[layout], **kw})).eval())


def recurrent(m, ids, chunk, mask=None):
    state, outs = None, []
    for s in range(0, ids.shape[1], chunk):
        am = None if mask is None else mask[:, :s + chunk]
        o = m(ids[:, s:s + chunk], attention_mask=am, past_key_values=state, use_cache=True)
        state, outs = o.past_key_values, outs + [o.logits]
    return torch.cat(outs, 1), state


@pytest.fixture(scope="module", params=list(LAYOUTS))
def layout_model(request):
    return request.param, make_model(request.param)


GEN_LAYOUTS = ["ssa", "sdsa", "gla", "swa", "hybrid", "hybrid-moe"]  # the slower generation tests skip the variants


@pytest.fixture(scope="module", params=GEN_LAYOUTS)
def gen_model(request):
    return request.param, make_model(request.param)


def test_parallel_equals_recurrent_and_chunked_prefill(layout_model):
    name, m = layout_model
    ids = torch.randint(0, V, (2, 14))
    with torch.no_grad():
        full = m(ids, use_cache=True)
        one, st1 = recurrent(m, ids, 1)
        five, st5 = recurrent(m, ids, 5)
    assert (full.logits - one).abs().max().item() < 1e-4, name
    assert (full.logits - five).abs().max().item() < 1e-4, name
    for a, b in zip(cache_tensors(full.past_key_values), cache_tensors(st5)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert x.shape == y.shape and x.dtype == y.dtype
            assert torch.allclose(x.float(), y.float(), atol=1e-4, rtol=1e-4), name
    assert st1.seen_tokens == 14


@pytest.mark.parametrize("chunk", [4, 5])
def test_chunked_prefill_equals_one_shot_with_left_padding(layout_model, chunk):
    """config.prefill_chunk_tokens: a 13-token left-padded batch in chunks of 4 or 5 (13 is a multiple
    of neither) gives the one-shot logits and state; logits_to_keep=1 keeps only the last."""
    name, m = layout_model
    ids = torch.randint(0, V, (2, 13))
    mask = torch.ones(2, 13, dtype=torch.long)
    mask[0, :3] = 0
    try:
        with torch.no_grad():
            m.config.prefill_chunk_tokens = 0
            one = m(ids, attention_mask=mask, use_cache=True)
            m.config.prefill_chunk_tokens = chunk
            parts = m(ids, attention_mask=mask, use_cache=True)
            last = m(ids, attention_mask=mask, use_cache=True, logits_to_keep=1)
    finally:
        m.config.prefill_chunk_tokens = 2048
    real = mask.bool()
    assert torch.allclose(one.logits[real], parts.logits[real], atol=1e-5), name
    assert last.logits.shape == (2, 1, V) and torch.allclose(last.logits[:, 0], one.logits[:, -1], atol=1e-5)
    for a, b in zip(cache_tensors(one.past_key_values), cache_tensors(parts.past_key_values)):
        for x, y in zip(a, b):
            assert torch.allclose(x.float(), y.float(), atol=1e-5), name
    assert parts.past_key_values.seen_tokens == 13


def test_layers_are_active(layout_model):
    """Guards the equality tests against comparing silent neurons or constant outputs."""
    name, m = layout_model
    with torch.no_grad():
        m(torch.randint(0, V, (2, 14)))
    rates = m.model.spike_rates()
    lif = {k: v for k, v in rates.items() if not k.endswith(".sparsity")}
    if name not in ("hybrid", "hybrid-moe") and m.config.neuron != "none":
        assert 0.01 < sum(lif.values()) / len(lif) < 0.99
    if name in ("ssa", "sdsa", "ssa-plif-batchnorm"):
        assert rates["layers.0.att.attn"] > 0 and rates["layers.1.att.q"] > 0
    if m.config.adaptive_spike_mode != "off":
        sp = [v for k, v in rates.items() if k.endswith(".sparsity")]
        assert sp and all(0.0 <= v < 1.0 for v in sp)


def test_left_padded_positions_leave_no_trace(layout_model):
    name, m = layout_model
    ids = torch.randint(0, V, (2, 9))
    pad = torch.cat([torch.randint(0, V, (2, 4)), ids], 1)
    mask = torch.cat([torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 9, dtype=torch.long)], 1)
    mask[1, 2:4] = 1  # row 1 has only 2 pads: real tokens at different offsets in one batch
    with torch.no_grad():
        alone0 = m(ids[:1], use_cache=True)
        padded = m(pad, attention_mask=mask, use_cache=True)
        chunked, st = recurrent(m, pad, 3, mask)
        alone1 = m(pad[1:, 2:], use_cache=True).logits
    assert (alone0.logits[0] - padded.logits[0, 4:]).abs().max().item() < 1e-4, name
    assert (alone1[0] - padded.logits[1, 2:]).abs().max().item() < 1e-4, name
    assert (padded.logits - chunked)[mask.bool()].abs().max().item() < 1e-4, name
    # the state after the padded row 0 equals the state of its prompt alone (pads left no trace)
    for a, b in zip(cache_tensors(alone0.past_key_values), cache_tensors(padded.past_key_values)):
        for x, y in zip(a, b):
            assert torch.allclose(x[0].float(), y[0].float(), atol=1e-5), name


def test_cached_generation_equals_uncached(gen_model):
    name, m = gen_model
    ids = torch.randint(1, V, (2, 6))
    kw = dict(max_new_tokens=9, min_new_tokens=9, do_sample=False, pad_token_id=0, eos_token_id=0)
    a = m.generate(ids, use_cache=True, **kw)
    b = m.generate(ids, use_cache=False, **kw)
    assert torch.equal(a, b), name


def test_cache_size_is_bounded(layout_model):
    name, m = layout_model
    with torch.no_grad():
        out = m(torch.randint(0, V, (1, 3)), use_cache=True)
        size = cache_numel(out.past_key_values)
        out = m(torch.randint(0, V, (1, 20)), past_key_values=out.past_key_values, use_cache=True)
    assert cache_numel(out.past_key_values) == size
    assert out.past_key_values.get_seq_length() == 23


def test_beam_search_reorders_every_state(gen_model):
    name, m = gen_model
    ids = torch.randint(1, V, (1, 5))
    kw = dict(max_new_tokens=4, num_beams=3, do_sample=False, pad_token_id=0)
    out = m.generate(ids, use_cache=True, **kw)
    assert out.shape == (1, 9) and torch.equal(out, m.generate(ids, use_cache=False, **kw)), name


def test_save_load_round_trip(gen_model, tmp_path):
    name, m = gen_model
    m.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is SpikeLMForCausalLM and loaded.config.mixer_types == m.config.mixer_types
    sd_a, sd_b = m.state_dict(), loaded.state_dict()
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    ids = torch.randint(0, V, (2, 7))
    with torch.no_grad():
        assert torch.equal(m(ids).logits, loaded(ids).logits)


TEXT = ["First Citizen:\nBefore we proceed any further, hear me speak.\n", "All:\nSpeak, speak.\n"] * 20


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer_from_iterator(TEXT, vocab_size=290, model_max_length=64)


@pytest.mark.parametrize("layout", ["ssa", "hybrid", "hybrid-moe"])
def test_pipeline_and_left_padded_generation(layout, tok, tmp_path):
    m = make_model(layout, vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    tok.padding_side = "left"
    prompts = ["First Citizen:\nBefore we", "All:"]
    batch = tok(prompts, return_tensors="pt", padding=True)
    kw = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    out = m.generate(**batch, **kw)
    for i, p in enumerate(prompts):
        alone = m.generate(**tok(p, return_tensors="pt"), **kw)
        assert out[i, -8:].tolist() == alone[0, -8:].tolist()
    m.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    pipe = pipeline("text-generation", model=str(tmp_path))
    text = pipe("First Citizen:", max_new_tokens=6, do_sample=False)[0]["generated_text"]
    assert text.startswith("First Citizen:") and len(text) > len("First Citizen:")


@pytest.mark.parametrize("layout", ["hybrid", "rwkv4-moe"])
def test_generate_and_pipeline_prefill_long_prompts_in_chunks(layout, tok):
    m = make_model(layout, vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    tok.padding_side = "left"
    prompts = [" ".join(TEXT[:3]), "All:"]  # the first prompt spans several 4-token chunks
    batch = tok(prompts, return_tensors="pt", padding=True)
    kw = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    out = {}
    for chunk in (0, 4):
        m.config.prefill_chunk_tokens = chunk
        out[chunk] = (m.generate(**batch, **kw).tolist(),
                      pipeline("text-generation", model=m, tokenizer=tok, device="cpu")(prompts[0], **kw)[0])
    m.config.prefill_chunk_tokens = 2048
    assert out[0] == out[4]


def test_swa_window_limits_what_a_token_sees():
    m = make_model("swa", num_hidden_layers=1, mixer_types=["swa"], sliding_window=4, mlp_types="swiglu")
    ids = torch.randint(0, V, (1, 10))
    changed = ids.clone()
    changed[0, 2] = (ids[0, 2] + 1) % V
    with torch.no_grad():
        a, b = m(ids).logits, m(changed).logits
    diff = (a - b).abs().amax(-1)[0]
    assert diff[:2].max() == 0 and diff[2:6].min() > 0  # positions 2..5 see token 2 (window 4)
    assert diff[6:].max() == 0                             # one layer: later tokens do not


def test_swa_long_prefill_beyond_window_equals_decoding():
    m = make_model("swa", sliding_window=3)
    ids = torch.randint(0, V, (2, 11))
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[0, :2] = 0
    with torch.no_grad():
        full = m(ids, attention_mask=mask).logits
        rec, _ = recurrent(m, ids, 4, mask)
    assert (full - rec)[mask.bool()].abs().max().item() < 1e-4


def test_ste_gradients_flow_through_every_projection():
    m = make_model("hybrid").train()
    ids = torch.randint(0, V, (2, 12))
    m(ids, labels=ids).loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if p.dim() == 2:
            assert p.grad.abs().sum() > 0, name


def test_expanded_spike_trains_equal_integer_counts():
    ste = make_model("hybrid", adaptive_spike_max_count=15)
    for encoding, steps in (("bitwise", 4), ("ternary", 15)):
        exp = make_model("hybrid", adaptive_spike_max_count=15, adaptive_spike_mode="expanded",
                         adaptive_spike_steps=steps, adaptive_spike_encoding=encoding)
        exp.load_state_dict(ste.state_dict())
        ids = torch.randint(0, V, (2, 10))
        with torch.no_grad():
            assert torch.equal(ste(ids).logits, exp(ids).logits), encoding
    off = make_model("hybrid", adaptive_spike_mode="off")
    with torch.no_grad():
        assert not torch.equal(ste(ids).logits, off(ids).logits)  # the spiking does quantise


def test_event_driven_projection_matches_integer_counts():
    """Summing the projection over the expanded binary events (one matmul per step) equals the
    projection of the integer counts: the spike train carries the same information."""
    from spikelm.kernels.adaptive_spike import expand_counts, spike_counts

    x = torch.randn(5, 16)
    counts, v_th = spike_counts(x, 3.0)
    train = expand_counts(counts, 4, "bitwise")  # [S, 5, 16] in {-1, 0, 1}
    w_int = torch.randint(-9, 10, (8, 16)).double()  # integer weights: every sum exact in float64
    events = sum((2 ** s) * (train[s].double() @ w_int.T) for s in range(4))
    assert torch.equal(events, counts.double() @ w_int.T)
    w = torch.randn(8, 16, dtype=torch.float64)
    events = sum((2 ** s) * (train[s].double() @ w.T) for s in range(4)) * v_th.double()
    assert torch.allclose(events, (counts.double() * v_th.double()) @ w.T, rtol=1e-12, atol=1e-12)


def test_spike_rates_report_projection_sparsity():
    m = make_model("hybrid")
    with torch.no_grad():
        m(torch.randint(0, V, (2, 8)))
    rates = m.model.spike_rates()
    for i in range(2):
        for site in ("att.in", "att.o_in", "ffn.in", "ffn.down_in"):
            assert f"layers.{i}.{site}.sparsity" in rates


def test_every_parameter_is_initialised_by_init_weights():
    """The training loop creates models with HF init off and calls ``_init_weights`` per module."""
    from transformers import initialization as hf_init

    for layout in LAYOUTS:
        cfg = SpikeLMConfig(**{**BASE, **LAYOUTS[layout]})
        with hf_init.no_init_weights():
            m = SpikeLMForCausalLM(cfg)
        with torch.no_grad():
            for t in list(m.parameters()) + [b for b in m.buffers() if b.is_floating_point()]:
                t.fill_(float("nan"))
            for module in m.modules():
                for p in module.parameters(recurse=False):
                    p._is_hf_initialized = False
                m._init_weights(module)
        bad = [n for n, t in list(m.named_parameters()) + list(m.named_buffers()) if t.is_floating_point()
               and not torch.isfinite(t).all()]
        assert not bad, (layout, bad)


def test_rwkv4_layout_keeps_spikegpt_parameter_names():
    names = set(SpikeLMForCausalLM(flavour_config("debug", vocab_size=V)).state_dict())
    for n in ("model.blocks.0.ln0.weight", "model.blocks.0.att.time_decay", "model.blocks.1.ffn.key.weight",
              "model.blocks.1.ln2.bias", "model.ln_out.weight", "head.weight"):
        assert n in names, n


def test_new_flavours_build_and_hybrid_1b_size():
    for f in ("spikformer-debug", "hybrid-debug", "spikformer-shakespeare", "hybrid-shakespeare"):
        cfg = flavour_config(f, vocab_size=300)
        with torch.device("meta"):
            m = SpikeLMForCausalLM(cfg)
        assert sum(p.numel() for p in m.parameters()) > 0
    cfg = flavour_config("hybrid-1b", vocab_size=50277)
    assert cfg.mixer_types[:4] == ["gla", "swa", "gla", "swa"] and set(cfg.mlp_types) == {"swiglu"}
    with torch.device("meta"):
        m = SpikeLMForCausalLM(cfg)
    n = sum(p.numel() for p in m.parameters())
    assert 0.9e9 < n < 1.2e9
    assert {"hybrid-debug", "hybrid-shakespeare", "hybrid-1b", "spikformer-debug", "spikformer-shakespeare"} <= set(FLAVOURS)


@pytest.mark.parametrize("kw,match", [
    (dict(mixer_types=["gla", "mamba"]), "unknown mixer type.*accepted: rwkv4, ssa, sdsa, gla, swa"),
    (dict(mlp_types="mixtral"), "unknown mlp type.*accepted: channel_mix, swiglu, spiking_mlp, moe"),
    (dict(mlp_types="moe", num_experts=4, num_experts_per_tok=5), r"num_experts_per_tok \(top-k, 5\) must be between 1"),
    (dict(mlp_types="moe", router_score_func="relu"), "unknown router_score_func.*accepted: softmax, sigmoid"),
    (dict(mlp_types="moe", shared_expert_gate=True), "shared_expert_gate needs num_shared_experts >= 1"),
    (dict(mlp_types="moe", moe_capacity_factor=-1.0), "moe_capacity_factor must be >= 0"),
    (dict(neuron_types=["lif", "izh"]), "unknown neuron type.*accepted: lif, plif, none"),
    (dict(mixer_types=["gla"]), "mixer_types has 1 entries"),
    (dict(norm_type="batch"), "unknown norm_type.*accepted: layernorm, rmsnorm"),
    (dict(adaptive_spike_mode="always"), "unknown adaptive_spike_mode.*accepted: off, ste, expanded"),
    (dict(adaptive_spike_encoding="morse"), "accepted: binary, ternary, bitwise"),
    (dict(spiking_norm="groupnorm"), "accepted: layernorm, batchnorm"),
    (dict(gla_feature_map="elu"), "accepted: relu, none"),
    (dict(num_attention_heads=4, num_key_value_heads=3), "multiple of num_key_value_heads"),
    (dict(mixer_types="swa", num_attention_heads=2, head_dim=5), "even head_dim"),
    (dict(mixer_types="ssa", num_attention_heads=3), "divisible by num_attention_heads"),
    (dict(sliding_window=0), "sliding_window must be >= 1"),
    (dict(adaptive_spike_k=0), "adaptive_spike_k must be > 0"),
])
def test_config_errors_list_accepted_values(kw, match):
    with pytest.raises(ValueError, match=match):
        SpikeLMConfig(**{**BASE, **kw})


@pytest.mark.parametrize("layout", ["ssa", "hybrid", "hybrid-moe"])
def test_bf16_training_step_and_decoding(layout):
    m = make_model(layout).to(torch.bfloat16).train()
    ids = torch.randint(0, V, (2, 20))
    m(ids, labels=ids).loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    m.eval()
    with torch.no_grad():
        out = m(ids[:, :12], use_cache=True)
        step = m(ids[:, 12:13], past_key_values=out.past_key_values, use_cache=True)
    assert step.logits.dtype == torch.bfloat16 and torch.isfinite(step.logits).all()
