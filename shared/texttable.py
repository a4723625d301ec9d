"""Plain-text tables for the terminal (the commands' output meant for people)."""

from __future__ import annotations

from collections.abc import Collection, Sequence


def printable(text: object) -> str:
    """File names and broker messages reach the terminal: no control characters."""
    return "".join(c if c.isprintable() else "?" for c in str(text))


def table(header: Sequence[str], rows: Sequence[Sequence[object]], right: Collection[int] = ()) -> list[str]:
    """Lines of an indented table with a rule under the header; columns in `right` right-aligned."""
    cells = [tuple(printable(c) for c in row) for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()

    return ["  " + line(cells[0]), "  " + "  ".join("-" * w for w in widths)] + ["  " + line(r) for r in cells[1:]]
