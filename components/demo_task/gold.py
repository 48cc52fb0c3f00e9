"""The gold annotator: a deterministic stand-in for human raters of customer-support replies.

score(prompt, reply) = 0.75 * sentiment + topic + 0.25 * finished - length_penalty - repetition_penalty, where

- ``sentiment`` in [-1, 1]: VADER's compound polarity of the reply (Hutto & Gilbert 2014, the
  ``vaderSentiment`` lexicon): friendly, apologetic-and-positive support tone scores high, hostile low;
- ``topic`` in [0, 1]: share of the prompt's content words (stop words removed, crude 5-letter stems) that
  the reply mentions, counting up to ``TOPIC_WORDS`` of them: replies that address the customer's issue;
- ``finished`` in {0, 1}: the reply ends with a sentence end (. ! ?) rather than being cut off;
- ``length_penalty`` >= 0: 0 for ``MIN_WORDS``..``MAX_WORDS`` words, growing linearly outside (concision);
- ``repetition_penalty`` in [0, 1]: share of repeated word trigrams (degenerate loops).

An empty reply scores ``EMPTY_SCORE``. Ratings 1..5 (for simulated served feedback) bucket the score.

It labels feedback and evaluates policies; the reward model and PPO never call it (the reward model
learns the preference only from the pairs it labelled). Why it is a fair stand-in: docs/data.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

MIN_WORDS = 5
MAX_WORDS = 40
TOPIC_WORDS = 3
EMPTY_SCORE = -2.0
W_SENTIMENT = 0.75
W_FINISHED = 0.25
PART_WEIGHTS = {"sentiment": W_SENTIMENT, "topic": 1.0, "finished": W_FINISHED, "length_penalty": -1.0,
                "repetition_penalty": -1.0}  # fmt: skip
"""Each part's weight in ``total`` (the formula in :func:`explain`); an empty reply scores ``EMPTY_SCORE`` instead."""
RATING_EDGES = (-0.25, 0.25, 0.75, 1.25)
"""Score thresholds between ratings 1|2|3|4|5."""

_WORD = re.compile(r"[a-z][a-z']+")
_STOP_WORDS = """
a about above after again all also am an and any are as at be because been before being below between both
but by can could did do does doing don't down during each few for from further had has have having he her
here hers him his how i i'd i'm i've if in into is it it's its itself just let me more most my myself no nor
not now of off on once only or other our ours out over own same she should so some such than that the their
them then there these they this those through to too under until up us very was we were what when where
which while who whom why will with would you you're your yours yourself hi hello please thanks thank want
need get got still really one two three last next week day days time know make sure like
"""
_STOP = frozenset(_STOP_WORDS.split())


@lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def _stems(text: str) -> set[str]:
    return {w[:5] for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 2}


@dataclass(frozen=True)
class GoldScore:
    """The parts of one gold score (``total`` is what ranks replies)."""

    total: float
    sentiment: float
    topic: float
    finished: float
    length_penalty: float
    repetition_penalty: float


def explain(prompt: str, reply: str) -> GoldScore:
    """The gold score of ``reply`` to ``prompt`` with its parts."""
    words = reply.split()
    if not words:
        return GoldScore(EMPTY_SCORE, 0.0, 0.0, 0.0, 0.0, 0.0)
    sentiment = float(_vader().polarity_scores(reply)["compound"])
    wanted = _stems(prompt)
    topic = min(len(wanted & _stems(reply)), TOPIC_WORDS) / min(len(wanted), TOPIC_WORDS) if wanted else 0.0
    finished = 1.0 if reply.rstrip().endswith((".", "!", "?")) else 0.0
    n = len(words)
    length_penalty = max(0, MIN_WORDS - n) / MIN_WORDS + max(0, n - MAX_WORDS) / MAX_WORDS
    lowered = [w.lower() for w in words]
    trigrams = list(zip(lowered, lowered[1:], lowered[2:]))
    repetition = 1.0 - len(set(trigrams)) / len(trigrams) if trigrams else 0.0
    total = W_SENTIMENT * sentiment + topic + W_FINISHED * finished - length_penalty - repetition
    return GoldScore(round(total, 6), sentiment, topic, finished, length_penalty, repetition)


def score(prompt: str, reply: str) -> float:
    """The gold score: higher is better (about -2 .. 2)."""
    return explain(prompt, reply).total


def rating(prompt: str, reply: str) -> int:
    """A 1..5 rating of ``reply`` (the score bucketed at ``RATING_EDGES``)."""
    s = score(prompt, reply)
    return 1 + sum(s >= edge for edge in RATING_EDGES)
