"""Scorer of the ``ifeval_lite`` general benchmark: IFEval's verifiable-instruction checks.

Each item carries IFEval's ``instruction_id_list`` and ``kwargs`` (one dict per instruction). An item
counts as followed only when the raw response follows every instruction (IFEval's strict
prompt-level accuracy). The checks are ported one-to-one from IFEval's own checkers as shipped in
lm-evaluation-harness (``lm_eval/tasks/ifeval/instructions.py``, Apache-2.0, Google Research), for
the instruction kinds the benchmark uses, so that scoring needs no extra package: lm-eval's module
imports ``langdetect`` and ``immutabledict`` and downloads NLTK's ``punkt_tab`` at import time.
One deliberate difference: the two case checks do not also run ``langdetect`` (IFEval additionally
requires the text to be detected as English; every prompt here is English and the detector is
randomised unless seeded).

    >>> doc = {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
    >>> process_results(doc, ["Paris is the capital"])
    {'acc': 1.0}
    >>> process_results(doc, ["Paris, France"])
    {'acc': 0.0}
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any


def _count_words(text: str) -> int:
    # IFEval: nltk.tokenize.RegexpTokenizer(r"\w+").tokenize(text)
    return len(re.findall(r"\w+", text))


def _lowercase(value: str, **_: Any) -> bool:
    return value.islower()


def _capital(value: str, **_: Any) -> bool:
    return value.isupper()


def _no_comma(value: str, **_: Any) -> bool:
    return not re.search(r"\,", value)


def _end_checker(value: str, *, end_phrase: str, **_: Any) -> bool:
    return value.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def _quotation(value: str, **_: Any) -> bool:
    value = value.strip()
    return len(value) > 1 and value[0] == '"' and value[-1] == '"'


def _keywords(value: str, *, keywords: list[str], **_: Any) -> bool:
    return all(re.search(keyword, value, flags=re.IGNORECASE) for keyword in keywords)


def _forbidden(value: str, *, forbidden_words: list[str], **_: Any) -> bool:
    return not any(re.search(r"\b" + word + r"\b", value, flags=re.IGNORECASE) for word in forbidden_words)


def _number_words(value: str, *, num_words: int, relation: str, **_: Any) -> bool:
    count = _count_words(value)
    return count < num_words if relation == "less than" else count >= num_words


def _json(value: str, **_: Any) -> bool:
    value = (
        value.strip().removeprefix("```json").removeprefix("```Json").removeprefix("```JSON")
        .removeprefix("```").removesuffix("```").strip()
    )
    try:
        json.loads(value)
    except ValueError:
        return False
    return True


def _title(value: str, **_: Any) -> bool:
    return any(title.lstrip("<").rstrip(">").strip() for title in re.findall(r"<<[^\n]+>>", value))


CONSTRAINED_RESPONSES = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


def _constrained(value: str, **_: Any) -> bool:
    value = value.strip()
    return any(option in value for option in CONSTRAINED_RESPONSES)


def _postscript(value: str, *, postscript_marker: str, **_: Any) -> bool:
    value = value.lower()
    if postscript_marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif postscript_marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + postscript_marker.lower() + r".*$"
    return bool(re.findall(pattern, value, flags=re.MULTILINE))


def _bullets(value: str, *, num_bullets: int, **_: Any) -> bool:
    stars = re.findall(r"^\s*\*[^\*].*$", value, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", value, flags=re.MULTILINE)
    return len(stars) + len(dashes) == num_bullets


# instruction id (IFEval's) -> (check, description template, IFEval's wording)
INSTRUCTIONS: dict[str, tuple[Callable[..., bool], str]] = {
    "change_case:english_lowercase": (
        _lowercase, "Your entire response should be in English, and in all lowercase letters. No capital letters are allowed."),
    "change_case:english_capital": (_capital, "Your entire response should be in English, and in all capital letters."),
    "punctuation:no_comma": (_no_comma, "In your entire response, refrain from the use of any commas."),
    "startend:end_checker": (
        _end_checker, "Finish your response with this exact phrase {end_phrase}. No other words should follow this phrase."),
    "startend:quotation": (_quotation, "Wrap your entire response with double quotation marks."),
    "keywords:existence": (_keywords, "Include keywords {keywords} in the response."),
    "keywords:forbidden_words": (_forbidden, "Do not include keywords {forbidden_words} in the response."),
    "length_constraints:number_words": (_number_words, "Answer with {relation} {num_words} words."),
    "detectable_format:json_format": (
        _json, "Entire output should be wrapped in JSON format. You can use markdown ticks such as ```."),
    "detectable_format:title": (
        _title, "Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>."),
    "detectable_format:constrained_response": (
        _constrained, "Answer with one of the following options: {response_options}"),
    "detectable_content:postscript": (
        _postscript, "At the end of your response, please explicitly add a postscript starting with {postscript_marker}"),
    "detectable_format:number_bullet_lists": (
        _bullets,
        "Your answer must contain exactly {num_bullets} bullet points. Use the markdown bullet points such as:\n"
        "* This is point 1. \n* This is point 2"),
}


def describe(instruction_id: str, kwargs: dict[str, Any]) -> str:
    """IFEval's wording of one instruction.

    >>> describe("length_constraints:number_words", {"relation": "less than", "num_words": 20})
    'Answer with less than 20 words.'
    """
    args = {k: v for k, v in kwargs.items() if v is not None}
    if instruction_id == "detectable_format:constrained_response":
        args["response_options"] = CONSTRAINED_RESPONSES
    return INSTRUCTIONS[instruction_id][1].format(**args)


def follows(instruction_id: str, kwargs: dict[str, Any] | None, response: str) -> bool:
    """Whether ``response`` follows one instruction (empty responses follow nothing, as in IFEval).

    >>> follows("startend:end_checker", {"end_phrase": "Any other questions?"}, "Paris. Any other questions?")
    True
    >>> follows("detectable_format:title", {}, "No title here")
    False
    """
    if not response.strip():
        return False
    check = INSTRUCTIONS[instruction_id][0]
    return bool(check(response, **{k: v for k, v in (kwargs or {}).items() if v is not None}))


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """lm-eval ``process_results``: strict prompt-level accuracy of one generated response.

    >>> doc = {"instruction_id_list": ["change_case:english_lowercase", "length_constraints:number_words"],
    ...        "kwargs": [{"num_words": None}, {"num_words": 5, "relation": "less than"}]}
    >>> process_results(doc, ["the sun"])
    {'acc': 1.0}
    >>> process_results(doc, ["The sun"])
    {'acc': 0.0}
    >>> process_results(doc, ["the sun is a star of our solar system"])
    {'acc': 0.0}
    """
    response = results[0]
    kwargs = doc.get("kwargs") or [{}] * len(doc["instruction_id_list"])
    ok = all(follows(iid, kw, response) for iid, kw in zip(doc["instruction_id_list"], kwargs, strict=True))
    return {"acc": 1.0 if ok else 0.0}
