#!/usr/bin/env python3
"""Fails when a module of src/ imports one that imports it back, or when a
source file of src/ or clients/rust/src/ is longer than 700 lines
(MAX_LINES).

The library's modules (src/*.rs, src/**/mod.rs and their children) are
nodes; an edge A -> B is any path `crate::B...` (or `super::...` resolved
to B) written in A outside its `#[cfg(test)]` module and comments. Edges
between a module and its own parent or child count too. Prints every circle
(a strongly connected component of more than one module) and exits 1 if
there is one; `--graph` prints all edges.
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
MAX_LINES = 700


# Where the line limit applies: the relay's sources and the Rust client's.
LINE_LIMITED = [ROOT, os.path.join(ROOT, "..", "clients", "rust", "src")]


def long_files():
    """Source files of src/ (the binaries' too) and of the Rust client over
    MAX_LINES lines."""
    out = []
    for dirpath, _, files in (w for top in LINE_LIMITED for w in os.walk(top)):
        for f in sorted(files):
            if f.endswith(".rs"):
                path = os.path.join(dirpath, f)
                with open(path, encoding="utf-8") as fh:
                    n = sum(1 for _ in fh)
                if n > MAX_LINES:
                    out.append((os.path.relpath(path, os.path.join(ROOT, "..")), n))
    return out


def module_of(rel):
    parts = rel[:-3].split(os.sep)
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return tuple(parts)


def strip(text):
    # Drop comments, strings and the unit-test module: edges there do not
    # shape the library.
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    m = re.search(r"#\[cfg\(test\)\]\s*mod\s+tests\s*\{", text)
    if m:
        text = text[: m.start()]
    return text


def main():
    modules = {}
    for dirpath, _, files in os.walk(ROOT):
        rel_dir = os.path.relpath(dirpath, ROOT)
        if rel_dir.split(os.sep)[0] == "bin" or rel_dir == "bin":
            continue
        for f in files:
            if not f.endswith(".rs") or (rel_dir == "." and f == "main.rs"):
                continue
            rel = os.path.normpath(os.path.join(rel_dir, f))
            modules[module_of(rel)] = os.path.join(dirpath, f)
    names = set(modules)

    def resolve(path):
        # longest known module that prefixes path
        for n in range(len(path), 0, -1):
            if tuple(path[:n]) in names:
                return tuple(path[:n])
        return None

    edges = {m: set() for m in modules}
    for mod, file in modules.items():
        text = strip(open(file, encoding="utf-8").read())
        # expand `use crate::{a, b::c}` groups one level
        # (`pub(crate)`, `pub(super)`: visibility, not a path)
        for m in re.finditer(r"(?<!\()\b(crate|super)((?:::\w+)*)(::\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\})?", text):
            head = m.group(1)
            path = m.group(2).strip(":").split("::")
            if head == "crate":
                base = []
            else:
                is_dir_mod = os.path.basename(file) in ("mod.rs", "lib.rs")
                base = list(mod) if is_dir_mod else list(mod[:-1])
                while path and path[0] == "super":
                    path = path[1:]
                    base = base[:-1]
            targets = [base + path]
            if m.group(4):
                for item in re.split(r",(?![^{]*\})", m.group(4)):
                    item = item.strip().split(" as ")[0]
                    if item and item != "self":
                        targets.append(base + path + item.split("::"))
            for t in targets:
                r = resolve(t)
                if r is not None and r != mod:
                    edges[mod].add(r)
        # a parent naming its own children: `use child::x`, `child::f()`,
        # `self::child`; `mod x;` declarations themselves are not imports
        for child in (n for n in names if len(n) == len(mod) + 1 and n[: len(mod)] == mod):
            if re.search(r"(?<![:\w])(self::)?" + child[-1] + r"::", text):
                edges[mod].add(child)

    if "--graph" in sys.argv:
        for m in sorted(edges):
            for t in sorted(edges[m]):
                print("::".join(m) or "crate", "->", "::".join(t) or "crate")

    # Tarjan's strongly connected components
    index, low, stack, on, sccs = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            sccs.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    circles = [c for c in sccs if len(c) > 1]
    for c in circles:
        names_ = sorted("::".join(m) or "crate" for m in c)
        print("import circle:", ", ".join(names_))
        for a in c:
            for b in sorted(edges[a]):
                if b in c:
                    print("   ", "::".join(a) or "crate", "->", "::".join(b) or "crate")
    long = long_files()
    for path, n in long:
        print(f"{path}: {n} lines, over {MAX_LINES}")
    print(f"{len(modules)} modules, {sum(len(e) for e in edges.values())} imports, "
          f"{len(circles)} circles, {len(long)} files over {MAX_LINES} lines")
    return 1 if circles or long else 0


if __name__ == "__main__":
    sys.exit(main())
