"""BERTweet-style tweet normalisation, so raw posts look like the text BERTweet was pretrained on.

BERTweet (Nguyen et al., EMNLP 2020) saw tweets tokenised with NLTK's TweetTokenizer, user
mentions replaced by ``@USER``, links by ``HTTPURL``, single-character emoji spelt out by the
``emoji`` package (``:red_heart:``), and English contractions split (``do n't``, ``he 's``).
Feeding it un-normalised text wastes vocabulary on handles and links, so the emotional
scorer normalises every post the same way. Without the optional ``emoji`` package emoji are
kept as characters, exactly as BERTweet's own normaliser does in that case.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

# transformers ships a port of NLTK's TweetTokenizer with its BERTweet tokenizer; using it keeps
# token boundaries identical to BERTweet's pretraining without adding NLTK as a dependency.
from transformers.models.bertweet.tokenization_bertweet import TweetTokenizer

USER_TOKEN = "@USER"
URL_TOKEN = "HTTPURL"

# Typographic characters BERTweet's vocabulary knows only in their ASCII form.
_ASCII_PUNCTUATION = {"\u2019": "'", "\u2026": "..."}

# Applied in order on the space-joined tokens: contractions become separate tokens ("do n't",
# "I 'm") as in BERTweet's corpus, then "p . m ." style splits are glued back together.
_SPACING_RULES: tuple[tuple[str, str], ...] = (
    ("cannot ", "can not "),
    ("n't ", " n't "),
    ("n 't ", " n't "),
    ("ca n't", "can't"),
    ("ai n't", "ain't"),
    ("'m ", " 'm "),
    ("'re ", " 're "),
    ("'s ", " 's "),
    ("'ll ", " 'll "),
    ("'d ", " 'd "),
    ("'ve ", " 've "),
    (" p . m .", "  p.m."),
    (" p . m ", " p.m "),
    (" a . m .", " a.m."),
    (" a . m ", " a.m "),
)

_TOKENIZER = TweetTokenizer()


@lru_cache(maxsize=1)
def _demojizer() -> Callable[[str], str] | None:
    """`emoji.demojize` when the optional package is installed, else None (emoji kept)."""
    try:
        from emoji import demojize
    except ImportError:
        return None
    return demojize


def _normalize_token(token: str, demojize: Callable[[str], str] | None) -> str:
    lowered = token.lower()
    if token.startswith("@"):
        return USER_TOKEN
    if lowered.startswith(("http", "www")):
        return URL_TOKEN
    if len(token) == 1 and demojize is not None:
        return demojize(token)
    return token


def normalize_tweet(text: str) -> str:
    """Normalise one raw post: mentions, links, emoji, contractions, whitespace."""
    if not isinstance(text, str):
        raise TypeError(f"normalize_tweet expects str, got {type(text).__name__}")
    for typographic, ascii_form in _ASCII_PUNCTUATION.items():
        text = text.replace(typographic, ascii_form)
    demojize = _demojizer()
    joined = " ".join(_normalize_token(token, demojize) for token in _TOKENIZER.tokenize(text))
    for old, new in _SPACING_RULES:
        joined = joined.replace(old, new)
    return " ".join(joined.split())
