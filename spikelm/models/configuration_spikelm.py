"""``SpikeLMConfig``: the Hugging Face configuration of spikelm models."""
from __future__ import annotations

from transformers import PretrainedConfig

MIXER_TYPES = ("rwkv4",)
NEURONS = ("lif", "plif", "none")


class SpikeLMConfig(PretrainedConfig):
    """Configuration of a spiking language model (``model_type = "spikelm"``).

    Args:
        vocab_size: number of token ids.
        hidden_size: model width ``D``.
        num_hidden_layers: number of blocks.
        intermediate_size: channel-mix width (default ``4 * hidden_size``, as SpikeGPT).
        context_length: the training context in tokens; prompts longer than this are rejected
            by generation helpers (the recurrent state itself has no length limit).
        mixer_types: token mixer per layer; ``"rwkv4"`` (SpikeGPT time-mix) for now. (Not named
            ``layer_types``: transformers 5 reserves that attribute for its own attention kinds.)
        neuron: ``"lif"``, ``"plif"`` (learnable tau) or ``"none"`` (ANN ablation).
        lif_tau, lif_v_th, lif_v_reset, lif_decay_input, lif_detach_reset: LIF parameters
            (SpikeGPT: tau 2, v_th 1, hard reset to 0). ``lif_v_reset=None`` is a soft reset.
        surrogate, surrogate_alpha: surrogate gradient (``"atan"``, 2.0 in SpikeGPT).
        spike_embedding: binarise the token embedding with a Heaviside (+ surrogate).
        layer_norm_eps, dropout, initializer_range: as usual.
        use_cache: return the recurrent state from ``forward`` by default.
    Raises:
        ValueError: unknown layer type or neuron, wrong ``mixer_types`` length, bad sizes.
    """

    model_type = "spikelm"

    def __init__(self, vocab_size: int = 256, hidden_size: int = 512, num_hidden_layers: int = 12,
                 intermediate_size: int | None = None, context_length: int = 1024,
                 mixer_types: list[str] | None = None, neuron: str = "lif", lif_tau: float = 2.0,
                 lif_v_th: float = 1.0, lif_v_reset: float | None = 0.0, lif_decay_input: bool = True,
                 lif_detach_reset: bool = False, surrogate: str = "atan", surrogate_alpha: float = 2.0,
                 spike_embedding: bool = False, layer_norm_eps: float = 1e-5, dropout: float = 0.0,
                 initializer_range: float = 0.02, tie_word_embeddings: bool = False, use_cache: bool = True,
                 bos_token_id: int | None = None, eos_token_id: int | None = None, pad_token_id: int | None = None,
                 **kwargs):
        if vocab_size < 1 or hidden_size < 1 or num_hidden_layers < 1:
            raise ValueError(f"vocab_size, hidden_size and num_hidden_layers must be >= 1, got "
                             f"{vocab_size}, {hidden_size}, {num_hidden_layers}")
        mixer_types = list(mixer_types) if mixer_types is not None else ["rwkv4"] * num_hidden_layers
        if len(mixer_types) != num_hidden_layers:
            raise ValueError(f"mixer_types has {len(mixer_types)} entries but num_hidden_layers is {num_hidden_layers}")
        bad = sorted(set(mixer_types) - set(MIXER_TYPES))
        if bad:
            raise ValueError(f"unknown mixer type(s) {bad}; accepted: {', '.join(MIXER_TYPES)}")
        if neuron not in NEURONS:
            raise ValueError(f"unknown neuron {neuron!r}; accepted: {', '.join(NEURONS)}")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.intermediate_size = intermediate_size or 4 * hidden_size
        self.context_length = context_length
        self.mixer_types = mixer_types
        self.neuron = neuron
        self.lif_tau, self.lif_v_th, self.lif_v_reset = lif_tau, lif_v_th, lif_v_reset
        self.lif_decay_input, self.lif_detach_reset = lif_decay_input, lif_detach_reset
        self.surrogate, self.surrogate_alpha = surrogate, surrogate_alpha
        self.spike_embedding = spike_embedding
        self.use_cache = use_cache
        self.layer_norm_eps, self.dropout, self.initializer_range = layer_norm_eps, dropout, initializer_range
        super().__init__(tie_word_embeddings=tie_word_embeddings, bos_token_id=bos_token_id,
                         eos_token_id=eos_token_id, pad_token_id=pad_token_id, **kwargs)
