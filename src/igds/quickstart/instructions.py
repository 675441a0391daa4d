"""Templated non-math instructions for the pool: word games, formatting, geography, emails, sentiment."""

from __future__ import annotations

import random
from typing import Callable

from .word_problems import two_people


_WORDS = ["garden", "lantern", "harbor", "pencil", "rhythm", "meadow", "violin", "blanket", "crystal", "thunder",
         "window", "biscuit", "orchard", "compass", "whisper", "kettle", "mirror", "planet", "saddle", "canyon",
         "bottle", "feather", "library", "marble", "tunnel", "velvet", "anchor", "cabbage", "dolphin", "falcon"]
_SENTENCES = ["the meeting starts after lunch", "please close the window before you leave",
             "our team won the regional final", "the bakery on the corner opens early",
             "remember to water the plants", "the museum is free on sundays", "she plays the cello beautifully",
             "the train to the coast was delayed", "this soup needs more salt", "we painted the fence blue",
             "the library has a new reading room", "he forgot his umbrella again",
             "the children built a sandcastle", "tickets go on sale next week", "the river froze overnight",
             "my neighbour bakes bread every morning", "the printer on the second floor is jammed",
             "we are hiking up the hill tomorrow", "the cat sleeps on the warm windowsill",
             "the shop will close early today"]
_COUNTRIES = [  # (country, capital, continent, main language)
    ("France", "Paris", "Europe", "French"), ("Japan", "Tokyo", "Asia", "Japanese"),
    ("Kenya", "Nairobi", "Africa", "Swahili and English"), ("Brazil", "Brasília", "South America", "Portuguese"),
    ("Canada", "Ottawa", "North America", "English and French"), ("Egypt", "Cairo", "Africa", "Arabic"),
    ("Norway", "Oslo", "Europe", "Norwegian"), ("Peru", "Lima", "South America", "Spanish"),
    ("Vietnam", "Hanoi", "Asia", "Vietnamese"), ("Australia", "Canberra", "Oceania", "English"),
    ("Mexico", "Mexico City", "North America", "Spanish"), ("Poland", "Warsaw", "Europe", "Polish"),
    ("Ghana", "Accra", "Africa", "English"), ("Thailand", "Bangkok", "Asia", "Thai"),
    ("Chile", "Santiago", "South America", "Spanish"), ("Portugal", "Lisbon", "Europe", "Portuguese"),
    ("Morocco", "Rabat", "Africa", "Arabic and Berber"), ("Indonesia", "Jakarta", "Asia", "Indonesian"),
    ("Ireland", "Dublin", "Europe", "English and Irish"), ("New Zealand", "Wellington", "Oceania", "English and Māori"),
]
_SENTIMENT = {  # (subject, positive adjectives, negative adjectives)
    "subjects": ["The hotel room", "The new phone", "This restaurant", "The customer service", "The concert",
                 "The delivery", "This laptop", "The tour guide", "The movie", "The coffee here"],
    "Positive": ["was wonderful", "exceeded my expectations", "was friendly and quick", "is worth every penny",
                 "made my day", "was a real pleasure"],
    "Negative": ["was a huge disappointment", "broke after two days", "was rude and slow", "is overpriced",
                 "ruined our evening", "was noisy and dirty"],
}
_EMAILS = [  # (purpose in the instruction, body)
    ("to move our meeting to {day}", "Would it be possible to move our meeting to {day}? Something urgent came up "
     "at the original time. Please let me know if {day} works for you."),
    ("to thank them for the {gift}", "Thank you so much for the {gift}. It was a thoughtful surprise and I will "
     "put it to good use."),
    ("asking for the latest {doc}", "Could you send me the latest version of the {doc} when you have a moment? "
     "I would like to review it before our next check-in."),
    ("to say you will be out of the office on {day}", "Just a heads-up that I will be out of the office on {day}. "
     "I will reply to messages when I am back."),
]
_FILLS = {"day": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"],
         "gift": ["book", "flowers", "scarf", "cookbook", "plant"],
         "doc": ["project plan", "budget draft", "meeting notes", "design mock-ups", "report"]}
_SORT_SETS = [["banana", "apple", "cherry", "mango", "kiwi", "grape", "pear", "fig"],
             ["zebra", "otter", "lion", "camel", "heron", "badger", "moose", "panda"],
             ["violet", "amber", "teal", "crimson", "ivory", "olive", "navy", "coral"]]


def _text_reverse(rng: random.Random) -> tuple[str, str, str]:
    w = rng.choice(_WORDS)
    return f"Reverse the letters of the word '{w}'.", "", w[::-1]


def _text_upper(rng: random.Random) -> tuple[str, str, str]:
    s = rng.choice(_SENTENCES)
    return "Rewrite the following sentence in uppercase letters.", s, s.upper()


def _letter_count(rng: random.Random) -> tuple[str, str, str]:
    w = rng.choice(_WORDS)
    c = rng.choice(sorted(set(w)))
    n = w.count(c)
    return (f"How many times does the letter '{c}' appear in the word '{w}'?", "",
            f"The letter '{c}' appears {n} time{'s' if n > 1 else ''} in '{w}'.")


def _list_sort(rng: random.Random) -> tuple[str, str, str]:
    items = rng.sample(rng.choice(_SORT_SETS), rng.randint(4, 6))
    how = rng.choice(["alphabetically", "in reverse alphabetical order"])
    ordered = sorted(items, reverse=how != "alphabetically")
    return f"Sort these words {how}: {', '.join(items)}.", "", ", ".join(ordered)


def _geography(rng: random.Random) -> tuple[str, str, str]:
    country, capital, continent, language = rng.choice(_COUNTRIES)
    kind = rng.randrange(3)
    if kind == 0:
        return f"What is the capital of {country}?", "", f"The capital of {country} is {capital}."
    if kind == 1:
        return f"On which continent is {country}?", "", f"{country} is in {continent}."
    return f"What language is mainly spoken in {country}?", "", f"The main language of {country} is {language}."


def _text_format(rng: random.Random) -> tuple[str, str, str]:
    s = rng.choice(_SENTENCES)
    kind = rng.randrange(3)
    if kind == 0:
        return "Convert this phrase to title case.", s, s.title()
    if kind == 1:
        return "Turn this phrase into a snake_case identifier.", s, "_".join(s.split())
    items = rng.sample(_WORDS, rng.randint(3, 5))
    return "Turn this comma-separated list into a bulleted list.", ", ".join(items), "\n".join(f"- {w}" for w in items)


def _email(rng: random.Random) -> tuple[str, str, str]:
    (name, _, _), (me, _, _) = two_people(rng)
    purpose, body = rng.choice(_EMAILS)
    fill = {k: rng.choice(v) for k, v in _FILLS.items()}
    return (f"Write a short email to {name} {purpose.format(**fill)}.", "",
            f"Hi {name},\n\n{body.format(**fill)}\n\nBest regards,\n{me}")


def _sentiment(rng: random.Random) -> tuple[str, str, str]:
    label = rng.choice(["Positive", "Negative"])
    text = f"{rng.choice(_SENTIMENT['subjects'])} {rng.choice(_SENTIMENT[label])}."
    return "Classify the sentiment of this review as Positive or Negative.", text, label


# keyed by the public family name (no underscore): it is written into each row's "source"
_GENERIC_TEMPLATES: dict[str, Callable[[random.Random], tuple[str, str, str]]] = {
    f.__name__.removeprefix("_"): f
    for f in (_text_reverse, _text_upper, _letter_count, _list_sort, _geography, _text_format, _email, _sentiment)
}


def generic_instruction(rng: random.Random) -> tuple[str, str, str, str]:
    """A random family's ``(family, instruction, input, output)``."""
    family = rng.choice(sorted(_GENERIC_TEMPLATES))
    instruction, inp, output = _GENERIC_TEMPLATES[family](rng)
    return family, instruction, inp, output
