"""The small story world the demo base learns: characters, places, feelings, actions, choices.

Every dilemma has two outcomes that the corpus tells equally often, so the base is roughly
neutral on them and a scene's pull is visible. The shipped probes and scenes use this same
world, in plain English, so they are just as meaningful on any English model.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

CHARACTERS: list[tuple[str, str]] = [
    ("Mira", "she"), ("Tomas", "he"), ("Lena", "she"), ("Oskar", "he"), ("Ada", "she"),
    ("Felix", "he"), ("Nora", "she"), ("Ivo", "he"), ("Sana", "she"), ("Rafi", "he"),
    ("Elin", "she"), ("Bruno", "he"), ("Greta", "she"), ("Pavel", "he"), ("Juno", "she"),
    ("Karl", "he"),
]
PLACES = [
    "market", "harbor", "old mill", "library", "bakery", "forest edge", "river bank",
    "village square", "school", "garden", "bridge", "hill", "station", "farm",
]
FEELINGS = [
    "happy", "tired", "nervous", "calm", "angry", "hopeful", "lonely", "proud", "curious",
    "afraid", "sad", "glad",
]
OBJECTS = ["coin", "letter", "lantern", "basket", "key", "scarf", "book", "apple", "ring", "map"]
VALUABLES = ["coin", "ring", "purse", "silver watch", "key", "necklace"]
WEATHER = [
    "It was raining.", "The sun was warm.", "A cold wind blew.", "The sky was grey.",
    "Snow lay on the roofs.", "The evening was quiet.", "Birds sang in the trees.",
]
SKIES = ["sunny", "rainy", "windy", "cold"]
MOVES = ["walked to", "ran to", "went to", "came back to", "waited at", "arrived at"]
DAILY = [
    "bought some bread", "read a book", "fed the cat", "cleaned the windows", "wrote a letter",
    "sang a song", "fixed the fence", "carried water", "watched the boats", "counted the apples",
]
AFTERMATH = [
    "Then {p} went home.", "After that, {p} sat for a while.", "The day went on.",
    "Nobody said anything more about it.", "Later, {p} thought about it again.",
    "{N} did not know if it was right.", "The evening came slowly.",
]


@dataclass(frozen=True)
class Dilemma:
    """A situation with two outcomes, told in the corpus with equal frequency."""

    name: str
    situations: tuple[str, ...]
    option_a: str
    option_b: str


DILEMMAS: list[Dilemma] = [
    Dilemma("found", (
        "{N} found a {v} on the path near the {pl}.",
        "At the {pl}, {N} saw that a stranger had dropped a {v}.",
        "{N} picked up a {v} that someone had lost at the {pl}.",
    ), "give it back", "keep it"),
    Dilemma("sound", (
        "{N} heard a strange sound from the dark forest.",
        "At night, {N} heard a noise behind the {pl}.",
        "Something moved in the shadows near the {pl}, and {N} heard it.",
    ), "go and look", "stay inside"),
    Dilemma("bread", (
        "{N} had one loaf of bread, and {M} was hungry.",
        "At the {pl}, {N} had a little food, and {M} had none.",
        "{M} asked {N} for some of the bread.",
    ), "share the bread", "eat it alone"),
    Dilemma("door", (
        "At the {pl}, {N} saw an old door with no lock.",
        "{N} found a small door behind the {pl} that nobody used.",
        "There was a closed door at the {pl}, and {N} stood in front of it.",
    ), "open the door", "walk past it"),
    Dilemma("quarrel", (
        "{N} had argued with {M} about the {o}.",
        "{N} and {M} were angry with each other after a quarrel at the {pl}.",
        "{N} had said something unkind to {M} at the {pl}.",
    ), "say sorry", "stay silent"),
    Dilemma("cup", (
        "{N} broke a cup at the {pl}, and nobody saw it.",
        "{N} lost the {o} that {M} had lent to {pr}.",
        "At the {pl}, {N} made a mistake that nobody noticed.",
    ), "tell the truth", "hide it"),
    Dilemma("stranger", (
        "A stranger at the {pl} asked {N} for help.",
        "An old man fell down near the {pl}, and {N} saw him.",
        "A lost child at the {pl} was crying, and {N} was near.",
    ), "help", "walk away"),
    Dilemma("work", (
        "{N} was tired, but the work at the {pl} was not done.",
        "It was late, and {N} still had work at the {pl}.",
        "{N} had worked all day at the {pl} and the job was not finished.",
    ), "keep working", "go home to rest"),
]


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def _fill(template: str, rng: random.Random, who: tuple[str, str]) -> str:
    name, pron = who
    other = rng.choice([c for c in CHARACTERS if c != who])[0]
    obj_pron = {"she": "her", "he": "him"}[pron]
    return template.format(
        N=name, M=other, p=pron, pr=obj_pron, pl=rng.choice(PLACES), o=rng.choice(OBJECTS),
        v=rng.choice(VALUABLES),
    )


def choice_story(rng: random.Random) -> str:
    """A dilemma and one of its two outcomes, chosen by a fair coin."""
    who = rng.choice(CHARACTERS)
    dilemma = rng.choice(DILEMMAS)
    situation = _fill(rng.choice(dilemma.situations), rng, who)
    option = dilemma.option_a if rng.random() < 0.5 else dilemma.option_b
    aftermath = _fill(rng.choice(AFTERMATH), rng, who)
    return f"{_cap(situation)} {_cap(who[1])} decided to {option}. {_cap(aftermath)}"


def daily_story(rng: random.Random) -> str:
    who = rng.choice(CHARACTERS)
    name, pron = who
    parts = [
        f"{name} {rng.choice(MOVES)} the {rng.choice(PLACES)}.",
        rng.choice(WEATHER),
        f"{_cap(pron)} felt {rng.choice(FEELINGS)}.",
    ]
    if rng.random() < 0.6:
        parts.append(f"{_cap(pron)} {rng.choice(DAILY)}.")
    if rng.random() < 0.3:
        parts.append(f"{_cap(pron)} looked out of the window. The weather was {rng.choice(SKIES)}.")
    if rng.random() < 0.4:
        other = rng.choice([c for c in CHARACTERS if c != who])[0]
        parts.append(f'{name} met {other} at the {rng.choice(PLACES)}. '
                     f'"Good {rng.choice(["morning", "evening", "day"])}," said {name}.')
    return " ".join(parts)


def corpus(n_stories: int, seed: int) -> list[str]:
    """Deterministic documents of 2-5 short stories each; same seed, same text."""
    rng = random.Random(seed)
    docs, stories = [], 0
    while stories < n_stories:
        k = rng.randint(2, 5)
        docs.append(" ".join(choice_story(rng) if rng.random() < 0.5 else daily_story(rng) for _ in range(k)))
        stories += k
    return docs
