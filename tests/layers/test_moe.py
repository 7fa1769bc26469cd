"""The MoE MLP (spikelm.layers.moe): routing against hand-written references, the auxiliary
losses on hand-checked cases, capacity, padding, dense equivalence, determinism and FLOPs."""
import copy
import math

import pytest
import torch

from spikelm import SpikeLMConfig, SpikeLMForCausalLM
from spikelm.layers.mlp import SwiGLU
from spikelm.layers.moe import SpikingMoE, capacity_mask, load_balancing_loss, route, router_z_loss
from spikelm.train.flops import model_flops_per_token

D = 16
BASE = dict(vocab_size=50, hidden_size=D, num_hidden_layers=2, intermediate_size=24, mixer_types="gla",
            mlp_types="moe", neuron="none", norm_type="rmsnorm", num_attention_heads=2, num_experts=4,
            num_experts_per_tok=2, adaptive_spike_mode="ste")


def cfg(**kw) -> SpikeLMConfig:
    return SpikeLMConfig(**{**BASE, **kw})


def moe(**kw) -> SpikingMoE:
    torch.manual_seed(0)
    m = SpikingMoE(cfg(**kw))
    for p in m.parameters():  # spread the router so that tokens really pick different experts
        torch.nn.init.normal_(p, std=0.5)
    return m


def test_route_matches_a_hand_written_softmax_and_sigmoid_router():
    z = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 3.0, 0.5, 2.9]])
    w, e, p = route(z, 2, "softmax", norm_topk_prob=False)
    for t, row in enumerate(z.tolist()):
        ex = [math.exp(v) for v in row]
        probs = [v / sum(ex) for v in ex]
        top = sorted(range(4), key=lambda i: -probs[i])[:2]
        assert e[t].tolist() == top
        assert w[t].tolist() == pytest.approx([probs[i] for i in top], abs=1e-6)
        assert p[t].tolist() == pytest.approx(probs, abs=1e-6)
    wn, en, _ = route(z, 2, "softmax", norm_topk_prob=True)
    assert torch.equal(en, e) and torch.allclose(wn, w / w.sum(-1, keepdim=True))
    ws, es, ps = route(z, 3, "sigmoid", norm_topk_prob=False)
    sig = [[1 / (1 + math.exp(-v)) for v in row] for row in z.tolist()]
    for t in range(2):
        top = sorted(range(4), key=lambda i: -sig[t][i])[:3]
        assert es[t].tolist() == top and ws[t].tolist() == pytest.approx([sig[t][i] for i in top], abs=1e-6)
        assert ps[t].tolist() == pytest.approx([s / sum(sig[t]) for s in sig[t]], abs=1e-6)
    with pytest.raises(ValueError, match="top_k must be in 1..4"):
        route(z, 5)
    with pytest.raises(ValueError, match="accepted: softmax, sigmoid"):
        route(z, 1, "relu")


def test_load_balancing_loss_on_hand_checked_cases():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2]])
    # everything on expert 0: f = [1, 0], P = [0.85, 0.15] -> 2 * 0.85
    assert load_balancing_loss(probs, torch.tensor([[0], [0]])).item() == pytest.approx(1.7)
    # balanced assignments and probabilities -> 1
    assert load_balancing_loss(torch.full((2, 2), 0.5), torch.tensor([[0], [1]])).item() == pytest.approx(1.0)
    # top-2 of 3, f over all 4 assignments: [2, 1, 1] / 4, P = [0.5, 0.3, 0.2] -> 3 * (0.25 + 0.075 + 0.05)
    p3 = torch.tensor([[0.6, 0.3, 0.1], [0.4, 0.3, 0.3]])
    e3 = torch.tensor([[0, 1], [0, 2]])
    assert load_balancing_loss(p3, e3).item() == pytest.approx(3 * (0.5 * 0.5 + 0.25 * 0.3 + 0.25 * 0.2))
    # a padded token does not count
    real = torch.tensor([True, False])
    assert load_balancing_loss(p3, e3, real).item() == pytest.approx(3 * (0.5 * 0.6 + 0.5 * 0.3))


def test_router_z_loss_and_capacity_priority():
    assert router_z_loss(torch.zeros(3, 4)).item() == pytest.approx(math.log(4) ** 2)
    # first choices of tokens 0, 1, 2 all go to expert 0 (capacity 2): token 2's is dropped;
    # second choices fit (expert 1 twice, expert 2 once)
    keep = capacity_mask(torch.tensor([[0, 1], [0, 2], [0, 1]]), 3, capacity=2)
    assert keep.tolist() == [[True, True], [True, True], [False, True]]
    # a padded token takes no slot: token 2's first choice now fits
    keep = capacity_mask(torch.tensor([[0, 1], [0, 2], [0, 1]]), 3, 2, real=torch.tensor([False, True, True]))
    assert keep.tolist() == [[False, False], [True, True], [True, True]]


def reference_moe(m: SpikingMoE, x: torch.Tensor) -> torch.Tensor:
    """Token by token: sum_i w_i Expert_{e_i}(x_t) + shared experts (gated)."""
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            xt = x[b, t][None, None]
            w, e, _ = route(m.router(xt.float())[0], m.top_k, m.score_func, m.norm_topk_prob)
            y = sum(w[0, i] * m.experts[int(e[0, i])](xt)[0] for i in range(m.top_k))
            if len(m.shared_experts):
                sh = sum(s(xt)[0] for s in m.shared_experts)
                if m.shared_gate is not None:
                    sh = torch.sigmoid(m.shared_gate(xt)) * sh
                y = y + sh
            out[b, t] = y[0, 0]
    return out


@pytest.mark.parametrize("kw", [dict(), dict(router_score_func="sigmoid", norm_topk_prob=False, num_experts_per_tok=1),
                                dict(num_shared_experts=2, shared_expert_gate=True, num_experts_per_tok=3)])
def test_layer_equals_the_token_by_token_reference(kw):
    m = moe(**kw).eval()
    x = torch.randn(2, 7, D)
    with torch.no_grad():
        out, _ = m(x)
        ref = reference_moe(m, x)
    assert torch.allclose(out, ref, atol=1e-5)
    assert len(set(m.moe_stats["expert_load"].nonzero().flatten().tolist())) > 1  # several experts in use
    assert 0 <= m.spike_rates["down_in.sparsity"] < 1


def test_copies_of_a_dense_mlp_give_the_dense_output():
    """Upcycling's premise: identical experts and renormalised top-k weights reproduce the dense
    MLP for any router; with S shared experts, every down projection scaled by 1 / (1 + S)."""
    c = cfg(num_shared_experts=1)
    torch.manual_seed(1)
    dense = SwiGLU(c)
    m = SpikingMoE(c)
    for expert in list(m.experts) + list(m.shared_experts):
        expert.load_state_dict(dense.state_dict())
        expert.down_proj.weight.data /= 2
    torch.nn.init.normal_(m.router.weight, std=1.0)
    x = torch.randn(3, 5, D)
    with torch.no_grad():
        assert torch.allclose(m(x)[0], dense(x)[0], atol=1e-6)


def test_capacity_drops_in_training_only_and_counts_it():
    m = moe(moe_capacity_factor=0.5).train()
    x = torch.randn(2, 16, D)
    m(x)
    assert m.moe_stats["dropped"].item() > 0.3  # at most half the assignments fit
    m.eval()
    with torch.no_grad():
        m(x)
    assert m.moe_stats["dropped"].item() == 0.0


def test_padding_leaves_real_tokens_and_statistics_unchanged():
    m = moe(num_shared_experts=1).eval()
    x = torch.randn(1, 6, D)
    pad = torch.cat([torch.randn(1, 3, D), x], 1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        alone, _ = m(x)
        stats = {k: v.clone() for k, v in m.moe_stats.items()}
        padded, _ = m(pad, None, mask)
    assert torch.allclose(padded[:, 3:], alone, atol=1e-6)
    for k, v in stats.items():
        assert torch.allclose(m.moe_stats[k], v, atol=1e-6), k


def test_deterministic_and_gradients_reach_router_and_experts():
    m = moe()
    twin = copy.deepcopy(m)
    x = torch.randn(2, 9, D, requires_grad=True)
    out1, _ = m(x)
    out2, _ = twin(x)
    assert torch.equal(out1, out2)
    (out1.square().mean() + m.aux_loss).backward()
    assert m.router.weight.grad.abs().sum() > 0
    used = m.moe_stats["expert_load"].nonzero().flatten().tolist()
    assert all(m.experts[e].gate_proj.weight.grad.abs().sum() > 0 for e in used)


def test_causal_lm_adds_the_aux_loss_in_training_only():
    torch.manual_seed(0)
    model = SpikeLMForCausalLM(cfg(router_z_loss_coef=0.01))
    ids = torch.randint(0, 50, (2, 12))
    train = model.train()(ids, labels=ids)
    with torch.no_grad():
        ev = model.eval()(ids, labels=ids)
    assert train.aux_loss.item() > 0
    assert train.loss.item() == pytest.approx(ev.loss.item() + train.aux_loss.item(), abs=1e-5)
    # the mean over the two MoE layers of coef_lb * lb + coef_z * z
    layers = model.model.moe_layers().values()
    expect = sum(0.01 * m.moe_stats["load_balance"] + 0.01 * m.moe_stats["z_loss"] for m in layers) / 2
    assert ev.aux_loss.item() == pytest.approx(expect.item(), rel=1e-5)


def test_flops_count_only_the_active_experts():
    dense = SpikeLMForCausalLM(cfg(mlp_types="swiglu"))
    top1 = SpikeLMForCausalLM(cfg(num_experts_per_tok=1))
    top2 = SpikeLMForCausalLM(cfg(num_experts_per_tok=2))
    f_dense, f1, f2 = (model_flops_per_token(m, m.config, 32) for m in (dense, top1, top2))
    router = 2 * 6 * D * 4  # two layers of [4, D] routers
    assert f1 == pytest.approx(f_dense + router)
    expert = 3 * 6 * D * 24  # one SwiGLU expert per layer
    assert f2 - f1 == pytest.approx(2 * expert)
