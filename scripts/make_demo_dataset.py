"""Generate the shipped demo dataset: support tickets labelled with a JSON triage decision.

Run once to (re)create ``customizer/datasets/support-tickets``; the output is committed, so the
demo never depends on this script. The generator is seeded: the same code writes the same bytes.

    python scripts/make_demo_dataset.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "customizer" / "datasets" / "support-tickets"

INSTRUCTION = (
    "Triage this support ticket. Reply with JSON only, with the keys \"category\" "
    "(billing, technical, account or shipping) and \"priority\" (low, medium or high)."
)

ISSUES = {
    "billing": [
        "I was charged twice for my {plan} subscription this month",
        "my invoice #{num} shows the wrong amount",
        "I need a refund for order {order}, it was billed after I cancelled",
        "the discount code was not applied to my last payment",
        "my credit card was charged {amount} but I never upgraded",
        "I cannot download the receipt for my {plan} plan",
        "why did my monthly price go up to {amount}?",
        "the VAT number is missing from invoice #{num}",
    ],
    "technical": [
        "the app crashes every time I open the {feature} page",
        "I get error {code} when I try to export my {thing}",
        "the {feature} button does nothing in {browser}",
        "sync has been stuck at {pct}% since this morning",
        "the mobile app shows a blank screen after the update",
        "uploads of my {thing} fail with a timeout",
        "the API returns {code} for every request since yesterday",
        "search results in {feature} are empty even though I have data",
    ],
    "account": [
        "I forgot my password and the reset email never arrives",
        "please change the email on my account to {email}",
        "how do I delete my account and all my {thing}?",
        "I am locked out after too many login attempts",
        "please add {name} as an admin to our team account",
        "two-factor codes from my phone are rejected",
        "I want to merge my two accounts into one",
        "please rename our workspace to {company}",
    ],
    "shipping": [
        "my package for order {order} has not arrived yet",
        "the tracking number for order {order} does not work",
        "the parcel arrived damaged, the {item} is broken",
        "I received the wrong item, I ordered a {item}",
        "can you ship order {order} to a different address?",
        "delivery was marked as completed but there is no parcel",
        "customs is holding my {item}, what should I do?",
        "order {order} was sent to my old address in {city}",
    ],
}

URGENCY = {
    "high": [
        "This is urgent, please help immediately.",
        "Our whole team is blocked, we need this fixed today!",
        "URGENT: this is costing us customers right now.",
        "Please respond ASAP, this is critical for us.",
    ],
    "medium": [
        "Could you look into it?",
        "Please let me know how to fix this.",
        "Thanks for checking.",
        "What are my options?",
    ],
    "low": [
        "No rush, whenever you get a chance.",
        "Just curious, it is not important.",
        "Low priority, reply when convenient.",
        "It can wait until next week, thanks.",
    ],
}

OPENERS = ["Hi,", "Hello support,", "Hey there,", "Good morning,", "Dear team,", ""]

SLOTS = {
    "plan": ["Pro", "Team", "Basic", "Enterprise"],
    "num": ["10442", "20931", "38812", "40017", "55120"],
    "order": ["A-1182", "B-7731", "C-2290", "D-4410", "E-9023"],
    "amount": ["$49", "$120", "$15.99", "EUR 80"],
    "feature": ["reports", "dashboard", "settings", "calendar", "team"],
    "code": ["500", "403", "E42", "timeout 504"],
    "thing": ["files", "contacts", "projects", "photos"],
    "browser": ["Chrome", "Firefox", "Safari", "Edge"],
    "pct": ["10", "45", "80", "99"],
    "email": ["sam@example.com", "li.wei@example.org", "ana@example.net"],
    "name": ["Priya", "Tom", "Chen", "Fatima"],
    "company": ["Acme Labs", "Northwind", "Blue Fox"],
    "item": ["lamp", "keyboard", "jacket", "coffee grinder", "monitor"],
    "city": ["Lyon", "Austin", "Osaka", "Leeds"],
}


def ticket(rng: random.Random, category: str, priority: str) -> str:
    issue = rng.choice(ISSUES[category])
    for slot, values in SLOTS.items():
        issue = issue.replace("{" + slot + "}", rng.choice(values))
    sentence = issue[0].upper() + issue[1:] + ("" if issue.endswith("?") else ".")
    parts = [rng.choice(OPENERS), sentence, rng.choice(URGENCY[priority])]
    return " ".join(p for p in parts if p)


def record(rng: random.Random) -> dict[str, str]:
    category = rng.choice(sorted(ISSUES))
    priority = rng.choice(sorted(URGENCY))
    label = json.dumps({"category": category, "priority": priority})
    return {"prompt": f"{INSTRUCTION}\n\nTicket: {ticket(rng, category, priority)}", "completion": label}


def main() -> None:
    rng = random.Random(20261122)
    seen: set[str] = set()
    rows: list[dict[str, str]] = []
    while len(rows) < 300:
        row = record(rng)
        if row["prompt"] not in seen:  # no duplicates, so testing never leaks into training
            seen.add(row["prompt"])
            rows.append(row)
    splits = {"training": rows[:240], "testing": rows[240:]}
    for split, split_rows in splits.items():
        folder = OUT / split
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as fh:
            for row in split_rows:
                fh.write(json.dumps(row) + "\n")
        print(f"wrote {len(split_rows)} rows to {folder}")


if __name__ == "__main__":
    main()
