"""Build the shipped general benchmarks (the forgetting check) into evaluation/benchmarks/general.

- capitals: world capitals as 4-way multiple choice, generated from the table below (seeded).
- everyday: everyday English knowledge (opposites, plurals, sequences, simple facts) as 4-way
  multiple choice; the distractors come from the same group, so only the right meaning fits.
- mmlu_dev: real MMLU dev questions (4 options, answer letter) taken from the few-shot samples that
  ship inside lm-evaluation-harness (lm_eval/tasks/mmlu/flan_cot_fewshot/*.yaml); MIT licensed.

- bb_knowledge / bb_reasoning: real BIG-bench multiple-choice items (Apache-2.0), read straight
  from the PyPI sdist bigbench==1.0.0 (bigbench/benchmark_tasks/<task>/task.json). Options are cut to
  the answer plus at most 3 distractors and shuffled (seeded; BIG-bench often lists the answer first);
  items with long inputs are dropped; tasks are sampled round-robin so that none dominates.
  Both list the options as A-D and score the answer letter (one forward per item; cloze scoring of
  the option texts scored higher on a 135M model but cost ~7x the time).
- ifeval_lite: short real questions (BIG-bench strategyqa, periodic_elements/subtask_1, qa_wikidata)
  each with one or two of IFEval's verifiable instructions; scored by generation with
  evaluation/instructions.py (IFEval's checkers, strict prompt-level accuracy).
- pydoc_prose: held-out English prose from the stdlib's pydoc_data.topics (PSF license), paragraph-
  aligned chunks of ~1,000-1,500 characters (indented code/grammar blocks dropped), scored as
  loglikelihood_rolling. The text depends on the Python version: the YAML records the one used.
- training/replay_prompts.jsonl: general prompts for self-rehearsal replay (BIG-bench strategyqa,
  misconceptions, anachronisms, simple_ethical_questions), none of them in any general benchmark.

The outputs are committed; this script documents where they came from and rebuilds them.

    pip download --no-deps bigbench==1.0.0 -d /tmp/bigbench   # 358 MB sdist, build time only
    python scripts/make_general_benchmarks.py [--bigbench PATH/bigbench-1.0.0.tar.gz]

Re-run it with the same Python minor version (pydoc_prose records it) to reproduce byte for byte.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tarfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "evaluation" / "benchmarks" / "general"
REPLAY = ROOT / "training" / "replay_prompts.jsonl"
BIGBENCH_SDIST = "/tmp/bigbench/bigbench-1.0.0.tar.gz"

CAPITALS = {
    "Afghanistan": "Kabul", "Argentina": "Buenos Aires", "Australia": "Canberra", "Austria": "Vienna",
    "Bangladesh": "Dhaka", "Belgium": "Brussels", "Brazil": "Brasilia", "Bulgaria": "Sofia",
    "Canada": "Ottawa", "Chile": "Santiago", "China": "Beijing", "Colombia": "Bogota",
    "Croatia": "Zagreb", "Cuba": "Havana", "Czech Republic": "Prague", "Denmark": "Copenhagen",
    "Egypt": "Cairo", "Estonia": "Tallinn", "Ethiopia": "Addis Ababa", "Finland": "Helsinki",
    "France": "Paris", "Germany": "Berlin", "Ghana": "Accra", "Greece": "Athens",
    "Hungary": "Budapest", "Iceland": "Reykjavik", "India": "New Delhi", "Indonesia": "Jakarta",
    "Iran": "Tehran", "Iraq": "Baghdad", "Ireland": "Dublin", "Israel": "Jerusalem",
    "Italy": "Rome", "Japan": "Tokyo", "Jordan": "Amman", "Kenya": "Nairobi",
    "Latvia": "Riga", "Lebanon": "Beirut", "Lithuania": "Vilnius", "Malaysia": "Kuala Lumpur",
    "Mexico": "Mexico City", "Morocco": "Rabat", "Nepal": "Kathmandu", "Netherlands": "Amsterdam",
    "New Zealand": "Wellington", "Nigeria": "Abuja", "North Korea": "Pyongyang", "Norway": "Oslo",
    "Pakistan": "Islamabad", "Peru": "Lima", "Philippines": "Manila", "Poland": "Warsaw",
    "Portugal": "Lisbon", "Qatar": "Doha", "Romania": "Bucharest", "Russia": "Moscow",
    "Saudi Arabia": "Riyadh", "Senegal": "Dakar", "Serbia": "Belgrade", "Singapore": "Singapore",
    "Slovakia": "Bratislava", "South Africa": "Pretoria", "South Korea": "Seoul", "Spain": "Madrid",
    "Sri Lanka": "Colombo", "Sweden": "Stockholm", "Switzerland": "Bern", "Syria": "Damascus",
    "Thailand": "Bangkok", "Tunisia": "Tunis", "Turkey": "Ankara", "Uganda": "Kampala",
    "Ukraine": "Kyiv", "United Kingdom": "London", "United States": "Washington, D.C.", "Uruguay": "Montevideo",
    "Venezuela": "Caracas", "Vietnam": "Hanoi", "Zambia": "Lusaka", "Zimbabwe": "Harare",
}


def capitals(rng: random.Random) -> list[dict]:
    rows = []
    cities = sorted(CAPITALS.values())
    for country, capital in sorted(CAPITALS.items()):
        choices = rng.sample([c for c in cities if c != capital], 3) + [capital]
        rng.shuffle(choices)
        rows.append({"country": country, "choices": choices, "label": choices.index(capital)})
    return rows


# (group, prompt, answer): distractors are drawn from the other answers of the same group.
EVERYDAY = [
    ("opposite", "The opposite of hot is", "cold"), ("opposite", "The opposite of big is", "small"),
    ("opposite", "The opposite of fast is", "slow"), ("opposite", "The opposite of happy is", "sad"),
    ("opposite", "The opposite of up is", "down"), ("opposite", "The opposite of open is", "closed"),
    ("opposite", "The opposite of early is", "late"), ("opposite", "The opposite of light is", "dark"),
    ("opposite", "The opposite of full is", "empty"), ("opposite", "The opposite of young is", "old"),
    ("opposite", "The opposite of win is", "lose"), ("opposite", "The opposite of buy is", "sell"),
    ("opposite", "The opposite of north is", "south"), ("opposite", "The opposite of wet is", "dry"),
    ("opposite", "The opposite of cheap is", "expensive"), ("opposite", "The opposite of inside is", "outside"),
    ("plural", "The plural of mouse is", "mice"), ("plural", "The plural of child is", "children"),
    ("plural", "The plural of foot is", "feet"), ("plural", "The plural of tooth is", "teeth"),
    ("plural", "The plural of woman is", "women"), ("plural", "The plural of person is", "people"),
    ("plural", "The plural of goose is", "geese"), ("plural", "The plural of leaf is", "leaves"),
    ("plural", "The plural of box is", "boxes"), ("plural", "The plural of city is", "cities"),
    ("next day", "Monday, Tuesday, Wednesday,", "Thursday"), ("next day", "Thursday, Friday, Saturday,", "Sunday"),
    ("next day", "Saturday, Sunday,", "Monday"), ("next day", "Sunday, Monday,", "Tuesday"),
    ("next day", "Tuesday, Wednesday, Thursday,", "Friday"), ("next day", "Wednesday, Thursday,", "Friday"),
    ("next month", "January, February, March,", "April"), ("next month", "May, June,", "July"),
    ("next month", "August, September,", "October"), ("next month", "October, November,", "December"),
    ("next month", "March, April,", "May"), ("next month", "June, July,", "August"),
    ("number", "One, two, three, four,", "five"), ("number", "Six, seven, eight,", "nine"),
    ("number", "Ten, eleven, twelve,", "thirteen"), ("number", "Two, four, six,", "eight"),
    ("number", "Five, ten, fifteen,", "twenty"), ("number", "A dozen eggs is", "twelve"),
    ("color", "The color of grass is", "green"), ("color", "The color of the clear sky is", "blue"),
    ("color", "The color of snow is", "white"), ("color", "The color of a ripe banana is", "yellow"),
    ("color", "The color of coal is", "black"), ("color", "The color of a ripe tomato is", "red"),
    ("color", "The color of an orange is", "orange"), ("color", "The color of chocolate is", "brown"),
    ("young animal", "A baby dog is called a", "puppy"), ("young animal", "A baby cat is called a", "kitten"),
    ("young animal", "A baby cow is called a", "calf"), ("young animal", "A baby sheep is called a", "lamb"),
    ("young animal", "A baby horse is called a", "foal"), ("young animal", "A baby frog is called a", "tadpole"),
    ("body", "You see with your", "eyes"), ("body", "You hear with your", "ears"),
    ("body", "You smell with your", "nose"), ("body", "You chew food with your", "teeth"),
    ("body", "You walk on your", "feet"), ("body", "Blood is pumped by the", "heart"),
    ("science", "Water freezes at zero degrees", "Celsius"), ("science", "The Earth orbits the", "Sun"),
    ("science", "Plants take in carbon dioxide and give off", "oxygen"), ("science", "The Moon orbits the", "Earth"),
    ("science", "A triangle has three", "sides"), ("science", "Ice is frozen", "water"),
    ("place", "The Eiffel Tower is in", "Paris"), ("place", "The Great Wall is in", "China"),
    ("place", "The Statue of Liberty is in", "New York"), ("place", "The Colosseum is in", "Rome"),
    ("place", "Big Ben is in", "London"), ("place", "The pyramids of Giza are in", "Egypt"),
]


def everyday(rng: random.Random) -> list[dict]:
    rows = []
    for group, prompt, answer in EVERYDAY:
        pool = sorted({a for g, _, a in EVERYDAY if g == group and a != answer})
        choices = rng.sample(pool, 3) + [answer]
        rng.shuffle(choices)
        rows.append({"group": group, "prompt": prompt, "choices": choices, "label": choices.index(answer)})
    return rows


_OPTION = re.compile(r"\n?\(([A-D])\)\s*")


def mmlu_dev() -> list[dict]:
    import lm_eval

    folder = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "flan_cot_fewshot"
    rows = []
    for path in sorted(folder.glob("mmlu_*.yaml")):
        spec = yaml.safe_load(path.read_text())
        subject = spec["dataset_name"]
        for sample in spec["fewshot_config"]["samples"]:
            answer = re.search(r"answer is \(([A-D])\)", sample["target"])
            parts = _OPTION.split(sample["question"])
            # parts = [stem, "A", text, "B", text, "C", text, "D", text]
            if not answer or len(parts) != 9 or parts[1::2] != ["A", "B", "C", "D"]:
                continue
            rows.append({
                "subject": subject,
                "question": parts[0].strip(),
                "choices": [p.strip() for p in parts[2::2]],
                "label": "ABCD".index(answer.group(1)),
            })
    return rows


# ---------------------------------------------------------------- BIG-bench (Apache-2.0)
BB_KNOWLEDGE = [
    "emoji_movie", "fantasy_reasoning", "general_knowledge", "hindu_knowledge", "human_organs_senses",
    "known_unknowns", "logical_sequence", "movie_recommendation", "odd_one_out", "periodic_elements/subtask_0",
    "phrase_relatedness", "physical_intuition", "riddle_sense", "similarities_abstraction", "social_iqa",
]
BB_REASONING = [
    "analytic_entailment", "arithmetic/1_digit_addition", "arithmetic/1_digit_multiplication",
    "arithmetic/1_digit_subtraction", "arithmetic/2_digit_addition", "causal_judgment", "cause_and_effect/one_sentence",
    "date_understanding", "disambiguation_qa", "elementary_math_qa/question_only", "entailed_polarity",
    "epistemic_reasoning", "implicatures", "logical_deduction/three_objects", "logical_fallacy_detection", "navigate",
    "penguins_in_a_table", "presuppositions_as_nli", "reasoning_about_colored_objects", "temporal_sequences",
    "tracking_shuffled_objects/three_objects", "winowhy",
]
IFEVAL_QUESTIONS = ["strategyqa", "periodic_elements/subtask_1", "qa_wikidata"]
REPLAY_TASKS = {"strategyqa": 150, "misconceptions": 60, "anachronisms": 45, "simple_ethical_questions": 45}
WANTED = set(BB_KNOWLEDGE) | set(BB_REASONING) | set(IFEVAL_QUESTIONS) | set(REPLAY_TASKS)


def read_bigbench(sdist: str) -> dict[str, dict]:
    """The task.json of every wanted task, read straight from the bigbench sdist."""
    tasks = {}
    with tarfile.open(sdist) as tf:
        for member in tf:
            match = re.search(r"bigbench/benchmark_tasks/(.+)/task\.json$", member.name)
            if member.isfile() and match and match.group(1) in WANTED:
                tasks[match.group(1)] = json.load(tf.extractfile(member))
    missing = WANTED - set(tasks)
    if missing:
        raise SystemExit(f"bigbench sdist lacks {sorted(missing)}")
    return tasks


def _clean(text: str) -> str:
    return re.sub(r"[ \t]+\n", "\n", text).strip()


def bb_multiple_choice(spec: dict, task: str, rng: random.Random, max_chars: int) -> list[dict]:
    """Single-answer items of one task: the answer plus <= 3 distractors, shuffled."""
    prefix = _clean(spec.get("task_prefix", ""))
    rows = []
    for example in spec["examples"]:
        scores = example.get("target_scores") or {}
        right = [k for k, v in scores.items() if v == 1]
        if len(right) != 1 or sum(1 for v in scores.values() if v > 0) != 1:
            continue
        text = _clean(example["input"])
        if not text or len(text) + len(prefix) > max_chars:
            continue
        wrong = sorted({k.strip() for k in scores if k != right[0]} - {right[0].strip()})
        options = rng.sample(wrong, min(3, len(wrong))) + [right[0].strip()]
        if len(options) < 2 or any(not o or len(o) > 120 for o in options):
            continue
        rng.shuffle(options)
        rows.append({"task": task, "prefix": prefix, "input": text, "choices": options,
                     "label": options.index(right[0].strip())})
    rows.sort(key=lambda r: (r["input"], r["choices"]))
    rng.shuffle(rows)
    return rows


def round_robin(pools: dict[str, list[dict]], total: int) -> list[dict]:
    """Take items task by task in turn until ``total``: small tasks are used up, none dominates."""
    picked, cursor = [], {t: 0 for t in pools}
    while len(picked) < total and any(cursor[t] < len(pools[t]) for t in pools):
        for task in sorted(pools):
            if len(picked) < total and cursor[task] < len(pools[task]):
                picked.append(pools[task][cursor[task]])
                cursor[task] += 1
    return sorted(picked, key=lambda r: (r["task"], r["input"]))


def _lettered(rows: list[dict], separator: str) -> list[dict]:
    for row in rows:  # lettered options, scored by the answer letter: one forward per item
        options = "".join(f"{'ABCD'[i]}. {o}\n" for i, o in enumerate(row["choices"]))
        row["prompt"] = (row.pop("prefix") + separator if row["prefix"] else "") + f"Question: {row['input']}\n{options}Answer:"
        row["letters"] = list("ABCD"[: len(row["choices"])])
    return rows


def bb_knowledge(tasks: dict[str, dict], total: int) -> list[dict]:
    pools = {t: bb_multiple_choice(tasks[t], t, random.Random(f"knowledge/{t}"), 300) for t in BB_KNOWLEDGE}
    return _lettered(round_robin(pools, total), "\n")


def bb_reasoning(tasks: dict[str, dict], total: int) -> list[dict]:
    pools = {t: bb_multiple_choice(tasks[t], t, random.Random(f"reasoning/{t}"), 700) for t in BB_REASONING}
    return _lettered(round_robin(pools, total), "\n\n")


# ---------------------------------------------------------------- instruction following
def _questions(tasks: dict[str, dict], task: str) -> list[str]:
    out = set()
    for example in tasks[task]["examples"]:
        text = _clean(example["input"])
        if 10 < len(text) < 160 and "\n" not in text:
            out.add(text if task != "qa_wikidata" else f'Complete the sentence: "{text} ..."')
    return sorted(out)


SIMPLE = [
    "change_case:english_lowercase", "change_case:english_capital", "punctuation:no_comma", "startend:end_checker",
    "startend:quotation", "keywords:existence", "keywords:forbidden_words", "length_constraints:number_words",
    "detectable_format:json_format", "detectable_format:title", "detectable_content:postscript",
    "detectable_format:number_bullet_lists",
]
PAIRS = [  # combinations that do not contradict each other
    ("punctuation:no_comma", "length_constraints:number_words"), ("change_case:english_lowercase", "punctuation:no_comma"),
    ("change_case:english_lowercase", "length_constraints:number_words"), ("detectable_format:title", "punctuation:no_comma"),
    ("keywords:existence", "length_constraints:number_words"), ("change_case:english_capital", "keywords:existence"),
    ("startend:end_checker", "punctuation:no_comma"), ("startend:quotation", "length_constraints:number_words"),
    ("detectable_format:title", "keywords:forbidden_words"), ("change_case:english_lowercase", "startend:end_checker"),
]
STOP = {"which", "would", "could", "there", "their", "about", "their", "other", "after", "before", "being", "complete",
        "sentence", "element", "contains", "proton", "protons", "electron", "electrons", "neutron", "neutrons"}


def _kwargs(instruction: str, question: str, rng: random.Random) -> dict:
    words = sorted({w.lower() for w in re.findall(r"[A-Za-z]{5,}", question)} - STOP)
    if instruction == "startend:end_checker":
        return {"end_phrase": rng.choice(["Any other questions?", "Is there anything else I can help with?"])}
    if instruction == "keywords:existence":
        return {"keywords": [rng.choice(words)] if words else ["answer"]}
    if instruction == "keywords:forbidden_words":
        return {"forbidden_words": [rng.choice(words)] if words else ["the"]}
    if instruction == "length_constraints:number_words":
        return {"num_words": rng.choice([10, 15, 20, 25, 30]), "relation": "less than"}
    if instruction == "detectable_content:postscript":
        return {"postscript_marker": rng.choice(["P.S.", "P.P.S"])}
    if instruction == "detectable_format:number_bullet_lists":
        return {"num_bullets": rng.choice([2, 3])}
    return {}


def ifeval_lite(tasks: dict[str, dict], per_source: dict[str, int], exclude: set[str]) -> list[dict]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("instructions", ROOT / "evaluation" / "instructions.py")
    instructions = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(instructions)
    rng = random.Random(2024)
    rows = []
    for task, count in per_source.items():
        pool = [q for q in _questions(tasks, task) if q not in exclude]
        for question in rng.sample(pool, count):
            r = rng.random()
            if task == "strategyqa" and r < 0.15:
                ids = ["detectable_format:constrained_response"]
            elif r < 0.7:
                ids = [rng.choice(SIMPLE)]
            else:
                ids = list(rng.choice(PAIRS))
            kwargs = [_kwargs(i, question, rng) for i in ids]
            text = " ".join(instructions.describe(i, k) for i, k in zip(ids, kwargs))
            rows.append({"source": task, "question": question, "prompt": f"{question} {text}",
                         "instruction_id_list": ids, "kwargs": kwargs})
    return sorted(rows, key=lambda r: r["prompt"])


# ---------------------------------------------------------------- pydoc prose (PSF license)
def pydoc_prose(count: int) -> list[dict]:
    from pydoc_data.topics import topics

    chunks = []
    for topic in sorted(t for t, text in topics.items() if len(text) > 2000):
        paragraphs = [p.strip("\n") for p in re.split(r"\n\s*\n", topics[topic])]
        prose = [p for p in paragraphs if p and not p[0].isspace() and not re.fullmatch(r"[*=\-~^]+", p.strip())
                 and not p.startswith(("See also", "Changed in", "Added in", "New in", "Deprecated"))
                 and len(p) > 80]
        current = ""
        for paragraph in prose:
            current = f"{current}\n\n{paragraph}" if current else paragraph
            if len(current) >= 1000:
                if len(current) <= 1500:
                    chunks.append({"topic": topic, "text": current})
                current = ""
    rng = random.Random(5)
    picked = rng.sample(chunks, min(count, len(chunks)))
    return sorted(picked, key=lambda r: (r["topic"], r["text"]))


# ---------------------------------------------------------------- replay prompts
def replay_prompts(tasks: dict[str, dict], exclude: set[str]) -> list[dict]:
    rng = random.Random(99)
    rows = []
    for task, count in REPLAY_TASKS.items():
        prefix = _clean(tasks[task].get("task_prefix", ""))
        pool = sorted({_clean(e["input"]) for e in tasks[task]["examples"] if 10 < len(_clean(e["input"])) < 400})
        pool = [q for q in pool if q not in exclude]
        for text in rng.sample(pool, count):
            if task == "misconceptions":
                text = f"Is the following statement true or false? Explain briefly.\n{text}"
            elif task == "anachronisms":
                text = f"Does this sentence contain an anachronism? Explain briefly.\n{text}"
            elif prefix:
                text = f"{prefix}\n{text}"
            rows.append({"prompt": text, "source": f"bigbench/{task} (Apache-2.0)"})
    return sorted(rows, key=lambda r: r["prompt"])


def write(name: str, rows: list[dict], path: Path | None = None) -> None:
    with open(path or OUT / f"{name}.jsonl", "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{name}: {len(rows)} items")


SIZES = {"bb_knowledge": 400, "bb_reasoning": 400, "ifeval_lite": 600, "pydoc_prose": 50}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bigbench", default=BIGBENCH_SDIST, help="path of the bigbench-1.0.0.tar.gz sdist")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    write("capitals", capitals(random.Random(7)))
    write("everyday", everyday(random.Random(11)))
    write("mmlu_dev", mmlu_dev())
    tasks = read_bigbench(args.bigbench)
    knowledge, reasoning = bb_knowledge(tasks, SIZES["bb_knowledge"]), bb_reasoning(tasks, SIZES["bb_reasoning"])
    write("bb_knowledge", knowledge)
    write("bb_reasoning", reasoning)
    # ifeval_lite and the replay prompts draw disjoint questions (strategyqa feeds both).
    replay = replay_prompts(tasks, set())
    used = {row["prompt"].split("\n")[-1] for row in replay} | {r["input"] for r in knowledge + reasoning}
    write("ifeval_lite", ifeval_lite(tasks, {"strategyqa": 240, "periodic_elements/subtask_1": 120, "qa_wikidata": 240}, used))
    write("pydoc_prose", pydoc_prose(SIZES["pydoc_prose"]))
    print(f"pydoc_prose cut from Python {sys.version_info.major}.{sys.version_info.minor}")
    write("replay_prompts", replay, REPLAY)


if __name__ == "__main__":
    main()
