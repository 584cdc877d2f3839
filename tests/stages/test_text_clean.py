"""Post-text cleaning on hand-written cases and on real tweets."""

from __future__ import annotations

import pytest

from affectflow.stages.ingest.text_clean import clean_post_text, expand_contractions
from tests.conftest import SHARED_DATA


@pytest.mark.parametrize(("raw", "expected"), [
    ("I can't believe it!! #blessed @mom https://t.co/abc", "I cannot believe it!! blessed"),
    ("We're done, they'll see &amp; I'm ok www.site.com/x", "We are done, they will see & I am ok"),
    ("Won't stop", "Will not stop"),
    ("email me at a@b.com", "email me at a@b.com"),
    ("it's John's dog", "it's John's dog"),
    ("   \n\t ", ""),
])
def test_clean_post_text(raw: str, expected: str) -> None:
    assert clean_post_text(raw) == expected


def test_hashtags_can_be_dropped_and_contractions_kept() -> None:
    assert clean_post_text("sunny #happy day can't", hashtags="drop", contractions=False) == \
        "sunny day can't"


def test_curly_apostrophes_expand() -> None:
    assert expand_contractions("don\u2019t") == "do not"


def test_real_tweets_clean_without_mentions_urls_or_hash_signs() -> None:
    path = SHARED_DATA / "tweeteval_emotion" / "train_text.txt"
    if not path.is_file():
        pytest.skip(f"shared tweet data not found at {path}")
    tweets = path.read_text(encoding="utf-8").splitlines()[:500]
    cleaned = [clean_post_text(tweet) for tweet in tweets]
    assert not any("@user" in text or "http" in text or "#" in text for text in cleaned)
    assert sum(bool(text) for text in cleaned) >= 495
