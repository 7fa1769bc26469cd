"""Evaluation: strided perplexity / bits per byte, spike statistics, energy estimate, plots
(``spikelm.eval.plots``, imported on demand: it needs matplotlib)."""
from .energy import E_AC_PJ, E_MAC_PJ, energy_estimate, energy_pj
from .perplexity import evaluate_files, evaluate_stream, strided_windows, token_byte_lengths, tokenize_stream
from .spikes import SpikeMonitor, layer_summary, site_stats, spike_statistics

__all__ = ["evaluate_files", "evaluate_stream", "strided_windows", "token_byte_lengths", "tokenize_stream",
           "SpikeMonitor", "site_stats", "layer_summary", "spike_statistics", "energy_estimate", "energy_pj",
           "E_MAC_PJ", "E_AC_PJ"]
