"""Grade-school arithmetic word problems with worked rationales, and noisy answers that teach nothing.

Each of the 32 templates draws its own numbers from a ``random.Random`` and returns a
:class:`Problem` whose answer is computed here, so every rationale is correct arithmetic.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Problem:
    """One word problem: the question, its reasoning steps and the integer answer."""

    question: str
    steps: list[str]
    answer: int

    def rationale(self) -> str:
        return "\n".join(self.steps + [f"#### {self.answer}"])


# --------------------------------------------------------------------- vocabulary
# (name, subject pronoun, possessive pronoun); the templates' verbs are written for he/she
_PEOPLE = [
    ("Amara", "she", "her"), ("Ben", "he", "his"), ("Chen", "he", "his"), ("Dalia", "she", "her"),
    ("Emeka", "he", "his"), ("Farah", "she", "her"), ("Gus", "he", "his"), ("Hana", "she", "her"),
    ("Ivan", "he", "his"), ("Jade", "she", "her"), ("Kofi", "he", "his"), ("Lucia", "she", "her"),
    ("Mateo", "he", "his"), ("Nadia", "she", "her"), ("Omar", "he", "his"), ("Priya", "she", "her"),
    ("Rosa", "she", "her"), ("Sanjay", "he", "his"), ("Tomas", "he", "his"),
    ("Uma", "she", "her"), ("Viktor", "he", "his"), ("Ximena", "she", "her"),
    ("Yusuf", "he", "his"), ("Zoe", "she", "her"), ("Aiko", "she", "her"), ("Bruno", "he", "his"),
    ("Carmen", "she", "her"), ("Dmitri", "he", "his"), ("Elif", "she", "her"), ("Felix", "he", "his"),
]
# (singular, plural, low price, high price) in whole dollars
_GOODS = [
    ("notebook", "notebooks", 2, 6), ("pen", "pens", 1, 3), ("sandwich", "sandwiches", 4, 9),
    ("T-shirt", "T-shirts", 8, 20), ("book", "books", 6, 18), ("mug", "mugs", 3, 12),
    ("plant", "plants", 5, 15), ("ticket", "tickets", 7, 25), ("candle", "candles", 2, 8),
    ("pair of socks", "pairs of socks", 3, 7), ("bag of rice", "bags of rice", 4, 10),
    ("jar of honey", "jars of honey", 5, 11), ("puzzle", "puzzles", 9, 22), ("scarf", "scarves", 10, 24),
]
_SMALL_THINGS = ["stickers", "marbles", "cookies", "crayons", "beads", "postcards", "seashells", "buttons"]
_ACTIVITIES = ["piano", "guitar", "chess", "swimming", "drawing", "Spanish", "coding", "yoga"]


def _person(rng: random.Random) -> tuple[str, str, str]:
    return rng.choice(_PEOPLE)


def two_people(rng: random.Random) -> tuple[tuple[str, str, str], tuple[str, str, str]]:
    """Two different people as (name, subject pronoun, possessive pronoun)."""
    a, b = rng.sample(_PEOPLE, 2)
    return a, b


def _cap(word: str) -> str:
    return word[:1].upper() + word[1:]


# --------------------------------------------------------------------- math templates
# Each template draws its own numbers and returns a Problem whose answer is computed here.
def _shopping_total(rng: random.Random) -> Problem:
    (name, pron, _), k = _person(rng), rng.choice([2, 3])
    goods = rng.sample(_GOODS, k)
    buys = [(rng.randint(2, 6), g, rng.randint(g[2], g[3])) for g in goods]
    parts = [f"{n} {g[1]} at ${p} each" for n, g, p in buys]
    listing = ", ".join(parts[:-1]) + f" and {parts[-1]}"
    steps = [f"The {g[1]} cost {n} × ${p} = ${n * p}." for n, g, p in buys]
    costs = [n * p for n, _, p in buys]
    steps.append(f"In total {pron} spends {' + '.join(f'${c}' for c in costs)} = ${sum(costs)}.")
    return Problem(f"{name} buys {listing}. How many dollars does {pron} spend in total?", steps, sum(costs))


def _money_change(rng: random.Random) -> Problem:
    (name, pron, _), g = _person(rng), rng.choice(_GOODS)
    n, price = rng.randint(2, 5), rng.randint(g[2], g[3])
    bill = next(b for b in (20, 50, 100, 200) if b > n * price)
    q = (f"{name} buys {n} {g[1]} for ${price} each and pays with a ${bill} bill. "
         f"How much change, in dollars, does {pron} get back?")
    return Problem(q, [f"The {g[1]} cost {n} × ${price} = ${n * price}.",
                       f"The change is ${bill} - ${n * price} = ${bill - n * price}."], bill - n * price)


def _ages_times(rng: random.Random) -> Problem:
    (a, _, _), (b, _, _) = two_people(rng)
    x, k, y = rng.randint(4, 15), rng.randint(2, 4), rng.randint(2, 10)
    q = f"{a} is {x} years old. {b} is {k} times as old as {a}. How old will {b} be in {y} years?"
    return Problem(q, [f"{b} is {k} × {x} = {k * x} years old now.",
                       f"In {y} years {b} will be {k * x} + {y} = {k * x + y}."], k * x + y)


def _ages_sum(rng: random.Random) -> Problem:
    (a, _, _), (b, _, _) = two_people(rng)
    x, d = rng.randint(6, 40), rng.randint(2, 12)
    q = f"{a} is {d} years older than {b}. {b} is {x} years old. What is the sum of their ages?"
    return Problem(q, [f"{a} is {x} + {d} = {x + d} years old.",
                       f"Together they are {x} + {x + d} = {2 * x + d} years old."], 2 * x + d)


def _practice_hours(rng: random.Random) -> Problem:
    (name, pron, _), act = _person(rng), rng.choice(_ACTIVITIES)
    minutes, days = rng.choice([20, 30, 40, 45, 60, 90]), rng.choice([4, 8, 12, 16, 20, 24])
    while minutes * days % 60:
        days += 1
    total = minutes * days
    q = f"{name} practices {act} for {minutes} minutes a day for {days} days. How many hours does {pron} practice in total?"
    return Problem(q, [f"That is {minutes} × {days} = {total} minutes.",
                       f"In hours: {total} ÷ 60 = {total // 60}."], total // 60)


def _still_needed(question: str, goal: int, have: int, rate: int, what_left: str, unit: str) -> Problem:
    """The shared 'how long until the rest is done' rationale: subtract, then divide by the rate."""
    left = goal - have
    return Problem(question, [f"{goal} - {have} = {left} {what_left}.",
                              f"At {rate} per {unit[:-1]}, that takes {left} ÷ {rate} = {left // rate} {unit}."],
                   left // rate)


def _reading_hours(rng: random.Random) -> Problem:
    (name, pron, _) = _person(rng)
    rate, hours_left, done = rng.choice([20, 25, 30, 40]), rng.randint(2, 8), rng.randint(30, 150)
    total = done + rate * hours_left
    q = (f"{name} reads {rate} pages an hour. {_cap(pron)} has read {done} pages of a "
         f"{total}-page novel. How many more hours will it take {name} to finish it?")
    return _still_needed(q, total, done, rate, "pages are left", "hours")


def _train_distance(rng: random.Random) -> Problem:
    s1, h1, s2, h2 = rng.choice([60, 70, 80, 90]), rng.randint(1, 4), rng.choice([40, 50, 100, 120]), rng.randint(1, 3)
    q = (f"A train travels at {s1} km per hour for {h1} hours and then at {s2} km per hour for {h2} hours. "
         f"How many kilometres does it travel in total?")
    return Problem(q, [f"First part: {s1} × {h1} = {s1 * h1} km.", f"Second part: {s2} × {h2} = {s2 * h2} km.",
                       f"Total: {s1 * h1} + {s2 * h2} = {s1 * h1 + s2 * h2} km."], s1 * h1 + s2 * h2)


def _cycling_minutes(rng: random.Random) -> Problem:
    (name, pron, _) = _person(rng)
    speed, hours, rest = rng.choice([10, 12, 15, 20]), rng.randint(1, 4), rng.choice([10, 15, 20, 30])
    dist = speed * hours
    q = (f"{name} cycles {dist} km at a steady {speed} km per hour and stops once for a {rest}-minute break. "
         f"How many minutes does the whole trip take?")
    return Problem(q, [f"Riding takes {dist} ÷ {speed} = {hours} hours.", f"That is {hours} × 60 = {hours * 60} minutes.",
                       f"With the break: {hours * 60} + {rest} = {hours * 60 + rest} minutes."], hours * 60 + rest)


def _sharing_equal(rng: random.Random) -> Problem:
    (name, pron, poss), things = _person(rng), rng.choice(_SMALL_THINGS)
    friends, each, gift = rng.randint(2, 8), rng.randint(3, 12), rng.randint(2, 15)
    total = friends * each + gift
    q = (f"{name} has {total} {things}. {_cap(pron)} gives {gift} to {poss} cousin and shares "
         f"the rest equally among {friends} friends. How many {things} does each friend get?")
    return Problem(q, [f"After the gift, {total} - {gift} = {total - gift} {things} are left.",
                       f"Each friend gets {total - gift} ÷ {friends} = {each}."], each)


def _boxes_leftover(rng: random.Random) -> Problem:
    size, full, left = rng.randint(4, 12), rng.randint(3, 15), 0
    left = rng.randint(1, size - 1)
    things, total = rng.choice(_SMALL_THINGS), size * full + left
    q = (f"A shop packs {total} {things} into boxes of {size}. "
         f"After filling as many boxes as it can, how many {things} are left over?")
    return Problem(q, [f"It can fill {full} boxes, using {full} × {size} = {full * size} {things}.",
                       f"Left over: {total} - {full * size} = {left}."], left)


def _sale_price(rng: random.Random) -> Problem:
    item = rng.choice(["jacket", "backpack", "desk lamp", "pair of boots", "coffee maker", "rug"])
    pct = rng.choice([10, 20, 25, 30, 40, 50])
    price = rng.randint(2, 12) * 20  # a multiple of 20: every discount here is whole dollars
    off = price * pct // 100
    q = f"A {item} normally costs ${price}. This week it is {pct}% off. What is the sale price in dollars?"
    return Problem(q, [f"The discount is {price} × {pct} ÷ 100 = ${off}.",
                       f"The sale price is ${price} - ${off} = ${price - off}."], price - off)


def _class_percent(rng: random.Random) -> Problem:
    # a multiple of 20 times a multiple of 5 is a multiple of 100: whole students
    n, pct = rng.choice([20, 40, 60, 80, 100, 120]), rng.choice([10, 20, 25, 40, 50, 60, 75])
    club = rng.choice(["choir", "chess club", "robotics team", "drama club", "football team"])
    yes = n * pct // 100
    q = f"A class has {n} students and {pct}% of them are in the {club}. How many students are not in the {club}?"
    return Problem(q, [f"In the {club}: {n} × {pct} ÷ 100 = {yes} students.",
                       f"Not in it: {n} - {yes} = {n - yes} students."], n - yes)


def _garden_bags(rng: random.Random) -> Problem:
    cover = rng.choice([5, 10, 12, 20])
    length, width = rng.randint(2, 12), rng.randint(2, 10)
    while length * width % cover:
        width += 1
    area = length * width
    q = (f"A garden bed is {length} m long and {width} m wide. One bag of compost covers {cover} square metres. "
         f"How many bags are needed to cover the bed?")
    return Problem(q, [f"The area is {length} × {width} = {area} square metres.",
                       f"Bags needed: {area} ÷ {cover} = {area // cover}."], area // cover)


def _fence_cost(rng: random.Random) -> Problem:
    length, width, price = rng.randint(5, 30), rng.randint(4, 20), rng.randint(2, 9)
    half, per = length + width, 2 * (length + width)
    q = (f"A rectangular yard is {length} m by {width} m. Fencing costs ${price} per metre. "
         f"How many dollars does it cost to fence the whole yard?")
    return Problem(q, [f"Length plus width: {length} + {width} = {half} m.", f"Perimeter: 2 × {half} = {per} m.",
                       f"Cost: {per} × ${price} = ${per * price}."], per * price)


def _coin_cents(rng: random.Random) -> Problem:
    (name, pron, _) = _person(rng)
    q25, d10 = rng.randint(2, 15), rng.randint(2, 20)
    q = f"{name} has {q25} quarters and {d10} dimes in a jar. How many cents does {pron} have?"
    return Problem(q, [f"Quarters: {q25} × 25 = {q25 * 25} cents.", f"Dimes: {d10} × 10 = {d10 * 10} cents.",
                       f"Total: {q25 * 25} + {d10 * 10} = {q25 * 25 + d10 * 10} cents."], q25 * 25 + d10 * 10)


def _recipe_scale(rng: random.Random) -> Problem:
    dish, ingredient = rng.choice([("pancakes", "flour"), ("soup", "lentils"), ("muffins", "sugar"),
                                   ("curry", "rice"), ("bread", "flour"), ("salad", "chickpeas")])
    per, serves, want = rng.choice([15, 20, 25, 30, 40, 50]), rng.randint(2, 6), rng.randint(3, 12)
    while want == serves:
        want += 1
    q = (f"A recipe for {dish} that serves {serves} people uses {per * serves} grams of {ingredient}. "
         f"How many grams of {ingredient} are needed to serve {want} people?")
    return Problem(q, [f"Per person: {per * serves} ÷ {serves} = {per} grams.",
                       f"For {want} people: {per} × {want} = {per * want} grams."], per * want)


def _savings_weeks(rng: random.Random) -> Problem:
    (name, pron, _), g = _person(rng), rng.choice(["bike", "tablet", "guitar", "tent", "camera", "skateboard"])
    weekly, weeks, have = rng.choice([5, 10, 15, 20, 25]), rng.randint(3, 16), rng.randint(10, 90)
    cost = have + weekly * weeks
    q = (f"{name} wants a {g} that costs ${cost}. {_cap(pron)} already has ${have} and "
         f"saves ${weekly} a week. How many weeks will it take to have enough?")
    return _still_needed(q, cost, have, weekly, "dollars are still needed", "weeks")


def _babysitting_left(rng: random.Random) -> Problem:
    (name, pron, _) = _person(rng)
    rate, hours, weeks = rng.randint(8, 16), rng.randint(2, 6), rng.randint(2, 5)
    earned = rate * hours * weeks
    spent = rng.randint(5, earned // 2)
    gift = rng.choice([0, 10, 20, 25])
    q = (f"{name} earns ${rate} an hour babysitting and works {hours} hours a week for {weeks} weeks. "
         f"{_cap(pron)} spends ${spent} on a concert ticket"
         + (f" and later receives a ${gift} gift" if gift else "")
         + f". How many dollars does {pron} have at the end?")
    steps = [f"Hours worked: {hours} × {weeks} = {hours * weeks}.", f"Earnings: {hours * weeks} × ${rate} = ${earned}.",
             f"After the ticket: ${earned} - ${spent} = ${earned - spent}."]
    if gift:
        steps.append(f"After the gift: ${earned - spent} + ${gift} = ${earned - spent + gift}.")
    return Problem(q, steps, earned - spent + gift)


def _tomato_harvest(rng: random.Random) -> Problem:
    (name, pron, _) = _person(rng)
    rows, per_row, fruit = rng.randint(3, 9), rng.randint(4, 12), rng.randint(5, 20)
    q = (f"{name} plants {rows} rows of tomato plants with {per_row} plants in each row. "
         f"Each plant gives {fruit} tomatoes. How many tomatoes does {pron} harvest?")
    return Problem(q, [f"Plants: {rows} × {per_row} = {rows * per_row}.",
                       f"Tomatoes: {rows * per_row} × {fruit} = {rows * per_row * fruit}."], rows * per_row * fruit)


def _bus_passengers(rng: random.Random) -> Problem:
    start, stops = rng.randint(10, 40), rng.choice([1, 2, 2, 3, 3, 4])
    count, clauses, steps = start, [], []
    for i in range(stops):
        off, on = rng.randint(0, min(count, 12)), rng.randint(0, 15)
        ordinal = ["first", "second", "third", "fourth"][i]
        clauses.append(f"at the {ordinal} stop {off} get off and {on} get on")
        steps.append(f"After the {ordinal} stop: {count} - {off} + {on} = {count - off + on}.")
        count = count - off + on
    q = (f"A bus leaves the depot with {start} passengers. " + _cap("; ".join(clauses))
         + ". How many passengers are on the bus now?")
    return Problem(q, steps, count)


def _pages_left(rng: random.Random) -> Problem:
    (name, _, _) = _person(rng)
    mon = rng.randint(10, 40)
    total = 3 * mon + rng.randint(10, 120)
    q = (f"A book has {total} pages. {name} reads {mon} pages on Monday and twice as many on Tuesday. "
         f"How many pages are left to read?")
    return Problem(q, [f"Tuesday: 2 × {mon} = {2 * mon} pages.", f"Read so far: {mon} + {2 * mon} = {3 * mon} pages.",
                       f"Left: {total} - {3 * mon} = {total - 3 * mon} pages."], total - 3 * mon)


def _fruit_picking(rng: random.Random) -> Problem:
    (a, _, _), (b, _, _) = two_people(rng)
    fruit = rng.choice(["apples", "pears", "plums", "cherries", "strawberries"])
    n, d, more = rng.randint(15, 60), rng.randint(3, 14), rng.random() < 0.5
    other = n + d if more else n - d
    q = (f"{a} picks {n} {fruit}. {b} picks {d} {'more' if more else 'fewer'} than {a}. "
         f"How many {fruit} do they pick together?")
    return Problem(q, [f"{b} picks {n} {'+' if more else '-'} {d} = {other}.",
                       f"Together: {n} + {other} = {n + other}."], n + other)


def _farm_legs(rng: random.Random) -> Problem:
    hens, goats = rng.randint(3, 25), rng.randint(2, 15)
    q = f"A farm has {hens} chickens and {goats} goats. How many legs do the animals have altogether?"
    return Problem(q, [f"Chicken legs: {hens} × 2 = {hens * 2}.", f"Goat legs: {goats} × 4 = {goats * 4}.",
                       f"Altogether: {hens * 2} + {goats * 4} = {hens * 2 + goats * 4}."], hens * 2 + goats * 4)


def _pizza_slices(rng: random.Random) -> Problem:
    pizzas, slices, people, each = rng.randint(3, 8), rng.choice([6, 8, 10, 12]), rng.randint(4, 12), rng.randint(1, 3)
    while people * each > pizzas * slices:
        pizzas += 1
    total, eaten = pizzas * slices, people * each
    q = (f"At a party there are {pizzas} pizzas, each cut into {slices} slices. {people} guests eat {each} "
         f"slice{'s' if each > 1 else ''} each. How many slices are left?")
    return Problem(q, [f"Slices: {pizzas} × {slices} = {total}.", f"Eaten: {people} × {each} = {eaten}.",
                       f"Left: {total} - {eaten} = {total - eaten}."], total - eaten)


def _temperature_rise(rng: random.Random) -> Problem:
    start, rate, hours = rng.randint(2, 18), rng.randint(1, 4), rng.randint(2, 7)
    q = (f"At 6 a.m. the temperature was {start} degrees. It rose by {rate} degrees every hour for {hours} hours. "
         f"What was the temperature then?")
    return Problem(q, [f"It rose {rate} × {hours} = {rate * hours} degrees.",
                       f"The temperature was {start} + {rate * hours} = {start + rate * hours} degrees."],
                   start + rate * hours)


def _tank_minutes(rng: random.Random) -> Problem:
    rate, minutes, have = rng.choice([4, 5, 6, 8, 10, 12]), rng.randint(5, 30), rng.randint(20, 200)
    cap = have + rate * minutes
    q = (f"A water tank holds {cap} litres and already contains {have} litres. A hose adds {rate} litres per minute. "
         f"How many minutes until the tank is full?")
    return _still_needed(q, cap, have, rate, "litres of space are left", "minutes")


def _fuel_cost(rng: random.Random) -> Problem:
    per100, hundreds, price = rng.randint(5, 9), rng.randint(2, 8), rng.randint(2, 3)
    dist = hundreds * 100
    q = (f"A car uses {per100} litres of fuel per 100 km. Fuel costs ${price} per litre. "
         f"How many dollars does fuel cost for a {dist} km trip?")
    return Problem(q, [f"The trip is {dist} ÷ 100 = {hundreds} hundreds of km.",
                       f"Fuel used: {hundreds} × {per100} = {hundreds * per100} litres.",
                       f"Cost: {hundreds * per100} × ${price} = ${hundreds * per100 * price}."], hundreds * per100 * price)


def _salary_raise(rng: random.Random) -> Problem:
    (name, _, poss) = _person(rng)
    monthly, pct = rng.randint(10, 40) * 100, rng.choice([5, 10, 15, 20])
    rise = monthly * pct // 100
    q = f"{name} earns ${monthly} a month and gets a {pct}% raise. What is {poss} new monthly pay in dollars?"
    return Problem(q, [f"The raise is {monthly} × {pct} ÷ 100 = ${rise}.",
                       f"New pay: ${monthly} + ${rise} = ${monthly + rise}."], monthly + rise)


def _bake_sale_profit(rng: random.Random) -> Problem:
    item = rng.choice(["cupcakes", "brownies", "lemon bars", "cookies"])
    sold, price, cost = rng.randint(20, 80), rng.randint(2, 4), rng.randint(15, 50)
    q = (f"A school bake sale sells {sold} {item} at ${price} each. Ingredients cost ${cost}. "
         f"How many dollars of profit does the sale make?")
    return Problem(q, [f"Sales: {sold} × ${price} = ${sold * price}.",
                       f"Profit: ${sold * price} - ${cost} = ${sold * price - cost}."], sold * price - cost)


def _stamp_collection(rng: random.Random) -> Problem:
    (name, pron, poss) = _person(rng)
    have, packs, per, away = rng.randint(20, 120), rng.randint(2, 6), rng.choice([5, 10, 12, 15]), rng.randint(3, 20)
    q = (f"{name} has {have} stamps. {_cap(pron)} buys {packs} packs of {per} stamps and then "
         f"gives {away} stamps to {poss} sister. How many stamps does {name} have now?")
    new = packs * per
    return Problem(q, [f"New stamps: {packs} × {per} = {new}.", f"After buying: {have} + {new} = {have + new}.",
                       f"After giving: {have + new} - {away} = {have + new - away}."], have + new - away)


def _marble_ratio(rng: random.Random) -> Problem:
    a, b, unit = rng.randint(1, 5), rng.randint(1, 5), rng.randint(2, 12)
    while a == b:
        b = rng.randint(1, 5)
    total = (a + b) * unit
    q = f"A bag holds {total} marbles. The ratio of red to blue marbles is {a}:{b}. How many blue marbles are there?"
    return Problem(q, [f"There are {a} + {b} = {a + b} parts.", f"Each part is {total} ÷ {a + b} = {unit} marbles.",
                       f"Blue: {b} × {unit} = {b * unit}."], b * unit)


def _score_average(rng: random.Random) -> Problem:
    (name, _, _) = _person(rng)
    s = [rng.randint(60, 100) for _ in range(3)]
    while sum(s) % 3:
        s[2] -= 1
    q = f"{name} scored {s[0]}, {s[1]} and {s[2]} on three tests. What is the average score?"
    return Problem(q, [f"Sum: {s[0]} + {s[1]} + {s[2]} = {sum(s)}.", f"Average: {sum(s)} ÷ 3 = {sum(s) // 3}."],
                   sum(s) // 3)


# keyed by the public template name (no underscore): it is written into each row's "template"
_MATH_TEMPLATES: dict[str, Callable[[random.Random], Problem]] = {
    f.__name__.removeprefix("_"): f for f in (
        _shopping_total, _money_change, _ages_times, _ages_sum, _practice_hours, _reading_hours, _train_distance,
        _cycling_minutes, _sharing_equal, _boxes_leftover, _sale_price, _class_percent, _garden_bags, _fence_cost,
        _coin_cents, _recipe_scale, _savings_weeks, _babysitting_left, _tomato_harvest, _bus_passengers, _pages_left,
        _fruit_picking, _farm_legs, _pizza_slices, _temperature_rise, _tank_minutes, _fuel_cost, _salary_raise,
        _bake_sale_profit, _stamp_collection, _marble_ratio, _score_average)
}


def word_problem(rng: random.Random, max_steps: int) -> tuple[str, Problem]:
    """A random template's problem with at most ``max_steps`` reasoning steps."""
    while True:
        name = rng.choice(sorted(_MATH_TEMPLATES))
        prob = _MATH_TEMPLATES[name](rng)
        if len(prob.steps) <= max_steps:
            return name, prob


# --------------------------------------------------------------------- noisy math
# Outputs that look like answers but teach nothing (or the wrong thing).
def noisy_output(rng: random.Random, answer: int) -> str:
    """An answer-like output for a problem whose answer is ``answer``, with no reasoning."""
    wrong = answer + rng.choice([-1, 1]) * rng.randint(1, max(3, answer // 3))
    return rng.choice([
        str(wrong), f"#### {wrong}", "I don't know.", "Not sure, maybe ask a teacher.",
        f"The answer is {wrong}.", "This question is too hard to answer.", "It depends.", "lol idk",
    ])
