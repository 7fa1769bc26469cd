"""``spikelm eval --tasks`` through lm-evaluation-harness, offline: local YAML tasks (tasks/, a
multiple-choice one and a loglikelihood one, reading shipped jsonl files) on a tiny spikelm model
and a tiny random Llama give the accuracy (and log-likelihoods, perplexity) of our own computation
of sum log p(continuation | context); bad inputs give one line and exit 2."""
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from spikelm import SpikeLMForCausalLM, flavour_config
from spikelm.cli import main
from spikelm.data import train_bpe_tokenizer_from_iterator

from ..conftest import spiking_weights

TASKS = Path(__file__).parent / "tasks"
needs_harness = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None,
                                   reason="lm-evaluation-harness not installed (pip install spikelm[eval])")


def _rows(name):
    return [json.loads(line) for line in (TASKS / name).read_text().splitlines() if line.strip()]


MC, LL = _rows("tiny_mc.jsonl"), _rows("tiny_ll.jsonl")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("harness")
    text = [f"Question: {r['question']}\nAnswer: {c}" for r in MC for c in r["choices"]]
    text += [r["context"] + r["continuation"] for r in LL]
    tok = train_bpe_tokenizer_from_iterator(text * 3, vocab_size=300, model_max_length=64)
    torch.manual_seed(0)
    snn = spiking_weights(SpikeLMForCausalLM(flavour_config("hybrid-debug", vocab_size=len(tok))), std=0.3)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                         max_position_embeddings=64, bos_token_id=None,
                                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    spiking_weights(llama, std=0.2)
    out = {}
    for name, m in (("snn", snn), ("llama", llama)):
        m.save_pretrained(tmp / name)
        tok.save_pretrained(tmp / name)
        out[name] = (tmp / name, m.eval())
    return tok, out


def loglikelihood(model, tok, context: str, continuation: str) -> tuple[float, bool]:
    """sum log p(continuation | context) and whether it is the greedy continuation, split into
    tokens as the harness does (trailing spaces of the context move to the continuation; the
    continuation is what encoding context+continuation adds after the context's tokens)."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    whole = tok.encode(context + continuation, add_special_tokens=False)
    ctx = tok.encode(context, add_special_tokens=False)
    cont = whole[len(ctx):]
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)[len(ctx) - 1:]
    target = torch.tensor(cont)
    return float(logp[torch.arange(len(cont)), target].sum()), bool((logp.argmax(-1) == target).all())


def our_metrics(model, tok) -> dict:
    picks = []
    for r in MC:
        lls = [loglikelihood(model, tok, f"Question: {r['question']}\nAnswer:", " " + c)[0] for c in r["choices"]]
        picks.append(max(range(len(lls)), key=lls.__getitem__) == r["label"])
    ll = [loglikelihood(model, tok, r["context"], r["continuation"]) for r in LL]
    return {"mc_acc": sum(picks) / len(picks), "ll_acc": sum(g for _, g in ll) / len(ll),
            "ll_ppl": math.exp(-sum(v for v, _ in ll) / len(ll)), "mc_picks": picks}


@needs_harness
@pytest.mark.parametrize("name", ["snn", "llama"])
def test_cli_tasks_match_our_loglikelihoods(dirs, name, tmp_path, capsys):
    tok, models = dirs
    d, model = models[name]
    ours = our_metrics(model, tok)
    argv = ["eval", str(d), "--tasks", "spikelm_tiny_mc,spikelm_tiny_ll", "--include-path", str(TASKS),
            "--bootstrap-iters", "0", "--batch-size", "4", "--output-dir", str(tmp_path / "out")]
    assert main([*argv, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)["lm_eval"]
    mc, ll = res["results"]["spikelm_tiny_mc"], res["results"]["spikelm_tiny_ll"]
    assert mc["acc,none"] == pytest.approx(ours["mc_acc"])
    assert ll["acc,none"] == pytest.approx(ours["ll_acc"])
    assert ll["perplexity,none"] == pytest.approx(ours["ll_ppl"], rel=1e-4)
    assert 0 < ours["mc_acc"] < 1 and 0 < sum(ours["mc_picks"]) < len(MC)  # not trivially right or wrong
    written = json.loads((tmp_path / "out" / "lm_eval_results.json").read_text())
    assert written["results"] == res["results"] and written["config"]["model"] == str(d)
    if name == "snn":  # the text report: the harness table and where the JSON went
        assert main([*argv, "--limit", "3", "--num-fewshot", "1"]) == 0
        text = capsys.readouterr().out
        assert "spikelm_tiny_mc" in text and "|acc" in text.replace(" ", "") and "lm_eval_results.json" in text
        assert json.loads((tmp_path / "out" / "lm_eval_results.json").read_text())["n-shot"]["spikelm_tiny_mc"] == 1


@needs_harness
def test_per_sample_loglikelihoods_match(dirs):
    from spikelm.eval.harness import run_harness

    tok, models = dirs
    d, model = models["snn"]
    res = run_harness(d, ["spikelm_tiny_mc"], include_path=TASKS, bootstrap_iters=0, log_samples=True,
                      model=model, tokenizer=tok)
    samples = sorted(res["samples"]["spikelm_tiny_mc"], key=lambda s: s["doc_id"])
    assert len(samples) == len(MC)
    for s in samples:
        r = MC[s["doc_id"]]
        got = [v for v, _ in s["filtered_resps"]]
        want = [loglikelihood(model, tok, f"Question: {r['question']}\nAnswer:", " " + c)[0] for c in r["choices"]]
        assert got == pytest.approx(want, rel=1e-4, abs=1e-4)


@needs_harness
@pytest.mark.slow  # the full task index (~15k YAML files): ~20 s
def test_unknown_task_is_one_line_exit_2(dirs, tmp_path, capsys):
    d = dirs[1]["snn"][0]
    assert main(["eval", str(d), "--tasks", "no_such_task_xyz", "--include-path", str(TASKS),
                 "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown lm-eval task no_such_task_xyz" in err
    assert not (tmp_path / "lm_eval_results.json").exists()
    assert main(["eval", str(d), "--tasks", "spikelm_tiny_mc", "--include-path", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a folder of task YAML files" in err


def test_tasks_without_the_extra_names_the_install(dirs, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if not installed
    assert main(["eval", str(dirs[1]["snn"][0]), "--tasks", "spikelm_tiny_mc"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install spikelm[eval]" in err


def test_files_or_tasks_required(dirs, capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", str(dirs[1]["snn"][0])])
    assert e.value.code == 2 and "files (or --tasks)" in capsys.readouterr().err


def test_shipped_cloze_task_is_reproducible():
    from spikelm.eval.make_shakespeare_cloze import N_ITEMS, build
    from spikelm.recipes import DATA_DIR, LM_EVAL_DIR

    items = build((DATA_DIR / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8"))
    shipped = (LM_EVAL_DIR / "shakespeare_cloze.jsonl").read_text(encoding="utf-8")
    assert shipped == "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items)
    assert len(items) == N_ITEMS and all(len(r["choices"]) == 4 and 0 <= r["label"] < 4 for r in items)


@needs_harness
def test_shipped_task_runs_without_include_path(dirs, tmp_path, capsys):
    _, models = dirs
    d, _ = models["snn"]
    assert main(["eval", str(d), "--tasks", "shakespeare_cloze", "--limit", "4", "--bootstrap-iters", "0",
                 "--output-dir", str(tmp_path), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)["lm_eval"]
    assert 0 <= res["results"]["shakespeare_cloze"]["acc,none"] <= 1
