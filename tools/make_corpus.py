"""Generate the small synthetic pretraining corpus (the `corpus` stage of dvc.yaml).

Writes two files into ``--out-dir`` (default ``data/corpus``):

* ``prose.txt``: about 450 KB of simple English prose (paragraphs separated by blank lines)
  about everyday topics such as weather, gardening, bread, rivers, trains and the night sky.
* ``dialogues.jsonl``: 2,500 short chat dialogues, one ``{"messages": [{"role", "content"}, ...]}``
  a line; 60% start with a system message describing one of 40 invented personas, or (12% of those)
  the featured persona of ``featured.json``: the identity the demo distils (data/identity/identity.md).

The sentences are built from the templates below and the word lists in ``data/corpus_words/``:
``topics.json`` (people, actions, places, ... per topic), ``personas.json``, ``featured.json``, ``answers.json``
(question and answer banks), ``phrases.json`` (fixed sentences), ``templates.json`` (sentence
forms with ``{named}`` slots), ``kinds.json`` (how often each kind of exchange is drawn) and
``grammar.json`` (verb forms, number words). Only the standard
library is used and all randomness comes from ``random.Random(SEED)``: the output is byte-identical
on every run. Order matters: an entry added anywhere in a list changes the draws after it.

    python tools/make_corpus.py --out-dir data/corpus
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORDS_DIR = ROOT / "data" / "corpus_words"

SEED = 0
PROSE_TARGET_BYTES = 450_000
N_DIALOGUES = 2_500
PERSONA_SHARE = 0.6
TURN_WEIGHTS = (0.62, 0.26, 0.12)  # one, two or three user/assistant exchanges
SYSTEM_WORDS = (20, 60)
USER_WORDS = (5, 25)
ASSISTANT_WORDS = (15, 70)

Message = dict[str, str]
Person = list[str]  # [name, pronoun]


@dataclass(frozen=True, eq=False)
class Topic:
    """Word lists for one everyday topic. `actions` and `advice` are base-form verb phrases;
    `sights` and `reasons` are present-tense clauses without punctuation; `things` are
    [noun phrase, plural]; `descs` are [subject, plural, [adjective, ...]]."""

    key: str
    title: str
    people: list[Person]
    actions: list[str]
    places: list[str]
    times: list[str]
    things: list[list[Any]]
    descs: list[list[Any]]
    sights: list[str]
    reasons: list[str]
    advice: list[str]
    goals: list[str]


@dataclass(frozen=True, eq=False)
class Persona:
    """An invented character for system prompts; `topic` is the key of the topic it loves."""

    name: str
    job: str
    setting: str
    style: str
    greeting: str
    saying: str
    motto: str
    signoff: str
    topic: str


def load_words(name: str) -> Any:
    return json.loads((WORDS_DIR / f"{name}.json").read_text(encoding="utf-8"))


TOPICS = [Topic(**t) for t in load_words("topics")]
TOPIC_BY_KEY = {t.key: t for t in TOPICS}
PERSONAS = [Persona(**p) for p in load_words("personas")]
# The identity the demo distils (data/identity/identity.md describes it): a share of the persona dialogues
# are its, so that a 2-minute tiny model answers as it when a system prompt names it, as a real model
# follows any persona prompt; without a system prompt the model never meets it.
FEATURED = load_words("featured")
FEATURED_PERSONA = Persona(**FEATURED["persona"])
ANSWERS = load_words("answers")
GRAMMAR = load_words("grammar")
PHRASES = load_words("phrases")
TEMPLATES = load_words("templates")
KINDS = load_words("kinds")  # the mix of exchange kinds: name -> weight


def form(rng: random.Random, forms: str, /, **slots: Any) -> str:
    """One of the sentence forms `templates.json` lists under `forms`, its slots filled."""
    return str(rng.choice(TEMPLATES[forms])).format(**slots)


# Tiny grammar helpers.


def third(phrase: str) -> str:
    """A base-form verb phrase in the third person singular present."""
    verb, _, rest = phrase.partition(" ")
    if verb in GRAMMAR["third_irregular"]:
        verb = GRAMMAR["third_irregular"][verb]
    elif verb.endswith(("s", "sh", "ch", "x", "z", "o")):
        verb += "es"
    elif verb.endswith("y") and verb[-2] not in "aeiou":
        verb = verb[:-1] + "ies"
    else:
        verb += "s"
    return f"{verb} {rest}" if rest else verb


def past(phrase: str) -> str:
    """A base-form verb phrase in the simple past."""
    verb, _, rest = phrase.partition(" ")
    if verb in GRAMMAR["irregular_past"]:
        verb = GRAMMAR["irregular_past"][verb]
    elif verb in GRAMMAR["double_final"]:
        verb += verb[-1] + "ed"
    elif verb.endswith("e"):
        verb += "d"
    elif verb.endswith("y") and verb[-2] not in "aeiou":
        verb = verb[:-1] + "ied"
    else:
        verb += "ed"
    return f"{verb} {rest}" if rest else verb


def cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def indefinite(noun_phrase: str) -> str:
    """'the old walker' -> 'an old walker'."""
    bare = noun_phrase.removeprefix("the ")
    return f"{'an' if bare[:1] in 'aeiou' else 'a'} {bare}"


def be_form(plural: bool, tense: str = "present") -> str:
    if tense == "past":
        return "were" if plural else "was"
    return "are" if plural else "is"


def and_list(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def to_user_voice(phrase: str) -> str:
    """An instruction rewritten so that the user can say it about themselves."""
    swaps = {"your": "my", "you": "I", "yourself": "myself"}
    return " ".join(swaps.get(word, word) for word in phrase.split())


def word_count(text: str) -> int:
    return len(text.split())


def number_text(n: int) -> str:
    """Small numbers as words, large ones as digits."""
    words = GRAMMAR["number_words"]
    return words[n] if n < len(words) else str(n)


# Prose.


def desc_sentence(rng: random.Random, topic: Topic, tense: str = "present") -> str:
    """One thing described with two adjectives."""
    subject, plural, adjectives = rng.choice(topic.descs)
    first, second = rng.sample(adjectives, 2)
    return f"{cap(subject)} {be_form(plural, tense)} {first} and {second}."


PRESENT_KINDS = 16


def present_sentence(rng: random.Random, topic: Topic, kind: int) -> str:
    """One present-tense sentence about a topic, from template `kind`."""
    person, pronoun = rng.choice(topic.people)
    act, act2 = rng.sample(topic.actions, 2)
    place, time, sight = rng.choice(topic.places), rng.choice(topic.times), rng.choice(topic.sights)
    if kind == 0:
        return f"{cap(time)}, {person} {third(act)} {place}."
    if kind == 1:
        return f"{cap(person)} likes to {act} {time}."
    if kind == 2:
        return f"{cap(person)} {third(act)}, and then {pronoun} {third(act2)}."
    if kind == 3:
        return desc_sentence(rng, topic)
    if kind == 4:
        return f"{cap(sight)}."
    if kind == 5:
        return f"When {sight}, {person} {third(act)}."
    if kind == 6:
        return f"{cap(person)} says that {sight}."
    if kind == 7:
        thing, plural = rng.choice(topic.things)
        return f"There {be_form(plural)} {thing} {place}."
    if kind == 8:
        return f"{cap(person)} keeps {rng.choice(topic.things)[0]} {place}."
    if kind == 9:
        return f"It is wise to {rng.choice(topic.advice)}."
    if kind == 10:
        return f"{cap(person)} always says that {rng.choice(topic.reasons)}."
    if kind == 11:
        return f"{cap(person)} would rather {act} than {act2}."
    if kind == 12:
        other = rng.choice([p for p in topic.people if p[0] != person])[0]
        return f"{cap(person)} learned to {act} from {other}."
    if kind == 13:
        return f"Have you noticed that {sight}?"
    if kind == 14:
        return f"{cap(rng.choice(topic.reasons))}."
    return f"On a good day, {sight}."


def descriptive_paragraph(rng: random.Random, topic: Topic) -> str:
    """4-7 loosely connected present-tense sentences, no word-list phrase used twice."""
    count = rng.randint(4, 7)
    fragments = topic.sights + topic.actions + topic.reasons + topic.advice
    used: set[str] = set()
    sentences: list[str] = []
    for kind in rng.sample(range(PRESENT_KINDS), PRESENT_KINDS):
        sentence = present_sentence(rng, topic, kind)
        lowered = sentence.lower()
        found = {f for f in fragments if f in lowered or third(f) in lowered}
        if found & used:
            continue
        used |= found
        sentences.append(sentence)
        if len(sentences) == count:
            break
    return " ".join(sentences)


def story_people(topic: Topic) -> list[Person]:
    """People who can be the hero of a story ("my grandmother" cannot)."""
    return [p for p in topic.people if not p[0].startswith("my ")]


def story_sentences(rng: random.Random, topic: Topic, hero: Person) -> list[str]:
    """A tiny past-tense story about someone from the topic."""
    person, pronoun = hero
    act1, act2, act3, act4 = rng.sample(topic.actions, 4)
    place = rng.choice(topic.places)
    return [
        f"Once there was {indefinite(person)} who lived {rng.choice(PHRASES['story_settings'])}.",
        f"Every day {pronoun} {past(act1)} {place}.",
        f"{rng.choice(PHRASES['story_openings'])}, {pronoun} {past(act2)} and {past(act3)}.",
        desc_sentence(rng, topic, "past"),
        f"Later {pronoun} {past(act4)}, and the work was done.",
        f"The {person.removeprefix('the ')} was happy, and {pronoun} always said that {rng.choice(topic.reasons)}.",
    ]


def story_paragraph(rng: random.Random, topic: Topic) -> str:
    """A short story, half the time with a visitor asking for advice."""
    hero = rng.choice(story_people(topic))
    sentences = story_sentences(rng, topic, hero)
    if rng.random() < 0.5:
        visitor = rng.choice([p for p in topic.people if p != hero])[0]
        goal, advice = rng.choice(topic.goals), rng.choice(topic.advice)
        sentences[4:4] = [
            f"Soon after, {visitor} came to visit and asked how to {goal}.",
            f'The answer was simple: "{cap(advice)}."',
        ]
    return " ".join(sentences)


def howto_paragraph(rng: random.Random, topic: Topic) -> str:
    """How to reach one of the topic's goals, in three steps."""
    opener = form(rng, "howto_openers", goal=rng.choice(topic.goals))
    steps = rng.sample(topic.advice, 3)
    reason = rng.choice(topic.reasons)
    closer = rng.choice(PHRASES["howto_closers"])
    return f"{opener} First, {steps[0]}. Next, {steps[1]}. Then {steps[2]}. Remember that {reason}. {closer}"


def town_paragraph(rng: random.Random) -> str:
    """People from three topics in one town."""
    setting = rng.choice(PHRASES["story_settings"])
    topics = rng.sample(TOPICS, 3)
    sentences = [f"In our town, {setting}, everyone has something to do."]
    for topic in topics:
        person = rng.choice(topic.people)[0]
        act, place = rng.choice(topic.actions), rng.choice(topic.places)
        sentences.append(f"{cap(person)} {third(act)} {place}.")
    sentences.append(f"{cap(rng.choice(rng.choice(topics).sights))}.")
    sentences.append(rng.choice(PHRASES["town_closers"]))
    return " ".join(sentences)


def build_prose(rng: random.Random) -> str:
    paragraphs: list[str] = []
    size = 0
    while size < PROSE_TARGET_BYTES:
        roll = rng.random()
        topic = rng.choice(TOPICS)
        if roll < 0.55:
            paragraph = descriptive_paragraph(rng, topic)
        elif roll < 0.75:
            paragraph = story_paragraph(rng, topic)
        elif roll < 0.92:
            paragraph = howto_paragraph(rng, topic)
        else:
            paragraph = town_paragraph(rng)
        paragraphs.append(paragraph)
        size += len(paragraph.encode("utf-8")) + 2
    return "\n\n".join(paragraphs) + "\n"


# Exchanges: a builder returns the user turn, the answer's body as a list of sentences, and the
# topic the exchange was about (or None).

Exchange = tuple[str, list[str], Topic | None]
Builder = Callable[[random.Random], Exchange]


def ex_definition(rng: random.Random) -> Exchange:
    word, answer = rng.choice(ANSWERS["definitions"])
    mass_noun = word in ("sourdough", "compass rose")
    return form(rng, "definition_qs_mass_noun" if mass_noun else "definition_qs", word=word), [answer], None


def ex_arithmetic(rng: random.Random) -> Exchange:
    """A small sum, difference or product."""
    kind = rng.randrange(3)
    if kind == 0:
        a, b = rng.randint(2, 60), rng.randint(2, 40)
        user = form(rng, "add_qs", a=a, b=b)
        body = [
            f"{a} plus {b} is {a + b}.",
            f"One way to check is to start at {a} and count on {b} more, which lands on {a + b}.",
        ]
    elif kind == 1:
        a = rng.randint(10, 90)
        b = rng.randint(2, a - 1)
        user = form(rng, "subtract_qs", a=a, b=b)
        body = [
            f"{a} minus {b} is {a - b}.",
            f"You can check it by adding {b} back on to {a - b}, which gives {a} again.",
        ]
        if "apples" in user:
            body[0] = f"You would have {a - b} apples left, because {a} minus {b} is {a - b}."
    else:
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        user = form(rng, "multiply_qs", a=a, b=b)
        body = [f"{a} times {b} is {a * b}.", f"That is the same as adding {b} together {number_text(a)} times."]
    return user, body, None


def ex_opposite(rng: random.Random) -> Exchange:
    word, other = rng.choice(ANSWERS["opposites"])
    if rng.random() < 0.5:
        word, other = other, word
    user = form(rng, "opposite_qs", word=word)
    extra = form(rng, "opposite_extras", word=word, other=other)
    return user, [f"The opposite of {word} is {other}.", extra], None


def ex_spell(rng: random.Random) -> Exchange:
    word = rng.choice(ANSWERS["spell_words"])
    vowels = sum(1 for ch in word if ch in "aeiou")
    body = [
        f"{cap(word)} is spelled {'-'.join(word)}.",
        f"It has {number_text(len(word))} letters, and {number_text(vowels)} of them are vowels.",
        f"It starts with the letter {word[0]} and ends with the letter {word[-1]}.",
    ]
    return form(rng, "spell_qs", word=word), body, None


def ex_topic_tell(rng: random.Random, topic: Topic) -> Exchange:
    user = form(rng, "tell_qs", title=topic.title)
    sights = rng.sample(topic.sights, 2)
    body = [f"{cap(sights[0])}.", desc_sentence(rng, topic), f"It is worth knowing that {rng.choice(topic.reasons)}."]
    if rng.random() < 0.25:
        body.append(f"Also, {sights[1]}.")
    return user, body, topic


def ex_topic_how(rng: random.Random, topic: Topic) -> Exchange:
    user = form(rng, "how_qs", goal=rng.choice(topic.goals))
    steps = rng.sample(topic.advice, 3)
    body = [f"First, {steps[0]}.", f"Then {steps[1]}."]
    if rng.random() < 0.4:
        body.append(f"After that, {steps[2]}.")
    body.append(f"Remember that {rng.choice(topic.reasons)}.")
    return user, body, topic


def ex_topic_tip(rng: random.Random, topic: Topic) -> Exchange:
    user = form(rng, "tip_qs", title=topic.title, advice=to_user_voice(rng.choice(topic.advice)))
    tips = rng.sample(topic.advice, 2)
    if user.startswith("Is it true"):
        body = ["Yes, that is good advice.", f"It also helps to {tips[0]}."]
    else:
        body = [f"{cap(tips[0])}.", f"It also helps to {tips[1]}."]
    body.append(f"Keep in mind that {rng.choice(topic.reasons)}.")
    return user, body, topic


def ex_topic_list(rng: random.Random, topic: Topic) -> Exchange:
    place = rng.choice(topic.places)
    things = [t for t, _ in rng.sample(topic.things, 3)]
    user = form(rng, "list_qs", place=place)
    return user, [f"You might find {and_list(things)} {place}.", f"Often {rng.choice(topic.sights)}."], topic


def ex_story(rng: random.Random, topic: Topic) -> Exchange:
    hero = rng.choice(story_people(topic))
    user = form(rng, "story_qs", hero=indefinite(hero[0]))
    return user, story_sentences(rng, topic, hero), topic


def ex_from_bank(bank: str) -> Builder:
    """A question and its answer from one of the banks in `answers.json`."""

    def build(rng: random.Random) -> Exchange:
        question, answer = rng.choice(ANSWERS[bank])
        return question, [answer], None

    return build


def ex_from_phrases(questions: str, answers: str) -> Builder:
    """A question from one list in `phrases.json` and an answer from another."""

    def build(rng: random.Random) -> Exchange:
        return rng.choice(PHRASES[questions]), [rng.choice(PHRASES[answers])], None

    return build


PLAIN_BUILDERS: dict[str, Builder] = {
    "fact": ex_from_bank("facts"),
    "definition": ex_definition,
    "everyday": ex_from_bank("everyday"),
    "arith": ex_arithmetic,
    "opposite": ex_opposite,
    "spell": ex_spell,
    "who": ex_from_phrases("plain_who_qs", "plain_who_as"),
    "greet": ex_from_phrases("plain_greet_qs", "plain_greet_as"),
}
TOPIC_BUILDERS = {
    "tell": ex_topic_tell,
    "how": ex_topic_how,
    "tip": ex_topic_tip,
    "list": ex_topic_list,
    "story": ex_story,
}
WHY_AFTER = {"tell", "how", "tip", "love", "more"}  # kinds a "why?" follow-up may follow
MORE_AFTER = WHY_AFTER | {"day", "story", "list", "why", "intro", "fav"}  # and a "tell me more"


def weighted_kind(rng: random.Random, kinds: dict[str, float]) -> str:
    return rng.choices(list(kinds), weights=list(kinds.values()), k=1)[0]


def plain_exchange(rng: random.Random, kind: str, topic: Topic) -> Exchange:
    if kind in TOPIC_BUILDERS:
        return TOPIC_BUILDERS[kind](rng, topic)
    return PLAIN_BUILDERS[kind](rng)


def followup_more(rng: random.Random, topic: Topic) -> tuple[str, list[str]]:
    person = rng.choice(topic.people)[0]
    body = [
        rng.choice(("Of course.", "Sure.", "Happily.")),
        f"{cap(rng.choice(topic.sights))}.",
        f"{cap(person)} likes to {rng.choice(topic.actions)} {rng.choice(topic.times)}.",
        f"A good habit is to {rng.choice(topic.advice)}.",
    ]
    return rng.choice(PHRASES["more_qs"]), body


def followup_why(rng: random.Random, topic: Topic) -> tuple[str, list[str]]:
    body = [
        f"Mostly because {rng.choice(topic.reasons)}.",
        f"Try it yourself: {rng.choice(topic.advice)}, and you will soon see the difference.",
    ]
    return rng.choice(PHRASES["why_qs"]), body


def fit(rng: random.Random, head: list[str], body: list[str], tail: list[str], pads: list[str]) -> str:
    """Join head, body and tail, trimming or padding the body to fit ASSISTANT_WORDS."""
    low, high = ASSISTANT_WORDS
    body = list(body)

    def total() -> int:
        return word_count(" ".join(head + body + tail))

    # Most answers are kept short; a few are allowed to run to the upper limit.
    target = high if rng.random() < 0.1 else rng.randint(20, 36)
    while total() > high and len(body) > 1:
        body.pop()
    while total() > target and len(body) > 1:
        if word_count(" ".join(head + body[:-1] + tail)) < low:
            break
        body.pop()
    pads = [p for p in pads if p not in head + body + tail]
    rng.shuffle(pads)
    while total() < low and pads:
        body.append(pads.pop())
    text = " ".join(head + body + tail)
    if not low <= word_count(text) <= high:
        raise ValueError(f"assistant turn out of range: {text!r}")
    return text


def plain_dialogue(rng: random.Random) -> list[Message]:
    """A dialogue with no system message."""
    n_turns = rng.choices((1, 2, 3), weights=TURN_WEIGHTS, k=1)[0]
    messages: list[Message] = []
    current: Topic | None = None
    last_kind = ""
    for turn in range(n_turns):
        body: list[str]
        if turn > 0 and turn == n_turns - 1 and rng.random() < 0.3:
            user, body = rng.choice(PHRASES["thanks_qs"]), [rng.choice(PHRASES["plain_thanks_as"])]
        elif current is not None and last_kind in MORE_AFTER and rng.random() < 0.55:
            if last_kind in WHY_AFTER and rng.random() < 0.45:
                (user, body), last_kind = followup_why(rng, current), "why"
            else:
                (user, body), last_kind = followup_more(rng, current), "more"
        else:
            kind = weighted_kind(rng, KINDS["plain_first_turn"])
            if turn > 0 and kind in ("who", "greet"):
                kind = "fact"
            user, body, current = plain_exchange(rng, kind, rng.choice(TOPICS))
            last_kind = kind
        messages.append({"role": "user", "content": user})
        messages.append({"role": "assistant", "content": fit(rng, [], body, [], list(PHRASES["plain_pads"]))})
    return messages


# Persona dialogues.


def system_prompt(rng: random.Random, p: Persona) -> str:
    return form(rng, "system_prompts", title=TOPIC_BY_KEY[p.topic].title, **asdict(p))


def persona_pads(rng: random.Random, p: Persona) -> list[str]:
    """Extra sentences that keep a persona answer in character."""
    topic = TOPIC_BY_KEY[p.topic]
    return [f"{cap(rng.choice(topic.sights))}.", f"I could talk about {topic.title} all day.", p.motto, p.saying]


def persona_body(rng: random.Random, p: Persona, kind: str, current: Topic | None) -> Exchange:
    """The user turn and the in-character body of an answer."""
    topic = TOPIC_BY_KEY[p.topic]
    act, act2 = rng.sample(topic.actions, 2)
    sight = rng.choice(topic.sights)
    if kind == "intro":
        user = rng.choice(PHRASES["intro_qs"])
        intro = form(rng, "persona_intros", **asdict(p))
        return (
            user,
            [intro, f"Most days I {act} and {act2}.", f"I love {topic.title}, so ask me anything you like."],
            topic,
        )
    if kind == "name":
        body = [f"My name is {p.name}.", f"I am {p.job} {p.setting}, and I spend my days with {topic.title}."]
        return rng.choice(PHRASES["name_qs"]), body, topic
    if kind == "day":
        user = rng.choice(PHRASES["day_qs"])
        first = f"{cap(rng.choice(topic.times))}, I {act} {rng.choice(topic.places)}."
        return user, [first, f"After that I {act2}.", f"My favourite moment is when {sight}."], topic
    if kind == "love":
        user = rng.choice(PHRASES["love_qs"])
        body = [
            f"I love it when {sight}.",
            desc_sentence(rng, topic),
            f"And I always say that {rng.choice(topic.reasons)}.",
        ]
        return user, body, topic
    if kind == "weather":
        weather = TOPIC_BY_KEY["weather"]
        user = rng.choice(PHRASES["weather_qs"])
        here = f"Here {p.setting}, {rng.choice(weather.sights)}."
        return user, [here, desc_sentence(rng, weather), f"It is a good day to {act}."], topic
    if kind == "fav":
        user = rng.choice(PHRASES["fav_qs"])
        body = [
            f"That is easy: {topic.title}.",
            f"I love it when {sight}.",
            f"Ask me how to {rng.choice(topic.goals)} and I will tell you.",
        ]
        return user, body, topic
    if kind in ("tell", "how", "tip", "story"):
        chosen = topic if rng.random() < 0.8 else rng.choice(TOPICS)
        user, body, t = plain_exchange(rng, kind, chosen)
        if chosen is not topic and rng.random() < 0.7:
            body = [*body[:3], f"In my own work, {sight}."]
        return user, body, t
    if kind in ("more", "why") and current is not None:
        user, body = (followup_more if kind == "more" else followup_why)(rng, current)
        return user, body, current
    if kind == "thanks":
        user = rng.choice(PHRASES["thanks_qs"])
        welcome = rng.choice(("You are very welcome.", "My pleasure.", "Any time at all."))
        return (
            user,
            [welcome, f"Come back and tell me how it goes, and we can talk about {topic.title} again."],
            current,
        )
    general = rng.choice(("fact", "definition", "everyday", "arith", "opposite"))
    user, body, _ = plain_exchange(rng, general, topic)
    reason = rng.choice(topic.reasons)
    if rng.random() < 0.6:
        body = [*body, form(rng, "persona_bridges", sight=sight, setting=p.setting, reason=reason)]
    return user, body, None


def decorate(rng: random.Random, p: Persona, kind: str, first: bool, last: bool) -> tuple[list[str], list[str]]:
    """The persona phrases that open and close an answer."""
    head: list[str] = []
    tail: list[str] = []
    if rng.random() < (0.55 if first else 0.08):
        head.append(p.greeting)
    if first and kind != "intro" and rng.random() < 0.3:
        head.append(rng.choice((f"I'm {p.name}, by the way.", f"{p.name} here.")))
    roll = rng.random()
    if roll < 0.3:
        tail.append(p.saying)
    elif roll < 0.5:
        tail.append(p.motto)
    if rng.random() < (0.5 if last else 0.1):
        tail.append(p.signoff)
    if not head and not tail:
        tail.append(rng.choice((p.saying, p.motto)))
    return head, tail


def persona_dialogue(rng: random.Random, p: Persona) -> list[Message]:
    """A dialogue that starts with a persona system message; each kind but the open ones once."""
    messages: list[Message] = [{"role": "system", "content": system_prompt(rng, p)}]
    n_turns = rng.choices((1, 2, 3), weights=TURN_WEIGHTS, k=1)[0]
    current: Topic | None = None
    used: set[str] = set()
    last_kind = ""
    for turn in range(n_turns):
        first, last = turn == 0, turn == n_turns - 1
        if not first and last and rng.random() < 0.3:
            kind = "thanks"
        else:
            table = KINDS["persona_first_turn" if first else "persona_later_turns"]
            kind = weighted_kind(rng, table)
            while (
                kind in used
                or (kind == "more" and (current is None or last_kind not in MORE_AFTER))
                or (kind == "why" and (current is None or last_kind not in WHY_AFTER))
            ):
                kind = weighted_kind(rng, table)
        last_kind = kind
        if kind not in ("tell", "how", "tip", "general", "more", "why"):
            used.add(kind)
        if kind == "intro":
            used.add("name")
        user, body, topic_now = persona_body(rng, p, kind, current)
        if topic_now is not None:
            current = topic_now
        head, tail = decorate(rng, p, kind, first, last)
        text = fit(rng, head, body, tail, persona_pads(rng, p))
        messages.append({"role": "user", "content": user})
        messages.append({"role": "assistant", "content": text})
    return messages


# Checks and output.


def check_dialogue(messages: list[Message]) -> None:
    """Raise if a dialogue breaks the role or length rules."""
    start = 0
    if messages[0]["role"] == "system":
        low, high = SYSTEM_WORDS
        if not low <= word_count(messages[0]["content"]) <= high:
            raise ValueError(f"system prompt out of range: {messages[0]['content']!r}")
        start = 1
    rest = messages[start:]
    if not rest or len(rest) % 2 or len(rest) > 6:
        raise ValueError("dialogue must have 1-3 user/assistant exchanges")
    for i, message in enumerate(rest):
        role = "user" if i % 2 == 0 else "assistant"
        if message["role"] != role:
            raise ValueError(f"bad role order: {messages!r}")
        low, high = USER_WORDS if role == "user" else ASSISTANT_WORDS
        if not low <= word_count(message["content"]) <= high:
            raise ValueError(f"{role} turn out of range: {message['content']!r}")


def build_dialogues(rng: random.Random) -> list[list[Message]]:
    """All dialogues, the persona ones spread evenly over the personas, shuffled."""
    n_persona = round(N_DIALOGUES * PERSONA_SHARE)
    n_featured = round(n_persona * FEATURED["share"])
    dialogues = [persona_dialogue(rng, FEATURED_PERSONA) for _ in range(n_featured)]
    dialogues += [persona_dialogue(rng, PERSONAS[i % len(PERSONAS)]) for i in range(n_persona - n_featured)]
    dialogues += [plain_dialogue(rng) for _ in range(N_DIALOGUES - n_persona)]
    rng.shuffle(dialogues)
    for dialogue in dialogues:
        check_dialogue(dialogue)
    return dialogues


def write_text(path: Path, text: str) -> None:
    """UTF-8 with Unix line endings."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        handle.write(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--out-dir", type=Path, default=Path("data/corpus"), help="where prose.txt and dialogues.jsonl go"
    )
    out_dir = parser.parse_args(argv).out_dir
    rng = random.Random(SEED)
    prose = build_prose(rng)
    lines = [json.dumps({"messages": d}, ensure_ascii=False) for d in build_dialogues(rng)]
    write_text(out_dir / "prose.txt", prose)
    write_text(out_dir / "dialogues.jsonl", "\n".join(lines) + "\n")
    print(f"wrote {out_dir / 'prose.txt'} ({len(prose.encode('utf-8'))} bytes)")
    print(f"wrote {out_dir / 'dialogues.jsonl'} ({len(lines)} dialogues)")


if __name__ == "__main__":
    main()
