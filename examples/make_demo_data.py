"""Generate the IOPO demo data set: instruction pairs that differ in one program-checkable constraint.

Each record is a quadruple (x1, x2, y1, y2) in the original IOPO release format. x1 is a short task
with one to three constraints; x2 changes exactly one of them into a different requirement of the
same slot (another word limit, keyword, case, layout, ending or language). y1 meets every constraint
of x1 and breaks at least one of x2; y2 meets every constraint of x2 and breaks at least one of x1.
Adding or removing a constraint cannot give such a pair: the response to the longer instruction
would meet the shorter one too, and could not be its rejected answer.

The constraints are not stored in the records: `parse_constraints` reads them back from the
instruction text, so `verify_quadruple` can check any record on its own. The constraint kinds and
their checkers live in `iopo_fast.evaluation.demo_constraints`, which the `demo` evaluation
benchmark uses to judge a model's responses to the same instructions.

Train and eval come from disjoint topics. Every eval instruction is failed by every member of the
evaluation's family of trivial answers (`iopo_fast.evaluation.trivial_answers`: empty, ".", the
instruction echoed back, a generic paragraph, single words and letters, the instruction's own quoted
phrases, each in every casing), strictly and loosely checked: a prompt-level score on the `demo`
benchmark stands on a floor of zero. Valid holds records of the train topics that are not in train, for choosing
hyperparameters without looking at an evaluated prompt. The output is deterministic: the same seed
writes the same bytes on every run, and `--check` tells whether the files on disk are up to date.

    python examples/make_demo_data.py            # write examples/data/{train,valid}.jsonl and
                                                 # iopo_fast/evaluation/demo_data/eval.jsonl
    python examples/make_demo_data.py --check    # exit 1 if they differ from a fresh generation
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from iopo_fast.evaluation.checks import loose_variants
from iopo_fast.evaluation.demo_constraints import (
    LANGUAGE_MARKERS,
    DEFAULT_LANGUAGE,
    LETTERS,
    SLOTS,
    Constraint,
    broken,
    compatible,
    count_words,
    parse_constraints,
)
from iopo_fast.evaluation.trivial_answers import TRIVIAL_FAMILY

SEED = 2411
SPLIT_SIZES = {"train.jsonl": 300, "eval.jsonl": 40, "valid.jsonl": 40}  # generated in this order
REPO = Path(__file__).resolve().parents[1]
# Where each split is committed: eval ships with the package, as the `demo` benchmark's default set.
SPLIT_PATHS = {"train.jsonl": REPO / "examples" / "data" / "train.jsonl",
               "eval.jsonl": REPO / "iopo_fast" / "evaluation" / "demo_data" / "eval.jsonl",
               "valid.jsonl": REPO / "examples" / "data" / "valid.jsonl"}
EVAL_TOPIC_STRIDE = 6
MAX_INSTRUCTION_WORDS = 40
MAX_RESPONSE_WORDS = 35
MAX_CONSTRAINTS = 3

CLOSING_PHRASES = {
    "English": ("Is there anything else?", "Hope this helps!", "Thanks for asking.", "That is all for now."),
    "French": ("Bonne journée !", "Voilà tout.", "Merci de votre question."),
    "Spanish": ("¡Buena suerte!", "Eso es todo.", "Gracias por preguntar."),
}
COMMON_WORDS = frozenset(
    "about across again ahead almost always around because become below between certain during enough "
    "instead least little longer never often other rather several since still their there three through "
    "today together twice twenty thirty under usually where whole without yourself "
    "abord aucun aucune beaucoup certains environ jamais juste mieux moins plutôt presque quand selon "
    "souvent toute trois trente "
    "algunos cinco cuando menos mientras misma nunca otros primero todos treinta".split()
)
JSON_KEY_PAIRS = (("a", "b"), ("summary", "detail"), ("main_point", "example"), ("title", "body"))


@dataclass(frozen=True)
class Topic:
    """A base task with short factual sentences about it, in English and optionally French and Spanish."""

    task: str
    english: tuple[str, ...]
    french: tuple[str, ...] = ()
    spanish: tuple[str, ...] = ()

    @property
    def sentences(self) -> dict[str, tuple[str, ...]]:
        """Sentences by language name, for the languages this topic is written in."""
        by_language = {"English": self.english, "French": self.french, "Spanish": self.spanish}
        return {language: lines for language, lines in by_language.items() if lines}


def keyword_choices(topic: Topic, language: str) -> list[str]:
    """Content words of the topic's sentences: words of five letters or more that are not common words."""
    words = {word for sentence in topic.sentences[language] for word in LETTERS.findall(sentence.lower())}
    common = COMMON_WORDS.union(*LANGUAGE_MARKERS.values())
    return sorted(word for word in words if len(word) >= 5 and word not in common)


Sampler = Callable[[Topic, str, random.Random], tuple]


def no_arguments(topic: Topic, language: str, rng: random.Random) -> tuple:
    return ()


def sample_word_limit(topic: Topic, language: str, rng: random.Random) -> tuple:
    return (rng.randint(10, 25),)


def sample_reachable_length(topic: Topic, language: str, rng: random.Random) -> tuple:
    """The length of one to three of the topic's sentences, so that an exact count can be met."""
    sentences = rng.sample(topic.sentences[language], rng.randint(1, 3))
    return (count_words(" ".join(sentences)),)


def sample_keyword(topic: Topic, language: str, rng: random.Random) -> tuple:
    return (rng.choice(keyword_choices(topic, language)),)


def sample_bullet_count(topic: Topic, language: str, rng: random.Random) -> tuple:
    return (rng.randint(2, 4),)


def sample_json_keys(topic: Topic, language: str, rng: random.Random) -> tuple:
    return rng.choice(JSON_KEY_PAIRS)


def sample_closing_phrase(topic: Topic, language: str, rng: random.Random) -> tuple:
    return (rng.choice(CLOSING_PHRASES[language]),)


def sample_language(topic: Topic, language: str, rng: random.Random) -> tuple:
    return (rng.choice(tuple(topic.sentences)),)


# How the generator draws the arguments of each kind of constraint.
SAMPLERS: dict[str, Sampler] = {
    "max_words": sample_word_limit,
    "exact_words": sample_reachable_length,
    "min_words": sample_word_limit,
    "include": sample_keyword,
    "exclude": sample_keyword,
    "lowercase": no_arguments,
    "uppercase": no_arguments,
    "bullets": sample_bullet_count,
    "json": sample_json_keys,
    "ending": sample_closing_phrase,
    "language": sample_language,
}
CASE_CHANGES = {"lowercase": str.lower, "uppercase": str.upper}


def instruction_text(topic: Topic, constraints: Sequence[Constraint]) -> str:
    return " ".join([topic.task, *(constraint.describe() for constraint in constraints)])


def response_language(constraints: Sequence[Constraint]) -> str:
    """The language asked for, English when none is."""
    return next((c.args[0] for c in constraints if c.kind == "language"), DEFAULT_LANGUAGE)


def sample_constraint(slot: str, topic: Topic, language: str, rng: random.Random) -> Constraint:
    name = rng.choice(SLOTS[slot])
    return Constraint(name, SAMPLERS[name](topic, language, rng))


def open_slots(topic: Topic) -> list[str]:
    """The slots a constraint about `topic` can fill: the language only when the topic has translations."""
    return [slot for slot in SLOTS if slot != "language" or len(topic.sentences) > 1]


def sample_first_constraints(topic: Topic, rng: random.Random) -> list[Constraint]:
    """One to three constraints in distinct slots; the language is drawn first, as keywords depend on it."""
    slots = rng.sample(open_slots(topic), rng.randint(1, MAX_CONSTRAINTS))
    slots.sort(key=lambda slot: slot != "language")
    constraints: list[Constraint] = []
    for slot in slots:
        constraints.append(sample_constraint(slot, topic, response_language(constraints), rng))
    rng.shuffle(constraints)
    return constraints


def change_constraint(constraints: list[Constraint], topic: Topic, rng: random.Random) -> list[Constraint] | None:
    """Replace one constraint by another of the same slot; None when the draw gives the same one."""
    index = rng.randrange(len(constraints))
    replacement = sample_constraint(constraints[index].slot, topic, response_language(constraints), rng)
    if replacement == constraints[index]:
        return None
    return [*constraints[:index], replacement, *constraints[index + 1:]]


def selection_sizes(settings: dict[str, tuple]) -> range:
    """How many sentences a response may use under its layout."""
    if "bullets" in settings:
        return range(settings["bullets"][0], settings["bullets"][0] + 1)
    if "json" in settings:
        return range(2, 4)
    return range(1, 5)


def lay_out(chosen: Sequence[str], settings: dict[str, tuple]) -> str:
    """Sentences as prose, as a bullet list or as a JSON object, followed by the closing phrase if any."""
    closing = settings.get("ending", ())
    if "json" in settings:
        first_key, second_key = settings["json"]
        return json.dumps({first_key: chosen[0], second_key: " ".join(chosen[1:])}, ensure_ascii=False)
    if "bullets" in settings:
        return "\n".join([*(f"- {sentence}" for sentence in chosen), *closing])
    return " ".join([*chosen, *closing])


def candidate_responses(topic: Topic, constraints: Sequence[Constraint]) -> list[str]:
    """Every response the topic's sentences give in the language, layout, ending and case asked for."""
    settings = {constraint.kind: constraint.args for constraint in constraints}
    sentences = topic.sentences.get(response_language(constraints), ())
    change_case = next((CASE_CHANGES[kind] for kind in settings if kind in CASE_CHANGES), str)
    return [
        change_case(lay_out(chosen, settings))
        for size in selection_sizes(settings)
        for chosen in combinations(sentences, size)
    ]


def compose_response(topic: Topic, follow: Sequence[Constraint], defy: Sequence[Constraint],
                     rng: random.Random) -> str | None:
    """A short response that meets every constraint in `follow` and breaks one in `defy`, if there is one."""
    fitting = [
        response for response in candidate_responses(topic, follow)
        if count_words(response) <= MAX_RESPONSE_WORDS and not broken(response, follow) and broken(response, defy)
    ]
    return rng.choice(fitting) if fitting else None


def make_record(x1: str, x2: str, y1: str, y2: str) -> dict:
    """A quadruple in the original IOPO release format."""
    return {
        "conversations": [{"from": "human", "value": x1}, {"from": "human", "value": x2}],
        "chosen": {"from": "gpt", "value": y1},
        "rejected": {"from": "gpt", "value": y2},
    }


def make_quadruple(topic: Topic, rng: random.Random) -> dict | None:
    """One random quadruple about `topic`, or None when the draw gives no valid one."""
    first = sample_first_constraints(topic, rng)
    second = change_constraint(first, topic, rng)
    if second is None or not compatible(first) or not compatible(second):
        return None
    x1, x2 = instruction_text(topic, first), instruction_text(topic, second)
    if max(count_words(x1), count_words(x2)) > MAX_INSTRUCTION_WORDS:
        return None
    y1 = compose_response(topic, first, second, rng)
    y2 = compose_response(topic, second, first, rng)
    if y1 is None or y2 is None:
        return None
    return make_record(x1, x2, y1, y2)


def record_texts(record: dict) -> tuple[str, str, str, str]:
    return (record["conversations"][0]["value"], record["conversations"][1]["value"],
            record["chosen"]["value"], record["rejected"]["value"])


def response_problems(name: str, response: str, follow: tuple[str, list[Constraint]],
                      defy: tuple[str, list[Constraint]]) -> list[str]:
    """What is wrong with a response that should meet the constraints of one named instruction and break
    at least one of the other."""
    (own, own_constraints), (other, other_constraints) = follow, defy
    problems = [f"{name} breaks {own}'s constraint: {constraint.describe()}"
                for constraint in broken(response, own_constraints)]
    if not broken(response, other_constraints):
        problems.append(f"{name} also meets every constraint of {other}")
    if count_words(response) > MAX_RESPONSE_WORDS:
        problems.append(f"{name} has more than {MAX_RESPONSE_WORDS} words")
    return problems


def changed_slots(first: list[Constraint], second: list[Constraint]) -> list[str]:
    """The slots whose constraint differs between x1 and x2, including one that only one of them fills."""
    first_by_slot = {constraint.slot: constraint for constraint in first}
    second_by_slot = {constraint.slot: constraint for constraint in second}
    return sorted(slot for slot in first_by_slot.keys() | second_by_slot.keys()
                  if first_by_slot.get(slot) != second_by_slot.get(slot))


def verify_quadruple(record: object) -> list[str]:
    """The problems of one record; an empty list when it is a valid quadruple in the release format."""
    try:
        x1, x2, y1, y2 = record_texts(record)
    except (KeyError, IndexError, TypeError):
        return ["not in the IOPO release format"]
    if record != make_record(x1, x2, y1, y2):
        return ["fields other than those of the IOPO release format"]
    if not all(isinstance(text, str) and text.strip() for text in (x1, x2, y1, y2)):
        return ["a text is empty or not a string"]
    first, second = parse_constraints(x1), parse_constraints(x2)
    problems = ["x1 and x2 are the same"] if x1 == x2 else []
    problems += ["y1 and y2 are the same"] if y1 == y2 else []
    for name, instruction, constraints in (("x1", x1, first), ("x2", x2, second)):
        if not constraints:
            problems.append(f"{name} states no constraint")
        if not compatible(constraints):
            problems.append(f"{name} has two constraints in one slot or contradicting constraints")
        if count_words(instruction) > MAX_INSTRUCTION_WORDS:
            problems.append(f"{name} has more than {MAX_INSTRUCTION_WORDS} words")
    if {c.slot for c in first} != {c.slot for c in second} or len(changed_slots(first, second)) != 1:
        problems.append(f"x2 must change one constraint of x1, not {changed_slots(first, second)}")
    return (problems + response_problems("y1", y1, follow=("x1", first), defy=("x2", second))
            + response_problems("y2", y2, follow=("x2", second), defy=("x1", first)))


def split_topics() -> dict[str, list[Topic]]:
    """Disjoint topics for train and eval: every sixth topic is held out for evaluation. Valid draws new
    records from the train topics."""
    train = [topic for index, topic in enumerate(TOPICS) if index % EVAL_TOPIC_STRIDE]
    return {"train.jsonl": train, "eval.jsonl": TOPICS[::EVAL_TOPIC_STRIDE], "valid.jsonl": train}


def trivial_answers_fail(record: dict) -> bool:
    """Whether every answer of the evaluation's trivial family breaks a constraint of x1, and one of x2, in both
    of the evaluation's modes: a constraint that the answer breaks, and each of its loose variants too."""
    return all(any(all(broken(text, [constraint]) for text in [answer, *loose_variants(answer)])
                   for constraint in parse_constraints(instruction))
               for instruction in record_texts(record)[:2]
               for answer in (respond(instruction) for respond in TRIVIAL_FAMILY.values()))


# What a split's records must also satisfy, beyond being valid quadruples.
SPLIT_REQUIREMENTS: dict[str, Callable[[dict], bool]] = {"eval.jsonl": trivial_answers_fail}


def generate_records(topics: Sequence[Topic], count: int, rng: random.Random,
                     requirement: Callable[[dict], bool] | None = None,
                     taken: frozenset[tuple[str, str]] = frozenset()) -> list[dict]:
    """`count` distinct valid quadruples that meet `requirement`, going round the topics in turn, none with an
    instruction pair in `taken`."""
    records: list[dict] = []
    instruction_pairs: set[tuple[str, str]] = set(taken)
    while len(records) < count:
        record = make_quadruple(topics[len(records) % len(topics)], rng)
        if record is None or record_texts(record)[:2] in instruction_pairs or (requirement and not requirement(record)):
            continue
        problems = verify_quadruple(record)
        if problems:
            raise AssertionError(f"generated an invalid quadruple {record}: {problems}")
        instruction_pairs.add(record_texts(record)[:2])
        records.append(record)
    return records


def generate_splits(seed: int = SEED) -> dict[str, list[dict]]:
    """The records of each output file, by file name; no instruction pair is in two of them."""
    rng = random.Random(seed)
    splits: dict[str, list[dict]] = {}
    for name, topics in split_topics().items():
        taken = frozenset(record_texts(record)[:2] for records in splits.values() for record in records)
        splits[name] = generate_records(topics, SPLIT_SIZES[name], rng, SPLIT_REQUIREMENTS.get(name), taken)
    return splits


def jsonl_bytes(records: Sequence[dict]) -> bytes:
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode("utf-8")


def dataset_files(seed: int = SEED) -> dict[str, bytes]:
    """The exact contents of each output file, by file name."""
    return {name: jsonl_bytes(records) for name, records in generate_splits(seed).items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, help="one folder for the three .jsonl files (default: where each "
                        "is committed, SPLIT_PATHS)")
    parser.add_argument("--check", action="store_true", help="only compare the files on disk with a fresh generation")
    args = parser.parse_args(argv)
    files = dataset_files()
    paths = {name: args.out_dir / name for name in files} if args.out_dir else SPLIT_PATHS
    if args.check:
        stale = [str(paths[name]) for name, content in files.items()
                 if not paths[name].is_file() or paths[name].read_bytes() != content]
        if stale:
            print(f"out of date: {', '.join(stale)}; rerun {Path(__file__).name}", file=sys.stderr)
            return 1
        print(f"up to date: {', '.join(map(str, paths.values()))}")
        return 0
    for name, content in files.items():
        paths[name].parent.mkdir(parents=True, exist_ok=True)
        paths[name].write_bytes(content)
        print(f"wrote {SPLIT_SIZES[name]} quadruples to {paths[name]}")
    return 0


TOPICS = [
    Topic(
        "Describe the benefits of cycling.",
        ("Cycling strengthens your heart and your legs.",
         "It is a cheap way to travel to work.",
         "A bike ride produces no fumes for the city.",
         "Regular rides improve your mood and sleep.",
         "Cycling with friends makes exercise more fun."),
        french=("Le vélo renforce votre cœur et vos jambes.",
                "C'est un moyen économique d'aller au travail.",
                "Une balade à vélo ne produit aucune fumée pour la ville.",
                "Rouler souvent améliore votre humeur et votre sommeil.",
                "Pédaler avec des amis rend le sport plus amusant."),
        spanish=("La bicicleta fortalece tu corazón y tus piernas.",
                 "Es una forma barata de ir al trabajo.",
                 "Un paseo en bicicleta no produce humo para la ciudad.",
                 "Pedalear a menudo mejora tu humor y tu sueño.",
                 "Pedalear con amigos hace el ejercicio más divertido."),
    ),
    Topic(
        "Explain why drinking water matters.",
        ("Water keeps your body at the right temperature.",
         "It helps your kidneys remove waste.",
         "Even mild thirst can lower your focus.",
         "Drink a glass of water with every meal.",
         "Carry a bottle when you go out."),
        french=("L'eau maintient votre corps à la bonne température.",
                "Elle aide vos reins à éliminer les déchets.",
                "Une légère soif peut réduire votre concentration.",
                "Buvez un verre d'eau à chaque repas.",
                "Emportez une bouteille quand vous sortez."),
        spanish=("El agua mantiene tu cuerpo a la temperatura adecuada.",
                 "Ayuda a tus riñones a eliminar desechos.",
                 "Una sed leve puede bajar tu concentración.",
                 "Bebe un vaso de agua con cada comida.",
                 "Lleva una botella cuando salgas."),
    ),
    Topic(
        "Give tips for sleeping better.",
        ("Go to bed at the same time every night.",
         "Keep your bedroom dark, quiet and cool.",
         "Avoid screens for an hour before bed.",
         "Skip coffee after the early afternoon.",
         "A short evening walk helps you relax."),
        french=("Couchez-vous à la même heure chaque soir.",
                "Gardez votre chambre sombre, calme et fraîche.",
                "Évitez les écrans une heure avant le coucher.",
                "Ne buvez plus de café après le déjeuner.",
                "Une courte marche le soir aide à se détendre."),
        spanish=("Acuéstate a la misma hora cada noche.",
                 "Mantén tu dormitorio oscuro, tranquilo y fresco.",
                 "Evita las pantallas una hora antes de dormir.",
                 "No tomes café después del mediodía.",
                 "Un paseo corto por la noche ayuda a relajarse."),
    ),
    Topic(
        "Describe the benefits of walking every day.",
        ("Walking is gentle on your joints.",
         "A daily walk lowers stress and blood pressure.",
         "It is free and needs no special gear.",
         "Walking after meals helps control blood sugar.",
         "You notice more of your neighbourhood on foot."),
        french=("La marche est douce pour vos articulations.",
                "Une marche quotidienne réduit le stress et la tension.",
                "Elle est gratuite et ne demande aucun équipement.",
                "Marcher après les repas aide à contrôler la glycémie.",
                "À pied, vous découvrez mieux votre quartier."),
        spanish=("Caminar es suave para tus articulaciones.",
                 "Un paseo diario reduce el estrés y la presión arterial.",
                 "Es gratis y no necesita equipo especial.",
                 "Caminar después de comer ayuda a controlar el azúcar.",
                 "A pie conoces mejor tu barrio."),
    ),
    Topic(
        "Explain why reading books is worthwhile.",
        ("Reading expands your vocabulary.",
         "Stories let you see the world through other eyes.",
         "A good book is a calm break from screens.",
         "Reading before bed helps many people sleep.",
         "Books teach you things that school never covered."),
        french=("La lecture enrichit votre vocabulaire.",
                "Les histoires vous font voir le monde autrement.",
                "Un bon livre est une pause calme loin des écrans.",
                "Lire avant de dormir aide beaucoup de gens.",
                "Les livres vous apprennent ce que l'école n'a pas couvert."),
        spanish=("Leer amplía tu vocabulario.",
                 "Las historias te muestran el mundo con otros ojos.",
                 "Un buen libro es una pausa tranquila lejos de las pantallas.",
                 "Leer antes de dormir ayuda a mucha gente.",
                 "Los libros enseñan cosas que la escuela no cubrió."),
    ),
    Topic(
        "Give tips for learning a new language.",
        ("Practise a little every day rather than cramming.",
         "Listen to podcasts and songs in the language.",
         "Speak with native speakers as early as possible.",
         "Label objects in your home with their names.",
         "Mistakes are normal and help you improve."),
        french=("Pratiquez un peu chaque jour plutôt que tout d'un coup.",
                "Écoutez des podcasts et des chansons dans la langue.",
                "Parlez avec des locuteurs natifs le plus tôt possible.",
                "Étiquetez les objets de votre maison.",
                "Les erreurs sont normales et vous aident à progresser."),
        spanish=("Practica un poco cada día en lugar de estudiar de golpe.",
                 "Escucha pódcasts y canciones en el idioma.",
                 "Habla con nativos lo antes posible.",
                 "Etiqueta los objetos de tu casa.",
                 "Los errores son normales y te ayudan a mejorar."),
    ),
    Topic(
        "Give tips for learning to cook.",
        ("Start with simple recipes that use few ingredients.",
         "Read the whole recipe before you begin.",
         "Keep your knives sharp and your board clean.",
         "Taste the food as you cook and adjust the salt.",
         "Cook with friends to learn new tricks."),
        french=("Commencez par des recettes simples avec peu d'ingrédients.",
                "Lisez toute la recette avant de commencer.",
                "Gardez vos couteaux aiguisés et votre planche propre.",
                "Goûtez le plat pendant la cuisson et ajustez le sel.",
                "Cuisinez avec des amis pour apprendre des astuces."),
        spanish=("Empieza con recetas sencillas de pocos ingredientes.",
                 "Lee toda la receta antes de empezar.",
                 "Mantén tus cuchillos afilados y tu tabla limpia.",
                 "Prueba la comida mientras cocinas y ajusta la sal.",
                 "Cocina con amigos para aprender trucos nuevos."),
    ),
    Topic(
        "Describe the joys of gardening.",
        ("Gardening gets you outside in the fresh air.",
         "Digging and weeding are gentle exercise.",
         "Growing your own herbs saves money.",
         "Watching seeds sprout is deeply satisfying.",
         "A garden attracts bees and birds."),
        french=("Le jardinage vous fait sortir au grand air.",
                "Bêcher et désherber sont un exercice doux.",
                "Cultiver vos herbes aromatiques fait des économies.",
                "Voir les graines germer est très satisfaisant.",
                "Un jardin attire les abeilles et les oiseaux."),
        spanish=("La jardinería te lleva al aire libre.",
                 "Cavar y quitar malas hierbas es un ejercicio suave.",
                 "Cultivar tus propias hierbas ahorra dinero.",
                 "Ver germinar las semillas es muy satisfactorio.",
                 "Un jardín atrae abejas y pájaros."),
    ),
    Topic(
        "Explain why recycling matters.",
        ("Recycling saves raw materials and energy.",
         "It keeps waste out of landfills.",
         "Recycled aluminium uses a fraction of the energy of new metal.",
         "Rinse containers before you put them in the bin.",
         "Sorting your waste at home takes only a minute."),
        french=("Le recyclage économise des matières premières et de l'énergie.",
                "Il réduit les déchets dans les décharges.",
                "L'aluminium recyclé consomme bien moins d'énergie que le neuf.",
                "Rincez les emballages avant de les jeter.",
                "Trier ses déchets à la maison prend une minute."),
        spanish=("Reciclar ahorra materias primas y energía.",
                 "Reduce los residuos en los vertederos.",
                 "El aluminio reciclado gasta mucha menos energía que el nuevo.",
                 "Enjuaga los envases antes de tirarlos.",
                 "Separar los residuos en casa lleva solo un minuto."),
    ),
    Topic(
        "Describe a healthy breakfast.",
        ("Oats with fruit give you lasting energy.",
         "Eggs add protein to keep you full.",
         "Whole grain toast is better than white bread.",
         "A glass of water wakes up your body.",
         "Skip sugary cereals and pastries."),
        french=("Les flocons d'avoine avec des fruits donnent une énergie durable.",
                "Les œufs apportent des protéines qui rassasient.",
                "Le pain complet est meilleur que le pain blanc.",
                "Un verre d'eau réveille votre corps.",
                "Évitez les céréales sucrées et les viennoiseries."),
        spanish=("La avena con fruta te da energía duradera.",
                 "Los huevos aportan proteína para saciarte.",
                 "El pan integral es mejor que el pan blanco.",
                 "Un vaso de agua despierta tu cuerpo.",
                 "Evita los cereales azucarados y la bollería."),
    ),
    Topic(
        "Give tips for stretching safely.",
        ("Warm up with light movement before you stretch.",
         "Hold each stretch for about thirty seconds.",
         "Breathe slowly and never bounce.",
         "Stop if you feel sharp pain.",
         "Stretch both sides of the body equally."),
        french=("Échauffez-vous avec des mouvements légers avant de vous étirer.",
                "Tenez chaque étirement environ trente secondes.",
                "Respirez lentement et ne faites jamais de rebonds.",
                "Arrêtez si vous ressentez une douleur vive.",
                "Étirez les deux côtés du corps de façon égale."),
        spanish=("Calienta con movimientos suaves antes de estirar.",
                 "Mantén cada estiramiento unos treinta segundos.",
                 "Respira despacio y nunca hagas rebotes.",
                 "Para si sientes un dolor agudo.",
                 "Estira los dos lados del cuerpo por igual."),
    ),
    Topic(
        "Give tips for saving money.",
        ("Write down every expense for a month.",
         "Cook at home instead of eating out.",
         "Cancel subscriptions you no longer use.",
         "Set aside a fixed amount each payday.",
         "Wait a day before any big purchase."),
        french=("Notez chaque dépense pendant un mois.",
                "Cuisinez chez vous au lieu de manger dehors.",
                "Résiliez les abonnements que vous n'utilisez plus.",
                "Mettez de côté une somme fixe à chaque paie.",
                "Attendez un jour avant tout gros achat."),
        spanish=("Apunta cada gasto durante un mes.",
                 "Cocina en tu casa en vez de comer fuera.",
                 "Cancela las suscripciones que ya no usas.",
                 "Aparta una cantidad fija con cada sueldo.",
                 "Espera un día antes de una compra grande."),
    ),
    Topic(
        "Describe the benefits of visiting museums.",
        ("Museums bring history and art to life.",
         "A visit sparks curiosity in children and adults.",
         "Many museums are free on certain days.",
         "Audio guides explain the stories behind the objects.",
         "A quiet gallery is a calm escape from the city."),
        french=("Les musées donnent vie à l'histoire et à l'art.",
                "Une visite éveille la curiosité des enfants et des adultes.",
                "Beaucoup de musées sont gratuits certains jours.",
                "Les audioguides racontent l'histoire des objets.",
                "Une galerie calme est une pause loin de la ville."),
        spanish=("Los museos dan vida a la historia y al arte.",
                 "Una visita despierta la curiosidad de niños y adultos.",
                 "Muchos museos son gratis algunos días.",
                 "Las audioguías cuentan la historia de los objetos.",
                 "Una galería tranquila es un respiro de la ciudad."),
    ),
    Topic(
        "Explain the advantages of travelling by train.",
        ("Trains let you read or work during the trip.",
         "They produce less carbon than cars and planes.",
         "Stations are usually in the city centre.",
         "There is room to stretch your legs.",
         "You can watch the landscape roll past."),
        french=("Le train permet de lire ou de travailler pendant le trajet.",
                "Il émet moins de carbone que la voiture ou l'avion.",
                "Les gares sont souvent au centre-ville.",
                "Il y a de la place pour étendre les jambes.",
                "Vous pouvez regarder le paysage défiler."),
        spanish=("El tren te deja leer o trabajar durante el viaje.",
                 "Emite menos carbono que el coche o el avión.",
                 "Las estaciones suelen estar en el centro.",
                 "Hay espacio para estirar las piernas.",
                 "Puedes ver pasar el paisaje."),
    ),
    Topic(
        "Describe the benefits of swimming.",
        ("Swimming works almost every muscle in your body.",
         "The water supports your weight and protects your joints.",
         "It builds stamina without heavy impact.",
         "Swimming is a useful skill for safety.",
         "A cool pool is refreshing in the summer."),
        french=("La natation fait travailler presque tous vos muscles.",
                "L'eau porte votre poids et protège vos articulations.",
                "Elle développe l'endurance sans chocs violents.",
                "Savoir nager est utile pour la sécurité.",
                "Une piscine fraîche fait du bien en été."),
        spanish=("La natación trabaja casi todos tus músculos.",
                 "El agua sostiene tu peso y protege tus articulaciones.",
                 "Desarrolla resistencia sin impactos fuertes.",
                 "Nadar es una habilidad útil para tu seguridad.",
                 "Una piscina fresca es agradable en verano."),
    ),
    Topic(
        "Give tips for making good tea.",
        ("Use freshly boiled water for black tea.",
         "Green tea prefers water that is a little cooler.",
         "Steep the leaves for three to five minutes.",
         "Warm the pot first to keep the heat.",
         "Add milk or lemon to suit your taste."),
        french=("Utilisez de l'eau juste bouillie pour le thé noir.",
                "Le thé vert préfère une eau un peu moins chaude.",
                "Laissez infuser les feuilles trois à cinq minutes.",
                "Chauffez d'abord la théière pour garder la chaleur.",
                "Ajoutez du lait ou du citron selon votre goût."),
        spanish=("Usa agua recién hervida para el té negro.",
                 "El té verde prefiere agua un poco menos caliente.",
                 "Deja reposar las hojas de tres a cinco minutos.",
                 "Calienta primero la tetera para mantener el calor.",
                 "Añade leche o limón a tu gusto."),
    ),
    Topic("Give tips for a successful job interview.",
          ("Research the company before the interview.",
           "Arrive ten minutes early and dressed neatly.",
           "Prepare short stories that show your skills.",
           "Ask the interviewer a thoughtful question.",
           "Send a brief thank-you note the same day.")),
    Topic("Explain how to care for a houseplant.",
          ("Water the plant when the top soil feels dry.",
           "Place the pot in bright, indirect light.",
           "Make sure the pot has drainage holes.",
           "Wipe dust off the leaves every few weeks.",
           "Feed it lightly during spring and summer.")),
    Topic("Describe the benefits of meditation.",
          ("Meditation calms the mind and lowers stress.",
           "Just ten minutes a day can make a difference.",
           "It improves focus and emotional balance.",
           "You only need a quiet place to sit.",
           "Focusing on your breath is an easy way to start.")),
    Topic("Give tips for studying for an exam.",
          ("Start revising weeks before the exam.",
           "Break the material into small chunks.",
           "Test yourself with questions instead of rereading.",
           "Take short breaks to stay fresh.",
           "Sleep well the night before the test.")),
    Topic("Explain why regular exercise is important.",
          ("Exercise strengthens your heart and lungs.",
           "It helps you keep a healthy weight.",
           "Active people tend to sleep better.",
           "Movement releases chemicals that lift your mood.",
           "Strong muscles protect your joints as you age.")),
    Topic("Give tips for keeping a tidy home.",
          ("Put things back as soon as you use them.",
           "Spend ten minutes tidying every evening.",
           "Give away items you no longer need.",
           "Keep a basket for clutter in each room.",
           "Wash the dishes right after each meal.")),
    Topic("Describe the benefits of owning a dog.",
          ("Dogs get you walking every day.",
           "A dog is a loyal and cheerful companion.",
           "Caring for a pet teaches children responsibility.",
           "Dogs can lower stress and loneliness.",
           "Walking a dog is a great way to meet neighbours.")),
    Topic("Give tips for a long car journey.",
          ("Check the tyres and oil before you leave.",
           "Take a break every two hours.",
           "Pack water and snacks for the trip.",
           "Download music and maps in advance.",
           "Share the driving if you can.")),
    Topic("Explain how to make a good first impression.",
          ("Smile and make eye contact.",
           "Offer a friendly handshake when you meet.",
           "Remember the other person's name and use it.",
           "Listen more than you talk.",
           "Dress neatly for the occasion.")),
    Topic("Describe the benefits of learning to play music.",
          ("Playing an instrument sharpens your memory.",
           "Practice teaches patience and discipline.",
           "Music is a wonderful way to express feelings.",
           "Playing with a band builds teamwork.",
           "Even simple songs bring a sense of achievement.")),
    Topic("Give tips for staying focused while working from home.",
          ("Set up a dedicated desk away from the bed.",
           "Keep to regular working hours each day.",
           "Turn off your phone notifications during deep work.",
           "Take a short walk to clear your head at lunch.",
           "Plan the three most important tasks each morning.")),
    Topic("Explain the benefits of eating vegetables.",
          ("Vegetables are rich in vitamins and fibre.",
           "They help you feel full with few calories.",
           "Fibre keeps your digestion regular.",
           "Colourful plates give a wide mix of nutrients.",
           "Roasting brings out the sweetness of vegetables.")),
    Topic("Give tips for public speaking.",
          ("Rehearse your talk out loud several times.",
           "Know your opening lines by heart.",
           "Pause for a moment instead of saying um.",
           "Look at different people in the audience.",
           "Slow down when you feel nervous.")),
    Topic("Describe the benefits of volunteering.",
          ("Volunteering helps people in your community.",
           "You learn new skills and meet new friends.",
           "Giving time can boost your happiness.",
           "It looks good on a CV.",
           "Even one hour a month makes a difference.")),
    Topic("Give tips for writing a clear email.",
          ("Use a subject line that states the point.",
           "Put the main request in the first sentence.",
           "Keep paragraphs short and simple.",
           "Check spelling before you press send.",
           "End with a clear next step.")),
    Topic("Explain how to stay safe in the sun.",
          ("Apply sunscreen twenty minutes before going out.",
           "Wear a hat and sunglasses.",
           "Stay in the shade around midday.",
           "Drink plenty of water on hot days.",
           "Reapply sunscreen after swimming.")),
    Topic("Describe the benefits of camping.",
          ("Camping lets you sleep under the stars.",
           "Time in nature lowers your stress.",
           "You learn to cook and live simply.",
           "Without signal, phones matter less at the campfire.",
           "It is a cheap holiday for families.")),
    Topic("Give tips for running your first five kilometres.",
          ("Start with a mix of running and walking.",
           "Increase your distance slowly each week.",
           "Wear comfortable shoes that fit well.",
           "Run at a pace where you can still talk.",
           "Rest days let your muscles recover.")),
    Topic("Explain the benefits of family meals.",
          ("Shared meals give families time to talk.",
           "Children who eat with their parents try more foods.",
           "Home cooking is usually healthier than takeaway.",
           "Setting the table together teaches teamwork.",
           "Phones off at dinner makes conversation easier.")),
    Topic("Give tips for reducing food waste.",
          ("Plan your meals before you shop.",
           "Store leftovers in clear boxes in the fridge.",
           "Freeze bread and fruit before they spoil.",
           "Use the oldest items in the fridge first.",
           "Turn vegetable scraps into soup.")),
    Topic("Describe the benefits of learning to code.",
          ("Coding teaches you to solve problems step by step.",
           "Programmers are in demand across the economy.",
           "You can automate boring tasks.",
           "Building an app is creative and satisfying.",
           "Many free courses help beginners start.")),
    Topic("Give tips for taking better photos.",
          ("Use natural light from a window.",
           "Follow the rule of thirds.",
           "Keep the horizon straight.",
           "Get closer to your subject.",
           "Clean the lens before shooting.")),
    Topic("Explain how to prepare for a hike.",
          ("Check the weather forecast before you leave.",
           "Wear sturdy boots with good grip.",
           "Pack water, snacks and a map.",
           "Tell someone your route and return time.",
           "Start early to avoid the afternoon heat.")),
    Topic("Describe the benefits of a morning routine.",
          ("A routine removes decisions from your morning.",
           "Waking at the same time steadies your body clock.",
           "A short stretch wakes up your muscles.",
           "Planning the day early lowers stress.",
           "A calm start makes the whole day smoother.")),
    Topic("Give tips for making friends in a new city.",
          ("Join a club built around a hobby you enjoy.",
           "Say yes to invitations, even the small ones.",
           "Talk to your neighbours and colleagues.",
           "Volunteering is a great way to meet people.",
           "Be patient, since friendships take time to grow.")),
    Topic("Explain why handwashing matters.",
          ("Clean hands stop germs from spreading.",
           "Wash for at least twenty seconds with soap.",
           "Always wash before eating and after the toilet.",
           "Handwashing prevents many colds and stomach bugs.",
           "Dry your hands well with a clean towel.")),
    Topic("Give tips for planning a birthday party.",
          ("Set a budget and a guest list first.",
           "Pick a theme that the guest of honour loves.",
           "Send the invitations two weeks ahead.",
           "Order the cake a few days early.",
           "Plan one simple game to break the ice.")),
    Topic("Describe the benefits of yoga.",
          ("Yoga improves flexibility and balance.",
           "Slow breathing calms the nervous system.",
           "Many poses strengthen the core.",
           "Classes suit every age and fitness level.",
           "A short session can ease back pain.")),
    Topic("Give tips for organising your week.",
          ("List your tasks on Sunday evening.",
           "Block time in your calendar for deep work.",
           "Group small errands into one trip.",
           "Leave gaps for the unexpected.",
           "Review the week on Friday afternoon.")),
    Topic("Explain why eating less sugar is healthy.",
          ("Less sugar protects your teeth.",
           "It keeps your energy steady through the day.",
           "Cutting sugar lowers the risk of diabetes.",
           "Fruit is a sweet snack with fibre.",
           "Check the labels, since sugar hides in sauces.")),
    Topic("Give tips for staying warm in winter.",
          ("Wear several thin layers under your coat.",
           "Keep your head and hands covered.",
           "Hot soup warms you from the inside.",
           "Close the curtains at night to hold heat.",
           "Move around to keep your blood flowing.")),
    Topic("Describe the benefits of keeping a journal.",
          ("Writing down thoughts clears your mind.",
           "A journal helps you notice patterns in your mood.",
           "Recording goals makes them feel real.",
           "Old entries show how much you have grown.",
           "Five minutes each night is enough.")),
    Topic("Give tips for packing a suitcase.",
          ("Roll your clothes to save space.",
           "Put heavy items near the wheels.",
           "Pack a change of clothes in your hand luggage.",
           "Use small bags for cables and toiletries.",
           "Leave some room for things you buy.")),
    Topic("Explain how to brew good coffee at home.",
          ("Buy whole beans and grind them fresh.",
           "Use water that is just below boiling.",
           "Weigh the coffee for consistent strength.",
           "Clean the machine every week.",
           "Store beans in an airtight jar away from light.")),
    Topic("Give tips for teaching a child to ride a bike.",
          ("Start on a balance bike or remove the pedals.",
           "Practise on a smooth path with no traffic.",
           "Hold the shoulders, not the saddle.",
           "Always use a helmet that fits.",
           "Praise every small bit of progress.")),
    Topic("Describe the benefits of spending time outdoors.",
          ("Sunlight helps your body make vitamin D.",
           "Green spaces lower stress and tension.",
           "Fresh air can improve your sleep.",
           "Outdoor play helps children build strong bones.",
           "Nature walks refresh your attention.")),
    Topic("Give tips for writing a short story.",
          ("Start as close to the action as possible.",
           "Give your main character a clear goal.",
           "Show feelings through actions and dialogue.",
           "Cut every word that does not help.",
           "Read the draft aloud to catch clumsy lines.")),
    Topic("Explain how to keep your phone battery healthy.",
          ("Avoid letting the battery drop to zero.",
           "Keep the phone out of hot cars.",
           "Lower the screen brightness indoors.",
           "Unplug it once it is fully charged.",
           "Close apps that you no longer need.")),
    Topic("Describe the benefits of learning history.",
          ("History explains how the present came to be.",
           "It helps you judge news with context.",
           "The mistakes of the past teach lessons for today.",
           "Stories of ordinary people bring it to life.",
           "Museums and old buildings become more interesting.")),
    Topic("Give tips for a healthy lunch at work.",
          ("Bring leftovers from last night's dinner.",
           "Add a portion of vegetables to every lunch.",
           "Pick whole grains for steady energy.",
           "Eat away from your desk if you can.",
           "Keep nuts and fruit for snacks.")),
    Topic("Explain why good posture matters.",
          ("Good posture reduces back and neck pain.",
           "It helps your lungs fill with air.",
           "Standing tall makes you look confident.",
           "Set your screen at eye level.",
           "Get up and move every half hour.")),
    Topic("Give tips for shopping at a farmers market.",
          ("Arrive early for the best choice.",
           "Bring your own bags and some cash.",
           "Ask the growers how to cook their produce.",
           "Buy what is in season for the best flavour.",
           "Walk the whole market before you buy.")),
    Topic("Describe the benefits of board games.",
          ("Board games bring friends and family together.",
           "They teach planning and patience.",
           "Playing without screens is a nice change.",
           "Strategy games sharpen your thinking.",
           "Children learn to win and lose gracefully.")),
    Topic("Give tips for managing stress.",
          ("Take slow, deep breaths when you feel tense.",
           "Break big problems into small steps.",
           "Talk to a friend about your worries.",
           "Regular exercise burns off some of the tension.",
           "Limit caffeine and get enough sleep.")),
    Topic("Explain how to look after your teeth.",
          ("Brush twice a day for two minutes.",
           "Floss once a day to clean between teeth.",
           "Cut down on sugary drinks and snacks.",
           "Visit the dentist every six months.",
           "Replace your toothbrush every three months.")),
    Topic("Describe the benefits of bird watching.",
          ("Bird watching gets you out into nature.",
           "It trains your patience and attention.",
           "You only need binoculars and a notebook.",
           "Spotting a rare bird is a real thrill.",
           "Many parks have hides for quiet viewing.")),
    Topic("Give tips for saving energy at home.",
          ("Switch off lights when you leave a room.",
           "Turn the heating down by one degree.",
           "Wash your clothes at a lower temperature.",
           "Unplug chargers that are not in use.",
           "Seal draughts around doors and windows.")),
    Topic("Explain how to plan a picnic.",
          ("Pick a shady spot with a view.",
           "Pack food that travels well, like sandwiches.",
           "Bring a blanket and a bag for rubbish.",
           "Keep the drinks cool in an insulated bag.",
           "Check the weather the day before.")),
    Topic("Give tips for caring for a cat.",
          ("Give your cat fresh water every day.",
           "Clean the litter tray daily.",
           "Provide a scratching post to save your sofa.",
           "Play with your cat to keep it active.",
           "Take it to the vet once a year.")),
    Topic("Explain the benefits of taking the stairs.",
          ("Taking the stairs strengthens your legs.",
           "It raises your heart rate in seconds.",
           "Stairs are free exercise built into your day.",
           "A few flights each day add up over time.",
           "It is often faster than waiting for the lift.")),
    Topic("Give tips for remembering names.",
          ("Repeat the name as soon as you hear it.",
           "Link the name to a picture in your mind.",
           "Use the name once more before you say goodbye.",
           "Write new names down after a meeting.",
           "Ask again politely if you forget.")),
    Topic("Describe the benefits of learning first aid.",
          ("First aid skills can save a life.",
           "You stay calm because you know what to do.",
           "Simple steps can stop bleeding quickly.",
           "Most courses take only one day to complete.",
           "Knowing first aid helps at home and at work.")),
]

if __name__ == "__main__":
    sys.exit(main())
