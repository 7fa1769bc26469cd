"""Table of bad inputs on the command line: each one exits 2 with one line naming the culprit,
no traceback, and leaves every file under the test's folder as it was (no run directory or
output is created, changed or removed).

Each case is ``(id, argv, culprit, setup)``: ``argv`` may use ``{run}`` (a trained tiny run
with checkpoints at steps 2 and 4), ``{model}`` (its exported ``final`` model directory),
``{corpus}`` (a small text file) and ``{tmp}`` (the case's own folder); ``setup(tmp, run)``
makes the damaged file the case needs; ``culprit`` must appear in the error line.
"""
import json
import shutil

import pytest
import torch

from spikelm.cli import main
from spikelm.train.checkpoint import MANIFEST

LINES = ["First Citizen:", "Before we proceed any further, hear me speak.", "", "All:", "Speak, speak.", ""] * 60
TRAIN = ["--data.vocab_size=280", "--data.block_size=16", "--train.max_steps=4", "--train.micro_batch_size=2",
         "--train.eval_every=0", "--train.checkpoint_every=2", "--train.sample_tokens=0", "--train.threads=1"]


def _w(name, text):
    def setup(tmp, run):
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_text(text)
    return setup


def _copy_run(change):
    def setup(tmp, run):
        shutil.copytree(run, tmp / "run")
        change(tmp / "run")
    return setup


def _copy_model(change):
    def setup(tmp, run):
        shutil.copytree(run / "final", tmp / "m")
        change(tmp / "m")
    return setup


def _truncate(path, keep=100):
    path.write_bytes(path.read_bytes()[:keep])


class _Payload:
    def __reduce__(self):
        return (print, ("payload ran",))


def _plant(run):
    for step in ("step2", "step4"):
        f = run / "checkpoints" / step / "mp_rank_00_model_states.pt"
        sd = torch.load(f, weights_only=True)
        sd["evil"] = _Payload()
        torch.save(sd, f)
        m = json.loads((f.parent / MANIFEST).read_text())
        m["files"][f.name] = f.stat().st_size
        (f.parent / MANIFEST).write_text(json.dumps(m))


def _damage_all(run):
    for step in ("step2", "step4"):
        _truncate(run / "checkpoints" / step / "mp_rank_00_model_states.pt")


def _t(*extra, corpus="{corpus}", run="{tmp}/r"):
    return ["train", "debug", f"--data.train_files=[{corpus}]", *TRAIN, f"--train.run_dir={run}", *extra]


CASES = [
    # the command line and the recipe
    ("unknown-command", ["trian"], "unknown command 'trian'", None),
    ("recipe-not-found", ["train", "nope.yaml"], "recipe 'nope.yaml' not found", None),
    ("section-not-mapping", ["train", "{tmp}/r.yaml"], "section 'train' must be a mapping", _w("r.yaml", "train: 5\n")),
    ("recipe-not-yaml", ["train", "{tmp}/r.yaml"], "r.yaml", _w("r.yaml", "model: [unclosed\n")),
    ("unknown-model-key", _t("--model.mixer_typez=gla"), "unknown key model.mixer_typez; accepted model keys", None),
    ("unknown-mixer", _t("--model.mixer_types=[rwkv5, gla]"), "model.mixer_types must be rwkv4", None),
    ("zero-stage", _t("--train.zero_stage=5"), "train.zero_stage must be 0, 1, 2 or 3", None),
    ("precision", _t("--train.precision=fp64"), "train.precision must be auto", None),
    ("wrong-type", _t("--train.max_steps=many"), "train.max_steps", None),
    ("negative-lr", _t("--optim.lr=-1"), "optim.lr must be > 0", None),
    ("lora-rank", _t("--model.lora.r=-1"), "model.lora.r must be >= 0", None),
    ("adaptive-k-type", _t("--model.adaptive_spike_k=three"), "model.adaptive_spike_k", None),
    ("overrides-typo", ["train", "{tmp}/r.yaml", *TRAIN[:2], "--data.train_files=[{corpus}]",
                        "--train.run_dir={tmp}/r"], "unknown key(s) ['hidden_sise']",
     _w("r.yaml", "model:\n  flavour: debug\n  overrides: {hidden_sise: 64}\n")),
    ("overrides-type", ["train", "{tmp}/r.yaml", *TRAIN[:2], "--data.train_files=[{corpus}]",
                        "--train.run_dir={tmp}/r"], "hidden_size", _w("r.yaml", "model:\n  flavour: debug\n  overrides: {hidden_size: big}\n")),
    ("llama-spiking-key", ["train", "ann-debug", "--model.mixer_types=gla", "--train.run_dir={tmp}/r"],
     "model.mixer_types is a spikelm layout key", None),
    ("val-fraction", _t("--data.val_fraction=1.5"), "data.val_fraction must be in (0, 1)", None),
    ("streaming-no-val", _t("--data.streaming=true"), "data.streaming needs data.val_files", None),
    ("instructions-no-tokenizer", _t("--data.format=instructions"), "needs a trained tokenizer", None),
    ("convert-no-source", _t("--model.convert_layout=hybrid"), "model.convert_layout needs model.init_from", None),
    ("offload-stage", _t("--train.offload_params=true"), "train.offload_params needs train.zero_stage 3", None),
    # run directories
    ("both-flags", _t("--resume", "--overwrite"), "pass --resume or --overwrite, not both", None),
    ("run-dir-is-file", _t(run="{tmp}/f"), "is a file, not a directory", _w("f", "x")),
    ("run-exists", _t(run="{tmp}/run"), "already holds a run", _copy_run(lambda r: None)),
    ("nothing-to-resume", _t("--resume"), "nothing to resume", None),
    ("deepspeed-config", _t("--overwrite", "--train.deepspeed={{train_batch_size: 3}}", run="{tmp}/run"),
     "DeepSpeed rejected", _copy_run(lambda r: None)),
    ("resume-changed-model", _t("--resume", "--data.block_size=32", run="{tmp}/run"), "data.block_size: 16 -> 32",
     _copy_run(lambda r: None)),
    ("resume-all-damaged", _t("--resume", run="{tmp}/run"), "no complete checkpoint", _copy_run(_damage_all)),
    ("resume-payload", _t("--resume", run="{tmp}/run"), "not a weights-only checkpoint file", _copy_run(_plant)),
    # data
    ("data-missing", _t(corpus="{tmp}/nope.txt"), "nope.txt", None),
    ("data-is-dir", _t(corpus="{tmp}"), "is a directory", None),
    ("data-extension", _t(corpus="{tmp}/c.docx"), "unknown extension", _w("c.docx", "text")),
    ("data-empty", _t(corpus="{tmp}/e.txt"), "empty corpus", _w("e.txt", "")),
    ("data-too-small", _t(corpus="{tmp}/s.txt"), "fewer than the block_size + 1", _w("s.txt", "tiny\n")),
    ("jsonl-no-field", _t("--data.text_field=body", corpus="{tmp}/d.jsonl"), "text field 'body' not found",
     _w("d.jsonl", '{"text": "a"}\n' * 50)),
    ("jsonl-half-bad", _t(corpus="{tmp}/d.jsonl"), "50 of 100 records have no 'text' string",
     _w("d.jsonl", "".join('{"text": "some words here"}\n' if i % 2 else '{"other": 1}\n' for i in range(100)))),
    ("jsonl-broken", _t(corpus="{tmp}/d.jsonl"), "d.jsonl", _w("d.jsonl", '{"text": "a"}\n{"text": \n')),
    # starting weights
    ("init-from-missing", _t("--model.init_from={tmp}/none"), "model.init_from", None),
    ("init-from-no-config", _t("--model.init_from={tmp}/m"), "no config.json", _w("m/weights.txt", "x")),
    ("init-from-bad-json", _t("--model.init_from={tmp}/m"), "config.json is not valid JSON", _w("m/config.json", "{bad")),
    # checkpoints and export
    ("export-no-checkpoint", ["export", "{tmp}/none", "{tmp}/out"], "no DeepSpeed checkpoint", None),
    ("export-damaged", ["export", "{tmp}/run", "{tmp}/out"], "no usable checkpoint", _copy_run(_damage_all)),
    ("export-payload", ["export", "{tmp}/run", "{tmp}/out"], "not a weights-only checkpoint file", _copy_run(_plant)),
    ("export-tag", ["export", "{tmp}/run", "{tmp}/out", "--tag", "step99"], "step99", _copy_run(lambda r: None)),
    ("export-out-exists", ["export", "{tmp}/run", "{tmp}/run"], "already exists", _copy_run(lambda r: None)),
    ("export-eval-json", ["export", "{tmp}/run", "{tmp}/out", "--eval-json", "{tmp}/e.json"], "e.json is not JSON",
     _w("e.json", "{")),
    # model directories
    ("generate-missing", ["generate", "{tmp}/none", "hi"], "does not exist", None),
    ("generate-no-config", ["generate", "{tmp}/m", "hi"], "no config.json", _w("m/x.txt", "x")),
    ("generate-bad-json", ["generate", "{tmp}/m", "hi"], "config.json is not valid JSON", _copy_model(
        lambda m: (m / "config.json").write_text("{"))),
    ("generate-no-tokenizer", ["generate", "{tmp}/m", "hi"], "holds no tokenizer", _copy_model(
        lambda m: [p.unlink() for p in m.glob("tokenizer*")])),
    ("generate-truncated-weights", ["generate", "{tmp}/m", "hi"], "model.safetensors", _copy_model(
        lambda m: _truncate(m / "model.safetensors"))),
    ("generate-top-p", ["generate", "{model}", "hi", "--top-p", "1.5"], "top_p must be in (0, 1]", None),
    ("generate-tokens", ["generate", "{model}", "hi", "--max-new-tokens", "0"], "max_new_tokens must be >= 1", None),
    ("eval-stride", ["eval", "{model}", "{corpus}", "--stride", "0"], "stride must be >= 1", None),
    ("eval-batch", ["eval", "{model}", "{corpus}", "--batch-size", "0"], "batch_size must be >= 1", None),
    ("eval-override", ["eval", "{model}", "{corpus}", "--override", "no_such_field=1"], "no_such_field", None),
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("trained")
    corpus = d / "corpus.txt"
    corpus.write_text("\n".join(LINES) + "\n")
    assert main(_t(corpus=str(corpus), run=str(d / "run"))) == 0
    return d / "run", corpus


def _tree(root):
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line_and_changes_nothing(case, trained, tmp_path, capsys):
    _, argv, culprit, setup = case
    run, corpus = trained
    if setup is not None:
        setup(tmp_path, run)
    fill = dict(tmp=tmp_path, run=run, model=run / "final", corpus=corpus)
    argv = [a.format(**fill) for a in argv]
    before, trained_before = _tree(tmp_path), _tree(run)
    capsys.readouterr()
    assert main(argv) == 2, argv
    out = capsys.readouterr()
    lines = [line for line in out.err.splitlines() if line.startswith("spikelm")]
    assert len(lines) == 1 and "error" in lines[0], out.err
    assert culprit in lines[0], lines[0]
    assert "Traceback" not in out.err and "payload ran" not in out.out
    after = _tree(tmp_path)
    assert after == before, {k: (before.get(k), after.get(k)) for k in set(before) | set(after)
                             if before.get(k) != after.get(k)}
    assert _tree(run) == trained_before


def test_the_table_covers_forty_bad_inputs():
    assert len(CASES) >= 40
