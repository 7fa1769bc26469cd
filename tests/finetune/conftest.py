"""Fixtures of the fine-tuning tests: the default-style tokenizer (byte-level BPE, 512 tokens, trained
on tiny Shakespeare, with the default chat template) and a tiny spikelm model pretrained for a few
steps on the play, so fine-tuning starts from a language model and not from noise."""
import copy

import pytest
import torch

MAX_LEN = 128


@pytest.fixture(scope="package", autouse=True)
def _one_thread():
    """One intra-op thread for these tiny models: their steps are thousands of small ops, which
    two threads slow down by 10x or more on a busy 2-core machine (measured: 0.11 s vs 1.8 s per step)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="package")
def _session_tokenizer():
    from spikelm.data import tiny_shakespeare_path, train_bpe_tokenizer_from_iterator
    from spikelm.finetune import ensure_chat_template

    text = open(tiny_shakespeare_path(), encoding="utf-8").read()
    tok = train_bpe_tokenizer_from_iterator(text.split("\n\n"), vocab_size=512, model_max_length=MAX_LEN)
    return ensure_chat_template(tok)


@pytest.fixture
def tok(_session_tokenizer):
    return copy.deepcopy(_session_tokenizer)


def tiny_config(vocab_size: int, flavour: str = "debug", eos_token_id: int = 0):
    """As ``spikelm train`` makes it: the tokenizer's eos (id 0) as eos and pad, so generation stops there."""
    from spikelm.models import flavour_config

    return flavour_config(flavour, vocab_size=vocab_size, context_length=MAX_LEN, eos_token_id=eos_token_id,
                          pad_token_id=eos_token_id)


@pytest.fixture(scope="package")
def _pretrained_state(_session_tokenizer):
    """Weights of a 'debug' model (D=32, 2 SpikeGPT layers) after 60 AdamW steps on blocks of 128
    tokens of tiny Shakespeare (about 6 s on one CPU thread)."""
    from spikelm.data import tiny_shakespeare_path
    from spikelm.models import SpikeLMForCausalLM

    tok = _session_tokenizer
    text = open(tiny_shakespeare_path(), encoding="utf-8").read()[:200_000]
    ids = torch.tensor(tok(text, add_special_tokens=False, verbose=False)["input_ids"])
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = SpikeLMForCausalLM(tiny_config(len(tok), eos_token_id=tok.eos_token_id))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(60):
        starts = torch.randint(0, len(ids) - MAX_LEN, (32,), generator=gen)
        x = torch.stack([ids[s:s + MAX_LEN] for s in starts])
        loss = model(input_ids=x, labels=x, use_cache=False).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture
def pretrained(_pretrained_state, _session_tokenizer):
    """A fresh copy of the pretrained tiny model (train mode)."""
    from spikelm.models import SpikeLMForCausalLM

    model = SpikeLMForCausalLM(tiny_config(len(_session_tokenizer), eos_token_id=_session_tokenizer.eos_token_id))
    model.load_state_dict(_pretrained_state)
    return model
