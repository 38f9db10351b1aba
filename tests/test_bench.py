"""gemma-export bench: prefill and decode speed, time to first token, peak RSS."""

import json

from cli_util import cli
from gemma_export.bench import format_table, measure


def test_measure_reports_positive_figures(generic_artifacts):
    row = measure(generic_artifacts["gemma-mqa"], prompt_tokens=16, new_tokens=8, repeats=1)
    assert row["prefill_tokens_per_s"] > 0 and row["decode_tokens_per_s"] > 0
    assert 0 < row["ttft_ms"] < 60_000 and row["peak_rss_mib"] > 10
    assert len(row["generated"]) == 8  # exactly new_tokens: no early stop
    assert "decode" in format_table([row])


def test_bench_cli_writes_json(generic_artifacts, tmp_path, capsys):
    code, stdout, _ = cli(capsys, "bench", generic_artifacts["gemma2"], "--prompt-tokens", "12",
                          "--new-tokens", "4", "--repeats", "1", "--json", tmp_path / "b.json")
    assert code == 0
    assert json.loads((tmp_path / "b.json").read_text())["new_tokens"] == 4
    code, _, err = cli(capsys, "bench", generic_artifacts["gemma2"], "--prompt-tokens", "1000")
    assert code == 2 and err.startswith("error: ")
