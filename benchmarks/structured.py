"""Structured outputs' cost (issue 24): the grammar's work per token (llguidance's mask over the
vocabulary, applied to the logits, and its commit of the sampled token: runtime/structured_output.py)
against a decode step of the engine, on a tiny random model and on the real Gemma 3 270M, at batch
1 and 16; and llguidance against xgrammar on the 270M's vocabulary (262144 pieces): mask time per
token replaying the same outputs, compile time, and which JSON Schema keywords each enforces.

The engine runs B requests of one schema (or B free ones) step by step; a step's time is taken
while every row is decoding (the median step). The grammar's time is summed per step from the
constraint's own calls (its mean per step, and per token), and "grammar / step" is that mean
against the free decode step (goal: < 10%).

xgrammar needs torch (it imports it), so it runs in another Python given by --xgrammar-python (one
with xgrammar installed); without it the comparison is skipped.

Run: .venv/bin/python benchmarks/structured.py [--real ARTIFACT] [--batches 1 16] [--new-tokens 48]
         [--xgrammar-python PATH]
Writes benchmarks/results/structured.json and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))  # the tiny model and tokenizer the tests build
from decode import WORK  # noqa: E402

from gemma_export.bench import format_table  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "email": {"type": "string", "format": "email"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
        "address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                     "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                    "required": ["city", "zip"], "additionalProperties": False},
        "role": {"enum": ["admin", "user", "guest"]},
    },
    "required": ["name", "age", "email", "tags", "address", "role"],
    "additionalProperties": False,
}
SCHEMAS = {"json_schema": PERSON, "json_object": {"type": "object"}}
PROMPT = ("<start_of_turn>user\nDescribe a fictional person as JSON with name, age, email, tags, "
          "address and role.<end_of_turn>\n<start_of_turn>model\n")


def _field(**keywords) -> dict:
    return {"type": "object", "properties": {"x": keywords}, "required": ["x"]}


# keyword -> (schema, a value of it, a value that breaks that keyword alone): a library that takes
# the schema but lets the second value through ignores the keyword
COVERAGE = {
    "enum, const": (_field(enum=["a", 1, None]), {"x": 1}, {"x": "b"}),
    "string pattern": (_field(type="string", pattern="^[a-z]+[0-9]?$"), {"x": "ab1"}, {"x": "A"}),
    "string format (date-time)": (_field(type="string", format="date-time"), {"x": "2026-01-02T03:04:05Z"},
                                  {"x": "yesterday"}),
    "minLength / maxLength": (_field(type="string", minLength=1, maxLength=5), {"x": "abc"}, {"x": "abcdef"}),
    "minimum / maximum (integer)": (_field(type="integer", minimum=-3, maximum=300), {"x": 12}, {"x": 301}),
    "exclusiveMinimum (number)": (_field(type="number", exclusiveMinimum=0), {"x": 0.5}, {"x": 0}),
    "multipleOf": (_field(type="integer", multipleOf=3), {"x": 9}, {"x": 4}),
    "minItems / maxItems": (_field(type="array", items={"type": "integer"}, minItems=1, maxItems=3), {"x": [1]},
                            {"x": [1, 2, 3, 4]}),
    "prefixItems": (_field(type="array", prefixItems=[{"type": "integer"}, {"type": "string"}]), {"x": [1, "a"]},
                    {"x": ["a", 1]}),
    "uniqueItems": (_field(type="array", items={"type": "integer"}, uniqueItems=True), {"x": [1, 2]}, {"x": [1, 1]}),
    "contains": (_field(type="array", contains={"type": "integer"}), {"x": ["a", 1]}, {"x": ["a"]}),
    "anyOf": (_field(anyOf=[{"type": "integer"}, {"type": "string"}]), {"x": "a"}, {"x": True}),
    "oneOf": (_field(oneOf=[{"type": "integer"}, {"type": "string"}]), {"x": 1}, {"x": True}),
    "allOf": (_field(allOf=[{"type": "object", "properties": {"a": {"type": "integer"}}}, {"required": ["a"]}]),
              {"x": {"a": 1}}, {"x": {}}),
    "type list (nullable)": (_field(type=["string", "null"]), {"x": None}, {"x": 1}),
    "$ref / $defs": ({"$defs": {"n": {"type": "integer"}}, "type": "object", "properties": {"x": {"$ref": "#/$defs/n"}},
                      "required": ["x"]}, {"x": 1}, {"x": "a"}),
    "recursive $ref": ({"$defs": {"t": {"type": "object", "properties": {"c": {"type": "array",
                                                                               "items": {"$ref": "#/$defs/t"}}}}},
                        "$ref": "#/$defs/t"}, {"c": [{"c": []}]}, {"c": [{"c": "no"}]}),
    "additionalProperties (schema)": (_field(type="object", additionalProperties={"type": "integer"}),
                                      {"x": {"k": 1}}, {"x": {"k": "a"}}),
    "patternProperties": (_field(type="object", patternProperties={"^a": {"type": "integer"}}), {"x": {"ab": 1}},
                          {"x": {"ab": "s"}}),
    "minProperties / maxProperties": (_field(type="object", minProperties=1, maxProperties=2), {"x": {"a": 1}},
                                      {"x": {}}),
    "propertyNames": (_field(type="object", propertyNames={"pattern": "^a"}), {"x": {"a": 1}}, {"x": {"b": 1}}),
    "not": (_field(**{"not": {"type": "string"}}), {"x": 1}, {"x": "s"}),
    "if / then / else": (_field(**{"if": {"type": "integer"}, "then": {"minimum": 0}, "else": {"type": "string"}}),
                         {"x": 1}, {"x": -1}),
    "dependentRequired": (_field(type="object", dependentRequired={"a": ["b"]}), {"x": {"a": 1, "b": 2}},
                          {"x": {"a": 1}}),
}


# -- the models ----------------------------------------------------------------------------------
def tiny_artifact() -> Path:
    """A tiny random Gemma 3 (the tests' config) with a Gemma-1-like SentencePiece vocabulary of 384."""
    from gemma_export.export import export
    from gemma_export.targets import ExportOptions
    from test_chat_tokens import gemma1_like_tokenizer
    from tiny import write_checkpoint

    out = WORK / "structured" / "tiny"
    if not (out / "manifest.json").is_file():
        folder = write_checkpoint("gemma3", WORK / "structured" / "tiny-ckpt")
        (folder / "tokenizer.model").write_bytes(gemma1_like_tokenizer())
        export(folder, out, ExportOptions(target="ort-cpu", max_seq_len=256))
    return out


def real_artifact(given: Path | None) -> Path:
    """The real Gemma 3 270M as an ort-cpu artifact (exported from the embedded default when not given)."""
    if given is not None:
        return given
    from gemma_export.export import export
    from gemma_export.targets import ExportOptions

    out = WORK / "structured" / "gemma3-270m"
    if not (out / "manifest.json").is_file():
        print(f"exporting the real 270M to {out} ...", flush=True)
        export(None, out, ExportOptions(target="ort-cpu", max_seq_len=1024))
    return out


# -- the engine with and without grammars ----------------------------------------------------------
class GrammarClock:
    """Times every call of the constraints' mask and accept (the grammar's work in a step)."""

    def __init__(self):
        from gemma_runtime import structured_output

        self.seconds = 0.0
        self.masks = 0
        cls = structured_output.JsonConstraint
        self._originals = cls.mask, cls.accept
        mask, accept = self._originals

        def timed_mask(constraint, logits):
            start = time.perf_counter()
            try:
                return mask(constraint, logits)
            finally:
                self.seconds += time.perf_counter() - start
                self.masks += 1

        def timed_accept(constraint, token):
            start = time.perf_counter()
            try:
                return accept(constraint, token)
            finally:
                self.seconds += time.perf_counter() - start

        cls.mask, cls.accept = timed_mask, timed_accept

    def close(self) -> None:
        from gemma_runtime import structured_output

        structured_output.JsonConstraint.mask, structured_output.JsonConstraint.accept = self._originals


def engine_run(engine, batch: int, new_tokens: int, schema: dict | None, seed: int) -> dict:
    """B requests of one schema (None: free text, its stop ids barred so that every row runs
    new_tokens) to the end; the median decode step (every row decoding), and per step the grammar's
    seconds and masks; the outputs' token ids."""
    prompt = engine.model.tokenizer.encode(PROMPT)
    bar = None if schema is not None else {i: -100.0 for i in engine.model.stop_ids}
    requests = [engine.submit(engine.request(prompt, new_tokens, temperature=1.0, seed=seed + i, json_schema=schema,
                                             logit_bias=bar)) for i in range(batch)]
    clock = GrammarClock()
    steps, grammar, masks = [], [], []
    try:
        while any(r.finish_reason is None for r in requests):
            decoding = all(r._fed >= len(r.prompt) and r.finish_reason is None for r in requests)
            spent, counted = clock.seconds, clock.masks
            start = time.perf_counter()
            engine.step()
            if decoding:
                steps.append(time.perf_counter() - start)
                grammar.append(clock.seconds - spent)
                masks.append(clock.masks - counted)
    finally:
        clock.close()
    # the decode step's median; the grammar's mean (its rare slow masks count in full)
    return {"step_ms": 1e3 * statistics.median(steps) if steps else None,  # None: it ended before all decoded
            "grammar_ms": 1e3 * statistics.mean(grammar) if grammar else None,
            "per_token_ms": 1e3 * sum(grammar) / sum(masks) if sum(masks) else None, "decode_steps": len(steps),
            "outputs": [r.tokens for r in requests], "finish": [r.finish_reason for r in requests]}


def measure_model(name: str, artifact: Path, batches: list[int], new_tokens: int) -> list[dict]:
    import gemma_runtime
    from gemma_runtime.engine import Engine

    model = gemma_runtime.load(artifact)
    rows = []
    for batch in batches:
        engine = Engine(model, max_batch=batch, max_queue=batch)
        start = time.perf_counter()
        engine.json_grammars()
        build_s = time.perf_counter() - start
        engine_run(engine, batch, 4, None, 0)  # warm-up
        free = engine_run(engine, batch, new_tokens, None, 0)
        for kind, schema in SCHEMAS.items():
            run = engine_run(engine, batch, new_tokens, schema, 0)
            texts = [model.tokenizer.decode(t) for t in run["outputs"]]
            valid = sum(f == "stop" and _parses(t) for f, t in zip(run["finish"], texts))
            rows.append({"name": f"{name} b{batch} {kind}", "model": name, "batch": batch, "format": kind,
                         "decode_step_ms": free["step_ms"], "constrained_step_ms": run["step_ms"],
                         "grammar_step_ms": run["grammar_ms"], "per_token_ms": run["per_token_ms"],
                         "share": None if run["grammar_ms"] is None else run["grammar_ms"] / free["step_ms"],
                         "view_build_s": build_s, "decode_steps": run["decode_steps"],
                         "finished_valid": f"{valid}/{batch}", "example": texts[0][:160]})
        model.engine = None  # the next batch size gets its own engine
    return rows


def _parses(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


# -- llguidance against xgrammar -------------------------------------------------------------------
def token_view(model) -> dict:
    """What xgrammar gets of the tokenizer, as llguidance does (structured_output._TokenView): each
    id's bytes (b"" for a marker piece, which xgrammar takes as special) and the stop ids."""
    vocab = model.manifest.config["vocab_size"]
    markers = model.tokenizer.marker_ids()
    examples = [json.dumps(value) for _, *values in COVERAGE.values() for value in values]
    return {"tokens": [b"" if i in markers else model.tokenizer.token_bytes(i) for i in range(vocab)],
            "stops": sorted(model.stop_ids),
            "encoded": {text: model.tokenizer.encode(text, add_bos=False) for text in examples}}


def llguidance_side(model, traces: dict[str, list[list[int]]]) -> dict:
    """The runtime's own grammars (a fresh view, the cache's compile and copies)."""
    from gemma_runtime.structured_output import JsonGrammars, UnsupportedSchema

    start = time.perf_counter()
    grammars = JsonGrammars(model.tokenizer, model.manifest.config["vocab_size"], model.stop_ids)
    out = {"view_build_s": time.perf_counter() - start}

    def compile_(schema):
        try:
            return grammars.constraint(schema)._matcher
        except UnsupportedSchema:
            return None

    bits = np.empty((grammars.vocab_size + 31) // 32, np.int32)
    out.update(replay(compile_, lambda m: m.unsafe_compute_mask_ptr(bits.ctypes.data, bits.nbytes),
                      lambda m, t: m.consume_token(t), traces, lambda text: model.tokenizer.encode(text, add_bos=False),
                      min(model.stop_ids)))
    return out


def xgrammar_side(view: dict, traces: dict[str, list[list[int]]]) -> dict:
    import xgrammar

    start = time.perf_counter()
    info = xgrammar.TokenizerInfo(view["tokens"], xgrammar.VocabType.RAW, vocab_size=len(view["tokens"]),
                                  stop_token_ids=view["stops"])
    compiler = xgrammar.GrammarCompiler(info)
    out = {"view_build_s": time.perf_counter() - start}

    def compile_(schema):
        try:
            return xgrammar.GrammarMatcher(compiler.compile_json_schema(json.dumps(schema), any_whitespace=False,
                                                                        separators=(", ", ": ")))
        except Exception:  # noqa: BLE001 - each unsupported keyword raises its own type
            return None

    bits = xgrammar.allocate_token_bitmask(1, len(view["tokens"])).numpy()
    out.update(replay(compile_, lambda m: m.fill_next_token_bitmask(bits), lambda m, t: m.accept_token(t), traces,
                      lambda text: view["encoded"][text], view["stops"][0]))
    return out


def replay(compile_, mask, accept, traces: dict[str, list[list[int]]], encode, stop: int) -> dict:
    """Compile time of each schema (the first), mask time per token replaying the traces (each on
    a matcher of its own), and for each keyword whether the library enforces it ("yes": the
    breaking value refused, the good one taken), takes the schema but lets the breaking value
    through ("ignored"), refuses both values ("refuses valid") or refuses the schema ("refused").
    encode: text -> token ids."""
    out = {"compile_ms": {}, "per_token_ms": {}, "coverage": {}}
    for kind, schema in SCHEMAS.items():
        start = time.perf_counter()
        compile_(schema)
        out["compile_ms"][kind] = 1e3 * (time.perf_counter() - start)
        spent = count = 0
        for trace in traces[kind]:
            matcher = compile_(schema)
            for token in trace:
                start = time.perf_counter()
                mask(matcher)
                accept(matcher, token)
                spent += time.perf_counter() - start
                count += 1
        out["per_token_ms"][kind] = 1e3 * spent / max(1, count)
    def takes(schema, value) -> bool:
        matcher = compile_(schema)
        return all(accept(matcher, t) for t in encode(json.dumps(value))) and accept(matcher, stop)

    for feature, (schema, good, bad) in COVERAGE.items():
        if compile_(schema) is None:
            out["coverage"][feature] = "refused"
        else:
            out["coverage"][feature] = ("ignored" if takes(schema, bad) else "yes" if takes(schema, good)
                                        else "refuses valid")
    return out


def compare(model, traces: dict[str, list[list[int]]], xgrammar_python: str | None) -> dict:
    results = {"llguidance": llguidance_side(model, traces)}
    if xgrammar_python:
        view = token_view(model)
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "view.pickle"
            data.write_bytes(pickle.dumps((view, traces)))
            proc = subprocess.run([xgrammar_python, __file__, "--xgrammar-worker", str(data)], capture_output=True,
                                  text=True)
            if proc.returncode != 0:
                results["xgrammar"] = {"error": proc.stderr.strip().splitlines()[-1][:300]}
            else:
                results["xgrammar"] = json.loads(proc.stdout.strip().splitlines()[-1])
    return results


def xgrammar_worker(data: Path) -> None:
    view, traces = pickle.loads(data.read_bytes())
    torch_before = "torch" in sys.modules
    start = time.perf_counter()
    import xgrammar  # noqa: F401 - its import (torch's) is part of what it costs

    imported = time.perf_counter() - start
    result = xgrammar_side(view, traces)
    result["import_s"], result["imports_torch"] = imported, not torch_before and "torch" in sys.modules
    print(json.dumps(result))


# -- main ----------------------------------------------------------------------------------------
COLUMNS = [("decode step ms", "decode_step_ms", "{:.2f}"), ("constrained step ms", "constrained_step_ms", "{:.2f}"),
           ("grammar ms/step", "grammar_step_ms", "{:.3f}"), ("grammar ms/token", "per_token_ms", "{:.3f}"),
           ("grammar / step", "share", "{:.1%}"), ("valid", "finished_valid", "{}")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, default=None, help="an ort-cpu artifact of the 270M (default: export)")
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--xgrammar-python", default=None, help="a Python with xgrammar installed")
    parser.add_argument("--xgrammar-worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.xgrammar_worker:
        xgrammar_worker(args.xgrammar_worker)
        return

    rows = measure_model("tiny", tiny_artifact(), args.batches, args.new_tokens)
    result = {"rows": rows}
    if not args.skip_real:
        real = real_artifact(args.real)
        real_rows = measure_model("gemma3-270m", real, args.batches, args.new_tokens)
        rows += real_rows
        traces = {kind: [] for kind in SCHEMAS}
        import gemma_runtime
        from gemma_runtime.engine import Engine

        model = gemma_runtime.load(real)
        engine = Engine(model, max_batch=4)
        for kind, schema in SCHEMAS.items():
            traces[kind] = engine_run(engine, 4, args.new_tokens, schema, 100)["outputs"]
        result["libraries"] = compare(model, traces, args.xgrammar_python)
    print(format_table(rows, COLUMNS))
    if "libraries" in result:
        libraries = result["libraries"]
        names = list(libraries)
        print()
        lines = [("", *names)]
        for key, label in (("view_build_s", "tokenizer view s"), ("import_s", "import s")):
            lines.append((label, *(f"{libraries[n].get(key, float('nan')):.2f}" for n in names)))
        lines.append(("imports torch", *(str(libraries[n].get("imports_torch", False)) for n in names)))
        for kind in SCHEMAS:
            lines.append((f"compile {kind} ms", *(f"{libraries[n].get('compile_ms', {}).get(kind, float('nan')):.1f}"
                                                  for n in names)))
            lines.append((f"mask+commit {kind} ms/token",
                          *(f"{libraries[n].get('per_token_ms', {}).get(kind, float('nan')):.4f}" for n in names)))
        for feature in COVERAGE:
            lines.append((feature, *(libraries[n].get("coverage", {}).get(feature, "-") for n in names)))
        width = max(len(line[0]) for line in lines)
        print("\n".join(line[0].ljust(width) + "".join(f"  {c:>12}" for c in line[1:]) for line in lines))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "structured.json").write_text(json.dumps(result, indent=1))
    print(f"\nwrote {RESULTS / 'structured.json'}")


if __name__ == "__main__":
    main()
