"""The README's Layout section comes near the top and matches the tree: every module of the three
packages is listed where it lives, and nothing listed is missing."""

from __future__ import annotations

import re

from conftest import REPO

PACKAGES = ("gemma_export", "graphs", "runtime")
FOLDERS = ("tests", "benchmarks")  # listed as folders; their files are not modules of the product
INDENT = 2


def layout_block() -> tuple[int, list[str]]:
    """(the Layout heading's rank among the README's sections, the lines of its code block)."""
    text = (REPO / "README.md").read_text()
    headings = re.findall(r"^## (.+)$", text, re.M)
    section = text.split("\n## Layout\n", 1)[1]
    block = section.split("```", 2)[1]
    return headings.index("Layout"), [line for line in block.splitlines()[1:] if line.strip()]


def listed_paths(lines: list[str]) -> set[str]:
    """Entries are indented two spaces per folder level; a name ending in / opens a folder, a .py
    name is a module; continuation lines (deeper indentation, no name first) are descriptions."""
    paths, stack = set(), []
    for line in lines:
        depth = (len(line) - len(line.lstrip(" "))) // INDENT
        name = line.split()[0]
        if depth > len(stack) or not (name.endswith("/") or name.endswith(".py")):
            continue  # a description's continuation
        stack = stack[:depth]
        path = "/".join([*stack, name.rstrip("/")])
        paths.add(path + ("/" if name.endswith("/") else ""))
        if name.endswith("/"):
            stack.append(name.rstrip("/"))
    return paths


def tree_paths() -> set[str]:
    modules = {p.relative_to(REPO).as_posix() for package in PACKAGES for p in (REPO / package).rglob("*.py")
               if p.name != "__init__.py" and "__pycache__" not in p.parts}
    folders = {p.relative_to(REPO).as_posix() + "/" for package in PACKAGES for p in (REPO / package).rglob("*")
               if p.is_dir() and p.name != "__pycache__"}
    return modules | folders | {f"{package}/" for package in PACKAGES} | {f"{f}/" for f in FOLDERS}


def test_layout_comes_near_the_top():
    rank, _ = layout_block()
    assert rank <= 2, "the Layout section should follow the two commands and the install notes"


def test_layout_lists_every_module_and_nothing_else():
    _, lines = layout_block()
    listed, tree = listed_paths(lines), tree_paths()
    assert not tree - listed, f"in the tree, not in the README's Layout: {sorted(tree - listed)}"
    assert not listed - tree, f"in the README's Layout, not in the tree: {sorted(listed - tree)}"


def test_the_layout_parser_sees_a_missing_module():
    _, lines = layout_block()
    dropped = [line for line in lines if line.split()[0] != "interface.py"]
    assert "runtime/interface.py" in tree_paths() - listed_paths(dropped)
