"""Evaluation: perplexity / bits per byte."""
