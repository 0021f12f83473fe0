#!/usr/bin/env bash
# Prints the public API of each library crate, one item per line:
#   <crate> <kind> <path>
# sorted, then a count per crate on stderr. Derived from the HTML that
# `cargo doc --no-deps --all-features` writes (stable toolchain): each crate's
# all.html lists every reachable item (struct, enum, trait, fn, macro, type,
# constant, static) and the item pages list what callers can touch on it
# (inherent methods, associated constants and types, public fields, enum
# variants, trait methods). Items under #[doc(hidden)] are not in the docs,
# so they are not API here either.
#
# Usage: scripts/public-api.sh [crate...]   (default: every library crate)
# Docs go to target/public-api-doc (its own --target-dir would rebuild every
# dependency; CARGO_TARGET_DIR is used as is, only the doc output is copied).
set -euo pipefail
cd "$(dirname "$0")/.."

CRATES=("$@")
[ ${#CRATES[@]} -gt 0 ] || CRATES=(sotto-kernels sotto-models sotto-engine sotto-bridge sotto-ffi)

args=()
for c in "${CRATES[@]}"; do args+=(-p "$c"); done
cargo doc -q --no-deps --all-features "${args[@]}" >&2

DOC="${CARGO_TARGET_DIR:-target}/doc"
python3 - "$DOC" "${CRATES[@]}" <<'PY'
import html, os, re, sys

doc, crates = sys.argv[1], sys.argv[2:]
# all.html section ids -> kind names as written in Rust.
kinds = {
    "structs": "struct", "enums": "enum", "unions": "union", "traits": "trait",
    "functions": "fn", "macros": "macro", "types": "type", "constants": "const",
    "statics": "static", "trait-aliases": "trait-alias", "attributes": "attr",
    "derives": "derive", "primitives": "primitive", "keywords": "keyword",
}
# Member anchors on an item page -> kind.
member_kinds = {
    "method": "method", "tymethod": "method", "associatedconstant": "assoc-const",
    "associatedtype": "assoc-type", "structfield": "field", "variant": "variant",
}
counts = {}
lines = []
for crate in crates:
    lib = crate.replace("-", "_")
    if crate == "sotto-ffi":
        lib = "sotto"  # [lib] name = "sotto"
    root = os.path.join(doc, lib)
    page = open(os.path.join(root, "all.html"), encoding="utf-8").read()
    items = []
    for sec, body in re.findall(r'<h3 id="([a-z-]+)">.*?</h3><ul class="all-items">(.*?)</ul>', page, re.S):
        kind = kinds.get(sec, sec)
        for href, name in re.findall(r'<a href="([^"]+)">(.*?)</a>', body):
            items.append((kind, f"{lib}::{html.unescape(name)}", href))
    mods = set()
    for kind, path, href in items:
        lines.append(f"{crate} {kind} {path}")
        parts = path.split("::")
        for i in range(2, len(parts)):
            mods.add("::".join(parts[:i]))
        if kind not in ("struct", "enum", "union", "trait"):
            continue
        text = open(os.path.join(root, href), encoding="utf-8").read()
        # Keep what the item itself offers: its fields, variants, inherent
        # impls and (for traits) its own items; drop trait implementations
        # and auto/blanket impls, which repeat other crates' APIs.
        for cut in ('id="trait-implementations"', 'id="synthetic-implementations"',
                    'id="blanket-implementations"', 'id="implementors"',
                    'id="foreign-impls"', 'id="deref-methods'):
            i = text.find(cut)
            if i >= 0:
                text = text[:i]
        seen = set()
        for mk, name in re.findall(r'id="(method|tymethod|associatedconstant|associatedtype|structfield|variant)\.([A-Za-z0-9_]+)"', text):
            key = (member_kinds[mk], name)
            if key in seen:
                continue
            seen.add(key)
            lines.append(f"{crate} {member_kinds[mk]} {path}::{name}")
    for m in mods:
        if os.path.exists(os.path.join(doc, *m.split("::"), "index.html")):
            lines.append(f"{crate} mod {m}")
for line in sorted(set(lines)):
    print(line)
    c = line.split(" ", 1)[0]
    counts[c] = counts.get(c, 0) + 1
for c in crates:
    print(f"# {c}: {counts.get(c, 0)} items", file=sys.stderr)
PY
