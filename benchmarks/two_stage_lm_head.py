"""The two-stage lm_head on the real 270M, one run: an int4-recipe export with the head in two stages
against the same artifact with its head made one stage again (the same recipe choices: the
scan, TopK, re-score and scatter replaced by one MatMulNBits over the int8 rows the lookup reads),
and any other artifact folders given (e.g. an older int4 recipe). Teacher-forced over the built-in
evaluation text against the fp32 export (top-1 agreement, KL, perplexity; the top-1 of the two-stage
head against the one-stage head with fp32 activations too), then decode and prefill speed in
interleaved rounds (each engine once per round in its own process: medians and per-round ratios).

Run: .venv/bin/python benchmarks/two_stage_lm_head.py --fp32 FP32_OUT --two-stage INT4_OUT [--others DIR ...]
     [--rounds 3]
Writes benchmarks/results/two_stage_lm_head.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from precision import agreement, folder_mib  # noqa: E402

import gemma_runtime  # noqa: E402
from gemma_export.bench import format_table, measure  # noqa: E402
from gemma_export.verify.validate import prompt_ids  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "two_stage_lm_head.json"
COLUMNS = [("size MiB", "size_mib", "{:.0f}"), ("top-1", "top1_agreement", "{:.2%}"),
           ("KL", "kl_divergence", "{:.2e}"), ("ppl", "perplexity", "{:.3f}"), ("decode tok/s", "decode", "{:.1f}"),
           ("prefill tok/s", "prefill", "{:.0f}"),
           ("decode vs one-stage", "vs_one_stage", "{:.2f}x"), ("decode per round", "rounds", "{}")]


def one_stage(two_stage: Path, out: Path) -> Path:
    """The artifact with its two-stage head replaced by one int8 MatMulNBits over the same rows."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(two_stage, out)
    proto = onnx.load(str(out / "model.onnx"), load_external_data=False)
    nodes = list(proto.graph.node)
    scattered = next(n for n in nodes if n.name == "lm_head.scattered")
    scan = next(n for n in nodes if n.op_type == "MatMulNBits" and n.input[1].endswith(".scan.q"))
    lookup = next(n for n in nodes if n.op_type == "GatherBlockQuantized" and n.input[1] != "")
    table = lookup.input[0]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in scan.attribute}
    rows = next(i for i in proto.graph.initializer if i.name == table)
    block = rows.dims[2]
    head = onnx.helper.make_node("MatMulNBits", [scan.input[0], table, table.removesuffix(".q") + ".scales"],
                                 list(scattered.output), domain="com.microsoft", name="lm_head", K=attrs["K"],
                                 N=attrs["N"], bits=8, block_size=block, accuracy_level=attrs["accuracy_level"])
    proto.graph.node.insert(nodes.index(scattered), head)
    proto.graph.node.remove(scattered)
    onnx.save(proto, str(out / "model.onnx"))  # the dead scan is pruned by onnxruntime at load
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp32", type=Path, required=True)
    parser.add_argument("--two-stage", type=Path, required=True)
    parser.add_argument("--others", type=Path, nargs="*", default=[])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    single = one_stage(args.two_stage, args.two_stage.with_name(args.two_stage.name + "-one-stage"))
    engines = {"two-stage": args.two_stage, "one-stage (same choices)": single,
               **{f"other {p.name}": p for p in args.others}}
    fp32 = gemma_runtime.load(args.fp32)
    sequences = prompt_ids(fp32, None, fp32.manifest.config["vocab_size"])
    reference = [fp32.logits(ids) for ids in sequences]
    rows = {name: {"name": name, "size_mib": folder_mib(path)} for name, path in engines.items()}
    logits = {}
    for name, path in engines.items():
        model = gemma_runtime.load(path)
        logits[name] = [model.logits(ids) for ids in sequences]
        rows[name].update(agreement(lambda i, ids: logits[name][i], reference, sequences))
        print(f"  {name}: top-1 {rows[name]['top1_agreement']:.2%}", flush=True)
    same = sum(int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(logits["two-stage"],
                                                                       logits["one-stage (same choices)"]))
    runs = {name: [] for name in engines}
    for r in range(args.rounds):
        for name, path in engines.items():
            print(f"  round {r + 1}: {name} ...", flush=True)
            runs[name].append(measure(path, 128, 64, repeats=1))
    for name, results in runs.items():
        decode = [x["decode_tokens_per_s"] for x in results]
        base = [x["decode_tokens_per_s"] for x in runs["one-stage (same choices)"]]
        rows[name].update(decode=statistics.median(decode), rounds=" ".join(f"{d:.1f}" for d in decode),
                          prefill=statistics.median(x["prefill_tokens_per_s"] for x in results),
                          vs_one_stage=statistics.median(d / b for d, b in zip(decode, base)))
    result = {"rounds": args.rounds, "top1_two_stage_vs_one_stage": same / sum(map(len, sequences)),
              "rows": list(rows.values())}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(format_table(list(rows.values()), COLUMNS))
    print(f"top-1 of the two-stage head = the one-stage head's at {result['top1_two_stage_vs_one_stage']:.2%} "
          "of positions")


if __name__ == "__main__":
    main()
