"""``data.format: classification``: fine-tuning a trained causal LM into a sequence classifier
(full and LoRA), accuracy and macro-F1 in the run's metrics, the export in a pipeline."""
import json
from pathlib import Path

import pytest

from spikelm.eval.classification import classification_metrics
from spikelm.train.config import (
    DataConfig,
    LoraConfig,
    ModelConfig,
    OptimConfig,
    Recipe,
    TrainConfig,
)
from spikelm.train.trainer import train

from .conftest import train_debug_model

# two "classes" a tiny model separates from the text alone
POS = ["Speak, speak.", "hear me speak.", "Speak, speak, speak."]
NEG = ["You are all resolved rather to die than to famish?", "Before we proceed any further."]


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("base")
    return train_debug_model(d, block_size=16, max_steps=3, warmup_steps=1) / "final"


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _data(tmp_path):
    rows = [{"text": t, "label": "speak"} for t in POS] * 12 + [{"text": t, "label": "other"} for t in NEG] * 12
    return _write(tmp_path / "train.jsonl", rows), _write(tmp_path / "val.jsonl", rows[::6])


def _recipe(tmp_path, base, lora_r=0, **data_kw):
    train_file, val_file = _data(tmp_path)
    return Recipe(model=ModelConfig(init_from=str(base), lora=LoraConfig(r=lora_r, alpha=2 * lora_r or 16)),
                  data=DataConfig(format="classification", train_files=[train_file], val_files=[val_file],
                                  block_size=16, **data_kw),
                  optim=OptimConfig(lr=1e-2, warmup_steps=1),
                  train=TrainConfig(run_dir=str(tmp_path / f"run{lora_r}"), max_steps=12, micro_batch_size=8,
                                    eval_every=6, checkpoint_every=0, log_every=3, sample_tokens=0, threads=1))


@pytest.mark.parametrize("lora_r", [0, 4])
def test_classification_finetune_learns_and_exports_a_pipeline_model(base_model, tmp_path, lora_r):
    from transformers import pipeline

    summary = train(_recipe(tmp_path, base_model, lora_r))
    val = summary["val"]
    assert set(val) >= {"loss", "accuracy", "macro_f1", "rows"} and val["rows"] == 10
    assert val["accuracy"] >= 0.9  # 2 separable classes after 12 steps
    recs = [json.loads(x) for x in (tmp_path / f"run{lora_r}" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == list(range(1, 13))
    assert "val_accuracy" in recs[5] and "val_macro_f1" in recs[11]
    final = summary["final_dir"]
    stored = json.loads(Path(final, "training_summary.json").read_text())
    assert stored["val"]["accuracy"] == pytest.approx(val["accuracy"])
    config = json.loads(Path(final, "config.json").read_text())
    assert config["id2label"] == {"0": "other", "1": "speak"}
    clf = pipeline("text-classification", model=final)
    assert clf("Speak, speak.")[0]["label"] == "speak"
    assert clf("You are all resolved rather to die than to famish?")[0]["label"] == "other"


def test_a_label_outside_the_label_set_is_one_clear_error(base_model, tmp_path):
    r = _recipe(tmp_path, base_model, labels=["speak", "quiet"])
    with pytest.raises(ValueError, match=r"label 'other' is not one of the 2 labels speak, quiet"):
        train(r)
    assert not (tmp_path / "run0").exists()  # nothing written


def test_integer_labels_beyond_num_labels_and_missing_fields(base_model, tmp_path):
    r = _recipe(tmp_path, base_model, labels=["a", "b"])
    _write(tmp_path / "train.jsonl", [{"text": "Speak.", "label": 0}, {"text": "Speak, speak.", "label": 2}])
    r.data.train_files = [str(tmp_path / "train.jsonl")]
    with pytest.raises(ValueError, match=r"label 2 is outside num_labels 2"):
        train(r)
    _write(tmp_path / "train.jsonl", [{"text": "Speak.", "class": 0}])
    with pytest.raises(ValueError, match=r"no label field 'label' \(data.label_field\)"):
        train(r)


def test_classification_metrics_hand_checked():
    # 3 classes; rows: true 0 -> [2 as 0, 1 as 1], true 1 -> [1 as 1], true 2 -> [1 as 0]
    m = classification_metrics(5.0, [[2, 1, 0], [0, 1, 0], [1, 0, 0]])
    assert m["accuracy"] == pytest.approx(3 / 5)
    # F1: class 0: tp 2, fp 1, fn 1 -> 4/6; class 1: tp 1, fp 1, fn 0 -> 2/3; class 2: 0
    assert m["macro_f1"] == pytest.approx((4 / 6 + 2 / 3 + 0) / 3)
    assert m["loss"] == pytest.approx(1.0)


def test_shipped_play_set_is_reproducible_and_balanced():
    from collections import Counter

    from spikelm.recipes import DATA_DIR

    from spikelm.finetune.make_shakespeare_plays import LABELS, N_TRAIN, N_VAL, build

    train_recs, val_recs = build((DATA_DIR / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8"))
    for name, recs in (("train.jsonl", train_recs), ("val.jsonl", val_recs)):
        shipped = (DATA_DIR / "shakespeare-plays" / name).read_text(encoding="utf-8")
        assert shipped == "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)
    assert Counter(r["label"] for r in train_recs) == {p: N_TRAIN for p in LABELS}
    assert Counter(r["label"] for r in val_recs) == {p: N_VAL for p in LABELS}
    assert not {r["text"] for r in train_recs} & {r["text"] for r in val_recs}


def test_spikelm_eval_reports_accuracy_of_a_classifier(base_model, tmp_path):
    import subprocess
    import sys

    summary = train(_recipe(tmp_path, base_model))
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "spikelm.cli", "eval", summary["final_dir"], str(tmp_path / "val.jsonl"),
                        "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["accuracy"] == pytest.approx(summary["val"]["accuracy"])
    assert res["macro_f1"] == pytest.approx(summary["val"]["macro_f1"])
    assert res["majority_accuracy"] == pytest.approx(6 / 10)
    _write(tmp_path / "bad.jsonl", [{"text": "Speak.", "label": "nope"}])
    r = subprocess.run([sys.executable, "-m", "spikelm.cli", "eval", summary["final_dir"], str(tmp_path / "bad.jsonl")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "label 'nope' is not one of the 2 labels other, speak" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_parquet_records_and_custom_field_names(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from spikelm.data.classification import label_names, read_labelled

    pq.write_table(pa.table({"sentence": ["good", "bad", "fine"], "y": [1, 0, 1]}), tmp_path / "d.parquet")
    recs = read_labelled(str(tmp_path / "d.parquet"), "sentence", "y")
    assert [(t, lab) for t, lab, _ in recs] == [("good", 1), ("bad", 0), ("fine", 1)]
    assert label_names(recs, None) == ["0", "1"] and label_names(recs, ["neg", "pos"]) == ["neg", "pos"]
    with pytest.raises(ValueError, match=r"d.parquet:row 1: no string field 'text'"):
        read_labelled(str(tmp_path / "d.parquet"), "text", "y")
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="reads .jsonl or .parquet files"):
        read_labelled(str(tmp_path / "d.csv"), "text", "label")
