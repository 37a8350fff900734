"""Text cleaning: the first step of every model this recipe trains, so models take raw text.

Cleaning is defined as a tokenization, because that is what ONNX can express exactly
(``onnx_export.py`` builds the same steps from ONNX operators):

1. lower-case ASCII letters (``A``-``Z``; other characters are left alone, and since only
   ASCII letters make words, that is all lower-casing needs to do);
2. find the tokens, left to right: a URL (``http://…``, ``https://…`` or ``www.…`` up to the
   next whitespace) or a run of two or more letters ``a``-``z``. Everything else (digits,
   punctuation, symbols, accented and non-Latin letters, single letters) separates tokens;
3. drop URL tokens and English stop words (scikit-learn's offline list of 318 words).

The cleaned text is the remaining tokens joined by single spaces. ``"Refund #123 NOW!!
https://x.io/a"`` becomes ``"refund"``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

# Whitespace as both Python's ``re`` and RE2 (onnxruntime's regex engine) read it.
_NOT_SPACE = r"[^ \t\n\r\f\v]"
URL_PATTERN = rf"(?:https?://|www\.){_NOT_SPACE}+"
WORD_PATTERN = r"[a-z]{2,}"
TOKEN_PATTERN = rf"{URL_PATTERN}|{WORD_PATTERN}"
STOP_WORDS: tuple[str, ...] = tuple(sorted(ENGLISH_STOP_WORDS))

_TOKEN_RE = re.compile(TOKEN_PATTERN)
_STOP_WORDS = frozenset(STOP_WORDS)
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def tokens(text: str) -> list[str]:
    """The words of ``text`` after cleaning (see the module docstring)."""
    # A URL token always holds ":" or "."; a word token is letters only.
    return [
        token
        for token in _TOKEN_RE.findall(text.translate(_ASCII_LOWER))
        if token.isalpha() and token not in _STOP_WORDS
    ]


def clean_text(text: object) -> str:
    """One raw text cleaned; a missing value (None, NaN) is the empty text."""
    if not isinstance(text, str):
        return ""
    return " ".join(tokens(text))


def clean_texts(texts: Iterable[object]) -> list[str]:
    return [clean_text(text) for text in texts]


class TextCleaner(TransformerMixin, BaseEstimator):
    """scikit-learn step: raw texts (1-D, or one column) -> cleaned texts. Stateless."""

    def fit(self, X: Any, y: Any = None) -> TextCleaner:
        return self

    def transform(self, X: Any) -> np.ndarray:
        return np.array(clean_texts(_flat(X)), dtype=object)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.input_tags.two_d_array = False
        tags.requires_fit = False
        return tags


def _flat(X: Any) -> Sequence[object]:
    if hasattr(X, "iloc") and getattr(X, "ndim", 1) == 2:  # a one-column DataFrame
        X = X.iloc[:, 0]
    values = np.asarray(X, dtype=object)
    return list(values.reshape(-1)) if values.ndim else [values.item()]
