"""Sentence encoder and tweet normalisation: the packaged real MiniLM plus a tiny Roberta built here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer, RobertaConfig, RobertaModel, RobertaTokenizer

from affectflow.models import tweet_normalize
from affectflow.models.specs import packaged_model_path
from affectflow.models.text_encoder import TextEncoder, load_text_encoder
from affectflow.models.tweet_normalize import normalize_tweet

MINILM = str(packaged_model_path("all-MiniLM-L6-v2"))

TWEETEVAL = Path("/work/shared/data/tweeteval_emotion")
SENTENCES = [
    "A man is playing a guitar on stage.",
    "Someone performs a song with a guitar.",
    "The central bank raised interest rates again.",
    "I can't stop smiling today 😍 #blessed",
    "",
]


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return load_text_encoder(MINILM, device="cpu")


def test_minilm_defaults(minilm: TextEncoder) -> None:
    assert Path(MINILM, "model.safetensors").is_file()
    assert minilm.dim == 384
    assert minilm.pooling == "mean"
    assert minilm.normalize_tweets is False
    assert minilm.max_length == 512
    assert not minilm.model.training


def test_minilm_equals_direct_transformers_mean_pooling(minilm: TextEncoder) -> None:
    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    model = AutoModel.from_pretrained(MINILM).eval()
    batch = tokenizer(SENTENCES, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    direct = F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    embeddings = minilm.encode(SENTENCES)

    assert embeddings.shape == (len(SENTENCES), 384) and embeddings.dtype == torch.float32
    torch.testing.assert_close(embeddings, direct, atol=1e-5, rtol=0)


def test_minilm_equals_sentence_transformers(minilm: TextEncoder) -> None:
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference = sentence_transformers.SentenceTransformer(MINILM, device="cpu")
    expected = torch.from_numpy(reference.encode(SENTENCES, normalize_embeddings=True))
    torch.testing.assert_close(minilm.encode(SENTENCES), expected, atol=1e-5, rtol=0)


def test_batch_size_does_not_change_embeddings(minilm: TextEncoder) -> None:
    whole = minilm.encode(SENTENCES, batch_size=64)
    for batch_size in (1, 3):
        torch.testing.assert_close(minilm.encode(SENTENCES, batch_size=batch_size), whole, atol=1e-5, rtol=0)


def test_empty_inputs(minilm: TextEncoder) -> None:
    empty_string = minilm.encode([""])
    assert torch.isfinite(empty_string).all()
    assert empty_string.norm(dim=1).item() == pytest.approx(1.0, abs=1e-5)
    assert minilm.encode([]).shape == (0, 384)


def test_paraphrase_is_closer_than_unrelated(minilm: TextEncoder) -> None:
    guitar, guitar_paraphrase, bank = minilm.encode(SENTENCES[:3])
    assert guitar @ guitar_paraphrase > guitar @ bank + 0.3
    assert guitar @ guitar_paraphrase > guitar_paraphrase @ bank + 0.3


def test_encode_and_load_validate_arguments(minilm: TextEncoder) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        minilm.encode(SENTENCES, batch_size=0)
    with pytest.raises(TypeError, match="single string"):
        minilm.encode("one post")
    with pytest.raises(TypeError, match=r"texts\[0\]"):
        minilm.encode([3])
    with pytest.raises(ValueError, match="pooling"):
        load_text_encoder(MINILM, pooling="max")
    with pytest.raises(ValueError, match="max_length"):
        load_text_encoder(MINILM, max_length=0)


def _save_tiny_roberta(directory: Path, declare_max_length: bool = True) -> Path:
    """A 2-layer Roberta and byte-level BPE tokenizer built offline and saved like a hub model."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4, "Ġ": 5}
    for symbol in [*letters, *letters.upper(), *".,!?@#:'/0123456789"]:
        vocab.setdefault(symbol, len(vocab))
    merges = []
    for letter in letters:
        vocab[f"Ġ{letter}"] = len(vocab)
        merges.append(("Ġ", letter))
    # Keyword form: the `vocab_file=` keywords would be silently ignored (empty vocabulary).
    limits = {"model_max_length": 32} if declare_max_length else {}
    tokenizer = RobertaTokenizer(vocab=vocab, merges=merges, **limits)
    config = RobertaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=40,
        pad_token_id=1,
    )
    torch.manual_seed(0)
    RobertaModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_tiny_roberta_cls_pooling_through_the_loader(tmp_path: Path) -> None:
    directory = _save_tiny_roberta(tmp_path / "tiny-roberta")
    encoder = load_text_encoder(directory, pooling="cls", device="cpu")
    texts = ["hello there", "a much longer sentence about the sea", ""]

    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModel.from_pretrained(directory).eval()
    with torch.no_grad():
        hidden = model(**tokenizer(texts, padding=True, return_tensors="pt")).last_hidden_state
    direct = F.normalize(hidden[:, 0], dim=-1)

    assert encoder.dim == 32 and encoder.max_length == 32 and encoder.normalize_tweets is False
    torch.testing.assert_close(encoder.encode(texts, batch_size=2), direct, atol=1e-5, rtol=0)


def test_bertweet_names_turn_tweet_normalisation_on(tmp_path: Path) -> None:
    directory = _save_tiny_roberta(tmp_path / "tiny-bertweet")
    normalising = load_text_encoder(directory, device="cpu")
    plain = load_text_encoder(directory, normalize_tweets=False, device="cpu")
    raw = "@bob look at this http://t.co/abc !"

    assert normalising.normalize_tweets is True
    torch.testing.assert_close(normalising.encode([raw]), plain.encode([normalize_tweet(raw)]), atol=1e-6, rtol=0)
    assert not torch.allclose(plain.encode([raw]), plain.encode([normalize_tweet(raw)]))


def test_undeclared_max_length_must_be_passed(tmp_path: Path) -> None:
    directory = _save_tiny_roberta(tmp_path / "no-limit", declare_max_length=False)
    with pytest.raises(ValueError, match="max_length="):
        load_text_encoder(directory)
    assert load_text_encoder(directory, max_length=32).max_length == 32


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("@Some_User hello", "@USER hello"),
        ("see https://t.co/x1 and www.example.com", "see HTTPURL and HTTPURL"),
        ("I don't know, it's late", "I do n't know , it 's late"),
        ("I can't go, I cannot stay", "I can't go , I can not stay"),
        ("I’m so… tired", "I 'm so ... tired"),
        ("see you at 5 p.m. then", "see you at 5 p.m. then"),
        ("salt &amp; pepper   #yum", "salt & pepper #yum"),
        ("", ""),
    ],
)
def test_normalize_tweet_rules(raw: str, expected: str) -> None:
    assert normalize_tweet(raw) == expected


def test_emoji_are_spelt_out_when_the_emoji_package_is_present() -> None:
    pytest.importorskip("emoji")
    assert normalize_tweet("love it 😂❤") == "love it :face_with_tears_of_joy: :red_heart:"


def test_emoji_are_kept_without_the_emoji_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "emoji", None)
    tweet_normalize._demojizer.cache_clear()
    try:
        assert normalize_tweet("love it 😂 @x") == "love it 😂 @USER"
    finally:
        tweet_normalize._demojizer.cache_clear()


def test_normalize_tweet_rejects_non_strings() -> None:
    with pytest.raises(TypeError, match="str"):
        normalize_tweet(None)


def _tweeteval_texts() -> list[str]:
    if not TWEETEVAL.is_dir():
        pytest.skip(f"shared TweetEval data not found at {TWEETEVAL}")
    return [
        line.rstrip("\n")
        for split in ("train", "val", "test")
        for line in (TWEETEVAL / f"{split}_text.txt").read_text(encoding="utf-8").splitlines()
    ]


def test_real_tweets_normalise_like_bertweets_own_tokenizer(tmp_path: Path) -> None:
    """Every real tweet normalises exactly as transformers' BertweetTokenizer(normalization=True)."""
    from transformers.models.bertweet.tokenization_bertweet import BertweetTokenizer

    tweets = _tweeteval_texts()
    (tmp_path / "vocab.txt").write_text("hello 1\n")
    (tmp_path / "bpe.codes").write_text("#version: 0.2\nh e\n")
    reference = BertweetTokenizer(str(tmp_path / "vocab.txt"), str(tmp_path / "bpe.codes"), normalization=True)

    normalised = [normalize_tweet(tweet) for tweet in tweets]

    assert normalised == [reference.normalizeTweet(tweet) for tweet in tweets]
    with_mentions = [text for tweet, text in zip(tweets, normalised, strict=True) if "@user" in tweet]
    assert with_mentions and all("@USER" in text and "@user" not in text for text in with_mentions)
    assert any("#" in text for text in normalised)


def test_real_tweets_encode_after_normalisation(minilm: TextEncoder) -> None:
    tweets = [normalize_tweet(tweet) for tweet in _tweeteval_texts()[:48]]
    embeddings = minilm.encode(tweets, batch_size=16)
    assert embeddings.shape == (len(tweets), 384)
    assert torch.isfinite(embeddings).all()
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(len(tweets)), atol=1e-5, rtol=0)
