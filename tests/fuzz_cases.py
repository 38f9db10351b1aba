"""Fuzz cases of the checkpoint parsers (issue 14), shared by tests/test_fuzz.py (bounded, in CI)
and benchmarks/fuzz.py (longer runs).

Every case starts from a real small checkpoint written by the test helpers (tests/tiny.py's HF
folders, tests/test_gguf.py's and tests/test_gguf_gemma4.py's GGUF files) and breaks it: a
config.json with fields dropped, retyped or out of range; a safetensors header whose length prefix,
offsets, dtypes or shapes lie; a GGUF file whose counts, lengths, types or offsets lie, with
tokenizer arrays of the wrong length or type; or bytes flipped, cut and spliced (the strategies are
in tests/fuzz_strategies.py). `outcome()` is
the one check every case passes: the parser ends in a documented error (GemmaExportError, or the
runtime's RuntimeInputError for a tokenizer the runtime cannot load) or in a source, within a time
bound and an address-space bound; anything else is raised as a ParserBug.

Run as a script it is a child process of tests/test_fuzz.py, which caps only its own address space:
`fuzz` runs one target's bounded cases (see fuzz()); otherwise it is the worker of the allocation
cases, opening the files named on its command line under an RLIMIT_AS cap set after the imports and
printing the outcomes and its peak RSS as JSON.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import resource
import shutil
import signal
import struct
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz_strategies import (ARRAY, UINT8, UINT64, GGUFImage, config_files, gguf_files, mutated_checkpoints,
                             safetensors_files, sharded_folders)

HERE = Path(__file__).resolve().parent
CASE_SECONDS = 20.0  # a case that takes longer is a hang (the slowest honest one takes a fraction of a second)
FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=False,  # CI's bounded runs
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example])
CASE_ADDRESS_SPACE = 1 << 30  # bytes a case may map on top of what the process had before it
WORKER_ADDRESS_SPACE = 3 << 30  # the allocation worker's whole cap, set after its imports

# -- the check ------------------------------------------------------------------------------------


class ParserBug(Exception):
    """A parser ended in something other than a documented error: an undocumented exception, a
    hang, or an allocation the address-space cap refused."""


class _Hang(BaseException):
    """A case over its time (a BaseException: no `except Exception` in a parser can swallow it)."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raises _Hang in the main thread after `seconds` (a loop on a lying count)."""
    def hang(signum, frame):
        raise _Hang(f"still running after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def address_space_in_use() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def address_space_limit(extra: int) -> Iterator[None]:
    """Caps this process's address space at what it maps now plus `extra` (the soft limit, restored
    after): an allocation of the size a lying header claims fails with MemoryError instead of
    swapping the machine."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = address_space_in_use() + extra
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def documented_errors() -> tuple[type[BaseException], ...]:
    from gemma_export.errors import GemmaExportError
    from gemma_runtime.errors import RuntimeInputError

    return GemmaExportError, RuntimeInputError


def outcome(action: Callable[[], Any], seconds: float = CASE_SECONDS) -> str:
    """"ok", or the class name of the documented one-line error `action` raised; a ParserBug
    for anything else (the original exception chained)."""
    try:
        with time_limit(seconds):
            action()
    except documented_errors() as e:
        if len(str(e).splitlines()) != 1:  # the CLI prints it as its one error line
            raise ParserBug(f"{type(e).__name__} is not one line: {str(e)!r}") from e
        return type(e).__name__
    except _Hang as e:
        raise ParserBug(f"hang: {e}") from None
    except Exception as e:
        raise ParserBug(f"{type(e).__name__}: {e}"[:500]) from e
    return "ok"


def open_fully(path: Path) -> None:
    """What an export reads before tracing: the source (config, weight headers, every tensor's
    first row) and the tokenizer the runtime will load."""
    from gemma_export.checkpoints import open_source

    source = open_source(path)
    source.tokenizer()


# -- seeds: real small checkpoints ------------------------------------------------------------------

@dataclasses.dataclass
class HFSeed:
    name: str
    folder: Path
    config: dict
    header: dict  # the safetensors header (JSON)
    data: bytes  # the safetensors byte buffer after the header

    def _repr_pretty_(self, printer, cycle) -> None:  # hypothesis prints a failing case's seed by its name
        printer.text(f"HFSeed({self.name!r})")


@dataclasses.dataclass
class GGUFSeed:
    name: str
    path: Path
    image: GGUFImage

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(f"GGUFSeed({self.name!r})")


@dataclasses.dataclass
class Seeds:
    hf: list[HFSeed]
    gguf: list[GGUFSeed]

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text("Seeds()")

    def paths(self) -> dict:
        """Where the seeds lie, as JSON: read_seeds(**paths) reads them again (in a child process)."""
        return {"hf_folders": {s.name: str(s.folder) for s in self.hf},
                "gguf_paths": {s.name: str(s.path) for s in self.gguf}}


HF_SEEDS = ("gemma-mqa", "gemma2", "gemma3", "gemma4-shared")
GGUF_SEEDS = ("gemma", "gemma2", "gemma3")  # test_gguf's writer, plus a gemma4 file from gemma4-shared


def write_seeds(root: Path, hf_folders: dict[str, Path] | None = None) -> Seeds:
    """The seed checkpoints under root; HF folders already written (conftest's tiny_checkpoints)
    are read from hf_folders instead of written again."""
    from test_gguf import write_gguf
    from test_gguf_gemma4 import write_gemma4_gguf
    from tiny import write_checkpoint

    hf_folders = dict(hf_folders or {})
    for name in HF_SEEDS:
        if name not in hf_folders:
            hf_folders[name] = write_checkpoint(name, root / "hf" / name)
    (root / "gguf").mkdir(parents=True, exist_ok=True)
    paths = {}
    for arch in GGUF_SEEDS:
        paths[arch] = root / "gguf" / f"{arch}.gguf"
        write_gguf(paths[arch], arch)
    paths["gemma4"] = root / "gguf" / "gemma4.gguf"
    write_gemma4_gguf(hf_folders["gemma4-shared"], paths["gemma4"])
    return read_seeds(hf_folders, paths)


def read_seeds(hf_folders: dict[str, Path], gguf_paths: dict[str, Path]) -> Seeds:
    """The seeds from checkpoints already written (by write_seeds, in this or a parent process)."""
    hf = []
    for name in HF_SEEDS:
        folder = Path(hf_folders[name])
        blob = (folder / "model.safetensors").read_bytes()
        (n,) = struct.unpack("<Q", blob[:8])
        hf.append(HFSeed(name, folder, json.loads((folder / "config.json").read_text()),
                         json.loads(blob[8:8 + n]), blob[8 + n:]))
    return Seeds(hf, [GGUFSeed(name, Path(path), GGUFImage.read(Path(path))) for name, path in gguf_paths.items()])


def write_folder(folder: Path, files: dict[str, bytes | Path]) -> Path:
    """folder holding exactly `files` (bytes, or a path to copy)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for name, content in files.items():
        if isinstance(content, Path):
            shutil.copyfile(content, folder / name)
        else:
            (folder / name).write_bytes(content)
    return folder


# -- targets: a case's files written and opened ---------------------------------------------------

def hf_case_folder(folder: Path, seed: HFSeed, replaced: dict[str, bytes]) -> Path:
    """An HF folder of the seed's config.json and model.safetensors, some replaced (or others added)."""
    files: dict[str, bytes | Path] = {name: seed.folder / name for name in ("config.json", "model.safetensors")}
    return write_folder(folder, {**files, **replaced})


def edited_gguf(seed: GGUFSeed, path: Path, *edits: Callable[[GGUFImage], None],
                lie: tuple[str, int, int] | None = None) -> Path:
    """The seed's file with `edits` made to its image, then a `lie` (field kind, which occurrence of
    it, value) written over the encoded field."""
    image = copy.deepcopy(seed.image)
    for edit in edits:
        edit(image)
    data, fields = image.encode()
    if lie:
        kind, which, value = lie
        offset, width, _ = [f for f in fields if f[2] == kind][which]
        data = data[:offset] + value.to_bytes(width, "little") + data[offset + width:]
    path.write_bytes(data)
    return path


def set_kv(key: bytes, kind: int, value: Any) -> Callable[[GGUFImage], None]:
    """An edit: metadata `key` set (moved to the end of the metadata)."""
    def edit(image: GGUFImage) -> None:
        image.kvs = [kv for kv in image.kvs if kv[0] != key] + [[key, kind, value]]
    return edit


def set_tensor(tensor_name: bytes, **fields: Any) -> Callable[[GGUFImage], None]:
    """An edit: a tensor info given another name, dims, type or offset."""
    def edit(image: GGUFImage) -> None:
        tensor = next(t for t in image.tensors if t[0] == tensor_name)
        for field, value in fields.items():
            tensor[("name", "dims", "type", "offset").index(field)] = value
    return edit


TARGETS = ("config", "safetensors", "sharded", "gguf", "mutation")


def target_strategy(target: str, seeds: Seeds) -> st.SearchStrategy:
    return {"config": config_files, "safetensors": safetensors_files, "sharded": sharded_folders,
            "gguf": gguf_files, "mutation": mutated_checkpoints}[target](seeds)


def run_case(target: str, case: Any, work: Path) -> str:
    """Writes the case under work and opens it as an export would: its outcome (see outcome())."""
    if target == "config":
        seed, data = case
        path = hf_case_folder(work / "case", seed, {"config.json": data})
    elif target == "safetensors":
        seed, data = case
        path = hf_case_folder(work / "case", seed, {"model.safetensors": data})
    elif target == "sharded":  # a real shard beside the folder, for the index to name
        seed, files = case
        (work / "outside.safetensors").write_bytes(files["model-00001-of-00002.safetensors"])
        path = write_folder(work / "case", files)
    elif target == "gguf":
        path = work / "case.gguf"
        path.write_bytes(case)
    else:
        kind, seed, data = case
        if kind == "gguf":
            path = work / "case.gguf"
            path.write_bytes(data)
        else:
            path = hf_case_folder(work / "case", seed, {kind: data})
    with address_space_limit(CASE_ADDRESS_SPACE):
        result = outcome(lambda: open_fully(path))
    if target == "sharded" and result == "ok":
        shards = set(json.loads(case[1]["model.safetensors.index.json"])["weight_map"].values())
        if not shards <= set(case[1]):
            raise ParserBug(f"opened shards named outside the folder: {sorted(shards - set(case[1]))}")
    return result


def fuzz(target: str, seeds: Seeds, work: Path, examples: int) -> dict[str, int]:
    """CI's bounded run of one target: `examples` derandomized cases; outcome -> count (a ParserBug
    raised, with hypothesis's shrunk case printed). Run it in a child process (`fuzz` below): the
    address-space cap of run_case binds every thread of the process, and threads that earlier tests
    left (OpenVINO's pool) crash when their allocations fail."""
    for seed in seeds.hf + seeds.gguf:  # whatever the parsers import lazily is imported before any cap
        open_fully(seed.folder if isinstance(seed, HFSeed) else seed.path)
    outcomes: Counter = Counter()

    @settings(FUZZ, max_examples=examples)
    @given(case=target_strategy(target, seeds))
    def check(case):
        outcomes[run_case(target, case, work)] += 1

    check()
    return dict(outcomes)


# -- allocation cases: headers claiming sizes far beyond the file ---------------------------------

HONEST_ARRAY = "gguf honest uint8 array of 2^20 items"


def allocation_cases(seeds: Seeds, root: Path) -> dict[str, Path]:
    """name -> a checkpoint whose header claims an allocation of terabytes or a count in the
    billions (each must be refused by counting before anything is allocated), and HONEST_ARRAY, a
    file that holds what it claims (it opens, and costs no more than its megabyte)."""
    root.mkdir(parents=True, exist_ok=True)
    gemma3 = next(s for s in seeds.gguf if s.name == "gemma3")
    gemma4 = next(s for s in seeds.gguf if s.name == "gemma4")
    blob = set_kv(b"general.blob", ARRAY, (UINT8, [1, 2, 3]))  # the 4th array, after the tokenizer's 3
    gguf = {
        "gguf kv count 2^60": (gemma3, [], ("kv count", 0, 2**60)),
        "gguf tensor count 2^60": (gemma3, [], ("tensor count", 0, 2**60)),
        "gguf key length 2^62": (gemma3, [], ("key length", 3, 2**62)),
        "gguf string length 2^62": (gemma3, [], ("string length", 0, 2**62)),
        "gguf uint8 array of 2^40": (gemma3, [blob], ("array length", 3, 2**40)),
        "gguf token array of 2^32": (gemma3, [], ("array length", 0, 2**32)),
        "gguf nested arrays of 2^40": (gemma3, [set_kv(b"general.nest", ARRAY, (ARRAY, [(UINT8, [1])]))],
                                       ("array length", 4, 2**40)),
        "gguf tensor dims count 2^32-1": (gemma3, [], ("tensor dims count", 0, 2**32 - 1)),
        "gguf tensor of 2^80 elements": (gemma3, [set_tensor(b"output_norm.weight", dims=[2**20] * 4)], None),
        "gguf tensor of 2^46 rows": (gemma3, [set_tensor(b"token_embd.weight", dims=[64, 2**46])], None),
        "gguf tensor offset 2^63": (gemma3, [], ("tensor offset", 1, 2**63)),
        "gguf block_count 2^40": (gemma3, [set_kv(b"gemma3.block_count", UINT64, 2**40)], None),
        "gguf gemma4 block_count 2^40": (gemma4, [set_kv(b"gemma4.block_count", UINT64, 2**40)], None),
        HONEST_ARRAY: (gemma3, [set_kv(b"general.blob", ARRAY, (UINT8, [7] * 2**20))], None),
    }
    cases = {name: edited_gguf(seed, root / f"{name}.gguf", *edits, lie=lie) for name, (seed, edits, lie) in gguf.items()}

    hf = next(s for s in seeds.hf if s.name == "gemma-mqa")
    embed = "model.embed_tokens.weight"
    headers = {  # name -> (header, claimed header length, config fields)
        "safetensors header length 2^63": (hf.header, 2**63, {}),
        "safetensors shape 2^40 x 2^40": ({**hf.header, embed: {**hf.header[embed], "shape": [2**40, 2**40]}}, None, {}),
        "safetensors shape wrapping to 0": (
            {**hf.header, embed: {"dtype": "F32", "shape": [2**32, 2**32], "data_offsets": [0, 0]}}, None, {}),
        "config num_hidden_layers 2^40": (hf.header, None, {"num_hidden_layers": 2**40}),
        "config num_hidden_layers 10^6": (hf.header, None, {"num_hidden_layers": 10**6}),
    }
    for name, (header, length, config) in headers.items():
        text = json.dumps(header).encode()
        files = {"model.safetensors": struct.pack("<Q", len(text) if length is None else length) + text + hf.data,
                 "config.json": json.dumps({**hf.config, **config}).encode()}
        cases[name] = hf_case_folder(root / name.replace(" ", "-"), hf, files)
    return cases


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(paths: list[str], warm_up: str, address_space: int = WORKER_ADDRESS_SPACE) -> dict:
    """Opens each path under an RLIMIT_AS of `address_space` (after the imports and one honest open,
    which map what any open needs); returns outcomes (a ParserBug's message where one was raised)."""
    open_fully(Path(warm_up))
    before = {"address_space_mib": address_space_in_use() / 2**20, "peak_rss_mib": peak_rss_mib()}
    resource.setrlimit(resource.RLIMIT_AS, (address_space, resource.getrlimit(resource.RLIMIT_AS)[1]))
    outcomes = {}
    for path in paths:
        try:
            outcomes[path] = outcome(lambda: open_fully(Path(path)))
        except ParserBug as e:
            outcomes[path] = f"BUG {e}"
    return {"outcomes": outcomes, "rlimit_as_mib": address_space / 2**20, "before_cap": before,
            "peak_rss_mib": peak_rss_mib()}


if __name__ == "__main__":
    # fuzz_cases.py fuzz TARGET EXAMPLES WORK SEEDS_JSON | fuzz_cases.py WARM_UP PATH...
    sys.path.insert(0, str(HERE))
    if sys.argv[1] == "fuzz":
        target, examples, work, paths = sys.argv[2:]
        print(json.dumps(fuzz(target, read_seeds(**json.loads(paths)), Path(work), int(examples))))
    else:
        print(json.dumps(worker(sys.argv[2:], sys.argv[1])))
