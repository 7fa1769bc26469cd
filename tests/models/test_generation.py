"""Generation with the recurrent state as cache, HF save/load and the pipeline."""
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, pipeline

from spikelm import SpikeLMForCausalLM, flavour_config
from spikelm.data import train_bpe_tokenizer_from_iterator

from .conftest import cache_numel, spiking_weights

TEXT = ["First Citizen:\nBefore we proceed any further, hear me speak.\n",
        "All:\nSpeak, speak.\n", "First Citizen:\nYou are all resolved rather to die than to famish?\n"] * 20


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer_from_iterator(TEXT, vocab_size=300, model_max_length=64)


@pytest.fixture(scope="module")
def model(tok):
    cfg = flavour_config("debug", vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    return spiking_weights(SpikeLMForCausalLM(cfg).eval())


def test_cached_generation_equals_uncached(model):
    ids = torch.randint(1, 300, (2, 7))
    a = model.generate(ids, max_new_tokens=12, do_sample=False, use_cache=True)
    b = model.generate(ids, max_new_tokens=12, do_sample=False, use_cache=False)
    assert torch.equal(a, b)


def test_cache_is_constant_size(model):
    ids = torch.randint(1, 300, (1, 5))
    out = model(ids, use_cache=True)
    size = cache_numel(out.past_key_values)
    out2 = model(torch.randint(1, 300, (1, 40)), past_key_values=out.past_key_values, use_cache=True)
    assert cache_numel(out2.past_key_values) == size
    assert out2.past_key_values.get_seq_length() == 45


def test_left_padded_batch_equals_single_prompts(model, tok):
    tok.padding_side = "left"
    prompts = ["First Citizen:\nBefore we", "All:"]
    batch = tok(prompts, return_tensors="pt", padding=True)
    # min_new_tokens: an early end-of-text in one row would misalign the comparison below
    out = model.generate(**batch, max_new_tokens=10, min_new_tokens=10, do_sample=False, pad_token_id=tok.pad_token_id)
    for i, p in enumerate(prompts):
        single = tok(p, return_tensors="pt")
        alone = model.generate(**single, max_new_tokens=10, min_new_tokens=10, do_sample=False,
                               pad_token_id=tok.pad_token_id)
        assert out[i, -10:].tolist() == alone[0, -10:].tolist()


def test_sampling_options_run(model):
    ids = torch.randint(1, 300, (1, 4))
    kw = dict(max_new_tokens=8, min_new_tokens=8, do_sample=True, temperature=0.7, top_k=10, top_p=0.9)
    torch.manual_seed(1)
    a = model.generate(ids, **kw)  # min_new_tokens: a sampled end-of-text would shorten the output
    torch.manual_seed(1)
    b = model.generate(ids, **kw)
    assert torch.equal(a, b) and a.shape == (1, 12)


def test_save_load_round_trip_is_bit_identical(model, tok, tmp_path):
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert AutoConfig.from_pretrained(tmp_path).model_type == "spikelm"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is SpikeLMForCausalLM
    sd_a, sd_b = model.state_dict(), loaded.state_dict()
    assert sd_a.keys() == sd_b.keys()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    ids = torch.randint(1, 300, (2, 9))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_pipeline_generates_from_directory(model, tok, tmp_path):
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    pipe = pipeline("text-generation", model=str(tmp_path))
    out = pipe("First Citizen:", max_new_tokens=8, do_sample=False)
    text = out[0]["generated_text"]
    assert text.startswith("First Citizen:") and len(text) > len("First Citizen:")
