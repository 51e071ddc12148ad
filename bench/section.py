"""A section of docs/benchmarks.md that one script owns: from its begin
comment (`<!-- begin NAME...`) to its end comment (`<!-- end NAME -->`).
Written by scripts/soak.sh, scripts/bench-quickmatch.sh and
scripts/bench-tls.sh; bench/report.py (scripts/bench.sh) keeps them as they
are when it rewrites the rest."""

import os
import re


def put_section(out, name, section):
    """Replaces section NAME of the report `out` by `section` (its begin and
    end comments included); a new one goes before "## Every run", or at the
    end. `out` "-" writes nothing."""
    if out == "-":
        return
    text = open(out).read() if os.path.exists(out) else "# Benchmarks\n"
    pattern = re.compile(rf"^<!-- begin {re.escape(name)}[ :].*?^<!-- end {re.escape(name)} -->$",
                         re.M | re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    elif "\n## Every run" in text:
        text = text.replace("\n## Every run", "\n" + section + "\n\n## Every run", 1)
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    with open(out, "w") as f:
        f.write(text)
