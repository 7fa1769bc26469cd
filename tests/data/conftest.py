"""Every data test runs offline, with a datasets cache of its own (no hub, no shared cache)."""
import pytest


@pytest.fixture(autouse=True)
def _offline(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cache = tmp_path / "hf_datasets_cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    monkeypatch.setattr(datasets.config, "DOWNLOADED_DATASETS_PATH", str(cache / "downloads"))
    monkeypatch.setattr(datasets.config, "EXTRACTED_DATASETS_PATH", str(cache / "downloads" / "extracted"))


@pytest.fixture
def write_corpus(tmp_path):
    """``write_corpus(text, name="corpus.txt") -> str``: a UTF-8 file of ``text`` in ``tmp_path``."""
    def write(text: str, name: str = "corpus.txt") -> str:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return str(path)
    return write
