"""``SpikeLMForSequenceClassification``: a spikelm backbone with a linear ``score`` head on the last real token.

Like transformers' ``*ForSequenceClassification`` models (``GenericForSequenceClassification``):
the backbone runs the whole sequence, the head ``score`` (``nn.Linear(hidden_size, num_labels,
bias=False)``) maps every position to ``num_labels`` logits and the logits of each row's last
real token are returned. The loss follows ``config.problem_type`` (``regression``: MSE;
``single_label_classification``: cross-entropy, -100 ignored; ``multi_label_classification``:
BCE with logits), chosen from ``num_labels`` and the labels' dtype when unset.

The backbone's weights are named ``model.*`` as in :class:`~spikelm.models.SpikeLMForCausalLM`, so
``SpikeLMForSequenceClassification.from_pretrained(causal_lm_dir, num_labels=3)`` reuses them (the
LM ``head`` is dropped, only ``score`` is new).
"""
from __future__ import annotations

from typing import ClassVar

import torch
from transformers.modeling_outputs import SequenceClassifierOutputWithPast

from .modeling_spikelm import SpikeLMCache, SpikeLMModel, SpikeLMPreTrainedModel

_PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


def last_token_index(attention_mask: torch.Tensor | None, input_ids: torch.Tensor | None,
                     pad_token_id: int | None, batch_size: int) -> torch.Tensor | int:
    """Position of each row's last real token, under left or right padding.

    Args:
        attention_mask: ``[B, L]`` (any int/bool/float dtype; 0 marks padding) or None. When given it
            decides alone: the index of the rightmost nonzero entry (0 for a row of pads only).
        input_ids: ``[B, L]`` int64 or None; without a mask the rightmost token ``!= pad_token_id``.
        pad_token_id: the config's pad token, or None (then -1, the last position, for B == 1).
        batch_size: B.
    Returns:
        ``[B]`` int64 indices, or the int -1 (the last position of every row).
    Raises:
        ValueError: B > 1 with neither an attention mask nor a ``pad_token_id`` (as transformers).
    """
    if attention_mask is not None:
        mask = attention_mask != 0
    elif input_ids is not None and pad_token_id is not None:
        mask = input_ids != pad_token_id
    elif batch_size != 1 and pad_token_id is None:
        raise ValueError("cannot find the last token of batches of more than one sequence without an attention_mask "
                         "or a pad_token_id in the config")
    else:
        return -1
    positions = torch.arange(mask.shape[-1], device=mask.device, dtype=torch.int64)
    return (positions * mask.to(torch.int64)).argmax(-1)


class SpikeLMForSequenceClassification(SpikeLMPreTrainedModel):
    """Sequence classification (or regression) with a spikelm backbone (any layer layout of
    :class:`~spikelm.models.SpikeLMModel`); works with ``AutoModelForSequenceClassification``,
    ``pipeline("text-classification")`` (labels by ``config.id2label``), peft ``TaskType.SEQ_CLS``
    (``modules_to_save=["score"]``), ``save_pretrained`` / ``from_pretrained``.

    Attributes:
        model: the :class:`~spikelm.models.SpikeLMModel` backbone (weights ``model.*``).
        score: ``nn.Linear(hidden_size, num_labels, bias=False)``.
        num_labels: ``config.num_labels``.
    """

    # The LM head of a causal-LM checkpoint is not part of this model.
    _keys_to_ignore_on_load_unexpected: ClassVar[list[str]] = [r"^head\.weight$"]

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = SpikeLMModel(config)
        self.score = torch.nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                past_key_values: SpikeLMCache | None = None, inputs_embeds: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, use_cache: bool | None = None,
                output_hidden_states: bool | None = None, **kwargs) -> SequenceClassifierOutputWithPast:
        """Classify ``input_ids [B, L]`` int64 (or ``inputs_embeds [B, L, D]``).

        Args:
            attention_mask: ``[B, L]``, 0 marks padding (left or right); the last real token of each
                row is pooled. Without it, the rightmost token that is not ``config.pad_token_id``.
            labels: ``regression``: float ``[B]`` (num_labels 1) or ``[B, num_labels]``;
                ``single_label_classification``: int64 ``[B]`` in ``[0, num_labels)`` (-100 is
                ignored); ``multi_label_classification``: float ``[B, num_labels]`` of 0/1.
                ``config.problem_type`` is set from them when None (as transformers does).
            use_cache: return the recurrent state (default False: classification needs none).
        Returns:
            ``SequenceClassifierOutputWithPast(loss, logits [B, num_labels], past_key_values,
            hidden_states)``; logits in the model's dtype, ``loss`` a 0-dim tensor or None.
        Raises:
            ValueError: a single-label label outside ``[0, num_labels)`` (naming it), labels whose
                shape does not fit, an unknown ``config.problem_type``, a batch of several rows with
                neither a mask nor a pad token, neither or both of ``input_ids``/``inputs_embeds``.
        """
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=past_key_values,
                         inputs_embeds=inputs_embeds, use_cache=bool(use_cache),
                         output_hidden_states=output_hidden_states)
        h = out.last_hidden_state
        batch = h.shape[0]
        mask = attention_mask[:, -h.shape[1]:] if attention_mask is not None else None
        last = last_token_index(mask, input_ids, self.config.pad_token_id, batch)
        if isinstance(last, torch.Tensor):
            last = last.to(h.device)
        pooled = self.score(h[torch.arange(batch, device=h.device), last])
        loss = None
        aux = self.model.take_moe_aux_loss()  # MoE layers: the routers' auxiliary loss, added in training
        if labels is not None:
            self._check_labels(labels, batch)
            loss = self.loss_function(logits=pooled, labels=labels, pooled_logits=pooled, config=self.config)
            if aux is not None and self.training:
                loss = loss + aux.to(loss.dtype)
        return SequenceClassifierOutputWithPast(loss=loss, logits=pooled, past_key_values=out.past_key_values,
                                                hidden_states=out.hidden_states)

    def _check_labels(self, labels: torch.Tensor, batch: int) -> None:
        """Set ``config.problem_type`` when None (transformers' rule) and check ``labels`` against it.
        Raises ValueError (see :meth:`forward`)."""
        n, cfg = self.num_labels, self.config
        if cfg.problem_type is None:
            cfg.problem_type = ("regression" if n == 1 else "single_label_classification"
                                if labels.dtype in (torch.long, torch.int) else "multi_label_classification")
        if cfg.problem_type not in _PROBLEM_TYPES:
            raise ValueError(f"config.problem_type must be one of {', '.join(_PROBLEM_TYPES)}, got {cfg.problem_type!r}")
        if cfg.problem_type == "single_label_classification":
            if labels.dtype.is_floating_point or labels.numel() != batch:
                raise ValueError(f"single_label_classification expects {batch} integer labels (one per row), got "
                                 f"{labels.dtype} labels of shape {list(labels.shape)}")
            bad = labels[(labels != -100) & ((labels < 0) | (labels >= n))]
            if bad.numel():
                raise ValueError(f"label {int(bad[0])} is outside [0, num_labels={n}) (set num_labels, or id2label, "
                                 f"to the number of classes; -100 marks a row to ignore)")
        elif cfg.problem_type == "multi_label_classification" and tuple(labels.shape) != (batch, n):
            raise ValueError(f"multi_label_classification expects labels of shape [{batch}, num_labels={n}] "
                             f"(0/1 per class), got {list(labels.shape)}")
        elif cfg.problem_type == "regression" and labels.numel() != batch * n:
            raise ValueError(f"regression expects {batch} x num_labels={n} float labels, got shape "
                             f"{list(labels.shape)}")
