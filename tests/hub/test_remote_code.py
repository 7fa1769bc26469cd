"""The flat modeling code written into HF directories: a fresh Python without spikelm (and without
Triton) loads the directory with ``trust_remote_code=True`` and gets the same logits and the same
greedy text; with spikelm imported the installed classes are used without remote code."""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, pipeline

import spikelm
from spikelm import SpikeLMConfig, SpikeLMForCausalLM
from spikelm.data import train_bpe_tokenizer_from_iterator
from spikelm.hub import AUTO_MAP, bundle_sources, write_hf_extras
from spikelm.hub.remote_code import collect_modules, flat_name

TEXT = ["ROMEO:\nBut soft, what light through yonder window breaks?\n", "JULIET:\nAy me.\n"] * 30

CHILD = r'''
import json, sys
sys.modules["triton"] = None   # the optional Triton kernels must not be needed to load
try:
    import spikelm  # noqa: F401
    spikelm_importable = True
except ImportError:
    spikelm_importable = False
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

d, ref = sys.argv[1], sys.argv[2]
m = AutoModelForCausalLM.from_pretrained(d, trust_remote_code=True).eval()
r = torch.load(ref)
with torch.no_grad():
    logits = m(input_ids=r["ids"]).logits
tok = AutoTokenizer.from_pretrained(d)
pipe = pipeline("text-generation", model=d, tokenizer=tok, trust_remote_code=True, device="cpu")
text = pipe("ROMEO:", max_new_tokens=6, do_sample=False)[0]["generated_text"]
print("RESULT " + json.dumps({"spikelm_importable": spikelm_importable, "module": type(m).__module__,
                              "max_diff": (logits - r["logits"]).abs().max().item(), "text": text,
                              "pipe_module": type(pipe.model).__module__}))
'''


def tiny_model(vocab: int, eos: int) -> SpikeLMForCausalLM:
    """Every mixer, MLP and neuron kind once, adaptive spiking on; weights large enough to spike."""
    torch.manual_seed(0)
    cfg = SpikeLMConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=5, num_attention_heads=2,
                        mixer_types=["rwkv4", "gla", "swa", "ssa", "sdsa"],
                        mlp_types=["channel_mix", "swiglu", "swiglu", "spiking_mlp", "channel_mix"],
                        neuron_types=["lif", "none", "none", "plif", "lif"], adaptive_spike_mode="ste",
                        sliding_window=8, context_length=32, eos_token_id=eos, pad_token_id=eos)
    m = SpikeLMForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return m


def clean_sys_path(tmp: Path) -> list[str]:
    """This interpreter's import path without spikelm: the repository root and any folder holding a
    ``spikelm`` package are left out (site-packages with a non-editable spikelm: a copy of links
    without it). Run with ``-I -S`` so that the editable install's .pth finder is not loaded."""
    import site

    out = []
    for i, p in enumerate(sys.path):
        if not p or not os.path.isdir(p) or p == os.getcwd():
            continue
        if (Path(p) / "spikelm").exists():
            if p not in site.getsitepackages():
                continue
            farm = tmp / f"site{i}"
            farm.mkdir()
            for entry in Path(p).iterdir():
                if not entry.name.startswith(("spikelm", "__editable__")):
                    (farm / entry.name).symlink_to(entry)
            p = str(farm)
        out.append(p)
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("src") / "tiny-spikelm"
    tok = train_bpe_tokenizer_from_iterator(TEXT, vocab_size=290, model_max_length=32)
    m = tiny_model(len(tok), tok.eos_token_id)
    m.save_pretrained(d)
    tok.save_pretrained(d)
    write_hf_extras(d)
    ids = torch.randint(0, len(tok), (2, 19), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = m(input_ids=ids).logits
    pipe = pipeline("text-generation", model=m, tokenizer=tok, device="cpu")
    text = pipe("ROMEO:", max_new_tokens=6, do_sample=False)[0]["generated_text"]
    return d, ids, logits, text


def test_bundle_is_flat_and_self_contained():
    files = bundle_sources()
    assert {"configuration_spikelm.py", "modeling_spikelm.py"} <= set(files)
    assert set(files) == {flat_name(m) + ".py" for m in collect_modules()}
    for name, src in files.items():
        assert src.startswith(f"# Generated from spikelm {spikelm.__version__} ("), name
        tree = ast.parse(src)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.level or node.module.split(".")[0] != "spikelm", (name, node.module)
                if node.level:
                    assert node.level == 1, (name, node.lineno)
                    target = node.module or node.names[0].name
                    assert target + ".py" in files, (name, target)
            elif isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == "spikelm" for a in node.names), name
    # the lazily imported Triton modules are part of the bundle, their imports optional
    assert "spikelm_kernels_gla_chunk.py" in files and "spikelm_kernels_adaptive_spike_fused.py" in files
    assert "try:  # optional at runtime" in files["spikelm_kernels_gla_fused_recurrent.py"]
    assert "bench" not in " ".join(files)  # only what the model imports


def test_fresh_python_without_spikelm_loads_with_trust_remote_code(exported, tmp_path):
    src, ids, logits, text = exported
    d = tmp_path / "copy" / src.name
    import shutil

    shutil.copytree(src, d)
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["auto_map"] == AUTO_MAP
    torch.save({"ids": ids, "logits": logits}, tmp_path / "ref.pt")
    (tmp_path / "child.py").write_text(CHILD)
    paths = clean_sys_path(tmp_path)
    boot = f"import sys; sys.path[:0] = {paths!r}; sys.argv = sys.argv[1:]; exec(open(sys.argv[0]).read())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), TOKENIZERS_PARALLELISM="false")
    run = subprocess.run([sys.executable, "-I", "-S", "-c", boot, str(tmp_path / "child.py"), str(d),
                          str(tmp_path / "ref.pt")], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    res = json.loads(run.stdout.split("RESULT ", 1)[1])
    assert res["spikelm_importable"] is False
    assert res["module"].startswith("transformers_modules.") and res["module"].endswith(".modeling_spikelm")
    assert res["pipe_module"] == res["module"]
    assert res["max_diff"] < 1e-5
    assert res["text"] == text


def test_installed_spikelm_needs_no_remote_code(exported):
    src, ids, logits, _ = exported
    for trust in (None, False, True):  # registered non-transformers classes win over auto_map
        m = AutoModelForCausalLM.from_pretrained(src, trust_remote_code=trust).eval()
        assert type(m) is SpikeLMForCausalLM
    with torch.no_grad():
        assert torch.equal(m(input_ids=ids).logits, logits)


def test_write_hf_extras_refuses_other_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        write_hf_extras(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="'llama'"):
        write_hf_extras(tmp_path)
