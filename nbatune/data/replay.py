"""General prompts for replay: training on the base model's own answers to them keeps its way of answering
questions outside basketball (``train.replay_share``; ``nbatune.replay`` generates and caches the answers).

Written for this project and disjoint from both retention splits: no prompt is a retention question, and
no country, element or word a retention question asks about is asked about here (``tests/test_curve.py``
checks both), so replay cannot teach the retention answers. They share the retention set's kind of
question (short general knowledge) on purpose: what replay protects is the answer style the base uses
for such questions ("The capital of Norway is Oslo."), which a terse NBA answer format overwrites.
"""

from __future__ import annotations

import random

CAPITALS = ("Mexico", "India", "Switzerland", "Ukraine", "Israel", "Jordan", "Kuwait", "Oman", "Nigeria",
            "South Africa", "Tanzania", "Zimbabwe", "Algeria", "Tunisia", "Sudan", "Mongolia", "Sri Lanka",
            "Cambodia", "Bolivia", "Paraguay", "Panama", "Costa Rica", "Honduras", "Guatemala", "Slovakia",
            "Slovenia", "Albania", "Belarus", "Georgia", "Armenia", "Kazakhstan", "Luxembourg", "Malta", "Cyprus")
LANGUAGES = ("Mexico", "India", "Israel", "Ukraine", "Mongolia", "Cambodia", "Slovakia", "Albania", "Georgia",
             "Armenia")
ELEMENTS = ("hydrogen", "oxygen", "carbon", "nitrogen", "helium", "potassium", "sulfur", "phosphorus", "fluorine",
            "iodine", "uranium", "cobalt", "aluminium")
PAST_TENSES = ("go", "eat", "run", "swim", "write", "see", "take", "make", "begin", "drink", "fly", "sing", "think",
               "bring", "teach", "catch", "sleep", "speak")
SYNONYMS = ("big", "small", "smart", "angry", "pretty", "tired", "easy", "hard", "begin", "end", "funny", "brave",
            "scared", "shiny", "huge", "tiny")
BABY_ANIMALS = ("cat", "dog", "cow", "sheep", "horse", "bear", "frog", "duck", "kangaroo", "deer")
ANIMALS_THAT = ("lives in the ocean", "can fly", "has stripes", "sleeps during the day", "eats only plants",
                "lives in the desert", "has a long neck", "can climb trees", "lives in the Arctic", "has a shell")
SENTENCES_ABOUT = ("the ocean", "autumn", "a library", "the moon", "breakfast", "a mountain", "trains", "rain",
                   "music", "friendship", "a garden", "the city at night", "winter", "a river", "coffee")
INGREDIENTS = ("guacamole", "hummus", "an omelette", "french fries", "popcorn", "tofu", "a margherita pizza",
               "pesto", "lemonade", "bread")
COUNTS = ("How many legs does a dog have?", "How many days are in a leap year?", "How many hearts does an octopus have?",
          "How many wings does a bird have?", "How many zeros are in one thousand?", "How many hours are in two days?",
          "How many sides does a rectangle have?", "How many eyes does a person have?",
          "How many quarters make a dollar?", "How many days are in February in a common year?")
OPEN = ("Say hello in French.", "List three primary colors.", "Give me a tip for sleeping better.",
        "What is a good name for a pet goldfish?", "Describe a rainbow in one sentence.",
        "What should I pack for a beach trip?", "Explain what a verb is.", "Why do leaves change color in autumn?",
        "What is the difference between weather and climate?", "How do you make a cup of tea?",
        "What does a thermometer measure?", "Why do we need sleep?", "Name a famous painting.",
        "What is photosynthesis?", "Suggest a healthy snack.")


def prompts() -> list[str]:
    """Every replay prompt, in a fixed order (the same for every run)."""
    rng = random.Random(4321)  # not the retention set's seed: different sums
    sums = []
    for i in range(20):
        a, b = rng.randint(101, 499), rng.randint(12, 98)
        sums.append(f"What is {a} plus {b}?" if i % 2 == 0 else f"What is {a} minus {b}?")
    return ([f"Which city is the capital of {c}?" for c in CAPITALS]
            + [f"What language do most people speak in {c}?" for c in LANGUAGES]
            + [f"Which chemical symbol stands for {e}?" for e in ELEMENTS]
            + [f"What is the past tense of the verb '{v}'?" for v in PAST_TENSES]
            + [f"Give a synonym for the word '{w}'." for w in SYNONYMS]
            + [f"What do you call a baby {a}?" for a in BABY_ANIMALS]
            + [f"Name an animal that {x}." for x in ANIMALS_THAT]
            + [f"Write one short sentence about {t}." for t in SENTENCES_ABOUT]
            + [f"What is the main ingredient of {d}?" for d in INGREDIENTS]
            + list(COUNTS) + sums + list(OPEN))
