"""Distillation (train.distill_from): the KL term on hand-checked cases, and a training run that
moves the student towards its teacher, logs the KL apart from the loss, and checks the teacher."""
import json
import math

import pytest
import torch

from spikelm.train.distill import Distiller, attention_layers, attention_transfer, distill_kl, hidden_match
from spikelm.train.trainer import train

from .conftest import train_debug_model


def test_kl_on_hand_checked_cases():
    s = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1]]]))
    t = torch.log(torch.tensor([[[0.9, 0.1], [0.9, 0.1]]]))
    targets = torch.tensor([[1, 0]])
    kl0 = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)  # position 0; position 1 agrees
    assert distill_kl(s, t, targets).item() == pytest.approx(kl0 / 2, rel=1e-5)
    assert distill_kl(s, t, torch.tensor([[1, -100]])).item() == pytest.approx(kl0, rel=1e-5)  # -100 left out
    assert distill_kl(t, t, targets).item() == pytest.approx(0.0, abs=1e-7)
    # temperature: softmax(logits / T), times T^2
    sl, tl = torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[3.0, 0.0]]])
    p, q = torch.softmax(tl / 2, -1)[0, 0], torch.softmax(sl / 2, -1)[0, 0]
    expect = 4 * float((p * (p / q).log()).sum())
    assert distill_kl(sl, tl, torch.tensor([[0]]), temperature=2.0).item() == pytest.approx(expect, rel=1e-5)
    with pytest.raises(ValueError, match="same vocabulary|share the student's vocabulary"):
        distill_kl(sl, torch.zeros(1, 1, 3), torch.tensor([[0]]))


def test_hidden_match_on_hand_checked_cases():
    t = (torch.zeros(1, 2, 2), torch.tensor([[[1.0, 0.0], [0.0, 2.0]]]), torch.ones(1, 2, 2))
    s = (torch.randn(1, 2, 2), torch.tensor([[[0.0, 0.0], [0.0, 2.0]]]), torch.ones(1, 2, 2))
    # layer 1: error 1 over a reference of 5; layer 2 agrees; the embeddings (index 0) are left out
    assert hidden_match(s, t).item() == pytest.approx((1 / 5 + 0) / 2, rel=1e-6)
    # masked: only token 1 counts, where layer 1 agrees
    assert hidden_match(s, t, torch.tensor([[0, 1]])).item() == pytest.approx(0.0, abs=1e-7)
    assert hidden_match(tuple(torch.zeros_like(x) for x in t), t).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="depth and width"):
        hidden_match(s[:2], t)


def test_hidden_matching_needs_a_teacher_of_the_students_shape(tmp_path):
    from spikelm import SpikeLMForCausalLM, flavour_config

    SpikeLMForCausalLM(flavour_config("debug", vocab_size=60, num_hidden_layers=3)).save_pretrained(tmp_path / "t")
    kw = dict(vocab_size=60, device="cpu", dtype=torch.float32, weight=1.0, temperature=1.0, schedule="constant",
              max_steps=4)
    Distiller(tmp_path / "t", student_shape=(2, 32), **kw)  # KL only: any depth
    with pytest.raises(ValueError, match="3 layers of width .* the student 2"):
        Distiller(tmp_path / "t", hidden_weight=1.0, student_shape=(2, 32), **kw)


def test_attention_transfer_matches_each_mixer_to_the_teachers_attention(tmp_path):
    """A Llama teacher's self_attn inputs/outputs, captured in the distiller's teacher pass, against
    the converted student's mixers: the exact softmax conversion (spiking off) matches to ~0, a
    GLA layer does not, and the term has a gradient into the student's mixers only."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from spikelm.convert import convert_checkpoint
    from spikelm.data import train_bpe_tokenizer_from_iterator
    from spikelm.models import SpikeLMForCausalLM

    from .conftest import LINES

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=32)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "ann")
    train_bpe_tokenizer_from_iterator(LINES, vocab_size=280, model_max_length=32).save_pretrained(tmp_path / "ann")
    assert len(attention_layers(LlamaForCausalLM(cfg))) == 2
    kw = dict(vocab_size=300, device="cpu", dtype=torch.float32, weight=1.0, temperature=1.0, schedule="constant",
              max_steps=4, student_shape=(2, 32), attention_weight=1.0)
    d = Distiller(tmp_path / "ann", **kw)
    batch = {"input_ids": torch.randint(0, 300, (2, 12)), "labels": torch.randint(0, 300, (2, 12))}
    got = {}
    for layout in ("softmax", "gla,swa"):
        convert_checkpoint(tmp_path / "ann", tmp_path / layout, layout=layout, spiking="off")
        student = SpikeLMForCausalLM.from_pretrained(tmp_path / layout)
        assert len(attention_layers(student)) == 2
        terms = d.losses(student(**batch), batch, student)
        got[layout] = terms["attention"]
    assert got["softmax"].item() < 1e-10  # the exact conversion: each mixer reproduces its attention layer
    assert got["gla,swa"].item() > 0.01
    got["gla,swa"].backward()
    gla = attention_layers(student)[0]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in gla.parameters())
    assert student.get_output_embeddings().weight.grad is None  # a layer-local term: nothing above the mixers
    with pytest.raises(ValueError, match="2 token mixers, the teacher 1"):
        attention_transfer(attention_layers(student), [(torch.zeros(1, 2, 32), torch.zeros(1, 2, 32))])


def records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_distillation_pulls_the_student_towards_the_teacher(recipe, tmp_path):
    (tmp_path / "t").mkdir()
    teacher = train_debug_model(tmp_path / "t", 16, 12, 2) / "final"
    runs = {}
    for name, kw in {"plain": {}, "weight0": dict(distill_from=str(teacher), distill_weight=0.0),
                     "distil": dict(distill_from=str(teacher), distill_weight=10.0),
                     "hidden": dict(distill_from=str(teacher), distill_weight=0.0, distill_hidden_weight=10.0)}.items():
        r = recipe(run_dir=str(tmp_path / name), max_steps=6, eval_every=0, checkpoint_every=0, **kw)
        r.data.tokenizer = str(teacher)  # the teacher's tokenizer
        train(r)
        runs[name] = records(tmp_path / name)
    assert "distill_kl" not in runs["plain"][0]
    # weight 0: the KL is measured and logged but not trained on: the same losses as without a teacher
    assert [x["loss"] for x in runs["weight0"]] == pytest.approx([x["loss"] for x in runs["plain"]], abs=1e-6)
    kl0, kl1 = [x["distill_kl"] for x in runs["weight0"]], [x["distill_kl"] for x in runs["distil"]]
    assert kl0[0] == pytest.approx(kl1[0], rel=1e-5) and kl0[0] > 0  # the same student before its first update
    assert kl1[-1] < 0.95 * kl0[-1]  # trained towards the teacher: closer than the student trained without it
    hid = [x["distill_hidden"] for x in runs["hidden"]]
    assert "distill_hidden" not in runs["distil"][0] and hid[0] > 0
    assert hid[-1] < 0.8 * hid[0]  # the hidden states move towards the teacher's


def test_a_teacher_with_another_vocabulary_is_refused(recipe, tmp_path, capsys):
    from spikelm.cli import main

    from spikelm import SpikeLMForCausalLM, flavour_config

    from .conftest import LINES

    teacher = tmp_path / "teacher"
    SpikeLMForCausalLM(flavour_config("debug", vocab_size=311)).save_pretrained(teacher)
    (tmp_path / "corpus.txt").write_text("\n".join(LINES * 40) + "\n")
    argv = ["train", "debug", f"--data.train_files=[{tmp_path / 'corpus.txt'}]", "--data.vocab_size=280",
            "--data.block_size=16", f"--train.run_dir={tmp_path / 's'}", f"--train.distill_from={teacher}",
            "--train.max_steps=1", "--train.sample_tokens=0"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "vocabulary of 311 tokens" in err
    assert not (tmp_path / "s").exists()
