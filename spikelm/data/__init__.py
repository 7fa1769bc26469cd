"""Data: corpus loading (`datasets`), byte-level BPE tokenizers, packing into blocks.

Typical use::

    from spikelm.data import load_text_splits, train_bpe_tokenizer, pack_blocks, PackedBlocks

    train_text, val_text = load_text_splits([tiny_shakespeare_path()])  # 90/10 by bytes
    tok = train_bpe_tokenizer_from_iterator(train_text["text"], vocab_size=4096, model_max_length=256)
    train = PackedBlocks(pack_blocks(train_text, tok, block_size=256))  # item: LongTensor [257]
    stats = corpus_stats(val_text, tok)  # bits/byte = nats/token * num_tokens / (ln2 * num_bytes)
"""

from .loading import (
    ACCEPTED_EXTENSIONS,
    COMPRESSION_EXTENSIONS,
    load_documents,
    load_text_splits,
    split_by_bytes,
    tiny_shakespeare_path,
)
from .packing import PackedBlocks, corpus_stats, pack_blocks, tokenize_documents
from .streaming import StreamingBlocks, open_stream
from .tokenizer import load_tokenizer, train_bpe_tokenizer, train_bpe_tokenizer_from_iterator

__all__ = [
    "ACCEPTED_EXTENSIONS",
    "COMPRESSION_EXTENSIONS",
    "PackedBlocks",
    "StreamingBlocks",
    "corpus_stats",
    "load_documents",
    "load_text_splits",
    "load_tokenizer",
    "open_stream",
    "pack_blocks",
    "split_by_bytes",
    "tiny_shakespeare_path",
    "tokenize_documents",
    "train_bpe_tokenizer",
    "train_bpe_tokenizer_from_iterator",
]
