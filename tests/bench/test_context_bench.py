"""The long-context bench (``python -m spikelm.bench.context``): a tiny run of all three models
reports every point with positive numbers, a point past its timeout reads ``timeout`` and skips the
model's longer lengths, the targets are computed from the points, and bad input exits 2."""
import json

import pytest

from spikelm.bench import context

K = 1024


def _bench(tmp_path, capsys, *argv):
    """The bench's main in this process (its points still run in fresh subprocesses)."""
    out, js = tmp_path / "report.md", tmp_path / "res.json"
    assert context.main([*argv, "--out", str(out), "--json", str(js)]) == 0
    assert out.read_text() in capsys.readouterr().out
    return out.read_text(), json.loads(js.read_text())


def test_tiny_run_of_all_three_models(tmp_path, capsys):
    # one length (each point is a fresh process: ~5 s of imports on a loaded 2-core machine);
    # 80 tokens in chunks of 32 run the spikelm models' chunked prefill with a remainder
    report, res = _bench(tmp_path, capsys, "--lengths", "80", "--decode-tokens", "3", "--chunk", "32", "--threads", "1")
    assert "- prefill chunk (config.prefill_chunk_tokens, spikelm models): 32 tokens" in report
    for model in context.MODELS:
        p = res["points"][model]["80"]
        assert p["status"] == "ok", p
        assert min(p["prefill_s"], p["prefill_tokens_per_s"], p["decode_tokens_per_s"]) > 0 and p["peak_mib"] >= 0
        assert f"## {model}: {context.MODELS[model]}" in report and f"| 80 | {p['prefill_s']:.3f} |" in report
    params = {m: res["points"][m]["80"]["params"] for m in context.MODELS}
    assert abs(params["llama"] / params["hybrid-shakespeare"] - 1) < 0.05
    for target in ("(a) prefill at 16k", "(b) hybrid decode", "(c) shakespeare prefill peak",
                   "(c) hybrid-shakespeare prefill peak"):
        assert f"- {target}" in report
    assert report.count("n/a") == 4  # no point at the target lengths


def test_timeout_is_reported_and_longer_lengths_skipped(tmp_path, capsys):
    report, res = _bench(tmp_path, capsys, "--models", "llama", "--lengths", "64,128", "--timeout-s", "0.2")
    assert res["points"]["llama"] == {"64": {"status": "timeout"},
                                      "128": {"status": "skipped", "why": "timeout at 64"}}
    assert "| 64 | timeout | | | |" in report and "| 128 | skipped: timeout at 64 | | | |" in report


def _point(prefill_s, peak_mib, decode):
    return {"status": "ok", "params": 1, "prefill_s": prefill_s, "prefill_tokens_per_s": 1.0, "peak_mib": peak_mib,
            "decode_tokens_per_s": decode, "dtype": "float32", "threads": 2}


def test_targets_from_the_points():
    res = {"timeout_s": 600.0, "points": {
        "shakespeare": {str(4 * K): _point(1, 10.0, 50), str(64 * K): _point(9, 30.0, 50)},
        "hybrid-shakespeare": {str(K): _point(0.1, 5.0, 40.0), str(4 * K): _point(0.4, 8.0, 40),
                               str(16 * K): _point(2.0, 9.0, 39.0), str(64 * K): _point(8, 12.0, 38)},
        "llama": {str(16 * K): _point(8.0, 100.0, 20)}}}
    t = {x["name"]: x for x in context.targets(res)}
    assert t["a"]["value"] == pytest.approx(4.0) and t["a"]["met"]
    assert t["b"]["value"] == pytest.approx(39 / 40) and t["b"]["met"]
    assert t["c shakespeare"]["value"] == pytest.approx(3.0) and t["c shakespeare"]["met"] is False
    assert t["c hybrid-shakespeare"]["value"] == pytest.approx(1.5) and t["c hybrid-shakespeare"]["met"]
    assert "not met" in t["c shakespeare"]["text"] and "8.00 s / 2.00 s = 4 (target >= 3x faster)" in t["a"]["text"]
    res["points"]["llama"][str(16 * K)] = {"status": "timeout"}  # a lower bound: 600 s / 2 s
    del res["points"]["hybrid-shakespeare"][str(K)]
    t = {x["name"]: x for x in context.targets(res)}
    assert t["a"]["value"] == pytest.approx(300.0) and "600.00 s / 2.00 s = > 300" in t["a"]["text"] and t["a"]["met"]
    assert t["b"]["value"] is None and t["b"]["met"] is None and "n/a" in t["b"]["text"]
    res.update(command="c", date="d", device="cpu", versions="v", code="x", chunk=0, decode_tokens=4, threads=None)
    report = context.render({**res, "targets": context.targets(res)})
    assert "one shot" in report and "| 65,536 | 8.000 |" in report and "| 16,384 | timeout | | | |" in report


@pytest.mark.parametrize("argv, fragment", [
    (["--models", "gpt2"], "--models gpt2: unknown"),
    (["--lengths", "1k,x"], "--lengths '1k,x'"),
    (["--decode-tokens", "0"], "--decode-tokens"),
])
def test_bad_input_exits_2_with_one_error_line(argv, fragment, capsys):
    with pytest.raises(SystemExit) as e:
        context.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("python -m spikelm.bench.context: error:") and fragment in err[-1]
    assert context.parse_length("4k") == 4096 and context.parse_length("1M") == 2 ** 20
