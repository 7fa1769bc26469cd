"""Fine-tuning building blocks: instruction/chat data with loss masking, LoRA through peft.

Typical use::

    from spikelm.finetune import InstructionDataset, apply_lora, ensure_chat_template, save_merged

    ensure_chat_template(tok)                      # DEFAULT_CHAT_TEMPLATE unless it has one
    train = InstructionDataset("train.jsonl", tok, max_length=128, packing="pad")
    model = apply_lora(model, r=8, alpha=16)       # only lora_A / lora_B train
    for batch in loader:                           # labels: -100 on prompt tokens and padding
        model(**batch).loss.backward()
    save_merged(model, tok, "runs/ft/merged")      # standalone HF dir, pipeline-ready
"""
from .instructions import (
    DEFAULT_CHAT_TEMPLATE,
    IGNORE_INDEX,
    InstructionDataset,
    JsonlRecord,
    encode_example,
    ensure_chat_template,
    read_jsonl,
    response_loss,
    shakespeare_qa_path,
)
from .lora import (
    DEFAULT_LORA_TARGETS,
    apply_lora,
    linear_module_names,
    merge_adapter_dir,
    merge_lora,
    resolve_lora_targets,
    save_merged,
)

__all__ = [
    "DEFAULT_CHAT_TEMPLATE",
    "DEFAULT_LORA_TARGETS",
    "IGNORE_INDEX",
    "InstructionDataset",
    "JsonlRecord",
    "apply_lora",
    "encode_example",
    "ensure_chat_template",
    "linear_module_names",
    "merge_adapter_dir",
    "merge_lora",
    "read_jsonl",
    "resolve_lora_targets",
    "response_loss",
    "save_merged",
    "shakespeare_qa_path",
]
