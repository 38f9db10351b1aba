"""Fuzzed parsing (issue 14): corrupt and lying config.json files, safetensors headers and GGUF files
(see tests/fuzz_cases.py) end in a documented one-line error or a source, never a traceback, a hang,
an allocation of the size a header claims, or a file outside OUT. Seeded and bounded for CI;
benchmarks/fuzz.py runs the same strategies longer."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gemma_runtime
from cli_util import cli
from fuzz_cases import (CASE_SECONDS, FUZZ, HF_SEEDS, HONEST_ARRAY, TARGETS, ParserBug, allocation_cases,
                        documented_errors, edited_gguf, hf_case_folder, open_fully, outcome, set_kv, set_tensor,
                        time_limit, write_folder, write_seeds)
from fuzz_strategies import ARRAY, STRING, UINT8, UINT32, UINT64
from gemma_export.errors import CheckpointError, ConfigError
from gemma_export.export import export
from gemma_export.targets import ExportOptions

# Cases per target in CI (about 40 s in all on 2 cores); benchmarks/fuzz.py runs thousands.
EXAMPLES = {"config": 200, "safetensors": 200, "sharded": 40, "gguf": 120, "mutation": 120}
FUZZ_CASES = Path(__file__).parent / "fuzz_cases.py"


@pytest.fixture(scope="module")
def seeds(tiny_checkpoints, tmp_path_factory):
    written = {name: tiny_checkpoints[name] for name in HF_SEEDS if name in tiny_checkpoints}
    return write_seeds(tmp_path_factory.mktemp("fuzz_seeds"), written)


@pytest.mark.parametrize("target", TARGETS)
def test_fuzzed_input_ends_in_a_documented_error_or_a_source(target, seeds, tmp_path):
    """In a child process (fuzz_cases.fuzz): each case runs under an address-space cap, which in this
    process would bind the threads earlier tests left too."""
    done = subprocess.run([sys.executable, str(FUZZ_CASES), "fuzz", target, str(EXAMPLES[target]), str(tmp_path),
                           json.dumps(seeds.paths())], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    outcomes = json.loads(done.stdout)
    # The cases get past the first check: some are refused, some still open.
    assert outcomes.get("ok") and sum(outcomes.values()) > outcomes["ok"], outcomes


# -- the harness can fail ---------------------------------------------------------------------------

def test_outcome_reports_what_is_not_a_documented_error():
    assert outcome(lambda: (_ for _ in ()).throw(ConfigError("x: bad"))) == "ConfigError"
    with pytest.raises(ParserBug, match="IndexError"):
        outcome(lambda: [][1])
    with pytest.raises(ParserBug, match="not one line"):
        outcome(lambda: (_ for _ in ()).throw(CheckpointError("two\nlines")))
    with pytest.raises(ParserBug, match="hang"):
        outcome(lambda: [None for _ in iter(int, 1)], seconds=0.2)


def test_address_space_limit_turns_a_claimed_allocation_into_memory_error():
    """In a child process: a cap on this one's address space would also bind the threads earlier tests
    left in it (OpenVINO's and onnxruntime's pools), which may not survive a failed allocation."""
    code = ("import numpy as np\n"
            "from fuzz_cases import CASE_ADDRESS_SPACE, address_space_limit\n"
            "with address_space_limit(CASE_ADDRESS_SPACE):\n"
            "    try:\n"
            "        np.ones(CASE_ADDRESS_SPACE + (1 << 30), np.uint8)\n"
            "    except MemoryError:\n"
            "        print('refused')\n"
            "np.ones(1 << 20, np.uint8)\n"  # the limit is lifted after
            "print('lifted')\n")
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                           cwd=Path(__file__).parent)
    assert child.returncode == 0 and child.stdout.split() == ["refused", "lifted"], child.stderr[-2000:]


def test_gguf_images_encode_back_to_their_files(seeds):
    for seed in seeds.gguf:
        assert seed.image.encode()[0] == seed.path.read_bytes(), seed.name


# -- what the fuzzer found, kept as fixed cases ------------------------------------------------------

def _config(seed, **fields) -> bytes:
    return json.dumps({**seed.config, **fields}, allow_nan=True).encode()


def _header(seed, edit) -> bytes:
    header = json.loads(json.dumps(seed.header))
    edit(header)
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + seed.data


EMBED = "model.embed_tokens.weight"
CONFIG, WEIGHTS, INDEX = "config.json", "model.safetensors", "model.safetensors.index.json"
FOUND = {  # name -> (seed, file of its folder replaced, the file's bytes from the seed, message)
    "config: model_type a list": ("gemma-mqa", CONFIG, lambda s: _config(s, model_type=["gemma"]), "unknown model_type"),
    "config: text_config.model_type a list": (
        "gemma3", CONFIG, lambda s: json.dumps({"model_type": "gemma3", "text_config": {"model_type": []}}).encode(),
        "does not belong"),
    "config: layer_types holding an object": (
        "gemma3", CONFIG, lambda s: _config(s, layer_types=[{}] * 6), "unsupported layer_types"),
    "config: hidden_act a list": ("gemma-mqa", CONFIG, lambda s: _config(s, hidden_act=[]), "unsupported activation"),
    "config: a number of 5000 digits": (
        "gemma-mqa", CONFIG, lambda s: _config(s)[:-1] + b', "x": ' + b"1" * 5000 + b"}", "out of range"),
    "config: JSON nested 100000 deep": ("gemma-mqa", CONFIG, lambda s: b"[" * 100_000, "not readable JSON"),
    "config: per_layer_config key '\u00b2'": (
        "gemma4-shared", CONFIG, lambda s: _config(s, per_layer_config={"\u00b2": {"head_dim": 64}}),
        "not a layer index"),
    "config: per_layer_config key of 5000 digits": (
        "gemma4-shared", CONFIG, lambda s: _config(s, per_layer_config={"0" * 4999 + "2": {"head_dim": 64}}),
        "not a layer index"),
    "config: per_layer_config head_dim a list": (
        "gemma4-shared", CONFIG, lambda s: _config(s, per_layer_config={"2": {"head_dim": [64]}}), "is not an integer"),
    "config: num_hidden_layers 2^40": (
        "gemma-mqa", CONFIG, lambda s: _config(s, num_hidden_layers=2**40), "not a supported layer count"),
    "config: unknown field named with a newline": (
        "gemma-mqa", CONFIG, lambda s: _config(s, **{"\nBF16": 1}), "unknown or unsupported config field"),
    "config: rope_theta 0": (
        "gemma-mqa", CONFIG, lambda s: _config(s, rope_parameters={"rope_theta": 0}), "rope_theta must be a positive"),
    "config: rms_norm_eps NaN": ("gemma-mqa", CONFIG, lambda s: _config(s, rms_norm_eps=float("nan")),
                                 "rms_norm_eps must be"),
    "config: sliding_window -4": ("gemma2", CONFIG, lambda s: _config(s, sliding_window=-4),
                                  "sliding_window must be a positive number"),
    "config: bos_token_id outside the vocabulary": ("gemma-mqa", CONFIG, lambda s: _config(s, bos_token_id=10**6),
                                                    "outside the vocabulary"),
    "safetensors: offsets as strings": (
        "gemma-mqa", WEIGHTS, lambda s: _header(s, lambda h: h[EMBED].update(data_offsets=["0", "73728"])),
        "malformed header entry"),
    "safetensors: dtype a list": (
        "gemma-mqa", WEIGHTS, lambda s: _header(s, lambda h: h[EMBED].update(dtype=["F32"])), "malformed header entry"),
    "safetensors: shape of strings": (
        "gemma-mqa", WEIGHTS, lambda s: _header(s, lambda h: h[EMBED].update(shape="48")), "malformed header entry"),
    "safetensors: shape wrapping to 0 in int64": (
        "gemma-mqa", WEIGHTS, lambda s: _header(s, lambda h: h[EMBED].update(shape=[2**32, 2**32], data_offsets=[0, 0])),
        "inconsistent offsets"),
    "safetensors: overlapping tensors": (
        "gemma-mqa", WEIGHTS, lambda s: _header(s, lambda h: h["model.norm.weight"].update(
            data_offsets=[h[EMBED]["data_offsets"][0], h[EMBED]["data_offsets"][0] + 192])), "overlap"),
    "safetensors index: shard names that are not strings": (
        "gemma-mqa", INDEX, lambda s: json.dumps({"weight_map": {EMBED: 5}}).encode(), "weight_map"),
}


@pytest.mark.parametrize("name", FOUND)
def test_found_case_ends_in_its_error(name, seeds, tmp_path):
    seed_name, file, make, message = FOUND[name]
    seed = next(s for s in seeds.hf if s.name == seed_name)
    with time_limit(CASE_SECONDS), pytest.raises(documented_errors(), match=message):
        open_fully(hf_case_folder(tmp_path / "case", seed, {file: make(seed)}))


BLOB = set_kv(b"general.blob", ARRAY, (UINT8, [1]))  # the 4th metadata array, after the tokenizer's 3
FOUND_GGUF = {  # name -> (seed, edits, lie, message)
    "a uint8 array claiming 2^40 items (the reader looped forever)": (
        "gemma3", [BLOB], ("array length", 3, 2**40), "claims 1099511627776 items"),
    "block_count 2^32 (a per-layer list of 2^32)": (
        "gemma3", [set_kv(b"gemma3.block_count", UINT64, 2**32)], None, "not a supported layer count"),
    "head_count 0 with 62 layers (hidden / heads)": (
        "gemma3", [set_kv(b"gemma3.block_count", UINT32, 62), set_kv(b"gemma3.attention.head_count", UINT32, 0)],
        None, "head_count = 0 must be positive"),
    "a tensor name with 5000 digits (int() of them)": (
        "gemma3", [set_tensor(b"blk.0.attn_norm.weight", name=b"blk." + b"1" * 5000 + b".attn_norm.weight")], None,
        "unexpected tensor"),
    "add_space_prefix of invalid UTF-8": (
        "gemma3", [set_kv(b"tokenizer.ggml.add_space_prefix", STRING, b"\xff")], None, "add_space_prefix"),
    "rope_freqs of a type that cannot be dequantized": (
        "gemma4", [set_tensor(b"rope_freqs.weight", type=24)], None, "type I8, which cannot be dequantized"),
}


@pytest.mark.parametrize("name", FOUND_GGUF)
def test_found_gguf_case_ends_in_its_error(name, seeds, tmp_path):
    seed_name, edits, lie, message = FOUND_GGUF[name]
    path = edited_gguf(next(s for s in seeds.gguf if s.name == seed_name), tmp_path / "case.gguf", *edits, lie=lie)
    with time_limit(CASE_SECONDS), pytest.raises(documented_errors(), match=message):
        open_fully(path)


# -- allocations, paths, the CLI ------------------------------------------------------------------------

def test_claimed_allocations_are_refused_by_counting(seeds, tmp_path):
    """Each header claims terabytes or a count in the billions; opened in a worker whose address
    space is capped after its imports, each must end in a documented error with no real allocation."""
    cases = allocation_cases(seeds, tmp_path / "cases")
    warm_up = next(s for s in seeds.gguf if s.name == "gemma3").path
    done = subprocess.run([sys.executable, str(Path(__file__).parent / "fuzz_cases.py"), str(warm_up),
                           *map(str, cases.values())], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    names = {str(path): name for name, path in cases.items()}
    results = {names[path]: result for path, result in report["outcomes"].items()}
    assert results.pop(HONEST_ARRAY) == "ok"
    assert all(r in ("CheckpointError", "ConfigError") for r in results.values()), results
    # Nothing was allocated to speak of: the peak is what the warm-up open of a tiny file needed.
    assert report["peak_rss_mib"] < report["before_cap"]["peak_rss_mib"] + 64, report


def test_index_names_no_file_outside_the_folder(seeds, tmp_path):
    """A weight_map naming a real shard outside the folder (relative or absolute) is refused."""
    seed = next(s for s in seeds.hf if s.name == "gemma-mqa")
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes((seed.folder / "model.safetensors").read_bytes())
    for name in ("../outside.safetensors", str(outside), "..", "."):
        index = json.dumps({"weight_map": {n: name for n in seed.header if n != "__metadata__"}}).encode()
        folder = write_folder(tmp_path / "case", {"config.json": seed.folder / "config.json",
                                                  "model.safetensors.index.json": index})
        with pytest.raises(CheckpointError, match="is missing"):
            open_fully(folder)


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def _junk_that_still_parses(seeds, kind: str) -> st.SearchStrategy:
    """(seed, bit flips in the weights' data (never in a header), junk under the config fields that do
    not affect inference)."""
    seed = next(s for s in (seeds.gguf if kind == "gguf" else seeds.hf) if s.name in ("gemma3", "gemma-mqa"))
    size = len(seed.image.data if kind == "gguf" else seed.data)
    flips = st.lists(st.tuples(st.integers(1, size), st.integers(0, 7)), min_size=1, max_size=8)
    junk = st.dictionaries(st.sampled_from(["architectures", "torch_dtype", "id2label", "_name_or_path", "use_cache"]),
                           st.one_of(st.none(), st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=2)),
                           max_size=3 if kind == "hf" else 0)
    return st.tuples(st.just(seed), flips, junk)


@pytest.mark.parametrize("kind", ["gguf", "hf"])
def test_inputs_that_still_parse_export_to_a_checked_artifact_inside_out(kind, seeds, tmp_path):
    """A fuzzed input that opens goes on to a full export: the model passes onnx.checker, the
    artifact loads, and nothing is written outside OUT."""
    @settings(FUZZ, max_examples=1)
    @given(case=_junk_that_still_parses(seeds, kind))
    def check(case):
        seed, flips, junk = case
        weights = bytearray((seed.path if kind == "gguf" else seed.folder / "model.safetensors").read_bytes())
        for back, bit in flips:  # counted from the end: the data follows the header
            weights[-back] ^= 1 << bit
        if kind == "gguf":
            source = write_folder(tmp_path / "source", {"model.gguf": bytes(weights)}) / "model.gguf"
        else:
            config = json.dumps({**seed.config, **junk}).encode()
            source = write_folder(tmp_path / "source", {"config.json": config, "model.safetensors": bytes(weights)})
        assert outcome(lambda: open_fully(source)) == "ok"
        out = tmp_path / "out"
        before = _files(tmp_path)
        export(source, out, ExportOptions(target="generic", max_seq_len=32))
        assert {k: v for k, v in _files(tmp_path).items() if not k.startswith("out/")} == before
        onnx.checker.check_model(str(out / "model.onnx"))
        assert gemma_runtime.load(out, threads=1).manifest.family == seed.name.split("-")[0]  # gemma3, gemma

    check()


@pytest.mark.parametrize("case, message", [
    ("corrupt config", "not readable JSON"),
    ("truncated safetensors", "truncated"),
    ("lying GGUF", "claims 1099511627776 items"),
])
def test_cli_prints_one_line_and_exits_2(case, message, seeds, tmp_path, capsys):
    seed = next(s for s in seeds.hf if s.name == "gemma-mqa")
    if case == "corrupt config":
        source = hf_case_folder(tmp_path / "case", seed, {"config.json": b'{"model_type": "gemma", ' + b"[" * 100_000})
    elif case == "truncated safetensors":
        blob = (seed.folder / "model.safetensors").read_bytes()
        source = hf_case_folder(tmp_path / "case", seed, {"model.safetensors": blob[:len(blob) // 2]})
    else:
        source = edited_gguf(next(s for s in seeds.gguf if s.name == "gemma3"), tmp_path / "case.gguf", BLOB,
                             lie=("array length", 3, 2**40))
    out = tmp_path / "out"
    with time_limit(CASE_SECONDS):
        code, _, err = cli(capsys, "export", source, "-o", out)
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last and "Traceback" not in err, err
    assert not out.exists()
