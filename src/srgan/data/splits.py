"""Train / validation / test areas as disjoint blocks of columns with gaps between them.

Random patches of one area would put overlapping pixels in both training and validation and
inflate the score, so the split is by area.
"""

from __future__ import annotations

SPLITS = ("train", "val", "test")


def check_fractions(fractions: dict[str, float]) -> dict[str, float]:
    """Known split names with positive shares summing to 1 (an error names the key otherwise)."""
    unknown = set(fractions) - set(SPLITS)
    if unknown:
        raise ValueError(f"dataset.split.fractions: unknown split(s) {sorted(unknown)}; expected {SPLITS}")
    bad = not fractions or any(
        not isinstance(f, (int, float)) or isinstance(f, bool) or f <= 0 for f in fractions.values()
    )
    if bad or abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ValueError(
            f"dataset.split.fractions must be positive and sum to 1, got {dict(fractions)}. An override such as "
            "dataset.split.fractions={test: 1.0} is merged into the defaults; to replace them, write "
            "'~dataset.split.fractions' '+dataset.split.fractions={test: 1.0}'"
        )
    return dict(fractions)


def column_blocks(width: int, fractions: dict[str, float], gap: int, align: int = 1) -> dict[str, tuple[int, int]]:
    """Column ranges ``[start, stop)`` for each split, left to right, ``gap`` columns apart.

    Every boundary is a multiple of ``align`` (the scale), so LR pixels never straddle areas.
    """
    check_fractions(fractions)
    if gap < 0:
        raise ValueError(f"dataset.split.gap must be >= 0, got {gap}")
    names = [s for s in SPLITS if s in fractions]
    usable = width - gap * (len(names) - 1)
    blocks, start = {}, 0
    for i, name in enumerate(names):
        stop = width if i == len(names) - 1 else start + int(usable * fractions[name])
        stop -= stop % align
        if stop - start < align:
            raise ValueError(f"split {name!r} gets no columns out of width {width}; reduce dataset.split.gap")
        blocks[name] = (start, stop)
        start = stop + gap
        start += -start % align
    return blocks
