"""The feedback formats people have, turned into the stored pairs / ratings rows (``rlhf import``).

=================  ==========================================================================  ===========
format             rows look like                                                              becomes
=================  ==========================================================================  ===========
``pairs``          ``prompt, chosen, rejected`` strings (also TRL's *standard* format)            pairs
``ratings``        ``prompt, response, rating`` (JSONL / CSV / Parquet)                        ratings
``hh-rlhf``        ``chosen, rejected``: whole ``\\n\\nHuman: / \\n\\nAssistant:`` transcripts      pairs
``trl-implicit``   ``chosen, rejected`` strings sharing a prompt prefix, no ``prompt``          pairs
``trl-chat``       message lists: ``prompt`` (messages) + ``chosen`` / ``rejected`` (assistant   pairs
                   messages), or without ``prompt``: two whole conversations (implicit prompt)
``ultrafeedback``  binarized UltraFeedback: ``prompt``, ``chosen`` / ``rejected`` conversations,  pairs
                   ``score_chosen`` / ``score_rejected`` (margin = the score difference)
``label-studio``   Label Studio JSON export of the pairwise template: tasks whose ``data`` holds   pairs
                   the prompt and two replies, ``annotations[].result[]`` a ``pairwise``
                   ``{"selected": "left" | "right"}``
``argilla``        Argilla records (``fields`` + ``responses``, or flat columns): a *ranking*       pairs /
                   question (best over worst of the ranked replies) or a *rating* question         ratings
=================  ==========================================================================  ===========

Multi-turn prompts keep their turns: ``prompt_messages`` holds them as JSON, ``prompt`` their text form
(:func:`components.data.prompt_pool.prompt_text`). ``--map prompt=COL,chosen=COL,...`` renames columns first (the
canonical names: prompt, chosen, rejected, response, rating, left, right). A row a converter cannot read is kept
as an :class:`~components.data.feedback.io.UnparseableRow` (quarantined as ``unparseable``), never dropped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from components.data.feedback.schema import PAIRS, RATINGS, FeedbackFileError
from components.data.prompt_pool import prompt_text

FORMATS = (
    "pairs",
    "ratings",
    "hh-rlhf",
    "trl-implicit",
    "trl-chat",
    "ultrafeedback",
    "label-studio",
    "argilla",
)

LINE = "_line"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
PROMPT_NAMES = ("prompt", "question", "instruction", "input", "query")


class RowError(ValueError):
    """One row that the format's converter cannot read (quarantined as unparseable with this message)."""


def parse_mapping(spec: str | None) -> dict[str, str]:
    """``prompt=question,chosen=good`` -> ``{"question": "prompt", "good": "chosen"}`` (file column -> ours)."""
    if not spec:
        return {}
    out = {}
    for part in spec.split(","):
        ours, sep, theirs = part.partition("=")
        if not sep or not ours.strip() or not theirs.strip():
            raise ValueError(f"--map {spec!r}: expected NAME=COLUMN pairs separated by commas, got {part!r}")
        out[theirs.strip()] = ours.strip()
    return out


# --- detection ---------------------------------------------------------------------------------------------------


def _is_messages(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(m, Mapping) and "role" in m for m in v)


def _first(frame: pd.DataFrame, col: str) -> Any:
    values = frame[col].dropna() if col in frame.columns else []
    return values.iloc[0] if len(values) else None


def candidates(frame: pd.DataFrame) -> list[str]:
    """Every format the columns and first values fit (more than one: ambiguous)."""
    cols = set(frame.columns) - {LINE}
    found = []
    if "annotations" in cols and "data" in cols:
        found.append("label-studio")
    if ("responses" in cols and "fields" in cols) or any(c.endswith(".responses") for c in cols):
        found.append("argilla")
    chosen = _first(frame, "chosen")
    if {"chosen", "rejected"} <= cols:
        if "score_chosen" in cols or "score_rejected" in cols:
            found.append("ultrafeedback")
        elif _is_messages(chosen) or _is_messages(_first(frame, "prompt")):
            found.append("trl-chat")
        elif "prompt" in cols:
            found.append("pairs")
        elif isinstance(chosen, str) and _HH_TURN.search("\n\n" + chosen.lstrip("\n")):
            found.append("hh-rlhf")
        elif isinstance(chosen, str):
            found.append("trl-implicit")
    if {"prompt", "response", "rating"} <= cols:
        found.append("ratings")
    return found


def detect(frame: pd.DataFrame, path: str) -> str:
    found = candidates(frame)
    if len(found) == 1:
        return found[0]
    cols = ", ".join(sorted(set(frame.columns) - {LINE})) or "none"
    if not found:
        from components.data.feedback.schema import detect_kind

        try:
            detect_kind(set(frame.columns) - {LINE}, path)
            missing = None
        except FeedbackFileError as exc:
            missing = exc.column
        raise FeedbackFileError(
            path,
            f"cannot tell the format: missing {missing} (found: {cols}). Known formats: "
            f"{', '.join(FORMATS)}. Rename columns with --map prompt=COL,chosen=COL,rejected=COL (or "
            "response=COL,rating=COL), or pass --format",
            column=missing,
        )
    raise FeedbackFileError(
        path,
        f"the rows fit several formats ({', '.join(found)}; found: {cols}): pass --format {found[0]} "
        f"(or one of the others) to say which",
    )


# --- converters: one dict row in -> one stored row out (or RowError) --------------------------------------------


def split_hh(transcript: str) -> list[dict[str, str]]:
    """``\\n\\nHuman: a\\n\\nAssistant: b ...`` -> ``[{"role": "user", "content": "a"}, ...]``."""
    text = "\n\n" + transcript.lstrip("\n")
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise RowError("text before the first 'Human:' turn")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[r], "content": c.strip()} for r, c in zip(parts[1::2], parts[2::2])]


def _prompt_fields(messages: list[dict[str, str]]) -> dict[str, Any]:
    """``prompt`` (text form) and ``prompt_messages`` (JSON, only for a conversation) of a prompt."""
    if not messages:
        raise RowError("empty prompt")
    if messages[-1]["role"] != "user":
        raise RowError(f"the prompt must end with a user turn, it ends with {messages[-1]['role']!r}")
    if len(messages) == 1:
        return {"prompt": messages[0]["content"], "prompt_messages": None}
    return {"prompt": prompt_text(messages), "prompt_messages": json.dumps(messages, ensure_ascii=False)}


def _split_conversations(chosen: list, rejected: list) -> tuple[list, str, str]:
    """Two conversations sharing all but their last (assistant) message -> (prompt messages, chosen, rejected)."""
    if not chosen or not rejected:
        raise RowError("empty conversation")
    c, r = _messages(chosen), _messages(rejected)
    if c[-1]["role"] != "assistant" or r[-1]["role"] != "assistant":
        raise RowError("the conversations must end with the assistant's reply")
    if c[:-1] != r[:-1]:
        raise RowError("chosen and rejected do not share the conversation up to the final assistant reply")
    return c[:-1], c[-1]["content"], r[-1]["content"]


def _messages(v: Any) -> list[dict[str, str]]:
    if not _is_messages(v):
        raise RowError(f"expected a list of {{role, content}} messages, got {str(v)[:60]!r}")
    out = []
    for m in v:
        role, content = m.get("role"), m.get("content")
        if role == "system":
            continue  # the project's own system prompt replaces a file's
        if role not in ("user", "assistant") or not isinstance(content, str):
            raise RowError(f"bad message {str(m)[:60]!r}: role must be user/assistant, content a string")
        out.append({"role": role, "content": content})
    return out


def _reply(v: Any) -> str:
    """A reply given as a string or as a list holding one assistant message (TRL's conversational format)."""
    if isinstance(v, str):
        return v
    msgs = _messages(v)
    if len(msgs) != 1 or msgs[0]["role"] != "assistant":
        raise RowError("a reply must be one assistant message")
    return msgs[0]["content"]


def _prompt(v: Any) -> dict[str, Any]:
    if isinstance(v, str):
        return {"prompt": v, "prompt_messages": None}
    return _prompt_fields(_messages(v))


def from_hh(row: dict) -> dict:
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        raise RowError("HH-RLHF pair: chosen and rejected must both be text")
    prompt, c, r = _split_conversations(split_hh(chosen), split_hh(rejected))
    return {**_prompt_fields(prompt), "chosen": c, "rejected": r, "source": "hh-rlhf", "annotator": "human"}


def from_trl_implicit(row: dict) -> dict:
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        raise RowError("chosen and rejected must both be text")
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    cut = max(chosen.rfind(ch, 0, n) for ch in " \n") + 1 if n < len(chosen) else n  # at a word boundary
    prompt = chosen[:cut].strip()
    if not prompt:
        raise RowError("chosen and rejected share no prompt (implicit-prompt format)")
    c, r = chosen[cut:].strip(), rejected[cut:].strip()
    return {"prompt": prompt, "prompt_messages": None, "chosen": c, "rejected": r}


def from_trl_chat(row: dict) -> dict:
    if row.get("prompt") is not None:
        return {**_prompt(row["prompt"]), "chosen": _reply(row.get("chosen")), "rejected": _reply(row.get("rejected"))}
    prompt, c, r = _split_conversations(row.get("chosen"), row.get("rejected"))
    return {**_prompt_fields(prompt), "chosen": c, "rejected": r}


def from_ultrafeedback(row: dict) -> dict:
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if _is_messages(chosen):
        prompt, c, r = _split_conversations(chosen, rejected)
        out = {**_prompt_fields(prompt), "chosen": c, "rejected": r}
    else:
        out = {**_prompt(row.get("prompt")), "chosen": _reply(chosen), "rejected": _reply(rejected)}
    sc, sr = row.get("score_chosen"), row.get("score_rejected")
    if isinstance(sc, (int, float)) and isinstance(sr, (int, float)):
        out["margin"] = float(sc) - float(sr)
    return out


def _task_prompt(data: Mapping[str, Any], mapping: Mapping[str, str]) -> tuple[str, list[str]]:
    """The prompt field of a Label Studio / Argilla record and its other text fields, in order."""
    names = {mapping.get(k, k): k for k in data}
    key = names.get("prompt") or next((k for k in data if k in PROMPT_NAMES), None)
    if key is None:
        raise RowError(f"no prompt field among {sorted(data)} (use --map prompt=FIELD)")
    others = [k for k in data if k != key and isinstance(data[k], str)]
    return key, others


def from_label_studio(row: dict, mapping: Mapping[str, str]) -> dict:
    data = row.get("data") or {}
    key, others = _task_prompt(data, mapping)
    names = {mapping.get(k, k): k for k in data}
    left, right = names.get("left"), names.get("right")
    if left is None or right is None:
        if len(others) != 2:
            raise RowError(f"expected two reply fields beside {key!r}, found {others} (use --map left=F,right=F)")
        left, right = others
    choices = []
    for ann in row.get("annotations") or []:
        if ann.get("was_cancelled"):
            continue
        for res in ann.get("result") or []:
            selected = (res.get("value") or {}).get("selected")
            if res.get("type") == "pairwise" and selected in ("left", "right"):
                choices.append((selected, ann.get("completed_by")))
    if not choices:
        raise RowError("no pairwise choice in the task's annotations")
    selected, who = choices[0]
    c, r = (left, right) if selected == "left" else (right, left)
    return {"prompt": data[key], "prompt_messages": None, "chosen": data[c], "rejected": data[r],
            "source": "label-studio", "annotator": str(who) if who is not None else "label-studio"}  # fmt: skip


def _argilla_parts(row: dict) -> tuple[dict, dict]:
    """(fields, {question: value}) of an Argilla record: nested (``fields`` / ``responses``) or flat columns."""
    if isinstance(row.get("fields"), Mapping):
        fields = dict(row["fields"])
        answers: dict[str, Any] = {}
        responses = row.get("responses")
        if isinstance(responses, list):  # Argilla 1.x: [{"values": {q: {"value": v}}, "status"}]
            for resp in responses:
                if resp.get("status", "submitted") != "submitted":
                    continue
                for q, v in (resp.get("values") or {}).items():
                    answers.setdefault(q, v.get("value") if isinstance(v, Mapping) else v)
        elif isinstance(responses, Mapping):  # Argilla 2.x: {q: [{"value", "user_id", "status"}]}
            for q, items in responses.items():
                for item in items or []:
                    if item.get("status", "submitted") == "submitted":
                        answers.setdefault(q, item.get("value"))
        return fields, answers
    fields, answers = {}, {}
    for k, v in row.items():
        if k.endswith(".responses"):
            answers[k.removesuffix(".responses")] = v[0] if isinstance(v, list) and v else v
        elif isinstance(v, str) and "." not in k and k != LINE:
            fields[k] = v
    return fields, answers


def _ranking(value: Any) -> list[tuple[str, int]] | None:
    """An Argilla ranking answer as [(field, rank)], best first; None if it is not a ranking."""
    if isinstance(value, Mapping) and isinstance(value.get("value"), list):  # {"value": [...], "rank": [...]}
        value = [{"value": v, "rank": r} for v, r in zip(value["value"], value.get("rank") or [])]
    if isinstance(value, list) and value and all(isinstance(x, Mapping) and "rank" in x for x in value):
        return sorted(((str(x["value"]), int(x["rank"])) for x in value), key=lambda t: t[1])
    if isinstance(value, list) and value and all(isinstance(x, str) for x in value):  # ordered names
        return [(v, i + 1) for i, v in enumerate(value)]
    return None


def from_argilla(row: dict, mapping: Mapping[str, str]) -> tuple[str, dict]:
    fields, answers = _argilla_parts(row)
    key, others = _task_prompt(fields, mapping)
    for q, value in answers.items():
        ranked = _ranking(value)
        if ranked is not None:
            ranked = [(f, r) for f, r in ranked if f in fields]
            if len(ranked) < 2 or ranked[0][1] == ranked[-1][1]:
                raise RowError(f"ranking {q!r} orders fewer than two distinct replies")
            best, worst = ranked[0], ranked[-1]
            return PAIRS, {"prompt": fields[key], "prompt_messages": None, "chosen": fields[best[0]],
                           "rejected": fields[worst[0]], "margin": float(worst[1] - best[1]),
                           "source": "argilla", "annotator": "argilla"}  # fmt: skip
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            reply = mapping and {mapping.get(k, k): k for k in fields}.get("response")
            reply = reply or (others[0] if len(others) == 1 else None)
            if reply is None:
                raise RowError(f"rating {q!r}: which field is the reply? {others} (use --map response=FIELD)")
            return RATINGS, {"prompt": fields[key], "prompt_messages": None, "response": fields[reply],
                             "rating": value, "source": "argilla", "annotator": "argilla"}  # fmt: skip
    raise RowError(f"no submitted ranking or rating among the answers {sorted(answers)}")


CONVERTERS: dict[str, tuple[str, Callable[[dict], dict]]] = {
    "hh-rlhf": (PAIRS, from_hh),
    "trl-implicit": (PAIRS, from_trl_implicit),
    "trl-chat": (PAIRS, from_trl_chat),
    "ultrafeedback": (PAIRS, from_ultrafeedback),
}
"""Formats whose rows need converting (``pairs`` and ``ratings`` are stored as read)."""


def convert(
    frame: pd.DataFrame, fmt: str, mapping: Mapping[str, str]
) -> tuple[str, pd.DataFrame, list[tuple[int, str, str]]]:
    """(kind, converted rows with ``_line``, [(line, error, raw)] for rows that could not be converted)."""
    rows, bad, kinds = [], [], set()
    for row in frame.to_dict("records"):
        line = int(row.get(LINE, 0))
        try:
            if fmt == "label-studio":
                kind, out = PAIRS, from_label_studio(row, mapping)
            elif fmt == "argilla":
                kind, out = from_argilla(row, mapping)
            else:
                kind, fn = CONVERTERS[fmt]
                out = fn(row)
        except RowError as exc:
            raw = json.dumps({k: v for k, v in row.items() if k != LINE}, default=str, ensure_ascii=False)
            bad.append((line, f"line {line}: {fmt}: {exc}", raw[:500] + ("..." if len(raw) > 500 else "")))
            continue
        for extra in ("source", "annotator", "created_at"):
            if extra in row and isinstance(row[extra], str) and extra not in out:
                out[extra] = row[extra]
        kinds.add(kind)
        rows.append({**out, LINE: line})
    if len(kinds) > 1:
        raise FeedbackFileError("<rows>", f"{fmt}: rows of both kinds (rankings and ratings): import them apart")
    kind = kinds.pop() if kinds else (RATINGS if fmt == "argilla" and "rating" in frame.columns else PAIRS)
    return kind, pd.DataFrame(rows), bad
