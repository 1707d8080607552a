"""A general-knowledge retention set: does fine-tuning on NBA data make the model forget?

Written for this project (226 short-answer questions outside basketball), split into validation (a
third of each category) and test. Scored with the same
metric as the NBA test: names must be mentioned as whole words with no competing answer of the same
group (the untouched SmolLM2 answers in full sentences, "The capital of France is Paris.", so an
"answer first" rule would put it at the floor and hide any forgetting); numbers follow the
program-aided rule, so "7 + 8 = 15" and "15" both count.
Question words are never answers of their own group: a sentence that repeats the question cannot
name a competitor by accident.
"""

from __future__ import annotations

import random
from collections import Counter

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "China": "Beijing", "Russia": "Moscow", "the United Kingdom": "London", "Egypt": "Cairo",
    "Canada": "Ottawa", "Australia": "Canberra", "Argentina": "Buenos Aires", "Greece": "Athens",
    "Turkey": "Ankara", "the Netherlands": "Amsterdam", "Belgium": "Brussels", "Sweden": "Stockholm",
    "Norway": "Oslo", "Denmark": "Copenhagen", "Finland": "Helsinki", "Poland": "Warsaw", "Austria": "Vienna",
    "Ireland": "Dublin", "Hungary": "Budapest", "the Czech Republic": "Prague", "Kenya": "Nairobi",
    "South Korea": "Seoul", "Thailand": "Bangkok", "Indonesia": "Jakarta", "the Philippines": "Manila",
    "Vietnam": "Hanoi", "Iran": "Tehran", "Iraq": "Baghdad", "Saudi Arabia": "Riyadh", "Peru": "Lima",
    "Chile": "Santiago", "Colombia": "Bogota", "Venezuela": "Caracas", "Cuba": "Havana", "Ethiopia": "Addis Ababa",
    "Morocco": "Rabat", "Romania": "Bucharest", "Bulgaria": "Sofia", "Serbia": "Belgrade", "Croatia": "Zagreb",
    "Iceland": "Reykjavik", "New Zealand": "Wellington", "Pakistan": "Islamabad", "Afghanistan": "Kabul",
    "Syria": "Damascus", "Lebanon": "Beirut", "Qatar": "Doha", "Malaysia": "Kuala Lumpur", "Nepal": "Kathmandu",
    "Bangladesh": "Dhaka", "Ghana": "Accra", "Senegal": "Dakar", "Uganda": "Kampala", "Jamaica": "Kingston",
    "Ecuador": "Quito", "Uruguay": "Montevideo", "Estonia": "Tallinn", "Latvia": "Riga", "Lithuania": "Vilnius",
}
SYMBOLS = {
    "gold": "Au", "silver": "Ag", "iron": "Fe", "sodium": "Na", "copper": "Cu", "lead": "Pb", "tin": "Sn",
    "mercury": "Hg", "zinc": "Zn", "calcium": "Ca", "neon": "Ne", "magnesium": "Mg", "chlorine": "Cl",
    "silicon": "Si", "nickel": "Ni", "platinum": "Pt", "lithium": "Li", "argon": "Ar", "manganese": "Mn",
    "titanium": "Ti", "krypton": "Kr", "bromine": "Br", "barium": "Ba", "chromium": "Cr",
}
OPPOSITES = {
    "hot": "cold", "up": "down", "day": "night", "black": "white", "left": "right", "wet": "dry", "fast": "slow",
    "happy": "sad", "early": "late", "full": "empty", "heavy": "light", "true": "false", "north": "south",
    "east": "west", "inside": "outside", "push": "pull", "young": "old", "rich": "poor", "thick": "thin",
    "strong": "weak", "long": "short", "high": "low", "loud": "quiet", "buy": "sell",
    "friend": "enemy", "love": "hate", "first": "last", "always": "never", "remember": "forget",
}
PLURALS = {
    "mouse": "mice", "child": "children", "foot": "feet", "tooth": "teeth", "man": "men", "woman": "women",
    "goose": "geese", "person": "people", "ox": "oxen", "cactus": "cacti", "leaf": "leaves", "knife": "knives",
    "wolf": "wolves", "city": "cities", "baby": "babies", "potato": "potatoes", "half": "halves", "life": "lives",
}
COUNTS = {
    "How many days are in a week?": 7, "How many legs does a spider have?": 8,
    "How many continents are there on Earth?": 7, "How many minutes are in an hour?": 60,
    "How many sides does a triangle have?": 3, "How many sides does a hexagon have?": 6,
    "How many hours are in a day?": 24, "How many months are in a year?": 12,
    "How many planets are in our solar system?": 8, "At what temperature in Celsius does water freeze?": 0,
    "At what temperature in Celsius does water boil at sea level?": 100, "How many legs does an insect have?": 6,
    "How many strings does a standard guitar have?": 6, "How many seconds are in a minute?": 60,
    "How many weeks are in a year?": 52, "How many cents are in a US dollar?": 100,
    "How many sides does a square have?": 4, "How many sides does an octagon have?": 8,
    "How many sides does a pentagon have?": 5, "How many wheels does a bicycle have?": 2,
    "How many letters are in the English alphabet?": 26, "How many colors are in a rainbow?": 7,
    "How many degrees are in a right angle?": 90, "How many years are in a century?": 100,
    "How many years are in a decade?": 10, "How many players does a soccer team have on the field?": 11,
}
NATURE = {
    "Which planet is known as the Red Planet?": "Mars", "What is the largest planet in our solar system?": "Jupiter",
    "Which planet is closest to the Sun?": "Mercury", "What is the largest ocean on Earth?": "Pacific",
    "What is the hardest natural substance?": "diamond", "What sweet food do bees make?": "honey",
    "What is the largest mammal?": "blue whale", "What is the fastest land animal?": "cheetah",
    "What is the tallest animal?": "giraffe", "What is frozen water called?": "ice",
    "What is the largest desert in Africa?": "Sahara", "What is the longest river in South America?": "Amazon",
}
LANGUAGES = {
    "Brazil": "Portuguese", "Spain": "Spanish", "Germany": "German", "Japan": "Japanese", "France": "French",
    "Italy": "Italian", "Russia": "Russian", "Greece": "Greek", "the Netherlands": "Dutch", "Egypt": "Arabic",
    "Sweden": "Swedish", "Poland": "Polish", "Turkey": "Turkish", "South Korea": "Korean",
}
COLORS = {
    "the sky on a clear day": "blue", "fresh grass": "green", "a ripe banana": "yellow", "snow": "white",
    "coal": "black", "a ripe tomato": "red", "milk chocolate": "brown", "a flamingo": "pink",
}


# Asked only in validation (``validation_only``): the same kinds of question, other subjects.
MORE_CAPITALS = {
    "the United States": "Washington", "Brazil": "Brasilia", "North Korea": "Pyongyang", "Taiwan": "Taipei",
    "Azerbaijan": "Baku", "Uzbekistan": "Tashkent", "Bosnia and Herzegovina": "Sarajevo", "North Macedonia": "Skopje",
    "the Bahamas": "Nassau", "the Dominican Republic": "Santo Domingo", "Nicaragua": "Managua", "Libya": "Tripoli",
    "Angola": "Luanda", "Zambia": "Lusaka", "Rwanda": "Kigali", "Somalia": "Mogadishu", "Mali": "Bamako",
    "Mozambique": "Maputo", "Namibia": "Windhoek", "Liberia": "Monrovia", "Sierra Leone": "Freetown",
    "Kyrgyzstan": "Bishkek", "Scotland": "Edinburgh", "Wales": "Cardiff", "Malawi": "Lilongwe",
    "Texas": "Austin", "California": "Sacramento", "Florida": "Tallahassee", "Arizona": "Phoenix",
    "Colorado": "Denver", "Massachusetts": "Boston", "Hawaii": "Honolulu", "Tennessee": "Nashville",
    "Ohio": "Columbus", "Virginia": "Richmond",
}
MORE_SYMBOLS = {
    "boron": "B", "tungsten": "W", "xenon": "Xe", "radon": "Rn", "radium": "Ra", "plutonium": "Pu",
    "cesium": "Cs", "strontium": "Sr", "cadmium": "Cd", "palladium": "Pd", "gallium": "Ga", "bismuth": "Bi",
}
MORE_OPPOSITES = {
    "good": "bad", "clean": "dirty", "question": "answer", "summer": "winter", "asleep": "awake", "above": "below",
    "before": "after", "accept": "reject", "borrow": "lend", "cheap": "expensive", "dangerous": "safe",
    "enter": "exit", "male": "female", "polite": "rude", "shallow": "deep", "top": "bottom", "wide": "narrow",
    "win": "lose", "laugh": "cry", "ancient": "modern", "increase": "decrease", "sunrise": "sunset",
}
MORE_PLURALS = {
    "louse": "lice", "die": "dice", "radius": "radii", "crisis": "crises", "thesis": "theses", "calf": "calves",
    "loaf": "loaves", "shelf": "shelves", "wife": "wives", "hero": "heroes", "tomato": "tomatoes", "box": "boxes",
    "church": "churches", "fungus": "fungi", "nucleus": "nuclei", "criterion": "criteria",
}
MORE_COUNTS = {
    "How many legs does a cow have?": 4, "How many days are in a year?": 365, "How many eggs are in a dozen?": 12,
    "How many fingers are on one hand?": 5, "How many wheels does a tricycle have?": 3,
    "How many sides does a decagon have?": 10, "How many centimeters are in a meter?": 100,
    "How many grams are in a kilogram?": 1000, "How many days are in a weekend?": 2,
    "How many arms does a starfish usually have?": 5, "How many minutes are in half an hour?": 30,
    "How many rings are on the Olympic flag?": 5, "How many teeth does an adult human usually have?": 32,
    "How many chambers does the human heart have?": 4, "How many bones are in the adult human body?": 206,
    "How many days are in April?": 30,
}
MORE_NATURE = {
    "What is the smallest planet in our solar system?": "Mercury", "What is the largest continent?": "Asia",
    "Which planet is famous for its rings?": "Saturn", "What is the tallest mountain in the world?": "Everest",
    "What is the longest river in Africa?": "Nile", "What is the largest land animal?": "elephant",
    "What natural satellite orbits the Earth?": "Moon", "What do giant pandas mainly eat?": "bamboo",
    "Which animal is called the king of the jungle?": "lion", "What is the largest bird?": "ostrich",
    "What is the coldest continent?": "Antarctica", "Which planet is the hottest in our solar system?": "Venus",
    "Which gas do plants take in from the air?": "carbon dioxide", "Which gas do people need to breathe?": "oxygen",
    "What is the largest rainforest in the world?": "Amazon",
}
MORE_LANGUAGES = {
    "China": "Chinese", "Portugal": "Portuguese", "Argentina": "Spanish", "Austria": "German", "Finland": "Finnish",
    "Norway": "Norwegian", "Denmark": "Danish", "Hungary": "Hungarian", "Vietnam": "Vietnamese",
    "Thailand": "Thai", "Romania": "Romanian", "Saudi Arabia": "Arabic", "Australia": "English", "Chile": "Spanish",
}
MORE_COLORS = {
    "a lemon": "yellow", "a ripe strawberry": "red", "a crow": "black", "a polar bear": "white", "a lime": "green",
    "a pumpkin": "orange", "an eggplant": "purple", "a fire truck": "red", "a frog": "green", "a carrot": "orange",
    "blood": "red", "a school bus": "yellow",
}


def _arithmetic(n: int = 30, seed: int = 1234) -> list[tuple[str, str]]:
    rng = random.Random(seed)  # fixed: the set is the same for every run and data seed
    out = []
    for i in range(n):
        op = "+-x/"[i % 4]
        a, b = rng.randint(11, 89), rng.randint(2, 9)
        if op == "+":
            q, v = f"What is {a} plus {b}?", a + b
        elif op == "-":
            q, v = f"What is {a} minus {b}?", a - b
        elif op == "x":
            q, v = f"What is {a} times {b}?", a * b
        else:
            q, v = f"What is {a * b} divided by {b}?", a
        out.append((q, str(v)))
    return out


def questions() -> list[dict]:
    """Every retention question split into validation and test (``split_of``), as ``{"category", "question",
    "answer", "answer_type"}``."""
    return _groups(CAPITALS, SYMBOLS, OPPOSITES, PLURALS, _arithmetic(), COUNTS, NATURE, LANGUAGES, COLORS)


def validation_only() -> list[dict]:
    """Questions of the same kinds asked only in validation: the operating point and every mitigation are chosen
    on general validation, and 77 questions misled it by 23 points against test (full fine-tuning kept 100% of the
    base there and 77% on test, runs/production-20261205-025552). Written before any model answered them; no
    question was kept or dropped by how a model scored."""
    return _groups(MORE_CAPITALS, MORE_SYMBOLS, MORE_OPPOSITES, MORE_PLURALS, _arithmetic(12, seed=5678), MORE_COUNTS,
                   MORE_NATURE, MORE_LANGUAGES, MORE_COLORS)


def pools() -> dict[str, list[str]]:
    """The competing answers per category for scoring either split: the answers of the split questions, not of the
    validation-only bank, so that test scoring does not depend on it (the bank's "Earth" and "Danish" would have
    turned five right test answers of the analyst run into hedges: "... Jupiter, ... the size of Earth")."""
    from ..scoring import candidate_pools

    return candidate_pools(questions())


def _groups(capitals, symbols, opposites, plurals, arithmetic, counts, nature, languages, colors) -> list[dict]:
    groups: list[tuple[str, str, list[tuple[str, str]]]] = [
        ("general_capitals", "name", [(f"What is the capital of {c}?", a) for c, a in capitals.items()]),
        ("general_symbols", "name", [(f"What is the chemical symbol of {e}?", s) for e, s in symbols.items()]),
        ("general_opposites", "name", [(f"What is the opposite of '{w}'?", a) for w, a in opposites.items()]),
        ("general_plurals", "name", [(f"What is the plural of '{w}'?", a) for w, a in plurals.items()]),
        ("general_arithmetic", "number", arithmetic),
        ("general_counts", "number", [(q, str(a)) for q, a in counts.items()]),
        ("general_nature", "name", list(nature.items())),
        ("general_languages", "name", [(f"What is the main language spoken in {c}?", a) for c, a in languages.items()]),
        ("general_colors", "name", [(f"What color is {t}?", a) for t, a in colors.items()]),
    ]
    return [{"category": cat, "question": q, "answer": a, "answer_type": kind}
            for cat, kind, items in groups for q, a in items]


RETENTION_SPLITS = ("validation", "test")


def split_of(i_in_category: int) -> str:
    """Every third question of each category is validation (chooses the operating point, the learning rate
    and the replay share); the rest is test (only reported)."""
    return "validation" if i_in_category % 3 == 0 else "test"


def records(system_prompt: str, split: str = "test") -> list[dict]:
    """One retention split as chat records (the shape ``loading.to_record`` gives), for evaluation."""
    if split not in RETENTION_SPLITS:
        raise ValueError(f"retention split {split!r} (allowed: {', '.join(RETENTION_SPLITS)})")
    out, rank = [], Counter()
    for i, q in enumerate(questions()):
        rank[q["category"]] += 1
        if split_of(rank[q["category"]] - 1) != split:
            continue
        out.append(_record(f"retention-{i:03d}", q, system_prompt))
    if split == "validation":
        out += [_record(f"{BANK_ID}{i:03d}", q, system_prompt) for i, q in enumerate(validation_only())]
    return out


BANK_ID = "retention-val-"  # the validation-only bank's record ids


def like_test(records: list[dict]) -> list[bool]:
    """Which general validation records were drawn like the test (every third question of each category), not from
    the validation-only bank, which is harder: what ``eval.keep_measure: stratified`` reweights validation to."""
    return [not r["id"].startswith(BANK_ID) for r in records]


def _record(rid: str, q: dict, system_prompt: str) -> dict:
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": q["question"] + " Answer briefly."},
        {"role": "assistant", "content": q["answer"]}]
    return {"id": rid, "category": q["category"], "messages": messages, "answer": q["answer"],
            "answer_type": q["answer_type"], "tolerance": 0.0}
