"""The built-in corpus: short, simple-English children's stories written by a seeded grammar.

Why a procedural corpus: the quick start and the tests must run offline, deterministically and
without shipping megabytes of text. A story grammar with a cast, a setting, a small problem, a
resolution and quoted dialogue gives text in the TinyStories register (short sentences, a
small vocabulary, recurring names, "Once upon a time") that a tiny model visibly learns in
minutes, while the combinations of names, animals, places, objects, weather, feelings and
events make thousands of distinct sentences.

Standard library only (the tokenizer trainer imports this module and must stay torch-free).
The same seed always gives the same stories: everything random comes from one
`random.Random(seed)`.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from diffusionlm.utils.atomic import atomic_open

END_OF_TEXT = "<|endoftext|>"

GIRL_NAMES = ("Lily", "Mia", "Sue", "Anna", "Emma", "Lucy", "Ella", "Zoe", "Rosie", "Amy",
              "Kate", "Daisy", "Molly", "Ruby", "Nora", "Ivy", "Sara", "Jenny", "Maya", "Tina")
BOY_NAMES = ("Tom", "Ben", "Max", "Sam", "Tim", "Jack", "Leo", "Jake", "Finn", "Bob",
             "Noah", "Ollie", "Sid", "Dan", "Eli", "Joe", "Luke", "Ned", "Rex", "Toby")
ANIMALS = ("cat", "dog", "bunny", "bear", "duck", "frog", "fox", "mouse", "bird", "owl",
           "pig", "lamb", "puppy", "kitten", "squirrel", "turtle", "horse", "cow", "goat", "hen",
           "deer", "monkey", "lion", "elephant", "tiger", "fish", "bee", "ladybug", "snail", "penguin")
ANIMAL_NAMES = ("Spot", "Fluffy", "Buddy", "Coco", "Pip", "Whiskers", "Bubbles", "Sunny",
                "Pepper", "Muffin", "Button", "Nibbles", "Honey", "Biscuit", "Ziggy", "Peanut")
LOOKS = ("little", "small", "big", "kind", "happy", "brave", "curious", "shy", "silly", "friendly",
         "gentle", "clever", "sleepy", "cheerful", "tiny", "playful")
PLACES = (("at", "park"), ("in", "garden"), ("in", "forest"), ("at", "beach"), ("on", "farm"),
          ("by", "lake"), ("in", "meadow"), ("in", "backyard"), ("at", "playground"), ("on", "hill"),
          ("by", "river"), ("at", "zoo"), ("at", "market"), ("at", "school"), ("in", "library"),
          ("in", "village"), ("in", "field"), ("by", "pond"), ("in", "woods"), ("in", "kitchen"),
          ("in", "barn"), ("in", "yard"), ("in", "orchard"), ("near", "cave"), ("near", "castle"))
OBJECTS = ("ball", "kite", "hat", "doll", "teddy bear", "red car", "blue boat", "book", "toy train",
           "shiny stone", "drum", "balloon", "crayon", "cup", "spoon", "sock", "ribbon", "bell",
           "yellow bucket", "little shovel", "scarf", "puzzle", "robot", "flower crown", "map",
           "key", "blanket", "box", "whistle", "jar of honey", "basket", "necklace", "sticker",
           "paper plane", "wooden horse", "green frog toy", "star", "kite string", "cookie", "apple")
WEATHER = (("sunny", "The sun was shining and the sky was blue."),
           ("windy", "The wind was blowing and the leaves were dancing."),
           ("rainy", "Soft rain fell on the ground and made little puddles."),
           ("snowy", "White snow covered the trees and the roofs."),
           ("cloudy", "Big gray clouds moved slowly across the sky."),
           ("warm", "The air was warm and the birds were singing."),
           ("cold", "It was cold, so everyone wore a warm coat."),
           ("bright", "Everything was bright and full of color."),
           ("foggy", "A thick fog made the world look soft and quiet."),
           ("lovely", "The flowers were open and the bees were busy."))
FEELINGS_GOOD = ("happy", "glad", "proud", "excited", "thankful", "calm", "joyful", "cheerful")
FEELINGS_BAD = ("sad", "worried", "scared", "upset", "lonely", "grumpy", "nervous", "angry")
ACTIVITIES = ("play with {pos} ball", "run in the grass", "look at the clouds", "sing songs",
              "draw pictures", "build tall towers", "read books", "dance in the sun",
              "jump in puddles", "pick flowers", "climb trees", "play hide and seek",
              "splash in the water", "count the stars", "help {pos} mom", "feed the ducks",
              "ride {pos} bike", "make mud pies", "collect pretty leaves", "bake cookies")
HIDING_SPOTS = ("under a big rock", "behind a tree", "in a pile of leaves", "under the bed",
                "next to the pond", "inside an old box", "on top of the fence", "under a bush",
                "behind the door", "in the tall grass", "near the sandbox", "under the table")
HIGH_FRUITS = (("red", "apple"), ("shiny", "pear"), ("round", "orange"), ("dark", "cherry"), ("big", "plum"))
HELPERS = ("mom", "dad", "grandma", "grandpa", "the teacher", "a kind old man", "a nice lady")
FOODS = ("cake", "soup", "cookies", "pie", "bread", "pancakes", "fruit", "sandwiches")
ENDINGS = ("From that day on, {a} and {b} were best friends.",
           "{A} learned that it is good to ask for help.",
           "{A} smiled all the way home.",
           "That night, {a} went to sleep with a big smile.",
           "{A} knew it was the best day ever.",
           "They played together until the sun went down.",
           "{A} and {b} laughed and went home for {food}.",
           "After that, {a} always remembered to be kind.",
           "{A} hugged {b} and said thank you again.",
           "It was a happy end to a busy day.")


@dataclass(frozen=True)
class Character:
    """A story character: how the story names them and which pronouns they take."""

    name: str  # "Lily" or "the fox"
    intro: str  # "a little girl named Lily"
    subject: str  # he / she
    object: str  # him / her
    possessive: str  # his / her

    @property
    def address(self) -> str:
        """How others call this character in dialogue ("Lily", or "friend" for an unnamed animal)."""
        return "friend" if self.name.startswith("the ") else self.name

    @property
    def title(self) -> str:
        """The name at the start of a sentence ("The fox", "Lily")."""
        return self.name[0].upper() + self.name[1:]


def _article(word: str) -> str:
    """"a" or "an" before `word` (by its first letter; good enough for this vocabulary)."""
    return "an" if word[0] in "aeiou" else "a"


def _pronouns(rng: random.Random, female: bool | None = None) -> tuple[str, str, str, bool]:
    female = rng.random() < 0.5 if female is None else female
    return ("she", "her", "her", True) if female else ("he", "him", "his", False)


def _make_character(rng: random.Random, avoid: tuple[str, ...] = ()) -> Character:
    """A child or a named animal; `avoid` keeps a second character from sharing the first's name."""
    look = rng.choice(LOOKS)
    if rng.random() < 0.55:
        subject, obj, pos, female = _pronouns(rng)
        name = rng.choice([n for n in (GIRL_NAMES if female else BOY_NAMES) if n not in avoid])
        kind = "girl" if female else "boy"
        return Character(name, f"a {look} {kind} named {name}", subject, obj, pos)
    subject, obj, pos, _ = _pronouns(rng)
    animal = rng.choice(ANIMALS)
    if rng.random() < 0.5:
        name = rng.choice([n for n in ANIMAL_NAMES if n not in avoid])
        return Character(name, f"a {look} {animal} named {name}", subject, obj, pos)
    name = f"the {animal}" if f"the {animal}" not in avoid else f"the other {animal}"
    return Character(name, f"{_article(look)} {look} {animal}", subject, obj, pos)


@dataclass(frozen=True)
class Scene:
    """Everything one story is about; the plot functions only read it."""

    hero: Character
    friend: Character
    place: str  # "park"
    at_place: str  # "at the park"
    thing: str
    weather: str
    weather_line: str


def _say(rng: random.Random, who: Character, line: str) -> str:
    """A line of dialogue with a varied speech verb, quote first as in TinyStories: a final
    full stop inside the quotes becomes a comma ("Let's go," said Tom.)."""
    verb = "asked" if line.endswith("?") else rng.choice(("said", "said", "shouted", "whispered", "cried"))
    if line.endswith("."):
        line = line[:-1] + ","
    return f'"{line}" {verb} {who.name}.'


def _lost_thing(rng: random.Random, s: Scene) -> list[str]:
    spot = rng.choice(HIDING_SPOTS)
    return [
        f"One day, {s.hero.name} could not find {s.hero.possessive} {s.thing}.",
        f"{s.hero.subject.capitalize()} looked everywhere {s.at_place}, but it was gone.",
        _say(rng, s.hero, f"Where is my {s.thing}?"),
        f"{s.hero.title} felt {rng.choice(FEELINGS_BAD)}.",
        f"Then {s.friend.name} came by. " + _say(rng, s.friend, "Do not worry. I will help you look!"),
        f"They looked {spot}, and there it was!",
        _say(rng, s.hero, f"Thank you, {s.friend.address}! You found my {s.thing}!"),
    ]


def _stuck_animal(rng: random.Random, s: Scene) -> list[str]:
    animal = rng.choice(ANIMALS)
    trap = rng.choice(("up in a tall tree", "in the thick mud", "behind a high fence", "in a deep hole"))
    tool = rng.choice(("a long stick", "a rope", "a ladder", "a big box", "a soft blanket"))
    return [
        f"{s.at_place.capitalize()}, {s.hero.name} heard a small sound.",
        f"A baby {animal} was stuck {trap}.",
        _say(rng, s.hero, "Oh no! The poor thing is stuck. What can we do?"),
        f"{s.friend.title} had an idea. " + _say(rng, s.friend, f"Let's use {tool}!"),
        f"Together they helped the little {animal} get out.",
        f"The {animal} was safe, and it made a happy sound to say thank you.",
    ]


def _sudden_rain(rng: random.Random, s: Scene) -> list[str]:
    shelter = rng.choice(("a big tree", "a red umbrella", "the old bridge", "a wooden roof"))
    after = rng.choice(("a bright rainbow", "big puddles to jump in", "a snail on a leaf", "the sun again"))
    return [
        f"{s.hero.title} and {s.friend.name} were playing with {_article(s.thing)} {s.thing} {s.at_place}.",
        "Suddenly, dark clouds came and it started to rain.",
        _say(rng, s.friend, "We will get all wet! Where can we go?"),
        f"{s.hero.title} pointed at {shelter}. " + _say(rng, s.hero, "Quick, over there!"),
        "They ran and stayed dry until the rain stopped.",
        f"When they came out, they saw {after}.",
        _say(rng, s.hero, "The rain was not so bad after all."),
    ]


def _broken_thing(rng: random.Random, s: Scene) -> list[str]:
    helper = rng.choice(HELPERS)
    fix = rng.choice(("some glue", "a piece of tape", "a needle and thread", "a small hammer"))
    return [
        f"{s.hero.title} had {_article(s.thing)} {s.thing} that {s.hero.subject} loved very much.",
        f"One day, the {s.thing} fell and broke.",
        f"{s.hero.title} began to cry. " + _say(rng, s.hero, f"My {s.thing} is broken!"),
        f"{s.friend.title} held {s.hero.possessive} hand and they went to see {helper}.",
        f"{helper[0].upper() + helper[1:]} used {fix} and fixed it.",
        _say(rng, s.hero, "It looks new again! Thank you!"),
        f"{s.hero.title} promised to be more careful with {s.hero.possessive} {s.thing}.",
    ]


def _sharing(rng: random.Random, s: Scene) -> list[str]:
    return [
        f"{s.hero.title} was playing with {s.hero.possessive} {s.thing} {s.at_place}.",
        f"{s.friend.title} saw it and wanted to play too.",
        _say(rng, s.friend, f"Can I play with your {s.thing}, please?"),
        _say(rng, s.hero, "No, it is mine!"),
        f"{s.friend.title} felt {rng.choice(FEELINGS_BAD)} and walked away.",
        f"Soon {s.hero.name} was alone, and playing alone was not fun.",
        f"{s.hero.subject.capitalize()} ran after {s.friend.name}. "
        + _say(rng, s.hero, "I am sorry. Let's play together!"),
        f"They shared the {s.thing} and had much more fun.",
    ]


def _scary_noise(rng: random.Random, s: Scene) -> list[str]:
    noise = rng.choice(("a loud bang", "a strange scratch", "a soft hoot", "a funny rustle", "a big thump"))
    culprit = rng.choice(ANIMALS)
    return [
        f"At night, {s.hero.name} heard {noise} near the {s.place}.",
        f"{s.hero.title} was {rng.choice(('scared', 'nervous', 'worried'))}. "
        + _say(rng, s.hero, "What is that? Is it a monster?"),
        f"{s.friend.title} was brave and took a small light.",
        "They went to look, step by step.",
        f"It was only a little {culprit} looking for food!",
        _say(rng, s.friend, f"It is just {_article(culprit)} {culprit}. It is more scared than we are."),
        f"They gave the {culprit} some {rng.choice(FOODS)} and laughed.",
    ]


def _out_of_reach(rng: random.Random, s: Scene) -> list[str]:
    look, fruit = rng.choice(HIGH_FRUITS)
    return [
        f"{s.at_place.capitalize()}, {s.hero.name} saw {_article(look)} {look} {fruit} high up in a tree.",
        f"{s.hero.subject.capitalize()} jumped and jumped, but {s.hero.subject} could not reach it.",
        _say(rng, s.hero, "It is too high for me!"),
        f"{s.friend.title} came to help. " + _say(rng, s.friend, "Climb on my back, and try again."),
        f"This time {s.hero.name} reached it.",
        f"They shared the {fruit} and it was very sweet.",
    ]


def _new_friend(rng: random.Random, s: Scene) -> list[str]:
    return [
        f"{s.hero.title} went to the {s.place} to {rng.choice(ACTIVITIES).format(pos=s.hero.possessive)}.",
        f"There, {s.hero.subject} saw {s.friend.intro} sitting alone.",
        f"{s.friend.title} looked {rng.choice(FEELINGS_BAD)}.",
        _say(rng, s.hero, "Hello! Do you want to play with me?"),
        _say(rng, s.friend, "Yes, please! I do not have any friends here."),
        f"They played with {s.hero.possessive} {s.thing} all afternoon.",
        f"{s.friend.title} was not {rng.choice(('sad', 'lonely', 'alone'))} anymore.",
    ]


PLOTS: tuple[Callable[[random.Random, Scene], list[str]], ...] = (
    _lost_thing, _stuck_animal, _sudden_rain, _broken_thing, _sharing, _scary_noise, _out_of_reach, _new_friend,
)


def _opening(rng: random.Random, s: Scene, introduce_friend: bool) -> list[str]:
    activity = rng.choice(ACTIVITIES).format(pos=s.hero.possessive)
    first = rng.choice((
        f"Once upon a time, there was {s.hero.intro}.",
        f"Once there was {s.hero.intro}.",
        f"One {s.weather} day, {s.hero.intro} went to the {s.place}.",
        f"There once lived {s.hero.intro} near {_article(home := rng.choice(PLACES)[1])} {home}.",
    ))
    lines = [first, f"{s.hero.title} loved to {activity}."]
    if rng.random() < 0.6:
        lines.append(s.weather_line)
    if introduce_friend:
        lines.append(rng.choice((f"{s.hero.title} had a friend, {s.friend.intro}.",
                                 f"{s.hero.subject.capitalize()} often played with {s.friend.intro}.")))
    return lines


def _ending(rng: random.Random, s: Scene) -> list[str]:
    ending = rng.choice(ENDINGS).format(
        a=s.hero.name, A=s.hero.title, b=s.friend.name, food=rng.choice(FOODS)
    )
    return [f"{s.hero.title} felt {rng.choice(FEELINGS_GOOD)}.", ending]


def _story(rng: random.Random) -> str:
    hero = _make_character(rng)
    friend = _make_character(rng, avoid=(hero.name,))
    weather, weather_line = rng.choice(WEATHER)
    preposition, place = rng.choice(PLACES)
    scene = Scene(hero, friend, place, f"{preposition} the {place}", rng.choice(OBJECTS), weather, weather_line)
    plot_writer = rng.choice(PLOTS)
    opening = _opening(rng, scene, introduce_friend=plot_writer is not _new_friend)
    plot = plot_writer(rng, scene)
    ending = _ending(rng, scene)
    if rng.random() < 0.5:  # one paragraph or two, as in TinyStories
        return " ".join(opening + plot + ending)
    return " ".join(opening) + "\n" + " ".join(plot + ending)


def iter_stories(seed: int, num_stories: int) -> Iterator[str]:
    """Yield `num_stories` stories from `random.Random(seed)`; paragraphs are joined by "\\n"."""
    rng = random.Random(seed)
    for _ in range(num_stories):
        yield _story(rng)


def write_corpus_text(path: str | os.PathLike, seed: int, num_stories: int) -> None:
    """Write stories to `path` (atomically), each followed by "\\n<|endoftext|>\\n"."""
    with atomic_open(path, "w") as handle:
        for story in iter_stories(seed, num_stories):
            handle.write(f"{story}\n{END_OF_TEXT}\n")
