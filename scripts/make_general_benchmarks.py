"""Build the shipped general benchmarks (the forgetting check) into evaluation/benchmarks/general.

- capitals: world capitals as 4-way multiple choice, generated from the table below (seeded).
- everyday: everyday English knowledge (opposites, plurals, sequences, simple facts) as 4-way
  multiple choice; the distractors come from the same group, so only the right meaning fits.
- mmlu_dev: real MMLU dev questions (4 options, answer letter) taken from the few-shot samples that
  ship inside lm-evaluation-harness (lm_eval/tasks/mmlu/flan_cot_fewshot/*.yaml); MIT licensed.

The outputs are committed; this script documents where they came from and rebuilds them.

    python scripts/make_general_benchmarks.py
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import yaml

OUT = Path(__file__).resolve().parents[1] / "evaluation" / "benchmarks" / "general"

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


def write(name: str, rows: list[dict]) -> None:
    with open(OUT / f"{name}.jsonl", "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{name}: {len(rows)} items")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    write("capitals", capitals(random.Random(7)))
    write("everyday", everyday(random.Random(11)))
    write("mmlu_dev", mmlu_dev())


if __name__ == "__main__":
    main()
