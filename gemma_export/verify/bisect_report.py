"""bisect's verdict in one line and its table for people (pass_bisect.py makes the report)."""

from __future__ import annotations

from gemma_export.verify.walk import TRACED, Point
from gemma_runtime.interface import LOGITS


def verdict(finding: dict | None, artifact: dict, points: list[Point]) -> str:
    """One line for people."""
    if finding is None:
        skipped = [p.label for p in points if p.status == "not run"]
        line = "every group within tolerance" if not skipped else \
            f"every group that ran within tolerance (not run here: {', '.join(skipped)})"
        if artifact["status"] == "diverged":
            line += ("; OUT itself is not: it was not made by these passes from this checkpoint "
                     "(another version, other options, or changed since)")
        return line
    group = "the traced graph (before any pass: the front end or onnxruntime's kernels)" \
        if tuple(finding["group"]) == TRACED else f"group {'+'.join(finding['group'])}"
    if finding["not_run_before"]:
        group += f" (or {', '.join(finding['not_run_before'])} before it, which could not run here)"
    if finding["status"] == "failed":
        return f"first divergence: {group} (its graph fails in onnxruntime: {finding['reason']})"
    where = "the logits" if finding["layer"] == LOGITS else f"layer {finding['layer']}"
    search = finding["node_search"]
    node = f", node {search['node']['name']} ({search['node']['op']})" if search and search.get("node") else ""
    return f"first divergence: {group}, {where}{node}"


def format_report(report: dict) -> str:
    """The table of max |diff| / max |ref| per layer per group, OUT's row, and the verdict."""
    groups = report["groups"]
    layers = max((len(g["layers"]) for g in groups), default=0)
    label = lambda group: group[0] if len(group) == 1 else f"{group[0]}..{group[-1]}"  # noqa: E731
    width = max(len(label(g["group"])) for g in groups) + 2
    lines = [f"max |diff| / max |reference| per layer, {report['prompt_tokens']} tokens "
             f"(* beyond the group's tolerance)",
             f"{'group':<{width}}{'tol':>8}" + "".join(f"{i:>9}" for i in range(layers)) + f"{LOGITS:>9}"]

    def cell(diff: dict | None, tolerance: float) -> str:
        if diff is None:
            return f"{'-':>9}"
        return f"{diff['relative']:>8.1e}" + ("*" if not diff["relative"] <= tolerance else " ")

    for g in groups:
        row = f"{label(g['group']):<{width}}{g['tolerance']:>8.0e}"
        if g["status"] in ("not run", "failed"):
            row += f"  {g['status']}: {g['reason']}"
        elif g["status"] == "unchanged":
            row += "  (unchanged)"
        else:
            row += "".join(cell(d, g["tolerance"]) for d in g["layers"]) + cell(g["logits"], g["tolerance"])
        lines.append(row)
    out = report["artifact_logits"]
    row = f"{'OUT (as written)':<{width}}{out['tolerance']:>8.0e}"
    lines.append(row + (f"  {out['status']}: {out['reason']}" if out["logits"] is None else
                        f"{'':>{9 * layers}}" + cell(out["logits"], out["tolerance"])))
    search = (report["first_divergence"] or {}).get("node_search")
    if search is not None:
        if search["found"]:
            value = search["value"]
            lines.append(f"first differing value: {value['name']} from {value['produced_by']['name']} "
                         f"({value['produced_by']['op']}), {value['relative']:.2e} of its reference; the group's "
                         f"nodes computing it: {', '.join(c['name'] for c in search['candidates']) or 'none'}")
        else:
            lines.append(f"node search: {search['message']}")
    lines += [f"note: {n}" for n in report["notes"]]
    lines.append(report["verdict"])
    return "\n".join(lines)
