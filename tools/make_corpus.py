"""Generate the small synthetic training corpus for the tiny language model.

This script writes two files under ``data/corpus/``:

* ``prose.txt`` -- about 450 KB of simple English prose (paragraphs separated
  by blank lines) about everyday topics such as weather, gardening, bread,
  rivers, trains, weaving, birds and the night sky.
* ``dialogues.jsonl`` -- about 2,500 short chat dialogues, one JSON object per
  line of the form ``{"messages": [{"role": ..., "content": ...}, ...]}``.
  About 60% start with a system message describing one of 40 invented
  personas; the rest have no system message and give plain helpful answers.

Every sentence is built from the templates and word lists in this file, so
all of the text is original.  Only the standard library is used, and all
randomness comes from ``random.Random(0)``, so the output is deterministic:
running the script again rewrites byte-identical files.

Rerun it from the repository root with::

    python tools/make_corpus.py
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "data" / "corpus"
PROSE_PATH = OUT_DIR / "prose.txt"
DIALOGUES_PATH = OUT_DIR / "dialogues.jsonl"

PROSE_TARGET_BYTES = 450_000
N_DIALOGUES = 2_500
PERSONA_SHARE = 0.6
TURN_WEIGHTS = (0.62, 0.26, 0.12)

SYSTEM_WORDS = (20, 60)
USER_WORDS = (5, 25)
ASSISTANT_WORDS = (15, 70)

Message = dict[str, str]
Thing = tuple[str, bool]
Desc = tuple[str, bool, tuple[str, ...]]
Person = tuple[str, str]


# ---------------------------------------------------------------------------
# Topics: invented word lists used by both the prose and the dialogues.
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Topic:
    """Word lists for one everyday topic.

    ``actions`` and ``advice`` are verb phrases in the base form; ``sights``
    and ``reasons`` are complete present-tense clauses without punctuation.
    """

    key: str
    title: str
    people: tuple[Person, ...]
    actions: tuple[str, ...]
    places: tuple[str, ...]
    times: tuple[str, ...]
    things: tuple[Thing, ...]
    descs: tuple[Desc, ...]
    sights: tuple[str, ...]
    reasons: tuple[str, ...]
    advice: tuple[str, ...]
    goals: tuple[str, ...]


TOPICS: tuple[Topic, ...] = (
    Topic(
        key="weather",
        title="the weather",
        people=(
            ("the weather watcher", "she"),
            ("the old farmer", "he"),
            ("my grandmother", "she"),
            ("the shepherd", "he"),
        ),
        actions=(
            "check the clouds",
            "read the barometer",
            "tap the glass of the barometer",
            "write the rainfall in a notebook",
            "close the shutters before a storm",
            "hang the washing out to dry",
            "measure the rain in a tin cup",
            "watch the wind turn the weather vane",
            "bring the chairs in from the yard",
            "look at the sky over the hills",
            "sweep the snow from the step",
            "open the windows to let in the breeze",
        ),
        places=(
            "in the yard",
            "on the porch",
            "by the garden gate",
            "at the top of the hill",
            "near the kitchen window",
            "behind the barn",
        ),
        times=(
            "in the morning",
            "before breakfast",
            "at noon",
            "in the evening",
            "on windy days",
            "when the days grow short",
            "every afternoon",
            "after a long dry spell",
        ),
        things=(
            ("a rain gauge", False),
            ("an old barometer", False),
            ("a weather vane shaped like a rooster", False),
            ("a pair of rubber boots", False),
            ("two big umbrellas", True),
            ("a notebook full of rainfall figures", False),
        ),
        descs=(
            ("the sky", False, ("wide", "pale", "bright", "clear")),
            ("the wind", False, ("cold", "gusty", "sharp", "strong")),
            ("the clouds", True, ("low", "dark", "heavy", "grey")),
            ("the air", False, ("damp", "fresh", "cool", "still")),
            ("the puddles", True, ("wide", "muddy", "cold", "shallow")),
            ("the morning fog", False, ("thick", "white", "cold", "lingering")),
        ),
        sights=(
            "the wind shakes the last leaves from the trees",
            "dark clouds gather over the hills",
            "the rain drums on the tin roof",
            "a rainbow rises over the fields",
            "the fog hides the far side of the valley",
            "frost paints thin lines on the window",
            "the puddles freeze at the edges",
            "the sun breaks through the clouds",
            "the snow muffles every sound in the street",
            "thunder rolls far away over the sea",
        ),
        reasons=(
            "the weather changes quickly in the hills",
            "a sudden storm can ruin a day's work",
            "rain is good for the fields",
            "the wind often turns before the rain comes",
            "cold air can hurt young plants",
            "a dry week can empty the water butts",
        ),
        advice=(
            "carry a coat even on a sunny day",
            "watch which way the clouds are moving",
            "check the sky before you set out",
            "keep a dry pair of socks in your bag",
            "write down the weather each day",
            "close the windows when the wind picks up",
            "listen to the birds before a storm",
        ),
        goals=(
            "guess the weather by looking at the sky",
            "keep a simple weather diary",
            "get ready for a winter storm",
            "measure how much rain has fallen",
        ),
    ),
    Topic(
        key="gardening",
        title="gardening",
        people=(
            ("the gardener", "she"),
            ("my uncle", "he"),
            ("the old woman next door", "she"),
            ("the boy from the allotment", "he"),
        ),
        actions=(
            "water the tomatoes",
            "pull up the weeds",
            "dig a new bed for the beans",
            "plant onions in a straight row",
            "spread compost around the roses",
            "tie the peas to thin sticks",
            "pick the ripe strawberries",
            "turn the compost heap",
            "cut back the old stems",
            "sow lettuce seeds in a tray",
            "rake the soil until it is fine",
            "pick slugs off the cabbages",
        ),
        places=(
            "in the vegetable patch",
            "by the greenhouse",
            "along the garden path",
            "under the apple tree",
            "at the allotment",
            "near the compost heap",
        ),
        times=(
            "in early spring",
            "in the cool of the evening",
            "after the rain",
            "every weekend",
            "before the first frost",
            "in the long days of summer",
            "on a mild morning",
        ),
        things=(
            ("a watering can", False),
            ("a spade with a worn handle", False),
            ("three clay pots", True),
            ("a wheelbarrow", False),
            ("a packet of carrot seeds", False),
            ("a ball of green string", False),
            ("two pairs of gloves", True),
        ),
        descs=(
            ("the soil", False, ("dark", "rich", "crumbly", "damp")),
            ("the beans", True, ("tall", "green", "tender", "healthy")),
            ("the roses", True, ("red", "fragrant", "thorny", "full")),
            ("the lawn", False, ("short", "green", "neat", "soft")),
            ("the tomatoes", True, ("ripe", "round", "red", "sun-warmed")),
            ("the greenhouse", False, ("warm", "bright", "humid", "crowded")),
        ),
        sights=(
            "the first shoots push up through the soil",
            "bees drift from flower to flower",
            "the beans climb higher every day",
            "worms turn the soil under the leaves",
            "the apple tree is heavy with fruit",
            "the lettuce grows fast after the rain",
            "the smell of cut grass fills the air",
            "a robin waits by the spade for worms",
        ),
        reasons=(
            "plants need water most when they are young",
            "weeds steal light and food from the crop",
            "good soil makes strong roots",
            "some seeds need warmth before they wake",
            "crowded plants grow thin and weak",
            "compost feeds the soil for many years",
        ),
        advice=(
            "water the roots and not the leaves",
            "start with a small bed",
            "plant what you like to eat",
            "give each seedling room to grow",
            "add compost to the soil every year",
            "pull weeds when they are small",
            "label every row you sow",
        ),
        goals=(
            "start a small vegetable garden",
            "grow tomatoes on a balcony",
            "make good compost",
            "keep slugs away from the lettuce",
        ),
    ),
    Topic(
        key="cooking",
        title="cooking",
        people=(
            ("the cook", "he"),
            ("my mother", "she"),
            ("the innkeeper", "she"),
            ("the young chef", "he"),
        ),
        actions=(
            "chop the onions",
            "stir the soup",
            "taste the sauce",
            "roast the vegetables",
            "boil the potatoes",
            "wash the pans",
            "set the table",
            "grate the cheese",
            "fry the mushrooms in butter",
            "add a pinch of salt",
            "peel the carrots",
            "warm the plates",
        ),
        places=(
            "in the kitchen",
            "by the stove",
            "at the long wooden table",
            "next to the sink",
            "in the pantry",
            "over the open fire",
        ),
        times=(
            "before supper",
            "in the evening",
            "on Sunday afternoons",
            "when guests arrive",
            "after the market",
            "on cold nights",
            "at lunchtime",
        ),
        things=(
            ("a heavy iron pan", False),
            ("a jar of dried herbs", False),
            ("a sharp little knife", False),
            ("two wooden spoons", True),
            ("a basket of onions", False),
            ("a pot of soup", False),
            ("a row of copper pans", False),
        ),
        descs=(
            ("the soup", False, ("thick", "hot", "smooth", "rich")),
            ("the kitchen", False, ("warm", "busy", "small", "bright")),
            ("the onions", True, ("soft", "golden", "sweet", "thinly sliced")),
            ("the sauce", False, ("glossy", "rich", "dark", "thick")),
            ("the potatoes", True, ("crisp", "golden", "hot", "buttery")),
            ("the stew", False, ("rich", "hearty", "warm", "filling")),
        ),
        sights=(
            "the soup bubbles gently on the stove",
            "steam fogs the kitchen window",
            "the smell of garlic drifts into the hall",
            "the onions turn golden in the pan",
            "the kettle sings on the hob",
            "everyone gathers round the table",
            "the oven ticks as it warms up",
            "a pot of stew simmers all afternoon",
        ),
        reasons=(
            "good food takes a little time",
            "salt brings out the flavour",
            "a sharp knife is safer than a blunt one",
            "cold pans make food stick",
            "fresh herbs lose their taste if cooked too long",
            "tasting as you go prevents mistakes",
        ),
        advice=(
            "read the whole recipe first",
            "keep your knife sharp",
            "taste the food as you cook",
            "start with a simple soup",
            "cook with what is in season",
            "clean as you go",
            "let the pan get hot before you add the oil",
        ),
        goals=(
            "learn to cook",
            "make a simple vegetable soup",
            "cook rice that is not sticky",
            "plan meals for the week",
        ),
    ),
    Topic(
        key="tools",
        title="tools",
        people=(
            ("the carpenter", "she"),
            ("the blacksmith", "he"),
            ("my grandfather", "he"),
            ("the apprentice", "she"),
        ),
        actions=(
            "sharpen the chisels",
            "oil the hinges",
            "sweep the sawdust from the floor",
            "hang the saws on the wall",
            "measure the plank twice",
            "drill a hole for the screw",
            "plane the edge of the board",
            "sort the nails into jars",
            "clean the brushes",
            "mend the handle of the axe",
            "heat the iron in the forge",
            "file the rough edges",
        ),
        places=(
            "in the workshop",
            "at the workbench",
            "by the forge",
            "in the shed",
            "under the window",
            "next to the tool chest",
        ),
        times=(
            "in the morning",
            "at the end of each day",
            "before a big job",
            "on rainy afternoons",
            "once a month",
            "after lunch",
        ),
        things=(
            ("a sharp chisel", False),
            ("a box of brass screws", False),
            ("a hand saw", False),
            ("three hammers of different sizes", True),
            ("a pot of linseed oil", False),
            ("a folding ruler", False),
            ("a set of files", False),
        ),
        descs=(
            ("the workbench", False, ("sturdy", "scarred", "long", "solid")),
            ("the blade", False, ("sharp", "bright", "thin", "cold")),
            ("the handle", False, ("smooth", "worn", "wooden", "comfortable")),
            ("the nails", True, ("straight", "new", "small", "shiny")),
            ("the workshop", False, ("dusty", "cosy", "quiet", "airy")),
            ("the hammer", False, ("heavy", "old", "balanced", "reliable")),
        ),
        sights=(
            "sawdust gathers in the corners of the shed",
            "sparks fly from the grinding wheel",
            "the smell of fresh pine fills the workshop",
            "the anvil rings under the hammer",
            "rows of tools hang neatly on the wall",
            "a curl of wood falls from the plane",
            "the forge glows orange in the dark",
            "the old clock ticks above the bench",
        ),
        reasons=(
            "a sharp tool does the work for you",
            "rust spoils a good blade",
            "measuring twice saves wood",
            "a tidy bench is a safe bench",
            "good tools can last a lifetime",
            "a loose handle can slip and hurt you",
        ),
        advice=(
            "buy a few good tools rather than many cheap ones",
            "put each tool back after you use it",
            "keep your blades dry",
            "measure twice and cut once",
            "wear gloves when you handle rough metal",
            "oil your tools before winter",
            "learn one tool well before moving to the next",
        ),
        goals=(
            "sharpen a kitchen knife",
            "build a simple shelf",
            "start a small tool kit",
            "look after old tools",
        ),
    ),
    Topic(
        key="rivers",
        title="rivers",
        people=(
            ("the ferryman", "he"),
            ("the lock keeper", "she"),
            ("the fisherman", "he"),
            ("my cousin", "she"),
        ),
        actions=(
            "row across the river",
            "check the level of the water",
            "open the lock gates",
            "tie the boat to the jetty",
            "clear branches from the weir",
            "walk along the towpath",
            "watch the herons",
            "paint the old jetty",
            "count the barges",
            "mend the ferry rope",
            "skim stones across the water",
            "fill a bucket from the stream",
        ),
        places=(
            "on the riverbank",
            "by the old stone bridge",
            "near the weir",
            "at the lock",
            "along the towpath",
            "under the willows",
        ),
        times=(
            "at dawn",
            "in the evening",
            "after heavy rain",
            "in the dry weeks of summer",
            "every morning",
            "when the mist rises",
        ),
        things=(
            ("a small wooden boat", False),
            ("a coil of rope", False),
            ("a pair of oars", False),
            ("a tin of tar", False),
            ("two fishing rods", True),
            ("a lantern for the jetty", False),
        ),
        descs=(
            ("the river", False, ("wide", "slow", "brown", "deep")),
            ("the water", False, ("cold", "clear", "calm", "still")),
            ("the banks", True, ("steep", "green", "muddy", "soft")),
            ("the bridge", False, ("old", "narrow", "stone", "mossy")),
            ("the current", False, ("strong", "steady", "swift", "tricky")),
            ("the willows", True, ("tall", "graceful", "green", "drooping")),
        ),
        sights=(
            "the river rises after the storm",
            "mist lies low over the water",
            "a heron stands still in the shallows",
            "the current carries leaves down to the sea",
            "ducks paddle under the bridge",
            "the water sparkles in the afternoon sun",
            "a barge drifts slowly past the lock",
            "the weir roars after a wet week",
        ),
        reasons=(
            "the river changes with every season",
            "strong currents can pull a small boat off course",
            "clean water means healthy fish",
            "the banks wear away if nobody cares for them",
            "mist on the water hides rocks and branches",
            "the locks let boats climb the hill",
        ),
        advice=(
            "wear a life jacket in a small boat",
            "never swim alone in a river",
            "watch the current before you cross",
            "leave the riverbank as clean as you found it",
            "walk the towpath early in the day",
            "keep a dry bag for your things",
            "learn where the shallow places are",
        ),
        goals=(
            "row a boat safely",
            "find a good spot to watch river birds",
            "cross a stream without getting wet",
            "learn how a canal lock works",
        ),
    ),
    Topic(
        key="trains",
        title="trains",
        people=(
            ("the station master", "he"),
            ("the conductor", "she"),
            ("the signal man", "he"),
            ("my brother", "he"),
            ("the ticket clerk", "she"),
        ),
        actions=(
            "blow the whistle",
            "check the tickets",
            "wave the green flag",
            "sweep the platform",
            "change the signal",
            "read the timetable",
            "oil the points",
            "ring the station bell",
            "load the parcels into the van",
            "polish the brass lamps",
            "count the passengers",
            "chalk the times on the board",
        ),
        places=(
            "on the platform",
            "in the signal box",
            "by the ticket office",
            "at the small junction",
            "in the waiting room",
            "beside the track",
        ),
        times=(
            "before the first train",
            "at midday",
            "in the evening rush",
            "on quiet Sundays",
            "late at night",
            "every hour",
        ),
        things=(
            ("a brass whistle", False),
            ("a big station clock", False),
            ("a stack of paper tickets", False),
            ("two wooden benches", True),
            ("a lamp with a red glass", False),
            ("a printed timetable", False),
        ),
        descs=(
            ("the platform", False, ("long", "wet", "windy", "old")),
            ("the train", False, ("slow", "long", "green", "full")),
            ("the carriages", True, ("warm", "green", "clean", "old")),
            ("the station", False, ("small", "old", "tidy", "friendly")),
            ("the rails", True, ("shiny", "straight", "cold", "long")),
            ("the waiting room", False, ("warm", "dim", "quiet", "cosy")),
        ),
        sights=(
            "the night train hums through the valley",
            "steam curls above the engine",
            "the rails shine in the low sun",
            "the signal drops and the train moves off",
            "passengers wave from the windows",
            "the clock above the platform ticks towards noon",
            "a long goods train rattles past",
            "the carriage lights glow in the dark",
        ),
        reasons=(
            "trains must keep to the timetable",
            "a missed signal can cause long delays",
            "a clean station makes travellers feel welcome",
            "the points freeze in very cold weather",
            "many people depend on the early train",
            "safety always comes first on the railway",
        ),
        advice=(
            "arrive a few minutes before the train leaves",
            "keep your ticket somewhere easy to reach",
            "stand behind the line on the platform",
            "bring a book for a long journey",
            "check the timetable the night before",
            "sit facing forward if you feel unwell",
            "ask the guard if you are not sure",
        ),
        goals=(
            "plan a long train journey",
            "catch an early train",
            "travel by train with a bicycle",
            "read a railway timetable",
        ),
    ),
    Topic(
        key="towns",
        title="small towns",
        people=(
            ("the postwoman", "she"),
            ("the mayor", "he"),
            ("the shopkeeper", "she"),
            ("the old clockmaker", "he"),
            ("the school teacher", "she"),
        ),
        actions=(
            "open the shutters of the shop",
            "deliver the letters",
            "sweep the market square",
            "wind the town clock",
            "hang flowers on the lamp posts",
            "ring the bell at the school",
            "chat with the neighbours",
            "paint the fence by the church",
            "put out the chairs at the cafe",
            "read the notices on the board",
            "set up the market stalls",
            "feed the ducks on the green",
        ),
        places=(
            "in the market square",
            "on the high street",
            "by the fountain",
            "outside the town hall",
            "near the little school",
            "on the village green",
        ),
        times=(
            "on market day",
            "early in the morning",
            "in the afternoon",
            "at the summer fair",
            "on Sunday mornings",
            "as the shops close",
        ),
        things=(
            ("a bench by the fountain", False),
            ("a notice board covered in papers", False),
            ("a row of flower boxes", False),
            ("an old clock tower", False),
            ("two cafes with blue awnings", True),
            ("a small library", False),
        ),
        descs=(
            ("the square", False, ("busy", "sunny", "cobbled", "lively")),
            ("the streets", True, ("narrow", "winding", "clean", "steep")),
            ("the houses", True, ("small", "crooked", "painted", "old")),
            ("the market", False, ("lively", "crowded", "colourful", "noisy")),
            ("the town", False, ("friendly", "quiet", "pretty", "sleepy")),
            ("the church bells", True, ("loud", "cheerful", "old", "deep")),
        ),
        sights=(
            "the town clock strikes nine",
            "children run across the square after school",
            "the baker's window glows in the dark street",
            "neighbours stop to talk outside the post office",
            "flower boxes brighten every window",
            "the market fills the square with noise and colour",
            "the last bus leaves the square at six",
            "swallows dive around the church tower",
        ),
        reasons=(
            "everyone knows everyone in a small town",
            "the market brings people together",
            "small shops need local customers",
            "a town is only as kind as its neighbours",
            "news travels fast along the high street",
            "old buildings need care to last",
        ),
        advice=(
            "say hello to the people you pass",
            "shop at the local market when you can",
            "join a club or a choir",
            "visit the library on a rainy day",
            "walk instead of driving short distances",
            "help at the town fair",
            "learn the names of your neighbours",
        ),
        goals=(
            "get to know a new town",
            "make friends in a small town",
            "organise a street party",
            "find your way around a market",
        ),
    ),
    Topic(
        key="weaving",
        title="weaving",
        people=(
            ("the weaver", "she"),
            ("the dyer", "she"),
            ("my grandmother", "she"),
            ("the young spinner", "he"),
        ),
        actions=(
            "thread the loom",
            "wind the yarn into balls",
            "spin the wool",
            "dye the wool in a big pot",
            "count the threads",
            "weave a blue scarf",
            "comb the fleece",
            "tie off the loose ends",
            "card the wool by the fire",
            "hang the skeins to dry",
            "choose the colours for a blanket",
            "pass the shuttle from side to side",
        ),
        places=(
            "at the loom",
            "by the window",
            "in the dye shed",
            "beside the fire",
            "in the weaving room",
            "at the kitchen table",
        ),
        times=(
            "in the long winter evenings",
            "every afternoon",
            "on wet days",
            "after the shearing",
            "in the quiet hours",
            "in the morning light",
        ),
        things=(
            ("a wooden shuttle", False),
            ("a basket of wool", False),
            ("a spinning wheel", False),
            ("three skeins of red yarn", True),
            ("a half-finished rug", False),
            ("a pot of blue dye", False),
        ),
        descs=(
            ("the wool", False, ("soft", "warm", "thick", "springy")),
            ("the threads", True, ("fine", "tight", "even", "bright")),
            ("the cloth", False, ("strong", "smooth", "warm", "heavy")),
            ("the colours", True, ("deep", "bright", "rich", "warm")),
            ("the loom", False, ("old", "wooden", "wide", "creaky")),
            ("the blanket", False, ("thick", "cosy", "striped", "long")),
        ),
        sights=(
            "the shuttle clicks back and forth",
            "the pattern grows a little each day",
            "the dyed wool dries in the sun",
            "the spinning wheel hums by the fire",
            "a new rug lies folded on the chair",
            "the colours glow in the morning light",
            "the fleece smells of grass and rain",
            "tiny threads float in the sunlight",
        ),
        reasons=(
            "even tension makes strong cloth",
            "good wool starts with a healthy sheep",
            "a small mistake grows if you do not fix it",
            "natural dyes fade gently over time",
            "patience matters more than speed at the loom",
            "tight threads keep the pattern neat",
        ),
        advice=(
            "start with a small piece",
            "keep the tension even",
            "wash the wool before you dye it",
            "count your rows",
            "choose two or three colours only",
            "take a break when your hands get tired",
            "keep a sample of every colour you make",
        ),
        goals=(
            "learn to weave",
            "dye wool at home",
            "make a simple scarf",
            "spin wool into yarn",
        ),
    ),
    Topic(
        key="birds",
        title="birds",
        people=(
            ("the birdwatcher", "she"),
            ("the pigeon keeper", "he"),
            ("my aunt", "she"),
            ("the boy next door", "he"),
        ),
        actions=(
            "fill the bird feeder",
            "count the geese",
            "listen for the owl",
            "clean the bird bath",
            "note the birds in a little book",
            "look through the binoculars",
            "build a nest box",
            "scatter seeds on the wall",
            "watch the swallows",
            "sit still in the hide",
            "follow the tracks in the snow",
            "sketch a robin",
        ),
        places=(
            "in the hide by the marsh",
            "at the edge of the wood",
            "on the rooftop",
            "in the back garden",
            "by the reed beds",
            "near the old oak",
        ),
        times=(
            "at first light",
            "in the evening",
            "in the spring",
            "on frosty mornings",
            "when the geese fly south",
            "after a storm",
        ),
        things=(
            ("a pair of binoculars", False),
            ("a bird feeder", False),
            ("a nest box on the fence", False),
            ("a field notebook", False),
            ("two bags of seed", True),
            ("a flask of tea", False),
        ),
        descs=(
            ("the robin", False, ("bold", "bright", "small", "curious")),
            ("the geese", True, ("loud", "grey", "tired", "busy")),
            ("the owl", False, ("silent", "pale", "patient", "watchful")),
            ("the swallows", True, ("quick", "graceful", "busy", "restless")),
            ("the marsh", False, ("wide", "quiet", "misty", "wet")),
            ("the song", False, ("sweet", "clear", "long", "cheerful")),
        ),
        sights=(
            "a flock of starlings swirls above the field",
            "the geese call as they fly overhead",
            "a wren sings from the hedge",
            "an owl glides across the lane at dusk",
            "the swallows return in spring",
            "a heron lifts slowly from the reeds",
            "a blackbird sings from the chimney",
            "tiny footprints cross the fresh snow",
        ),
        reasons=(
            "birds need water as much as food",
            "many birds sing most at dawn",
            "a quiet watcher sees more birds",
            "hedges give small birds a place to hide",
            "the seasons tell birds when to travel",
            "clean feeders keep birds healthy",
        ),
        advice=(
            "sit still and be patient",
            "learn a few common songs first",
            "put out water as well as seed",
            "keep a list of the birds you see",
            "plant a hedge for shelter",
            "go out early in the morning",
            "clean the feeder every week",
        ),
        goals=(
            "start watching birds",
            "attract birds to a garden",
            "learn bird songs",
            "build a simple nest box",
        ),
    ),
    Topic(
        key="night_sky",
        title="the night sky",
        people=(
            ("the stargazer", "she"),
            ("the shepherd", "he"),
            ("the caretaker of the observatory", "she"),
            ("my father", "he"),
        ),
        actions=(
            "count the stars",
            "look for the pole star",
            "set up the telescope",
            "watch the moon rise",
            "draw a map of the stars",
            "wait for a shooting star",
            "write the phases of the moon in a diary",
            "point out the planets",
            "lie back on the grass",
            "polish the telescope lens",
            "turn off the lights",
            "follow the stars home",
        ),
        places=(
            "on the hill",
            "in the dark field",
            "on the roof",
            "by the observatory",
            "in the back garden",
            "on the quiet beach",
        ),
        times=(
            "on clear nights",
            "after midnight",
            "in the winter",
            "when the moon is new",
            "late in the evening",
            "before dawn",
        ),
        things=(
            ("a small telescope", False),
            ("a star chart", False),
            ("a warm blanket", False),
            ("a red torch", False),
            ("two folding chairs", True),
            ("a flask of cocoa", False),
        ),
        descs=(
            ("the sky", False, ("dark", "clear", "deep", "inky")),
            ("the moon", False, ("full", "pale", "silver", "bright")),
            ("the stars", True, ("bright", "countless", "distant", "sharp")),
            ("the night", False, ("cold", "still", "long", "quiet")),
            ("the planets", True, ("steady", "bright", "distant", "tiny")),
            ("the horizon", False, ("low", "dark", "faint", "flat")),
        ),
        sights=(
            "the stars come out one by one",
            "the moon rises over the hill",
            "a shooting star streaks across the sky",
            "the pale band of the galaxy stretches overhead",
            "a bright planet shines low in the west",
            "the night sky turns slowly around the pole star",
            "clouds drift across the face of the moon",
            "the first light of dawn hides the stars",
        ),
        reasons=(
            "city lights hide the faint stars",
            "your eyes need time to get used to the dark",
            "the sky changes with the seasons",
            "the moon is brightest when it is full",
            "clear air lets you see further",
            "patience brings the best views",
        ),
        advice=(
            "find a dark place away from streetlights",
            "let your eyes rest in the dark for a while",
            "learn one constellation at a time",
            "use a red light so your eyes stay sharp",
            "dress warmly even in summer",
            "start with your eyes before buying a telescope",
            "check the moon before you plan a night out",
        ),
        goals=(
            "start looking at the stars",
            "find the pole star",
            "see a shooting star",
            "choose a first telescope",
        ),
    ),
    Topic(
        key="bread",
        title="bread",
        people=(
            ("the baker", "she"),
            ("the baker's son", "he"),
            ("my grandmother", "she"),
            ("the night baker", "he"),
        ),
        actions=(
            "knead the dough",
            "light the oven",
            "shape the loaves",
            "weigh the flour",
            "feed the starter",
            "dust the table with flour",
            "slash the tops of the loaves",
            "pull the bread from the oven",
            "brush the rolls with milk",
            "cover the dough with a cloth",
            "wrap the loaves in paper",
            "sweep flour from the floor",
        ),
        places=(
            "in the bakery",
            "by the warm oven",
            "at the wooden table",
            "in the back kitchen",
            "behind the counter",
            "near the flour bins",
        ),
        times=(
            "before dawn",
            "early in the morning",
            "while the town sleeps",
            "on Saturdays",
            "in the quiet hours",
            "every day",
        ),
        things=(
            ("a sack of flour", False),
            ("a jar of starter", False),
            ("a long wooden paddle", False),
            ("three baskets of rolls", True),
            ("a bowl of rising dough", False),
            ("a tray of sweet buns", False),
        ),
        descs=(
            ("the crust", False, ("golden", "crisp", "thin", "crackly")),
            ("the dough", False, ("soft", "smooth", "springy", "elastic")),
            ("the loaves", True, ("round", "warm", "fresh", "heavy")),
            ("the oven", False, ("hot", "old", "brick", "huge")),
            ("the bakery", False, ("warm", "busy", "small", "sweet-smelling")),
            ("the rolls", True, ("soft", "light", "golden", "warm")),
        ),
        sights=(
            "the dough rises slowly under the cloth",
            "the smell of warm bread fills the street",
            "the crust crackles as it cools",
            "flour hangs in the air like mist",
            "a queue forms outside the bakery door",
            "the oven glows in the dark kitchen",
            "steam rises from a broken loaf",
            "the first loaves come out before sunrise",
        ),
        reasons=(
            "good bread needs time to rise",
            "a hot oven makes a crisp crust",
            "too much flour makes the dough dry",
            "the starter needs feeding every day",
            "warm rooms help the dough rise",
            "cold dough rises slowly but tastes better",
        ),
        advice=(
            "use warm water, not hot water",
            "let the dough rest",
            "weigh your flour instead of guessing",
            "be patient while the dough rises",
            "bake one simple loaf many times",
            "let the bread cool before you cut it",
            "keep your starter in a cool place",
        ),
        goals=(
            "bake a simple loaf",
            "make a sourdough starter",
            "bake soft bread rolls",
            "keep bread fresh for longer",
        ),
    ),
    Topic(
        key="maps",
        title="maps",
        people=(
            ("the mapmaker", "he"),
            ("the surveyor", "she"),
            ("my sister", "she"),
            ("the old sailor", "he"),
        ),
        actions=(
            "draw the coastline",
            "measure the distance between two hills",
            "mark the paths in red ink",
            "fold the map carefully",
            "check the compass",
            "copy the roads onto clean paper",
            "count the steps along the lane",
            "write the names of the farms",
            "shade the hills with a pencil",
            "pin the map to the wall",
            "walk the boundary of the field",
            "mend a torn map with tape",
        ),
        places=(
            "at the drawing table",
            "in the study",
            "on the hilltop",
            "by the harbour",
            "in the map room",
            "at the crossroads",
        ),
        times=(
            "in the morning light",
            "on long winter evenings",
            "before a journey",
            "after every walk",
            "on clear days",
            "at the end of the season",
        ),
        things=(
            ("a brass compass", False),
            ("a roll of maps", False),
            ("a set of coloured pencils", False),
            ("a long measuring chain", False),
            ("two old charts of the coast", True),
            ("a magnifying glass", False),
        ),
        descs=(
            ("the map", False, ("old", "detailed", "folded", "faded")),
            ("the lines", True, ("thin", "neat", "curved", "careful")),
            ("the coastline", False, ("jagged", "long", "rocky", "winding")),
            ("the paths", True, ("narrow", "winding", "steep", "faint")),
            ("the compass", False, ("small", "steady", "reliable", "brass")),
            ("the paper", False, ("thick", "yellowed", "creased", "old")),
        ),
        sights=(
            "the map shows every path in the valley",
            "the contour lines crowd together on the steep slopes",
            "blue lines mark the streams",
            "the compass needle swings north",
            "the old map has a tear along the fold",
            "tiny symbols show churches and mills",
            "the roads spread out like branches",
            "the edge of the map ends at the sea",
        ),
        reasons=(
            "a good map can keep you safe",
            "paths change over the years",
            "a compass works even in fog",
            "small details matter on a map",
            "old maps show how places have changed",
            "knowing where north is helps you find your way",
        ),
        advice=(
            "learn to read contour lines",
            "carry a paper map as well as a phone",
            "turn the map to match the land",
            "find north before you set out",
            "mark your route in pencil",
            "keep your map in a dry pocket",
            "look for big landmarks first",
        ),
        goals=(
            "read a map",
            "use a compass",
            "draw a map of your street",
            "plan a walking route",
        ),
    ),
    Topic(
        key="repair",
        title="repair work",
        people=(
            ("the repair man", "he"),
            ("the bicycle mender", "she"),
            ("my neighbour", "he"),
            ("the clock mender", "she"),
        ),
        actions=(
            "mend the puncture",
            "replace the broken spring",
            "glue the chair leg",
            "tighten the loose screws",
            "patch the torn jacket",
            "fix the dripping tap",
            "solder the wires",
            "clean the rusty chain",
            "sew a new button on the coat",
            "test the old radio",
            "adjust the brakes",
            "oil the clock",
        ),
        places=(
            "at the repair bench",
            "in the little shop",
            "in the garage",
            "on the kitchen table",
            "at the back of the shed",
            "by the window",
        ),
        times=(
            "on Saturday mornings",
            "after work",
            "on quiet afternoons",
            "when something breaks",
            "every spring",
            "before winter",
        ),
        things=(
            ("a tin of spare buttons", False),
            ("a roll of strong tape", False),
            ("a box of tiny screws", False),
            ("a soldering iron", False),
            ("two pairs of pliers", True),
            ("a bicycle pump", False),
        ),
        descs=(
            ("the chain", False, ("rusty", "stiff", "dirty", "loose")),
            ("the radio", False, ("old", "crackly", "wooden", "heavy")),
            ("the chair", False, ("wobbly", "old", "wooden", "creaky")),
            ("the screws", True, ("tiny", "loose", "stubborn", "rusty")),
            ("the clock", False, ("old", "delicate", "slow", "beautiful")),
            ("the repair shop", False, ("cluttered", "friendly", "small", "busy")),
        ),
        sights=(
            "the old radio crackles back to life",
            "a tiny spring jumps across the bench",
            "the clock begins to tick again",
            "the wheel spins straight and true",
            "the glue sets overnight",
            "a line of broken toys waits on the shelf",
            "the tap finally stops dripping",
            "people bring in things their parents owned",
        ),
        reasons=(
            "mending things saves money",
            "most broken things need only a small fix",
            "a repaired object often lasts for years",
            "rust spreads if it is left alone",
            "taking photos helps you put things back together",
            "patience finds the real problem",
        ),
        advice=(
            "look for the simple cause first",
            "take photos before you take things apart",
            "keep the small screws in a dish",
            "clean a part before you replace it",
            "ask for help when you are stuck",
            "turn off the power before you open anything",
            "fix small problems before they grow",
        ),
        goals=(
            "fix a bicycle puncture",
            "mend a torn shirt",
            "repair a wobbly chair",
            "stop a tap from dripping",
        ),
    ),
    Topic(
        key="bees",
        title="bees",
        people=(
            ("the beekeeper", "she"),
            ("the honey seller", "he"),
            ("my uncle", "he"),
            ("the farmer's daughter", "she"),
        ),
        actions=(
            "open the hive",
            "check the frames",
            "light the smoker",
            "collect the honey",
            "plant flowers for the bees",
            "pour honey into jars",
            "watch the bees at the hive door",
            "put on the veil",
            "count the frames of brood",
            "label the jars",
            "move the hives to the heather",
            "clean the honey extractor",
        ),
        places=(
            "in the orchard",
            "by the hives",
            "in the honey shed",
            "at the edge of the meadow",
            "at the market stall",
            "near the lavender",
        ),
        times=(
            "on warm afternoons",
            "in late summer",
            "in the spring",
            "on calm days",
            "before the first frost",
            "after the blossom",
        ),
        things=(
            ("a bee veil", False),
            ("a smoker", False),
            ("a row of white hives", False),
            ("a shelf of honey jars", False),
            ("two wooden frames", True),
            ("a pot of beeswax", False),
        ),
        descs=(
            ("the honey", False, ("golden", "sweet", "thick", "clear")),
            ("the bees", True, ("busy", "gentle", "calm", "buzzing")),
            ("the hive", False, ("warm", "busy", "heavy", "humming")),
            ("the wax", False, ("pale", "soft", "fragrant", "smooth")),
            ("the meadow", False, ("flowery", "wide", "sunny", "buzzing")),
            ("the combs", True, ("full", "heavy", "golden", "neat")),
        ),
        sights=(
            "the bees hum among the apple blossom",
            "the hive buzzes on a warm day",
            "honey drips slowly from the comb",
            "a bee carries yellow pollen on its legs",
            "the lavender is busy with bees",
            "the jars glow in the sunlight",
            "the bees cluster together in winter",
            "the meadow hums all afternoon",
        ),
        reasons=(
            "bees need flowers from spring to autumn",
            "calm bees are gentle bees",
            "smoke helps keep the bees calm",
            "each hive has its own mood",
            "honey is the bees' winter food",
            "bees help fruit trees to bear fruit",
        ),
        advice=(
            "move slowly near the hive",
            "plant flowers that bloom at different times",
            "leave enough honey for the bees",
            "wear light colours",
            "learn from an older beekeeper",
            "check the hive on calm days",
            "keep a note of each visit",
        ),
        goals=(
            "start keeping bees",
            "help bees in a small garden",
            "collect honey",
            "make beeswax candles",
        ),
    ),
    Topic(
        key="boats",
        title="boats and the sea",
        people=(
            ("the boatbuilder", "he"),
            ("the fisherwoman", "she"),
            ("the harbour master", "he"),
            ("my grandfather", "he"),
        ),
        actions=(
            "caulk the seams of the boat",
            "mend the nets",
            "paint the hull blue",
            "check the mooring lines",
            "haul the boat up the slipway",
            "sand the deck",
            "coil the ropes",
            "sail out of the harbour",
            "steer by the lighthouse",
            "scrape the barnacles off the hull",
            "read the tide table",
            "fix the mast",
        ),
        places=(
            "in the harbour",
            "on the slipway",
            "in the boat shed",
            "out at sea",
            "by the lighthouse",
            "on the quay",
        ),
        times=(
            "at high tide",
            "at dawn",
            "in calm weather",
            "before the storms of autumn",
            "every season",
            "at low tide",
        ),
        things=(
            ("a wooden rowing boat", False),
            ("a pile of fishing nets", False),
            ("a tin of blue paint", False),
            ("a heavy anchor", False),
            ("two lobster pots", True),
            ("a tide table", False),
        ),
        descs=(
            ("the sea", False, ("calm", "grey", "green", "wide")),
            ("the boat", False, ("small", "sturdy", "freshly painted", "old")),
            ("the nets", True, ("heavy", "wet", "tangled", "salty")),
            ("the harbour", False, ("busy", "sheltered", "small", "noisy")),
            ("the waves", True, ("high", "white-topped", "cold", "strong")),
            ("the wind", False, ("fresh", "strong", "salty", "steady")),
        ),
        sights=(
            "gulls wheel over the harbour",
            "the boats rock at their moorings",
            "the tide creeps up the slipway",
            "the lighthouse flashes across the bay",
            "fishing boats come home in the evening",
            "waves break over the harbour wall",
            "ropes creak as the boats move",
            "the smell of salt and tar fills the shed",
        ),
        reasons=(
            "the sea can change in an hour",
            "a well-kept boat keeps its crew safe",
            "the tide waits for nobody",
            "salt water eats away at metal",
            "a good knot can save a boat",
            "calm mornings are best for sailing",
        ),
        advice=(
            "check the tide before you go out",
            "learn a few good knots",
            "tell someone where you are going",
            "keep your boat dry and clean",
            "never sail in a storm",
            "wear a life jacket at all times",
            "respect the sea",
        ),
        goals=(
            "learn to sail",
            "tie a strong knot",
            "care for a wooden boat",
            "go fishing from a small boat",
        ),
    ),
    Topic(
        key="pottery",
        title="pottery",
        people=(
            ("the potter", "he"),
            ("the tile painter", "she"),
            ("my friend", "she"),
            ("the pottery teacher", "he"),
        ),
        actions=(
            "wedge the clay",
            "throw a bowl on the wheel",
            "trim the base of the pot",
            "glaze the cups",
            "fire the kiln",
            "paint a blue pattern on the tiles",
            "wrap the clay in plastic",
            "press a leaf into the soft clay",
            "dig clay from the pit",
            "roll out a slab",
            "wash the wheel",
            "pack the kiln",
        ),
        places=(
            "at the wheel",
            "in the studio",
            "by the kiln",
            "at the clay pit",
            "next to the drying shelves",
            "at the window table",
        ),
        times=(
            "in the morning",
            "all afternoon",
            "on firing day",
            "in the summer",
            "after the clay has dried",
            "every week",
        ),
        things=(
            ("a potter's wheel", False),
            ("a bucket of clay slip", False),
            ("a shelf of drying bowls", False),
            ("three jars of glaze", True),
            ("a wooden rib", False),
            ("a wire for cutting clay", False),
        ),
        descs=(
            ("the clay", False, ("wet", "smooth", "cool", "heavy")),
            ("the bowls", True, ("round", "thin", "glazed", "delicate")),
            ("the kiln", False, ("hot", "huge", "brick", "roaring")),
            ("the glaze", False, ("shiny", "blue", "glassy", "smooth")),
            ("the studio", False, ("dusty", "bright", "calm", "messy")),
            ("the cups", True, ("small", "sturdy", "speckled", "handmade")),
        ),
        sights=(
            "the wheel spins and the clay rises",
            "the kiln glows through the night",
            "a row of pots dries on the shelf",
            "the glaze melts into bright colours",
            "clay dust settles on every surface",
            "a crack appears in a drying bowl",
            "the first cup comes out of the kiln",
            "wet clay shines under the lamp",
        ),
        reasons=(
            "air bubbles can crack a pot in the kiln",
            "clay dries from the outside in",
            "slow drying prevents cracks",
            "every kiln fires a little differently",
            "thin walls make light pots",
            "the clay must be centred before it can rise",
        ),
        advice=(
            "wedge your clay well",
            "start with small bowls",
            "keep your hands wet",
            "let pots dry slowly",
            "centre the clay before you shape it",
            "make many pots and keep the best",
            "stay calm when a pot collapses",
        ),
        goals=(
            "start making pottery",
            "make a clay bowl",
            "glaze a cup",
            "make pots without a wheel",
        ),
    ),
    Topic(
        key="hills",
        title="walking in the hills",
        people=(
            ("the trail guide", "he"),
            ("the hut warden", "she"),
            ("my friend", "he"),
            ("the old walker", "she"),
        ),
        actions=(
            "climb the ridge",
            "follow the stream up the valley",
            "pack a light bag",
            "check the path on the map",
            "stop for lunch by the cairn",
            "fill the water bottles at the spring",
            "light the stove in the hut",
            "walk through the heather",
            "cross the stepping stones",
            "watch the clouds on the summit",
            "lace up the boots",
            "rest by the stone wall",
        ),
        places=(
            "on the ridge",
            "in the valley",
            "at the mountain hut",
            "by the cairn",
            "on the summit",
            "along the old drove road",
        ),
        times=(
            "at sunrise",
            "in the afternoon",
            "in the autumn",
            "on long summer days",
            "after the snow melts",
            "on a clear day",
        ),
        things=(
            ("a pair of walking boots", False),
            ("a thermos of soup", False),
            ("a walking pole", False),
            ("two spare jumpers", True),
            ("a whistle on a string", False),
            ("a small first aid kit", False),
        ),
        descs=(
            ("the path", False, ("steep", "rocky", "narrow", "muddy")),
            ("the view", False, ("wide", "clear", "breathtaking", "endless")),
            ("the hills", True, ("green", "rolling", "quiet", "wild")),
            ("the summit", False, ("windy", "rocky", "cold", "bare")),
            ("the valley", False, ("deep", "green", "sheltered", "long")),
            ("the heather", False, ("purple", "springy", "thick", "dry")),
        ),
        sights=(
            "the path winds up through the heather",
            "clouds race across the summit",
            "sheep graze on the steep slopes",
            "a stream tumbles down the hillside",
            "the valley opens up below",
            "mist rolls over the ridge",
            "the hut chimney smokes in the evening",
            "the sun sets behind the far hills",
        ),
        reasons=(
            "weather in the hills can turn quickly",
            "steady steps save energy",
            "a short rest keeps your legs fresh",
            "the summit is only half of the journey",
            "wet feet lead to blisters",
            "water is heavy but you need it",
        ),
        advice=(
            "start early in the day",
            "tell someone your route",
            "walk at a pace you can keep all day",
            "turn back if the weather gets bad",
            "carry water and a warm layer",
            "break in new boots before a long walk",
            "stop and look around now and then",
        ),
        goals=(
            "plan a day walk in the hills",
            "get fit for hill walking",
            "walk safely in fog",
            "pack for an overnight walk",
        ),
    ),
    Topic(
        key="books",
        title="books",
        people=(
            ("the librarian", "she"),
            ("the bookbinder", "he"),
            ("my teacher", "she"),
            ("the boy who reads everything", "he"),
        ),
        actions=(
            "stamp the library cards",
            "sort the returned books",
            "mend the torn pages",
            "read stories to the children",
            "sew the pages together",
            "put new books on the shelf",
            "dust the shelves",
            "write a list of new books",
            "drive the library van to the villages",
            "glue the spine",
            "choose a book for a friend",
            "read by the fire",
        ),
        places=(
            "in the library",
            "in the reading room",
            "in the bindery",
            "by the fire",
            "in the library van",
            "at the big oak desk",
        ),
        times=(
            "on rainy afternoons",
            "in the evening",
            "every Tuesday",
            "before bed",
            "on quiet mornings",
            "in the holidays",
        ),
        things=(
            ("a pile of returned books", False),
            ("a pot of glue", False),
            ("a needle and strong thread", False),
            ("a box of bookmarks", False),
            ("two tall ladders", True),
            ("a trolley of new books", False),
        ),
        descs=(
            ("the library", False, ("quiet", "warm", "old", "welcoming")),
            ("the books", True, ("old", "heavy", "worn", "well-loved")),
            ("the pages", True, ("thin", "yellowed", "soft", "worn")),
            ("the reading room", False, ("calm", "bright", "silent", "cosy")),
            ("the shelves", True, ("tall", "full", "dusty", "crowded")),
            ("the story", False, ("long", "exciting", "funny", "strange")),
        ),
        sights=(
            "children sit on the rug for story time",
            "the smell of old paper fills the room",
            "rain taps on the high windows",
            "a reader falls asleep in the armchair",
            "the returns trolley fills up by noon",
            "the library van stops in the village square",
            "dust floats in the light between the shelves",
            "a new book waits on every chair",
        ),
        reasons=(
            "reading a little every day adds up",
            "a mended book can be read by many more people",
            "libraries are free for everyone",
            "stories help us understand each other",
            "good glue keeps a spine flexible",
            "quiet rooms help people think",
        ),
        advice=(
            "read what you enjoy",
            "keep a book in your bag",
            "ask the librarian for ideas",
            "read a page before bed",
            "return books on time",
            "try a kind of book you have never read",
            "write down words you do not know",
        ),
        goals=(
            "read more books",
            "mend a torn book",
            "start a reading club",
            "choose a good book for a child",
        ),
    ),
)

TOPIC_BY_KEY: dict[str, Topic] = {t.key: t for t in TOPICS}

STORY_SETTINGS: tuple[str, ...] = (
    "in a small town by the river",
    "in a village at the foot of the hills",
    "in a grey stone house by the sea",
    "in a quiet green valley",
    "at the edge of a big city",
    "in a cottage at the end of a long lane",
)

STORY_OPENINGS: tuple[str, ...] = (
    "One cold morning",
    "One bright spring day",
    "Late one evening",
    "One windy afternoon",
    "On the first day of autumn",
    "One quiet Sunday",
)


# ---------------------------------------------------------------------------
# Tiny grammar helpers.
# ---------------------------------------------------------------------------

IRREGULAR_PAST: dict[str, str] = {
    "be": "was",
    "begin": "began",
    "blow": "blew",
    "bring": "brought",
    "build": "built",
    "buy": "bought",
    "choose": "chose",
    "come": "came",
    "cut": "cut",
    "dig": "dug",
    "do": "did",
    "draw": "drew",
    "drive": "drove",
    "eat": "ate",
    "feed": "fed",
    "find": "found",
    "fly": "flew",
    "get": "got",
    "give": "gave",
    "go": "went",
    "grow": "grew",
    "hang": "hung",
    "have": "had",
    "hold": "held",
    "keep": "kept",
    "know": "knew",
    "label": "labelled",
    "leave": "left",
    "let": "let",
    "lie": "lay",
    "light": "lit",
    "make": "made",
    "put": "put",
    "read": "read",
    "ring": "rang",
    "run": "ran",
    "see": "saw",
    "sell": "sold",
    "set": "set",
    "sing": "sang",
    "sit": "sat",
    "spin": "spun",
    "spread": "spread",
    "stand": "stood",
    "sweep": "swept",
    "take": "took",
    "teach": "taught",
    "tell": "told",
    "throw": "threw",
    "weave": "wove",
    "wind": "wound",
    "write": "wrote",
}

DOUBLE_FINAL: frozenset[str] = frozenset(
    {"chat", "chop", "drop", "pin", "plan", "skim", "stir", "stop", "tap", "trim", "wrap"}
)

THIRD_IRREGULAR: dict[str, str] = {"be": "is", "do": "does", "go": "goes", "have": "has"}


def _split_verb(phrase: str) -> tuple[str, str]:
    """Split a verb phrase into its first word and the rest."""
    first, _, rest = phrase.partition(" ")
    return first, rest


def _rejoin(word: str, rest: str) -> str:
    """Join a conjugated verb back onto the rest of its phrase."""
    return f"{word} {rest}" if rest else word


def third(phrase: str) -> str:
    """Put a base-form verb phrase into the third person singular present."""
    verb, rest = _split_verb(phrase)
    if verb in THIRD_IRREGULAR:
        form = THIRD_IRREGULAR[verb]
    elif verb.endswith(("s", "sh", "ch", "x", "z", "o")):
        form = verb + "es"
    elif verb.endswith("y") and verb[-2] not in "aeiou":
        form = verb[:-1] + "ies"
    else:
        form = verb + "s"
    return _rejoin(form, rest)


def past(phrase: str) -> str:
    """Put a base-form verb phrase into the simple past."""
    verb, rest = _split_verb(phrase)
    if verb in IRREGULAR_PAST:
        form = IRREGULAR_PAST[verb]
    elif verb in DOUBLE_FINAL:
        form = verb + verb[-1] + "ed"
    elif verb.endswith("e"):
        form = verb + "d"
    elif verb.endswith("y") and verb[-2] not in "aeiou":
        form = verb[:-1] + "ied"
    else:
        form = verb + "ed"
    return _rejoin(form, rest)


def cap(text: str) -> str:
    """Capitalise the first letter of a string, leaving the rest alone."""
    return text[:1].upper() + text[1:]


def indefinite(noun_phrase: str) -> str:
    """Turn 'the old walker' into 'an old walker'."""
    bare = noun_phrase.removeprefix("the ")
    article = "an" if bare[:1] in "aeiou" else "a"
    return f"{article} {bare}"


def be_form(plural: bool, tense: str = "present") -> str:
    """Return the right form of 'to be'."""
    if tense == "past":
        return "were" if plural else "was"
    return "are" if plural else "is"


def and_list(items: list[str]) -> str:
    """Join words as 'a, b and c'."""
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def to_user_voice(phrase: str) -> str:
    """Rewrite an instruction so that the user can say it about themselves."""
    swaps = {"your": "my", "you": "I", "yourself": "myself"}
    return " ".join(swaps.get(word, word) for word in phrase.split())


def word_count(text: str) -> int:
    """Count whitespace-separated words."""
    return len(text.split())


# ---------------------------------------------------------------------------
# Prose.
# ---------------------------------------------------------------------------


def pick_person(rng: random.Random, topic: Topic) -> Person:
    """Pick one person from a topic."""
    return rng.choice(topic.people)


def two_people(rng: random.Random, topic: Topic) -> tuple[Person, Person]:
    """Pick two different people from a topic."""
    first, second = rng.sample(topic.people, 2)
    return first, second


def desc_sentence(rng: random.Random, topic: Topic, tense: str = "present") -> str:
    """Describe one thing with two adjectives."""
    subject, plural, adjectives = rng.choice(topic.descs)
    first, second = rng.sample(adjectives, 2)
    return f"{cap(subject)} {be_form(plural, tense)} {first} and {second}."


PRESENT_KINDS = 16


def present_sentence(rng: random.Random, topic: Topic, kind: int) -> str:
    """Build one present-tense sentence about a topic, using template ``kind``."""
    person, pronoun = pick_person(rng, topic)
    act, act2 = rng.sample(topic.actions, 2)
    place = rng.choice(topic.places)
    time = rng.choice(topic.times)
    sight = rng.choice(topic.sights)
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
        thing, _ = rng.choice(topic.things)
        return f"{cap(person)} keeps {thing} {place}."
    if kind == 9:
        return f"It is wise to {rng.choice(topic.advice)}."
    if kind == 10:
        return f"{cap(person)} always says that {rng.choice(topic.reasons)}."
    if kind == 11:
        return f"{cap(person)} would rather {act} than {act2}."
    if kind == 12:
        other, _ = rng.choice([p for p in topic.people if p[0] != person])
        return f"{cap(person)} learned to {act} from {other}."
    if kind == 13:
        return f"Have you noticed that {sight}?"
    if kind == 14:
        return f"{cap(rng.choice(topic.reasons))}."
    return f"On a good day, {sight}."


def descriptive_paragraph(rng: random.Random, topic: Topic) -> str:
    """A paragraph of loosely connected present-tense sentences."""
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
    """People from a topic who can be the hero of a story."""
    return [p for p in topic.people if not p[0].startswith("my ")]


def story_sentences(rng: random.Random, topic: Topic, hero: Person) -> list[str]:
    """A tiny past-tense story about someone from the topic."""
    person, pronoun = hero
    act1, act2, act3, act4 = rng.sample(topic.actions, 4)
    place = rng.choice(topic.places)
    noun = person.removeprefix("the ")
    return [
        f"Once there was {indefinite(person)} who lived {rng.choice(STORY_SETTINGS)}.",
        f"Every day {pronoun} {past(act1)} {place}.",
        f"{rng.choice(STORY_OPENINGS)}, {pronoun} {past(act2)} and {past(act3)}.",
        desc_sentence(rng, topic, "past"),
        f"Later {pronoun} {past(act4)}, and the work was done.",
        f"The {noun} was happy, and {pronoun} always said that {rng.choice(topic.reasons)}.",
    ]


def story_paragraph(rng: random.Random, topic: Topic) -> str:
    """A short story paragraph, sometimes with a visitor asking for advice."""
    hero = rng.choice(story_people(topic))
    sentences = story_sentences(rng, topic, hero)
    if rng.random() < 0.5:
        visitor, _ = rng.choice([p for p in topic.people if p != hero])
        goal = rng.choice(topic.goals)
        advice = rng.choice(topic.advice)
        sentences[4:4] = [
            f"Soon after, {visitor} came to visit and asked how to {goal}.",
            f'The answer was simple: "{cap(advice)}."',
        ]
    return " ".join(sentences)


def howto_sentences(rng: random.Random, topic: Topic) -> list[str]:
    """Steps for reaching one goal."""
    steps = rng.sample(topic.advice, 3)
    return [
        f"First, {steps[0]}.",
        f"Next, {steps[1]}.",
        f"Then {steps[2]}.",
        f"Remember that {rng.choice(topic.reasons)}.",
    ]


def howto_paragraph(rng: random.Random, topic: Topic) -> str:
    """A paragraph that explains how to do something."""
    goal = rng.choice(topic.goals)
    openers = (
        f"Here is a simple way to {goal}.",
        f"Many people want to {goal}, and it is not hard.",
        f"If you want to {goal}, take it one step at a time.",
        f"A question people often ask is how to {goal}.",
    )
    closers = (
        "With a little practice, it soon feels easy.",
        "Do not worry if it goes wrong the first time.",
        "Go slowly, and you will learn a lot.",
        "After a few tries, you will know what works for you.",
    )
    sentences = [rng.choice(openers), *howto_sentences(rng, topic)]
    sentences.append(rng.choice(closers))
    return " ".join(sentences)


def town_paragraph(rng: random.Random) -> str:
    """A paragraph that mixes people from several topics in one town."""
    setting = rng.choice(STORY_SETTINGS)
    topics = rng.sample(TOPICS, 3)
    sentences = [f"In our town, {setting}, everyone has something to do."]
    for topic in topics:
        person, _ = pick_person(rng, topic)
        act = rng.choice(topic.actions)
        place = rng.choice(topic.places)
        sentences.append(f"{cap(person)} {third(act)} {place}.")
    sentences.append(f"{cap(rng.choice(rng.choice(topics).sights))}.")
    closers = (
        "It is a small place, but it is never dull.",
        "Nobody is in a hurry, and the work still gets done.",
        "At the end of the day, the lights come on one by one.",
        "It is a good place to live.",
    )
    sentences.append(rng.choice(closers))
    return " ".join(sentences)


def build_prose(rng: random.Random) -> str:
    """Build the whole prose file as one string."""
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


# ---------------------------------------------------------------------------
# Personas.
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Persona:
    """An invented character used in system prompts."""

    name: str
    job: str
    setting: str
    style: str
    greeting: str
    saying: str
    motto: str
    signoff: str
    topic: str

    @property
    def phrases(self) -> tuple[str, str, str, str]:
        """The four characteristic phrases."""
        return (self.greeting, self.saying, self.motto, self.signoff)


PERSONAS: tuple[Persona, ...] = (
    Persona(
        "Tamsin",
        "a lighthouse keeper",
        "on a windy headland",
        "calm and steady",
        "Well now.",
        "Mark my words.",
        "Steady as the tide.",
        "Fair winds to you.",
        "weather",
    ),
    Persona(
        "Orrin",
        "a weather watcher",
        "at a hill station above the clouds",
        "precise and cheerful",
        "Good day to you!",
        "The sky never lies.",
        "Numbers and clouds, that is my life.",
        "Keep an eye on the sky.",
        "weather",
    ),
    Persona(
        "Ida",
        "a snow plough driver",
        "in a high mountain pass",
        "brisk and friendly",
        "Right then!",
        "Snow waits for nobody.",
        "Chains on, chin up.",
        "Stay warm out there.",
        "weather",
    ),
    Persona(
        "Maren",
        "an allotment keeper",
        "in a busy city",
        "earthy and encouraging",
        "Hello, green thumb!",
        "Dig a little, grow a lot.",
        "Muddy hands, happy heart.",
        "Happy digging.",
        "gardening",
    ),
    Persona(
        "Wilf",
        "a retired groundskeeper",
        "at an old school with big lawns",
        "slow and kindly",
        "Ah, hello there.",
        "No rush, no fuss.",
        "The grass grows whether you watch it or not.",
        "Mind how you go.",
        "gardening",
    ),
    Persona(
        "Delphine",
        "a cook",
        "at a roadside inn",
        "warm and lively",
        "Come in, come in!",
        "A pinch of this, a pinch of that.",
        "The pot tells you when it is ready.",
        "Eat well, my friend.",
        "cooking",
    ),
    Persona(
        "Bastian",
        "a cook",
        "in a harbour soup kitchen",
        "hearty and generous",
        "Ahoy, hungry friend!",
        "Soup fixes most things.",
        "Big pot, many bowls.",
        "Bring a spoon next time.",
        "cooking",
    ),
    Persona(
        "Tobias",
        "a greengrocer",
        "with a stall at the Saturday market",
        "chatty and cheerful",
        "Morning, morning!",
        "Fresh today, gone tomorrow.",
        "Squeeze it gently, that is the trick.",
        "See you at the stall.",
        "cooking",
    ),
    Persona(
        "Cobb",
        "a blacksmith",
        "in a mountain village",
        "gruff but kind",
        "Hm, hello.",
        "Strike while the iron is hot.",
        "Good iron, good work.",
        "Keep your edges sharp.",
        "tools",
    ),
    Persona(
        "Greta",
        "a carpenter",
        "in a timber yard",
        "practical and patient",
        "Hello there, friend.",
        "Measure twice, cut once.",
        "Wood has a grain, and so do people.",
        "Sawdust and smiles.",
        "tools",
    ),
    Persona(
        "Perrin",
        "a ferry keeper",
        "on a wide slow river",
        "gentle and dreamy",
        "Hello from the water.",
        "The river knows the way.",
        "Slow water, deep thoughts.",
        "Safe crossing to you.",
        "rivers",
    ),
    Persona(
        "Vesna",
        "a canal lock keeper",
        "in a green valley",
        "orderly and bright",
        "Gates open, hello!",
        "One lock at a time.",
        "Water finds its level.",
        "Smooth waters ahead.",
        "rivers",
    ),
    Persona(
        "Hollis",
        "a station master",
        "at a small country junction",
        "formal and precise",
        "Good morning, traveller.",
        "Right on time, as always.",
        "Every journey starts on a platform.",
        "Mind the gap, and mind yourself.",
        "trains",
    ),
    Persona(
        "Dagny",
        "a conductor",
        "on the night train through the valleys",
        "soft-spoken and curious",
        "Tickets, please, and hello.",
        "The night train never hurries.",
        "Stars on one side, hills on the other.",
        "Sleep well between stations.",
        "trains",
    ),
    Persona(
        "Nell",
        "a postwoman",
        "in a steep hill town",
        "chatty and quick",
        "Post for you!",
        "Every letter finds its door.",
        "Up the hill and down again.",
        "Write soon.",
        "towns",
    ),
    Persona(
        "Osric",
        "the keeper of the town clock",
        "in a sleepy market town",
        "dry and witty",
        "Tick, tock, hello.",
        "Time is a patient teacher.",
        "The town runs on my clock, more or less.",
        "Do not be late.",
        "towns",
    ),
    Persona(
        "Mabel",
        "a school teacher",
        "in a farming village",
        "kind and clear",
        "Hello, my dear.",
        "Let us take it step by step.",
        "Every question is a good question.",
        "Well done for asking.",
        "books",
    ),
    Persona(
        "Ilse",
        "a weaver",
        "with a big loom by a sunny window",
        "calm and careful",
        "Hello, and welcome to my loom.",
        "Thread by thread, row by row.",
        "A pattern needs patience.",
        "Keep your threads even.",
        "weaving",
    ),
    Persona(
        "Frida",
        "a wool dyer",
        "in a market town by a stream",
        "bright and colourful",
        "Oh, hello!",
        "Every colour has a story.",
        "Madder red and woad blue.",
        "Stay colourful.",
        "weaving",
    ),
    Persona(
        "Edda",
        "a birdwatcher",
        "on a wide marsh",
        "quiet and observant",
        "Hush, hello.",
        "Stillness is the secret.",
        "Feathers tell the truth.",
        "Keep your eyes open.",
        "birds",
    ),
    Persona(
        "Jory",
        "a pigeon keeper",
        "on a city rooftop",
        "cheeky and warm",
        "Oi, hello up there!",
        "Every bird comes home.",
        "Coo and carry on.",
        "Keep looking up.",
        "birds",
    ),
    Persona(
        "Isolde",
        "the caretaker of an observatory",
        "on a dark hill",
        "hushed and wondering",
        "Good evening, star friend.",
        "Look up and wonder.",
        "The dark is full of light.",
        "Clear skies to you.",
        "night_sky",
    ),
    Persona(
        "Emrys",
        "a shepherd",
        "on the high moors",
        "slow and thoughtful",
        "Evening to you.",
        "The stars keep the sheep company.",
        "Count sheep, count stars.",
        "Walk home by starlight.",
        "night_sky",
    ),
    Persona(
        "Agnes",
        "a village baker",
        "in a cottage bakery",
        "motherly and warm",
        "Hello, love.",
        "Good things take time.",
        "Flour on my apron, song in my heart.",
        "Have a warm slice on me.",
        "bread",
    ),
    Persona(
        "Ansel",
        "a night baker",
        "in a big city bakery",
        "sleepy but kind",
        "Oh, hello, night owl.",
        "The dough never sleeps, so neither do I.",
        "Warm ovens, quiet streets.",
        "Sweet dreams and fresh bread.",
        "bread",
    ),
    Persona(
        "Merrick",
        "a mapmaker",
        "in a coastal town",
        "careful and curious",
        "Ah, a fellow explorer!",
        "Every line is a path someone walked.",
        "North is always somewhere.",
        "May your map stay dry.",
        "maps",
    ),
    Persona(
        "Thea",
        "a surveyor",
        "in the northern hills",
        "energetic and exact",
        "Hello, hello!",
        "Measure it and you know it.",
        "Chain, compass and a good pencil.",
        "Happy wandering.",
        "maps",
    ),
    Persona(
        "Hale",
        "a bicycle mender",
        "in a busy little shop",
        "upbeat and handy",
        "Hey there, rider!",
        "Nothing is too broken to try.",
        "A little oil goes a long way.",
        "Ride safe.",
        "repair",
    ),
    Persona(
        "Pippa",
        "a radio repairer",
        "in a cluttered back street workshop",
        "bubbly and clever",
        "Hello, hello, can you hear me?",
        "Every crackle is a clue.",
        "Check the wires first.",
        "Stay tuned.",
        "repair",
    ),
    Persona(
        "Zeb",
        "a clock mender",
        "in a tiny shop near the station",
        "precise and gentle",
        "Greetings, friend.",
        "Small parts, big patience.",
        "Tick by tick, it all comes right.",
        "Keep good time.",
        "repair",
    ),
    Persona(
        "Rosalind",
        "a beekeeper",
        "in an apple orchard",
        "soothing and gentle",
        "Hello, sweet friend.",
        "Calm hands, calm bees.",
        "The hive has its own wisdom.",
        "Bee kind.",
        "bees",
    ),
    Persona(
        "Ulric",
        "a honey seller",
        "at a busy country fair",
        "jolly and loud",
        "Hello, hello, honey lovers!",
        "Sweet as the summer.",
        "Taste first, then decide.",
        "Have a sweet day.",
        "bees",
    ),
    Persona(
        "Silas",
        "a boatbuilder",
        "in a small harbour",
        "salty and steady",
        "Ahoy!",
        "A good boat starts with a good keel.",
        "Tar on my hands, salt in my hair.",
        "Fair tides to you.",
        "boats",
    ),
    Persona(
        "Yara",
        "a fisherwoman",
        "in a rocky cove",
        "bold and honest",
        "Hey there, landlubber.",
        "The sea gives and the sea takes.",
        "Nets mended, boat ready.",
        "Tight lines.",
        "boats",
    ),
    Persona(
        "Corin",
        "a potter",
        "beside an old clay pit",
        "mellow and thoughtful",
        "Hello, friend of clay.",
        "Centre first, then shape.",
        "Every crack teaches something.",
        "Keep your hands muddy.",
        "pottery",
    ),
    Persona(
        "Liesel",
        "a tile painter",
        "in a sunny studio",
        "dainty and precise",
        "Oh, how lovely to see you.",
        "A steady brush makes a steady line.",
        "Blue and white, always right.",
        "Paint something today.",
        "pottery",
    ),
    Persona(
        "Brenna",
        "a mountain hut warden",
        "high in the hills",
        "sturdy and welcoming",
        "Welcome to the hut!",
        "The hill will still be there tomorrow.",
        "Boots off, kettle on.",
        "Walk well.",
        "hills",
    ),
    Persona(
        "Fenwick",
        "a trail guide",
        "in the lake country",
        "enthusiastic and outdoorsy",
        "Hello, adventurer!",
        "One foot in front of the other.",
        "There is no bad weather, only the wrong coat.",
        "See you on the trail.",
        "hills",
    ),
    Persona(
        "Quentin",
        "a librarian",
        "in a mobile library van that visits the villages",
        "bookish and polite",
        "Good day, reader.",
        "There is a book for every question.",
        "Hush, the story is starting.",
        "Happy reading.",
        "books",
    ),
    Persona(
        "Cato",
        "a bookbinder",
        "in an old workshop under a bridge",
        "quiet and exact",
        "Hello, and mind the glue.",
        "A good spine holds everything together.",
        "Needle, thread and patience.",
        "Look after your books.",
        "books",
    ),
)


def quoted(phrase: str) -> str:
    """Quote a phrase for a system prompt."""
    return f'"{phrase}"'


def system_prompt(rng: random.Random, p: Persona) -> str:
    """Write a system message describing a persona."""
    title = TOPIC_BY_KEY[p.topic].title
    forms = (
        (
            f"You are {p.name}, {p.job} {p.setting}. You are {p.style}. You often say "
            f"{quoted(p.greeting)} and {quoted(p.saying)} You love {title}."
        ),
        (
            f"Play the part of {p.name}, {p.job} {p.setting}. Speak in a {p.style} way, and "
            f"use phrases such as {quoted(p.saying)} and {quoted(p.motto)}"
        ),
        (
            f"Your name is {p.name}. You work as {p.job} {p.setting}. Your manner is "
            f"{p.style}. Phrases you use: {quoted(p.greeting)}, {quoted(p.saying)}, "
            f"{quoted(p.motto)} and {quoted(p.signoff)}"
        ),
        (
            f"You are a character called {p.name}: {p.job} {p.setting}. You are {p.style}, "
            f"you love {title}, and you often say {quoted(p.saying)} Keep answers short."
        ),
        (
            f"Meet {p.name}, {p.job} {p.setting}. {p.name} is {p.style} and loves {title}. "
            f"Answer as {p.name} would, with phrases like {quoted(p.motto)} and "
            f"{quoted(p.signoff)}"
        ),
    )
    return rng.choice(forms)


# ---------------------------------------------------------------------------
# Question and answer banks (plain, no persona).
# ---------------------------------------------------------------------------

FACTS: tuple[tuple[str, str], ...] = (
    (
        "How many days are there in a week?",
        ("There are seven days in a week. They are Monday, Tuesday, Wednesday, Thursday, Friday, Saturday and Sunday."),
    ),
    (
        "How many months are there in a year?",
        (
            "A year has twelve months. It starts with January and ends with December, and "
            "the months have between twenty-eight and thirty-one days."
        ),
    ),
    (
        "How many hours are there in one day?",
        (
            "There are twenty-four hours in a day. How many of them are light and how many are "
            "dark changes with the seasons."
        ),
    ),
    (
        "How many minutes are there in an hour?",
        (
            "An hour has sixty minutes, and each minute has sixty seconds. So an hour has "
            "three thousand six hundred seconds."
        ),
    ),
    (
        "What are the four seasons of the year?",
        (
            "The four seasons are spring, summer, autumn and winter. Spring brings new leaves, "
            "summer is warm, leaves fall in autumn, and winter is cold."
        ),
    ),
    (
        "How many legs does a spider have?",
        "A spider has eight legs. Insects such as ants and bees have six legs, so a spider is not an insect.",
    ),
    (
        "What colour do you get if you mix blue and yellow?",
        ("If you mix blue and yellow paint, you get green. Adding more yellow gives a lighter, brighter green."),
    ),
    (
        "What colour do red and white make together?",
        "Mixing red and white makes pink. The more white you add, the paler the pink becomes.",
    ),
    (
        "Why do many trees lose their leaves in autumn?",
        (
            "Many trees drop their leaves in autumn to save water and energy through the cold "
            "winter. New leaves grow again in spring."
        ),
    ),
    (
        "Why is ice so slippery to walk on?",
        (
            "Ice is slippery because a very thin layer of water often forms on top of it. That "
            "wet layer lets shoes and tyres slide."
        ),
    ),
    (
        "What happens to water when it freezes?",
        (
            "When water freezes, it turns into ice. This happens when the temperature drops "
            "below zero degrees Celsius, and the ice takes up a little more space."
        ),
    ),
    (
        "What happens to water when it boils?",
        "When water boils, it turns into steam. At sea level this happens at one hundred degrees Celsius.",
    ),
    (
        "In which direction does the sun rise?",
        (
            "The sun rises in the east and sets in the west. That is a handy way to find your "
            "direction early in the morning."
        ),
    ),
    (
        "How many sides does a triangle have?",
        "A triangle has three sides and three corners. A square has four sides, and a pentagon has five.",
    ),
    (
        "How many sides does a hexagon have?",
        (
            "A hexagon has six sides. Bees build the cells of their honeycomb in this shape "
            "because it packs together neatly."
        ),
    ),
    (
        "What do plants need in order to grow?",
        (
            "Plants need light, water, air and good soil. Most also need warmth, which is why "
            "many seeds wait for spring."
        ),
    ),
    (
        "Why do people need to sleep?",
        (
            "Sleep lets the body rest and repair itself, and it helps the mind sort out what "
            "happened during the day. Most adults need seven to nine hours."
        ),
    ),
    (
        "How many letters are in the English alphabet?",
        "The English alphabet has twenty-six letters. Five of them, a, e, i, o and u, are called vowels.",
    ),
    (
        "How many weeks are there in a year?",
        "A year has fifty-two weeks, plus one extra day, or two in a leap year.",
    ),
    (
        "What is a noun, in simple words?",
        ("A noun is a word for a person, a place or a thing. Words like river, teacher and spoon are all nouns."),
    ),
    (
        "What is a verb, in simple words?",
        "A verb is a doing word. It tells you what someone or something does, like run, bake, sing or sleep.",
    ),
    (
        "What is an adjective, in simple words?",
        ("An adjective describes a noun. In the phrase a warm blue coat, the words warm and blue are adjectives."),
    ),
    (
        "How many squares are there on a chess board?",
        (
            "A chess board has sixty-four squares, arranged in eight rows of eight. The "
            "squares alternate between light and dark."
        ),
    ),
    (
        "What is the difference between weather and climate?",
        (
            "Weather is what the sky is doing today, such as rain or sunshine. Climate is the "
            "usual pattern of weather in a place over many years."
        ),
    ),
    (
        "Why does the moon seem to change shape?",
        (
            "The moon does not really change shape. As it travels around the earth, we see "
            "different amounts of its sunlit side, so it seems to grow and shrink."
        ),
    ),
    (
        "Why is the sky blue on a clear day?",
        (
            "Sunlight is made of many colours. The air scatters blue light more than the other "
            "colours, so blue light reaches our eyes from every part of the sky."
        ),
    ),
    (
        "What makes a rainbow appear in the sky?",
        (
            "A rainbow appears when sunlight shines through raindrops. Each drop bends the "
            "light and splits it into colours, with red on the outside and violet on the "
            "inside."
        ),
    ),
    (
        "How many zeros are there in one thousand?",
        "One thousand is written with three zeros, like this: 1000. One million has six zeros.",
    ),
    (
        "What is half of one hundred?",
        "Half of one hundred is fifty. You can find half of any number by dividing it by two.",
    ),
    (
        "How long does the earth take to go around the sun?",
        "The earth takes about 365 days, which is one year, to travel once around the sun.",
    ),
    (
        "What do bees make in their hives?",
        ("Bees make honey from the nectar of flowers. They also make wax, which they use to build their combs."),
    ),
    (
        "Why do cats purr so much?",
        (
            "Cats often purr when they are relaxed and content. Some also purr when they are "
            "hurt or nervous, perhaps to calm themselves."
        ),
    ),
    (
        "What do you call a baby sheep?",
        "A baby sheep is called a lamb. Most lambs are born in spring, when the grass starts to grow again.",
    ),
    (
        "What do you call a group of birds?",
        (
            "A group of birds is usually called a flock. Some groups have their own names, like "
            "a murmuration of starlings."
        ),
    ),
    (
        "What is a compass used for?",
        (
            "A compass shows which way is north. With it you can turn a map the right way and "
            "find your direction, even in fog."
        ),
    ),
    (
        "What is compost made from?",
        (
            "Compost is made from rotted plant material, such as leaves, vegetable peelings "
            "and grass cuttings. Gardeners mix it into the soil to feed their plants."
        ),
    ),
    (
        "Why does bread dough rise?",
        (
            "Bread rises because yeast feeds on sugars in the dough and makes tiny bubbles of "
            "gas. The bubbles get trapped, so the dough swells."
        ),
    ),
    (
        "Why do we see lightning before we hear thunder?",
        (
            "Light travels much faster than sound. The flash reaches you almost at once, while "
            "the sound of the thunder takes a few seconds to arrive."
        ),
    ),
    (
        "Why does a metal spoon get hot in a cup of tea?",
        ("Metal passes heat along very well. The heat of the tea travels up the spoon, so the handle soon feels warm."),
    ),
    (
        "How many players are there in a game of chess?",
        "Chess is played by two players. Each one starts with sixteen pieces, in either white or black.",
    ),
)

DEFINITIONS: tuple[tuple[str, str], ...] = (
    (
        "harbour",
        ("A harbour is a sheltered stretch of water by the coast where boats can stay safe from wind and waves."),
    ),
    (
        "weir",
        (
            "A weir is a low wall built across a river. Water flows over the top, and "
            "the wall keeps the water upstream deeper."
        ),
    ),
    (
        "loom",
        (
            "A loom is a frame used for weaving. It holds long threads tight while "
            "other threads are passed over and under them to make cloth."
        ),
    ),
    ("kiln", "A kiln is a very hot oven used to fire clay. The heat turns soft clay into hard pottery."),
    (
        "anvil",
        ("An anvil is a heavy block of iron. A blacksmith lays hot metal on it and shapes the metal with a hammer."),
    ),
    (
        "barometer",
        ("A barometer measures the pressure of the air. When the pressure falls, rain or wind is often on the way."),
    ),
    ("orchard", "An orchard is a piece of land where fruit trees are grown, such as apples, pears or plums."),
    (
        "telescope",
        (
            "A telescope is a tube with lenses or mirrors that makes faraway things, "
            "like the moon and the planets, look bigger and clearer."
        ),
    ),
    (
        "allotment",
        "An allotment is a small plot of land that a person rents to grow vegetables, fruit and flowers.",
    ),
    (
        "shuttle",
        ("A shuttle is a small tool used in weaving. It carries the thread from one side of the loom to the other."),
    ),
    (
        "towpath",
        ("A towpath is a path that runs along a river or canal. Long ago, horses walked along it pulling boats."),
    ),
    ("cairn", "A cairn is a pile of stones built by walkers. It often marks a path or the top of a hill."),
    (
        "slipway",
        ("A slipway is a slope that runs down into the water. Boats are pulled up it or slid down it into the sea."),
    ),
    (
        "glaze",
        ("A glaze is a glassy coating put on pottery. It is fired in a kiln and makes a pot shiny and waterproof."),
    ),
    ("skein", "A skein is a loose coil of yarn or thread, wound so that it does not tangle."),
    (
        "constellation",
        ("A constellation is a group of stars that people have linked together into a shape or picture in the sky."),
    ),
    ("meadow", "A meadow is a field of grass and wild flowers. It is often cut once a year to make hay."),
    (
        "hedge",
        "A hedge is a line of bushes planted close together. It marks a boundary and gives birds shelter.",
    ),
    ("chisel", "A chisel is a tool with a flat, sharp end. It is used to cut and shape wood or stone."),
    ("timetable", "A timetable is a list that shows when trains, buses or lessons start and finish."),
    (
        "puncture",
        ("A puncture is a small hole in a tyre that lets the air escape. It can usually be fixed with a patch."),
    ),
    (
        "lantern",
        "A lantern is a lamp with a case around it, so the flame or light is protected from the wind.",
    ),
    (
        "heron",
        ("A heron is a tall grey bird with long legs. It stands very still in shallow water and waits to catch fish."),
    ),
    (
        "summit",
        "The summit is the highest point of a hill or mountain. Walkers often stop there to enjoy the view.",
    ),
    ("valley", "A valley is low land between hills or mountains. A river often runs along the bottom of it."),
    (
        "seedling",
        "A seedling is a very young plant that has just grown from a seed. It needs light, water and care.",
    ),
    (
        "ferry",
        "A ferry is a boat that carries people, and sometimes cars, across a river or a stretch of sea.",
    ),
    (
        "sourdough",
        (
            "Sourdough is bread made with a starter of flour and water that has "
            "been left to ferment. It has a slightly sour taste."
        ),
    ),
    (
        "compass rose",
        "A compass rose is the star-shaped drawing on a map that shows north, south, east and west.",
    ),
    (
        "forge",
        "A forge is a fire or furnace where a blacksmith heats metal until it is soft enough to shape.",
    ),
)

EVERYDAY: tuple[tuple[str, str], ...] = (
    (
        "I can't sleep at night. What can I do?",
        (
            "Try to go to bed at the same time every night, keep your room cool and dark, and "
            "put screens away an hour before bed. A warm drink and a book can help too."
        ),
    ),
    (
        "How can I remember things better?",
        (
            "Write things down, say them out loud, and go over them again the next day. "
            "Linking a new fact to something you already know also helps it stick."
        ),
    ),
    (
        "What is a good way to start the day?",
        (
            "Drink a glass of water, open the curtains to let in daylight, and take a few "
            "minutes to plan the one thing you most want to get done."
        ),
    ),
    (
        "How do I make a good cup of tea?",
        (
            "Boil fresh water, pour it over the tea, and let it brew for three to four minutes. "
            "Take out the tea, then add milk or lemon if you like."
        ),
    ),
    (
        "I feel nervous before a test. Any tips?",
        (
            "Prepare a little each day instead of all at once, sleep well the night before, "
            "and take slow, deep breaths as you start. Read each question carefully."
        ),
    ),
    (
        "How can I save a little money each week?",
        (
            "Decide on a small amount and put it aside as soon as you are paid. Cook at home "
            "more often, and wait a day before buying anything you do not need."
        ),
    ),
    (
        "What should I pack for a day trip?",
        (
            "Pack water, a snack, a light coat, your phone and some money. A small bag with a "
            "plaster or two is useful, and so is a map of the area."
        ),
    ),
    (
        "How do I make a new friend?",
        (
            "Go where people share your interests, such as a club or a class. Ask questions, "
            "listen well, and suggest meeting again. Friendship grows with time."
        ),
    ),
    (
        "How can I keep my room tidy?",
        (
            "Give everything a home, put things back as soon as you finish with them, and "
            "spend five minutes tidying every evening. Small habits keep mess away."
        ),
    ),
    (
        "What can I do on a rainy day indoors?",
        (
            "You could read a book, bake something, write a letter, sort old photos or learn "
            "a new card game. Rainy days are good for slow, cosy jobs."
        ),
    ),
    (
        "How do I boil an egg properly?",
        (
            "Lower the egg into boiling water. Cook it for about six minutes for a soft yolk "
            "or ten minutes for a firm one, then cool it in cold water."
        ),
    ),
    (
        "How can I get better at writing?",
        (
            "Write a little every day, read good writing, and keep your sentences short and "
            "clear. Reading your work aloud helps you spot what sounds wrong."
        ),
    ),
    (
        "I am bored. What could I do this afternoon?",
        (
            "You could go for a walk, cook a new dish, visit a library, call an old friend or "
            "start a small project, like drawing the view from your window."
        ),
    ),
    (
        "How do I stay warm in winter without spending much?",
        (
            "Wear layers, keep doors closed to hold the heat in one room, and use a thick "
            "blanket on the sofa. Warm drinks and hot meals help too."
        ),
    ),
    (
        "What is a good way to learn new words?",
        (
            "Read widely, write down new words with a short example, and try to use each one "
            "in a sentence that day. Reviewing them a week later helps."
        ),
    ),
    (
        "How can I become more patient with people?",
        (
            "Take a slow breath before you answer, and try to see the situation from the other "
            "person's side. Remember that everyone is learning something."
        ),
    ),
    (
        "How do I write a short thank you note?",
        (
            "Start by naming the gift or kindness, say how it helped or made you feel, and end "
            "with a warm wish. A few honest sentences are enough."
        ),
    ),
    (
        "What should I do if I get lost in a new town?",
        (
            "Stay calm, stop somewhere safe, and look for a map or a big landmark. Ask a shop "
            "keeper for directions, as they usually know the area well."
        ),
    ),
    (
        "How can I drink more water during the day?",
        (
            "Keep a bottle within reach, drink a glass with every meal, and refill the bottle "
            "whenever it is empty. Adding a slice of lemon can make it nicer."
        ),
    ),
    (
        "How do I look after a house plant?",
        (
            "Put it where it gets the right amount of light, water it only when the top of the "
            "soil feels dry, and wipe dust from its leaves now and then."
        ),
    ),
    (
        "How can I focus better when I study?",
        (
            "Put your phone in another room, work in short blocks of about twenty-five "
            "minutes, and take a short break after each one. A tidy desk helps too."
        ),
    ),
    (
        "What is a simple breakfast I can make quickly?",
        (
            "Try porridge with fruit, toast with eggs, or yogurt with oats and honey. Each one "
            "takes only a few minutes and keeps you full."
        ),
    ),
    (
        "How should I say sorry to a friend?",
        (
            "Say sorry simply and honestly, name what you did, and do not make excuses. Then "
            "listen to how they feel and ask how you can make it right."
        ),
    ),
    (
        "How do I start running if I have never run before?",
        (
            "Begin with short runs mixed with walking, three times a week. Go slowly enough to "
            "talk, and add a little more running each week."
        ),
    ),
    (
        "What can I do when I feel a bit sad?",
        (
            "Be gentle with yourself. Go outside for some fresh air, talk to someone you "
            "trust, and do one small thing you enjoy. If the sadness stays, ask for help."
        ),
    ),
    (
        "How do I plan a small birthday party?",
        (
            "Choose a date and a place, invite a few close friends, and plan simple food and "
            "one or two games. A homemade cake always feels special."
        ),
    ),
    (
        "How can I make my walk to work more pleasant?",
        (
            "Try a quieter route, leave a few minutes early so you are not rushed, and notice "
            "small things on the way, like trees, birds and gardens."
        ),
    ),
    (
        "How do I clean a muddy pair of boots?",
        (
            "Let the mud dry, then knock it off and brush the boots. Wipe them with a damp "
            "cloth, dry them away from the fire, and polish them if they are leather."
        ),
    ),
    (
        "How do I start keeping a diary?",
        (
            "Use a simple notebook and write a few lines each evening about what happened and "
            "how you felt. It does not need to be long or perfect."
        ),
    ),
    (
        "How can I help a neighbour who is unwell?",
        (
            "Offer to pick up shopping, cook a simple meal, or just knock and ask how they "
            "are. Small, practical help often means the most."
        ),
    ),
    (
        "What is a good hobby for a quiet evening?",
        (
            "Reading, drawing, knitting, writing letters or doing a jigsaw are all calm "
            "hobbies. Choose one that lets you use your hands or your imagination."
        ),
    ),
    (
        "How do I start learning to draw?",
        (
            "Draw simple objects around you every day, like a cup or a shoe. Look more at the "
            "object than at the paper, and do not worry about mistakes."
        ),
    ),
    (
        "How can I use less plastic at home?",
        (
            "Carry a cloth bag, use a refillable bottle, buy loose fruit and vegetables, and "
            "store food in jars. Small changes soon add up."
        ),
    ),
    (
        "How should I prepare for a job interview?",
        (
            "Learn about the place, think of examples of your past work, and practise your "
            "answers out loud. Plan your journey so you arrive a little early."
        ),
    ),
    (
        "How do I fold a shirt neatly?",
        (
            "Lay the shirt face down, fold each side and sleeve towards the middle, then fold "
            "it in half from the bottom. Turn it over and smooth it flat."
        ),
    ),
)

OPPOSITES: tuple[tuple[str, str], ...] = (
    ("hot", "cold"),
    ("big", "small"),
    ("fast", "slow"),
    ("wet", "dry"),
    ("light", "dark"),
    ("early", "late"),
    ("open", "closed"),
    ("full", "empty"),
    ("old", "young"),
    ("high", "low"),
    ("loud", "quiet"),
    ("soft", "hard"),
    ("heavy", "light"),
    ("up", "down"),
    ("inside", "outside"),
    ("happy", "sad"),
    ("long", "short"),
    ("thick", "thin"),
    ("sweet", "sour"),
    ("day", "night"),
    ("summer", "winter"),
    ("north", "south"),
    ("east", "west"),
    ("push", "pull"),
    ("begin", "end"),
    ("near", "far"),
    ("clean", "dirty"),
    ("strong", "weak"),
    ("sharp", "blunt"),
    ("smooth", "rough"),
    ("tidy", "messy"),
    ("awake", "asleep"),
    ("first", "last"),
    ("above", "below"),
    ("wide", "narrow"),
    ("deep", "shallow"),
    ("always", "never"),
    ("remember", "forget"),
    ("arrive", "leave"),
    ("buy", "sell"),
)

SPELL_WORDS: tuple[str, ...] = (
    "garden",
    "bread",
    "river",
    "window",
    "station",
    "weather",
    "basket",
    "orchard",
    "lantern",
    "compass",
    "blanket",
    "kitchen",
    "library",
    "honey",
    "harbour",
    "valley",
    "thunder",
    "pottery",
    "shuttle",
    "teapot",
    "meadow",
    "candle",
    "pencil",
    "ladder",
    "bridge",
    "market",
    "mountain",
    "feather",
    "bicycle",
    "hammer",
    "saucepan",
    "cottage",
    "lighthouse",
    "rainbow",
    "seaside",
    "journey",
    "morning",
    "evening",
    "beehive",
    "anchor",
    "planet",
    "village",
    "spoon",
    "breakfast",
    "apple",
    "ticket",
    "letter",
)

NUMBER_WORDS: tuple[str, ...] = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
)

PLAIN_WHO_QS: tuple[str, ...] = (
    "Hello! Who are you, and what can you do?",
    "Hi there. Can you tell me what you are?",
    "Who am I talking to right now?",
    "What kind of assistant are you, exactly?",
    "Before we start, could you introduce yourself?",
)

PLAIN_WHO_AS: tuple[str, ...] = (
    (
        "I am a small chat assistant. I can answer simple questions, explain everyday "
        "things and give practical tips. What would you like to know?"
    ),
    (
        "I'm a helpful assistant. I can explain ideas in plain words, help you plan small "
        "tasks and answer questions. Ask me anything you like."
    ),
    (
        "I am an assistant made to be helpful and clear. I know a little about many "
        "everyday topics, like cooking, gardening and travel. How can I help today?"
    ),
)

PLAIN_GREET_QS: tuple[str, ...] = (
    "Hello there, how are you today?",
    "Good morning! How is your day going?",
    "Hi! I just wanted to say hello.",
    "Good evening. Are you there and ready to chat?",
)

PLAIN_GREET_AS: tuple[str, ...] = (
    "Hello! I am doing well, thank you for asking. What would you like to talk about today?",
    "Good to hear from you. I am here and ready to help. Is there something on your mind?",
    "Hello and welcome. I am happy to chat. Ask me a question, or tell me what you are working on.",
)

THANKS_QS: tuple[str, ...] = (
    "Thank you, that is really helpful.",
    "Thanks a lot, I will try that.",
    "That makes sense. Thank you very much.",
    "Great, thanks for explaining it so clearly.",
    "Lovely, thank you for your help today.",
)

PLAIN_THANKS_AS: tuple[str, ...] = (
    "You are very welcome. I am glad it helped. If you have another question, just ask.",
    "Happy to help. Good luck with it, and come back any time you want to talk it through.",
    "You're welcome. Take it one step at a time, and let me know how it goes.",
)

MORE_QS: tuple[str, ...] = (
    "Can you tell me a little more about that?",
    "That is interesting. What else should I know?",
    "Could you explain a bit more, please?",
    "Is there anything else I should keep in mind?",
)

WHY_QS: tuple[str, ...] = (
    "Why is that important, do you think?",
    "Why does that matter so much?",
    "Can you tell me why that helps?",
)

PLAIN_PADS: tuple[str, ...] = (
    "I hope that helps.",
    "Let me know if you would like more detail.",
    "Feel free to ask a follow-up question.",
    "Take your time with it.",
)


# ---------------------------------------------------------------------------
# Exchanges.  A builder returns the user turn, the body of the answer as a list
# of sentences, and the topic the exchange was about (or None).
# ---------------------------------------------------------------------------

Exchange = tuple[str, list[str], Topic | None]


def ex_fact(rng: random.Random) -> Exchange:
    """A general knowledge question."""
    question, answer = rng.choice(FACTS)
    return question, [answer], None


def ex_definition(rng: random.Random) -> Exchange:
    """Ask what a word means."""
    word, answer = rng.choice(DEFINITIONS)
    forms: tuple[str, ...] = (
        f"What does the word {word} mean?",
        f"Can you explain what a {word} is?",
        f"I keep hearing the word {word}. What is it?",
    )
    if word in ("sourdough", "compass rose"):
        forms = (f"What does the word {word} mean?", f"Can you explain what {word} is?")
    return rng.choice(forms), [answer], None


def ex_everyday(rng: random.Random) -> Exchange:
    """An everyday advice question."""
    question, answer = rng.choice(EVERYDAY)
    return question, [answer], None


def number_text(n: int) -> str:
    """Write small numbers as words and large ones as digits."""
    return NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)


def ex_arithmetic(rng: random.Random) -> Exchange:
    """A small sum, difference or product."""
    kind = rng.randrange(3)
    if kind == 0:
        a, b = rng.randint(2, 60), rng.randint(2, 40)
        user = rng.choice(
            (
                f"What do you get if you add {a} and {b}?",
                f"Can you work out {a} plus {b} for me?",
                f"Quick question: what is {a} plus {b}?",
            )
        )
        body = [
            f"{a} plus {b} is {a + b}.",
            f"One way to check is to start at {a} and count on {b} more, which lands on {a + b}.",
        ]
    elif kind == 1:
        a = rng.randint(10, 90)
        b = rng.randint(2, a - 1)
        user = rng.choice(
            (
                f"What is {a} minus {b}? I keep getting confused.",
                f"If I have {a} apples and give away {b}, how many are left?",
                f"Can you take {b} away from {a} for me?",
            )
        )
        body = [
            f"{a} minus {b} is {a - b}.",
            f"You can check it by adding {b} back on to {a - b}, which gives {a} again.",
        ]
        if "apples" in user:
            body[0] = f"You would have {a - b} apples left, because {a} minus {b} is {a - b}."
    else:
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        user = rng.choice(
            (
                f"What is {a} times {b}, please?",
                f"Can you help me multiply {a} by {b}?",
                f"How much is {a} multiplied by {b}?",
            )
        )
        body = [
            f"{a} times {b} is {a * b}.",
            f"That is the same as adding {b} together {number_text(a)} times.",
        ]
    return user, body, None


def ex_opposite(rng: random.Random) -> Exchange:
    """Ask for the opposite of a word."""
    word, other = rng.choice(OPPOSITES)
    if rng.random() < 0.5:
        word, other = other, word
    user = rng.choice(
        (
            f"What is the opposite of {word}?",
            f"Can you tell me the opposite of the word {word}?",
            f"What word means the opposite of {word}?",
        )
    )
    extra = rng.choice(
        (
            "Words like these come in pairs, and knowing one often helps you remember the other.",
            f"So if something is not {word} at all, you might describe it as {other}.",
            "Pairs of opposite words are useful when you want to compare two things.",
        )
    )
    return user, [f"The opposite of {word} is {other}.", extra], None


def ex_spell(rng: random.Random) -> Exchange:
    """Ask how to spell a word."""
    word = rng.choice(SPELL_WORDS)
    letters = "-".join(word)
    vowels = sum(1 for ch in word if ch in "aeiou")
    user = rng.choice(
        (
            f"How do you spell the word {word}?",
            f"Can you spell {word} for me, letter by letter?",
            f"I always forget. How is {word} spelled?",
        )
    )
    body = [
        f"{cap(word)} is spelled {letters}.",
        f"It has {number_text(len(word))} letters, and {number_text(vowels)} of them are vowels.",
        f"It starts with the letter {word[0]} and ends with the letter {word[-1]}.",
    ]
    return user, body, None


def ex_topic_tell(rng: random.Random, topic: Topic) -> Exchange:
    """Ask for something interesting about a topic."""
    user = rng.choice(
        (
            f"Can you tell me something about {topic.title}?",
            f"Tell me something interesting about {topic.title}.",
            f"What do you find interesting about {topic.title}?",
            f"I want to learn about {topic.title}. Where do I begin?",
        )
    )
    sights = rng.sample(topic.sights, 2)
    body = [
        f"{cap(sights[0])}.",
        desc_sentence(rng, topic),
        f"It is worth knowing that {rng.choice(topic.reasons)}.",
    ]
    if rng.random() < 0.25:
        body.append(f"Also, {sights[1]}.")
    return user, body, topic


def ex_topic_how(rng: random.Random, topic: Topic) -> Exchange:
    """Ask how to reach a goal within a topic."""
    goal = rng.choice(topic.goals)
    user = rng.choice(
        (
            f"How do I {goal}?",
            f"Can you explain how to {goal}?",
            f"What is the best way to {goal}?",
            f"I want to {goal}. Where should I start?",
        )
    )
    steps = rng.sample(topic.advice, 3)
    body = [f"First, {steps[0]}.", f"Then {steps[1]}."]
    if rng.random() < 0.4:
        body.append(f"After that, {steps[2]}.")
    body.append(f"Remember that {rng.choice(topic.reasons)}.")
    return user, body, topic


def ex_topic_tip(rng: random.Random, topic: Topic) -> Exchange:
    """Ask for a tip about a topic."""
    user = rng.choice(
        (
            f"Do you have a good tip about {topic.title}?",
            f"What is one piece of advice about {topic.title}?",
            f"Is it true that I should {to_user_voice(rng.choice(topic.advice))}?",
        )
    )
    tips = rng.sample(topic.advice, 2)
    if user.startswith("Is it true"):
        body = ["Yes, that is good advice.", f"It also helps to {tips[0]}."]
    else:
        body = [f"{cap(tips[0])}.", f"It also helps to {tips[1]}."]
    body.append(f"Keep in mind that {rng.choice(topic.reasons)}.")
    return user, body, topic


def ex_topic_list(rng: random.Random, topic: Topic) -> Exchange:
    """Ask for things you might find somewhere."""
    place = rng.choice(topic.places)
    things = [t for t, _ in rng.sample(topic.things, 3)]
    user = rng.choice(
        (
            f"Name three things you might find {place}.",
            f"What might I see {place}?",
        )
    )
    body = [
        f"You might find {and_list(things)} {place}.",
        f"Often {rng.choice(topic.sights)}.",
    ]
    return user, body, topic


def ex_story(rng: random.Random, topic: Topic) -> Exchange:
    """Ask for a very short story."""
    hero = rng.choice(story_people(topic))
    user = rng.choice(
        (
            f"Tell me a very short story about {indefinite(hero[0])}.",
            f"Could you make up a tiny story about {indefinite(hero[0])}?",
        )
    )
    return user, story_sentences(rng, topic, hero), topic


PLAIN_FIRST_KINDS: tuple[tuple[str, float], ...] = (
    ("fact", 0.13),
    ("definition", 0.08),
    ("everyday", 0.13),
    ("arith", 0.08),
    ("opposite", 0.05),
    ("spell", 0.04),
    ("tell", 0.12),
    ("how", 0.14),
    ("tip", 0.07),
    ("list", 0.05),
    ("story", 0.05),
    ("who", 0.03),
    ("greet", 0.03),
)


def weighted_kind(rng: random.Random, kinds: tuple[tuple[str, float], ...]) -> str:
    """Pick a kind name according to its weight."""
    names = [k for k, _ in kinds]
    weights = [w for _, w in kinds]
    return rng.choices(names, weights=weights, k=1)[0]


def plain_exchange(rng: random.Random, kind: str, topic: Topic) -> Exchange:
    """Build one plain exchange of the given kind."""
    if kind == "fact":
        return ex_fact(rng)
    if kind == "definition":
        return ex_definition(rng)
    if kind == "everyday":
        return ex_everyday(rng)
    if kind == "arith":
        return ex_arithmetic(rng)
    if kind == "opposite":
        return ex_opposite(rng)
    if kind == "spell":
        return ex_spell(rng)
    if kind == "tell":
        return ex_topic_tell(rng, topic)
    if kind == "how":
        return ex_topic_how(rng, topic)
    if kind == "tip":
        return ex_topic_tip(rng, topic)
    if kind == "list":
        return ex_topic_list(rng, topic)
    if kind == "story":
        return ex_story(rng, topic)
    if kind == "who":
        return rng.choice(PLAIN_WHO_QS), [rng.choice(PLAIN_WHO_AS)], None
    if kind == "greet":
        return rng.choice(PLAIN_GREET_QS), [rng.choice(PLAIN_GREET_AS)], None
    raise ValueError(kind)


WHY_AFTER: frozenset[str] = frozenset({"tell", "how", "tip", "love", "more"})
MORE_AFTER: frozenset[str] = WHY_AFTER | {"day", "story", "list", "why", "intro", "fav"}


def followup_more(rng: random.Random, topic: Topic) -> tuple[str, list[str]]:
    """A follow-up asking for more on the same topic."""
    person, _ = pick_person(rng, topic)
    body = [
        rng.choice(("Of course.", "Sure.", "Happily.")),
        f"{cap(rng.choice(topic.sights))}.",
        f"{cap(person)} likes to {rng.choice(topic.actions)} {rng.choice(topic.times)}.",
        f"A good habit is to {rng.choice(topic.advice)}.",
    ]
    return rng.choice(MORE_QS), body


def followup_why(rng: random.Random, topic: Topic) -> tuple[str, list[str]]:
    """A follow-up asking why."""
    body = [
        f"Mostly because {rng.choice(topic.reasons)}.",
        f"Try it yourself: {rng.choice(topic.advice)}, and you will soon see the difference.",
    ]
    return rng.choice(WHY_QS), body


# ---------------------------------------------------------------------------
# Fitting answers into the word limits.
# ---------------------------------------------------------------------------


def fit(
    rng: random.Random,
    head: list[str],
    body: list[str],
    tail: list[str],
    pads: list[str],
) -> str:
    """Join head, body and tail, trimming or padding the body to fit the limits."""
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
        last = turn == n_turns - 1
        body: list[str]
        if turn > 0 and last and rng.random() < 0.3:
            user, body = rng.choice(THANKS_QS), [rng.choice(PLAIN_THANKS_AS)]
        elif current is not None and last_kind in MORE_AFTER and rng.random() < 0.55:
            if last_kind in WHY_AFTER and rng.random() < 0.45:
                user, body = followup_why(rng, current)
                last_kind = "why"
            else:
                user, body = followup_more(rng, current)
                last_kind = "more"
        else:
            kind = weighted_kind(rng, PLAIN_FIRST_KINDS)
            if turn > 0 and kind in ("who", "greet"):
                kind = "fact"
            user, body, current = plain_exchange(rng, kind, rng.choice(TOPICS))
            last_kind = kind
        messages.append({"role": "user", "content": user})
        text = fit(rng, [], body, [], list(PLAIN_PADS))
        messages.append({"role": "assistant", "content": text})
    return messages


# ---------------------------------------------------------------------------
# Persona dialogues.
# ---------------------------------------------------------------------------

INTRO_QS: tuple[str, ...] = (
    "Hello! Who are you and what do you do?",
    "Hi there, could you tell me about yourself?",
    "Who am I talking to today?",
    "Before we start, who are you?",
    "Nice to meet you. Can you introduce yourself?",
)

NAME_QS: tuple[str, ...] = (
    "Sorry, what was your name again?",
    "May I ask what your name is?",
    "What should I call you, by the way?",
)

DAY_QS: tuple[str, ...] = (
    "What does a normal day look like for you?",
    "What do you do all day?",
    "Tell me about a typical day in your life.",
)

LOVE_QS: tuple[str, ...] = (
    "What do you love most about your work?",
    "What is your favourite part of the job?",
    "What makes you happy in your work?",
)

WEATHER_QS: tuple[str, ...] = (
    "What is the weather like where you are today?",
    "Is it a nice day where you are?",
    "How is the weather over there today?",
)

FAV_QS: tuple[str, ...] = (
    "What is your favourite thing to talk about?",
    "What topic could you talk about for hours?",
    "If we could chat about anything, what would you choose?",
)


def persona_intro(rng: random.Random, p: Persona) -> str:
    """A sentence in which the persona introduces itself."""
    return rng.choice(
        (
            f"I'm {p.name}, {p.job} {p.setting}.",
            f"My name is {p.name}, and I am {p.job} {p.setting}.",
            f"I'm {p.name}. I work as {p.job} {p.setting}.",
        )
    )


def persona_pads(rng: random.Random, p: Persona) -> list[str]:
    """Extra sentences that keep a persona answer in character."""
    topic = TOPIC_BY_KEY[p.topic]
    return [
        f"{cap(rng.choice(topic.sights))}.",
        f"I could talk about {topic.title} all day.",
        p.motto,
        p.saying,
    ]


def persona_body(
    rng: random.Random, p: Persona, kind: str, current: Topic | None
) -> tuple[str, list[str], Topic | None]:
    """The user turn and the in-character body of an answer."""
    topic = TOPIC_BY_KEY[p.topic]
    act, act2 = rng.sample(topic.actions, 2)
    sight = rng.choice(topic.sights)
    if kind == "intro":
        return (
            rng.choice(INTRO_QS),
            [
                persona_intro(rng, p),
                f"Most days I {act} and {act2}.",
                f"I love {topic.title}, so ask me anything you like.",
            ],
            topic,
        )
    if kind == "name":
        return (
            rng.choice(NAME_QS),
            [
                f"My name is {p.name}.",
                f"I am {p.job} {p.setting}, and I spend my days with {topic.title}.",
            ],
            topic,
        )
    if kind == "day":
        return (
            rng.choice(DAY_QS),
            [
                f"{cap(rng.choice(topic.times))}, I {act} {rng.choice(topic.places)}.",
                f"After that I {act2}.",
                f"My favourite moment is when {sight}.",
            ],
            topic,
        )
    if kind == "love":
        return (
            rng.choice(LOVE_QS),
            [
                f"I love it when {sight}.",
                desc_sentence(rng, topic),
                f"And I always say that {rng.choice(topic.reasons)}.",
            ],
            topic,
        )
    if kind == "weather":
        weather = TOPIC_BY_KEY["weather"]
        return (
            rng.choice(WEATHER_QS),
            [
                f"Here {p.setting}, {rng.choice(weather.sights)}.",
                desc_sentence(rng, weather),
                f"It is a good day to {act}.",
            ],
            topic,
        )
    if kind == "fav":
        return (
            rng.choice(FAV_QS),
            [
                f"That is easy: {topic.title}.",
                f"I love it when {sight}.",
                f"Ask me how to {rng.choice(topic.goals)} and I will tell you.",
            ],
            topic,
        )
    if kind in ("tell", "how", "tip", "story"):
        chosen = topic if rng.random() < 0.8 else rng.choice(TOPICS)
        user, body, t = plain_exchange(rng, kind, chosen)
        if chosen is not topic and rng.random() < 0.7:
            body = [*body[:3], f"In my own work, {sight}."]
        return user, body, t
    if kind == "more" and current is not None:
        user, body = followup_more(rng, current)
        return user, body, current
    if kind == "why" and current is not None:
        user, body = followup_why(rng, current)
        return user, body, current
    if kind == "thanks":
        return (
            rng.choice(THANKS_QS),
            [
                rng.choice(("You are very welcome.", "My pleasure.", "Any time at all.")),
                f"Come back and tell me how it goes, and we can talk about {topic.title} again.",
            ],
            current,
        )
    general = rng.choice(("fact", "definition", "everyday", "arith", "opposite"))
    user, body, _ = plain_exchange(rng, general, topic)
    bridges = (
        f"It reminds me of my own work, where {sight}.",
        f"Here {p.setting}, {sight}.",
        f"Out here we know that {rng.choice(topic.reasons)}.",
    )
    if rng.random() < 0.6:
        body = [*body, rng.choice(bridges)]
    return user, body, None


PERSONA_FIRST_KINDS: tuple[tuple[str, float], ...] = (
    ("intro", 0.2),
    ("day", 0.08),
    ("love", 0.06),
    ("weather", 0.05),
    ("fav", 0.05),
    ("tell", 0.13),
    ("how", 0.14),
    ("tip", 0.07),
    ("story", 0.04),
    ("general", 0.18),
)

PERSONA_LATER_KINDS: tuple[tuple[str, float], ...] = (
    ("name", 0.06),
    ("day", 0.07),
    ("love", 0.07),
    ("weather", 0.05),
    ("fav", 0.04),
    ("tell", 0.1),
    ("how", 0.12),
    ("tip", 0.06),
    ("more", 0.14),
    ("why", 0.1),
    ("general", 0.19),
)


def decorate(rng: random.Random, p: Persona, kind: str, first: bool, last: bool) -> tuple[list[str], list[str]]:
    """Choose the persona phrases that open and close an answer."""
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
    """A dialogue that starts with a persona system message."""
    messages: list[Message] = [{"role": "system", "content": system_prompt(rng, p)}]
    n_turns = rng.choices((1, 2, 3), weights=TURN_WEIGHTS, k=1)[0]
    current: Topic | None = None
    used: set[str] = set()
    last_kind = ""
    for turn in range(n_turns):
        first = turn == 0
        last = turn == n_turns - 1
        if not first and last and rng.random() < 0.3:
            kind = "thanks"
        else:
            table = PERSONA_FIRST_KINDS if first else PERSONA_LATER_KINDS
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


# ---------------------------------------------------------------------------
# Checks and output.
# ---------------------------------------------------------------------------


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
    """Build all dialogues, persona ones spread evenly over the personas."""
    n_persona = round(N_DIALOGUES * PERSONA_SHARE)
    dialogues: list[list[Message]] = []
    for i in range(n_persona):
        dialogues.append(persona_dialogue(rng, PERSONAS[i % len(PERSONAS)]))
    for _ in range(N_DIALOGUES - n_persona):
        dialogues.append(plain_dialogue(rng))
    rng.shuffle(dialogues)
    for dialogue in dialogues:
        check_dialogue(dialogue)
    return dialogues


def write_text(path: Path, text: str) -> None:
    """Write UTF-8 text with Unix line endings."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        handle.write(text)


def main() -> None:
    """Generate both corpus files."""
    rng = random.Random(0)
    prose = build_prose(rng)
    dialogues = build_dialogues(rng)
    lines = [json.dumps({"messages": d}, ensure_ascii=False) for d in dialogues]
    write_text(PROSE_PATH, prose)
    write_text(DIALOGUES_PATH, "\n".join(lines) + "\n")
    print(f"wrote {PROSE_PATH.relative_to(ROOT)} ({len(prose.encode('utf-8'))} bytes)")
    print(f"wrote {DIALOGUES_PATH.relative_to(ROOT)} ({len(lines)} dialogues)")


if __name__ == "__main__":
    main()
