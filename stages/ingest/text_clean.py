"""Post-text cleaning for social-media text (PACL's recipe: contractions, #tags, @mentions, URLs).

Both the raw and the cleaned text are kept downstream; scorers that have their own tweet
normaliser (BERTweet) can start from the raw text.
"""

from __future__ import annotations

import html
import re
from typing import Literal

URL_RE = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
MENTION_RE = re.compile(r"(?<!\w)@\w+")
HASHTAG_RE = re.compile(r"#(\w*)")
# Some dumps (TweetEval among them) store line breaks as the two characters backslash + n.
ESCAPED_BREAK_RE = re.compile(r"\\[nrt]")
SPACE_RE = re.compile(r"\s+")
# C0 and C1 controls (ESC of terminal escapes, BEL, NUL...) and DEL: never part of a post's words.
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")

# Unambiguous English contractions; "'s" is left alone (is / has / possessive cannot be told apart).
CONTRACTIONS = {
    "can't": "cannot", "won't": "will not", "shan't": "shall not", "ain't": "am not",
    "let's": "let us", "y'all": "you all",
}
SUFFIXES = {"n't": " not", "'re": " are", "'m": " am", "'ve": " have", "'ll": " will", "'d": " would"}
WORD_RE = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)+")

HashtagMode = Literal["strip_sign", "drop"]


def _expand(match: re.Match[str]) -> str:
    word = match.group(0)
    lower = word.lower()
    if lower in CONTRACTIONS:
        expanded = CONTRACTIONS[lower]
        return expanded.capitalize() if word[0].isupper() else expanded
    for suffix, replacement in SUFFIXES.items():
        if lower.endswith(suffix) and len(word) > len(suffix):
            return word[: -len(suffix)] + replacement
    return word


def expand_contractions(text: str) -> str:
    return WORD_RE.sub(_expand, text.replace("\u2019", "'"))


def clean_post_text(text: str, hashtags: HashtagMode = "strip_sign",
                    contractions: bool = True) -> str:
    """Remove URLs and @mentions, handle #tags, expand contractions, unescape HTML, drop control
    characters, fold spaces."""
    text = CONTROL_RE.sub(" ", ESCAPED_BREAK_RE.sub(" ", html.unescape(text)))
    text = URL_RE.sub(" ", text)
    text = MENTION_RE.sub(" ", text)
    text = HASHTAG_RE.sub(r" \1" if hashtags == "strip_sign" else " ", text)
    if contractions:
        text = expand_contractions(text)
    return SPACE_RE.sub(" ", text).strip()
