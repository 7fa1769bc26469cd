"""The remote code written into HF directories (``configuration_spikelm.py`` + ``modeling_spikelm.py``):
a fresh Python without spikelm (and without Triton) loads the directory with
``trust_remote_code=True`` and gets the same logits and the same greedy text; with spikelm imported
the installed classes are used without remote code; an export holds only its config's layers."""
import ast
import importlib
import json
import os
import re
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
from spikelm.hub.remote_code import collect_modules

from ..conftest import spiking_weights

FILES = {"configuration_spikelm.py", "modeling_spikelm.py"}

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
                        mlp_types=["channel_mix", "swiglu", "moe", "spiking_mlp", "channel_mix"],
                        neuron_types=["lif", "none", "none", "plif", "lif"], adaptive_spike_mode="ste",
                        num_experts=3, num_experts_per_tok=2, num_shared_experts=1, shared_expert_gate=True,
                        sliding_window=8, context_length=32, eos_token_id=eos, pad_token_id=eos)
    return spiking_weights(SpikeLMForCausalLM(cfg).eval(), 0.3)


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


def imports_of(src: str) -> list[tuple[int, str]]:
    """``(level, module)`` of every import statement in ``src`` (``import a.b``: ``(0, "a.b")``)."""
    out = []
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            out += [(0, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.level, node.module or ""))
    return out


def check_two_files(files: dict[str, str]) -> None:
    """Exactly the two files; no spikelm or Triton import; the one relative import is
    ``from .configuration_spikelm import ...`` in modeling_spikelm.py."""
    assert set(files) == FILES
    for name, src in files.items():
        assert src.startswith(f"# Generated from spikelm {spikelm.__version__} ("), name
        compile(src, name, "exec")
        for level, module in imports_of(src):
            assert module.split(".")[0] not in ("spikelm", "triton"), (name, module)
            if level:
                assert (name, level, module) == ("modeling_spikelm.py", 1, "configuration_spikelm")
        assert "import triton" not in src and "from triton" not in src, name


def test_bundle_is_two_self_contained_files():
    files = bundle_sources()
    check_two_files(files)
    modules = collect_modules()
    assert set(modules) == FILES
    assert modules["configuration_spikelm.py"][-1] == "spikelm.models.configuration_spikelm"
    assert modules["modeling_spikelm.py"][-1] == "spikelm.models.modeling_spikelm"
    bundled = [m for ms in modules.values() for m in ms]
    assert len(bundled) == len(set(bundled))  # each module in one file only
    for f, src in files.items():  # the header names the modules whose code follows, in order
        header = "".join(line for line in src.splitlines(True) if line.startswith("#   "))
        sections = re.findall(r"^# ---- (\S+) ----$", src, flags=re.MULTILINE)
        assert sections and sections[-1] == modules[f][-1] and set(sections) <= set(modules[f])
        assert header.replace("#   ", "").replace("\n", " ").strip().split(", ") == sections
    for m in bundled:  # none of them needs Triton at import time
        spec = importlib.util.find_spec(m)
        top = ast.parse(Path(spec.origin).read_text()).body
        assert not [s for s in top if isinstance(s, ast.Import) and any(a.name.startswith("triton") for a in s.names)]
    assert not [m for m in bundled if "bench" in m or m.endswith(("fused", "fused_recurrent", ".chunk"))]
    # the kernels' Triton dispatch is still there, answering "no Triton"
    assert "def use_triton(" in files["configuration_spikelm.py"] + files["modeling_spikelm.py"]


def test_fresh_python_without_spikelm_loads_with_trust_remote_code(exported, tmp_path):
    src, ids, logits, text = exported
    d = tmp_path / "copy" / src.name
    import shutil

    shutil.copytree(src, d)
    assert {p.name for p in d.glob("*.py")} == FILES  # the two files only, nothing importing Triton
    check_two_files({p.name: p.read_text() for p in d.glob("*.py")})
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["auto_map"] == AUTO_MAP
    torch.save({"ids": ids, "logits": logits}, tmp_path / "ref.pt")
    (tmp_path / "child.py").write_text(CHILD)
    paths = clean_sys_path(tmp_path)
    boot = f"import sys; sys.path[:0] = {paths!r}; sys.argv = sys.argv[1:]; exec(open(sys.argv[0]).read())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), TOKENIZERS_PARALLELISM="false")
    run = subprocess.run([sys.executable, "-I", "-S", "-c", boot, str(tmp_path / "child.py"), str(d),
                          str(tmp_path / "ref.pt")], check=False, cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
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
        new = m(input_ids=ids).logits
    # not bit-exact: loaded weights are safetensors mmaps 8-byte aligned, and BLAS rounds the last
    # bit by alignment for the few rows of an MoE expert group (identical after .clone())
    assert torch.allclose(new, logits, atol=1e-5, rtol=0), (new - logits).abs().max()


def test_write_hf_extras_refuses_other_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        write_hf_extras(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="'llama'"):
        write_hf_extras(tmp_path)


def import_as_package(d: Path, tmp: Path, name: str):
    """The generated ``modeling_spikelm.py`` of ``d``, imported from a copy as ``name.modeling_spikelm``."""
    pkg = tmp / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for f in FILES:
        (pkg / f).write_text((d / f).read_text())
    sys.path.insert(0, str(tmp))
    try:
        return importlib.import_module(f"{name}.modeling_spikelm")
    finally:
        sys.path.remove(str(tmp))


SPIKEGPT = {"vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2}
HYBRID = {**SPIKEGPT, "num_attention_heads": 2, "num_key_value_heads": 1, "mixer_types": ["gla", "swa"],
          "mlp_types": "swiglu", "neuron": "none", "norm_type": "rmsnorm", "adaptive_spike_mode": "ste",
          "sliding_window": 4}


@pytest.mark.parametrize("kw, left_out, gone, other", [
    (SPIKEGPT, "SpikingGLA", "def gla(", {"mixer_types": "gla", "mlp_types": "swiglu"}),
    (HYBRID, "RWKV4TimeMix", "def wkv4(", {"mixer_types": "rwkv4", "mlp_types": "channel_mix"}),
], ids=["spikegpt", "hybrid"])
def test_export_holds_only_the_layers_of_its_config(tmp_path, kw, left_out, gone, other):
    """The other mixers/MLPs are stubs and their kernels absent; the code still gives the installed
    model's logits; building a layer left out fails clearly."""
    torch.manual_seed(0)
    m = SpikeLMForCausalLM(SpikeLMConfig(**kw)).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    d = tmp_path / "model"
    m.save_pretrained(d)
    write_hf_extras(d)
    assert {p.name for p in d.glob("*.py")} == FILES
    files = {f: (d / f).read_text() for f in FILES}
    check_two_files(files)
    everything = bundle_sources()
    assert all(len(files[f]) <= len(everything[f]) for f in FILES)
    code, full = "".join(files.values()), "".join(everything.values())
    assert "# Left out, as the model's config does not use them:" in code and f"class {left_out}(" in code
    assert gone not in code and gone in full  # the kernel went with its layer
    mod = import_as_package(d, tmp_path, f"pruned_{tmp_path.name}")
    r = mod.SpikeLMForCausalLM.from_pretrained(d).eval()
    ids = torch.randint(0, 64, (2, 11), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(r(input_ids=ids).logits, m(input_ids=ids).logits)
    with pytest.raises((NotImplementedError, AttributeError), match="left out of this export"):
        mod.SpikeLMForCausalLM(mod.SpikeLMConfig(**{**kw, **other, "neuron": "lif"}))


def test_export_replaces_remote_code_of_an_earlier_export(tmp_path):
    """Flat files an earlier export wrote (same header) are removed; other .py files stay."""
    m = SpikeLMForCausalLM(SpikeLMConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1))
    m.save_pretrained(tmp_path)
    (tmp_path / "spikelm_layers_swa.py").write_text("# Generated from spikelm 0.0.1 (spikelm.layers.swa) by ...\n")
    (tmp_path / "handwritten.py").write_text("x = 1\n")
    write_hf_extras(tmp_path)
    assert {p.name for p in tmp_path.glob("*.py")} == FILES | {"handwritten.py"}
