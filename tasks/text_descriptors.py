"""A text feature's descriptors: the numbers its drift is judged on.

Free text never repeats, so its values cannot be compared as categories. Each text becomes:

- `length`: its characters;
- `non_letter_share`: the share of its non-blank characters that are not letters (digits,
  punctuation, emoji: a template or an encoding gone wrong shows here first);
- `oov_share`: the share of its words the reference never had. A reference row is judged
  against the rest of the reference (leave-one-out: a word only this row has is out of
  vocabulary), so the reference's own share is what a window of the same language gets, and
  a stable feature does not drift by construction.

Each descriptor is a numerical column named `<feature>.<descriptor>`, tested like any other.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pandas as pd

DESCRIPTORS = ("length", "non_letter_share", "oov_share")
_WORD = re.compile(r"[^\W\d_]+")


def descriptor_column(feature: str, descriptor: str) -> str:
    return f"{feature}.{descriptor}"


def _words(text: str) -> list[str]:
    return [word.lower() for word in _WORD.findall(text)]


def _non_letter_share(text: str) -> float:
    visible = [c for c in text if not c.isspace()]
    return sum(not c.isalpha() for c in visible) / len(visible) if visible else 0.0


def _row_descriptors(text: object, vocabulary: Counter[str], own: bool) -> tuple[float, float, float]:
    if not isinstance(text, str):
        return (np.nan, np.nan, np.nan)
    words = _words(text)
    mine = Counter(words) if own else Counter()
    unseen = sum(vocabulary[w] - mine[w] <= 0 for w in words)
    return (float(len(text)), _non_letter_share(text), unseen / len(words) if words else 0.0)


def _descriptor_frame(feature: str, texts: pd.Series, vocabulary: Counter[str], own: bool) -> pd.DataFrame:
    rows = [_row_descriptors(text, vocabulary, own) for text in texts]
    columns = [descriptor_column(feature, d) for d in DESCRIPTORS]
    return pd.DataFrame(rows or None, columns=columns, index=texts.index, dtype=float)


def text_descriptors(
    feature: str, reference: pd.Series, current: pd.Series
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The descriptor columns of a text feature's reference and current values (null stays null)."""
    vocabulary: Counter[str] = Counter()
    for text in reference:
        if isinstance(text, str):
            vocabulary.update(_words(text))
    return (
        _descriptor_frame(feature, reference, vocabulary, own=True),
        _descriptor_frame(feature, current, vocabulary, own=False),
    )
