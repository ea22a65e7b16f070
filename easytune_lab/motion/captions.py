"""Captions of procedural motions in the HumanML3D text format.

A motion's texts file holds one caption per line, ``caption#tokens#from#to`` (HumanML3D ``texts/<id>.txt``):
``tokens`` are the caption's words as ``lemma/POS`` (lower case, punctuation dropped, spaCy's coarse
universal tags as HumanML3D used them: possessives such as *his*/*their* are DET, *someone* is PRON, ...),
and ``from``/``to`` are ``0.0`` when the caption describes the whole motion.

Captions come from templates: each action family has several paraphrases of its clause (which name its
attributes: side, direction, speed, angle, mode), and a sequence of 1-3 clauses is joined by one of several
connective patterns ("..., then ...", "... and then ...", "first ..., then ..., and finally ...").
All words come from the controlled vocabulary :data:`LEXICON`, which gives each its lemma and POS tag.
"""

from __future__ import annotations

import re

import numpy as np

SUBJECTS = ("a person", "a man", "a woman", "someone", "the person", "a figure", "a human")
_PRONOUN = {"a man": "he", "a woman": "she"}


def _clause_variants(family: str, a: dict) -> list[str]:
    """Paraphrases of one action as a third-person verb phrase."""
    side = a.get("side")
    if family == "walk":
        fwd = a["direction"] == "forward"
        verbs = ["walks forward", "walks straight ahead", "walks ahead", "moves forward"] if fwd else \
                ["walks backward", "walks backwards", "steps backward", "moves backwards"]
        speed = a["speed"]
        out = []
        for v in verbs:
            if speed == "slow":
                out += [f"{v} slowly", f"slowly {v}", f"{v} at a slow pace"]
            elif speed == "fast":
                out += [f"{v} quickly", f"quickly {v}", f"{v} at a fast pace", f"briskly {v}"]
            else:
                out += [v, f"{v} at a normal pace", f"{v} at a steady pace"]
        if fwd and speed == "slow":
            out += ["strolls forward", "takes slow steps forward"]
        if fwd and speed == "fast":
            out += ["hurries forward", "walks fast ahead"]
        if not fwd and speed == "slow":
            out += ["slowly backs up"]
        return out
    if family == "jog":
        if a["direction"] == "forward":
            return ["jogs forward", "jogs ahead", "jogs straight forward", "does a light jog forward"]
        return ["jogs backward", "jogs backwards", "jogs in reverse", "does a light jog backwards"]
    if family == "run":
        return ["runs forward", "runs ahead", "sprints forward", "runs fast", "dashes forward", "runs straight ahead"]
    if family == "crouch":
        return ["walks forward while crouching", "sneaks forward", "crouches and walks forward",
                "creeps forward in a crouch", "moves forward crouched down"]
    if family == "sidestep":
        return [f"steps sideways to the {side}", f"sidesteps to the {side}", f"shuffles to the {side}",
                f"moves sideways to the {side}", f"side steps to the {side}"]
    if family == "turn":
        if a["angle"] == "90":
            return [f"turns {side}", f"turns to the {side}", f"turns ninety degrees to the {side}",
                    f"makes a {side} turn", f"rotates to the {side}"]
        return [f"turns around to the {side}", f"turns all the way around to the {side}",
                f"does a half turn to the {side}", f"turns one hundred and eighty degrees to the {side}",
                f"turns back around to the {side}"]
    if family == "spin":
        return [f"spins around to the {side}", f"spins in a full circle to the {side}",
                f"does a full spin to the {side}", f"twirls around to the {side}", f"spins a full turn to the {side}"]
    if family == "jump":
        if a["mode"] == "in_place":
            return ["jumps in place", "jumps up", "hops in place", "jumps straight up", "jumps up and down"]
        return ["jumps forward", "leaps forward", "jumps ahead", "does a jump forward", "hops forward"]
    if family == "jumping_jacks":
        return ["does jumping jacks", "performs jumping jacks", "does a few jumping jacks", "does star jumps"]
    if family == "wave":
        return [f"waves with the {side} hand", f"waves the {side} hand", f"raises the {side} hand and waves",
                f"waves hello with the {side} hand", f"waves their {side} hand"]
    if family == "raise_arms":
        if side == "both":
            return ["raises both arms", "lifts both arms up", "puts both hands up", "raises both hands over the head",
                    "holds both arms up"]
        return [f"raises the {side} arm", f"lifts the {side} arm up", f"puts the {side} arm up",
                f"raises the {side} hand above the head", f"holds their {side} arm up"]
    if family == "punch":
        return [f"punches with the {side} hand", f"throws punches with the {side} fist",
                f"punches forward with the {side} arm", f"boxes with the {side} hand", f"jabs with the {side} fist"]
    if family == "clap":
        return ["claps", "claps the hands", "claps a few times", "claps hands in front of the chest", "applauds"]
    if family == "kick":
        return [f"kicks with the {side} leg", f"kicks the {side} foot forward", f"does a front kick with the {side} leg",
                f"kicks forward with the {side} foot", f"kicks with their {side} leg"]
    if family == "squat":
        return ["squats", "squats down and stands up", "does squats", "does a squat", "bends the knees and squats down"]
    if family == "bow":
        return ["bows", "takes a bow", "bows forward", "bends forward at the waist and straightens up", "bows down"]
    if family == "stand":
        return ["stands still", "stands in place", "stays still", "stands and waits", "waits in place"]
    raise KeyError(f"unknown action family {family!r}")


_PATTERNS = {
    1: ("{S} {0}.", "{S} {0}.", "{S} {0}."),
    2: ("{S} {0}, then {1}.", "{S} {0} and then {1}.", "{S} {0} and {1}.", "first, {s} {0}, then {1}.",
        "{S} {0}. after that, {p} {1}."),
    3: ("{S} {0}, then {1}, and finally {2}.", "{S} {0}, {1}, and then {2}.", "first {s} {0}, then {1} and then {2}.",
        "{S} {0}, then {1}. finally, {p} {2}."),
}


def caption_sentence(actions: list[dict], rng: np.random.Generator) -> str:
    """One caption of an action sequence (each action: ``{"family": .., "attributes": {..}}``)."""
    subject = SUBJECTS[int(rng.integers(len(SUBJECTS)))]
    clauses = []
    for act in actions:
        variants = _clause_variants(act["family"], act["attributes"])
        clauses.append(variants[int(rng.integers(len(variants)))])
    patterns = _PATTERNS[len(actions)]
    pattern = patterns[int(rng.integers(len(patterns)))]
    return pattern.format(*clauses, S=subject, s=subject, p=_PRONOUN.get(subject, "the person"))


def make_captions(actions: list[dict], rng: np.random.Generator, count: int = 3) -> list[str]:
    """``count`` distinct paraphrases of an action sequence (fewer only if the templates run out)."""
    out: list[str] = []
    for _ in range(20 * count):
        c = caption_sentence(actions, rng)
        if c not in out:
            out.append(c)
        if len(out) == count:
            break
    return out


# word -> (lemma, coarse POS) for every word the templates use
LEXICON: dict[str, tuple[str, str]] = {
    # determiners, pronouns, particles, conjunctions, adpositions, numerals
    "a": ("a", "DET"), "the": ("the", "DET"), "both": ("both", "DET"), "their": ("their", "DET"),
    "he": ("he", "PRON"), "she": ("she", "PRON"), "someone": ("someone", "PRON"),
    "and": ("and", "CCONJ"), "then": ("then", "ADV"), "first": ("first", "ADV"), "finally": ("finally", "ADV"),
    "after": ("after", "ADP"), "that": ("that", "DET"), "to": ("to", "ADP"), "with": ("with", "ADP"),
    "at": ("at", "ADP"), "in": ("in", "ADP"), "of": ("of", "ADP"), "over": ("over", "ADP"), "above": ("above", "ADP"),
    "while": ("while", "SCONJ"), "ninety": ("ninety", "NUM"), "one": ("one", "NUM"), "hundred": ("hundred", "NUM"),
    "eighty": ("eighty", "NUM"), "few": ("few", "ADJ"),
    # nouns
    "person": ("person", "NOUN"), "man": ("man", "NOUN"), "woman": ("woman", "NOUN"), "figure": ("figure", "NOUN"),
    "human": ("human", "NOUN"), "pace": ("pace", "NOUN"), "degrees": ("degree", "NOUN"), "turn": ("turn", "NOUN"),
    "circle": ("circle", "NOUN"), "spin": ("spin", "NOUN"), "jump": ("jump", "NOUN"), "jacks": ("jack", "NOUN"),
    "jumps": ("jump", "NOUN"), "hand": ("hand", "NOUN"), "hands": ("hand", "NOUN"), "arm": ("arm", "NOUN"),
    "arms": ("arm", "NOUN"), "head": ("head", "NOUN"), "fist": ("fist", "NOUN"), "leg": ("leg", "NOUN"),
    "foot": ("foot", "NOUN"), "kick": ("kick", "NOUN"), "knees": ("knee", "NOUN"), "squat": ("squat", "NOUN"),
    "squats": ("squat", "NOUN"), "bow": ("bow", "NOUN"), "waist": ("waist", "NOUN"), "chest": ("chest", "NOUN"),
    "front": ("front", "NOUN"), "times": ("time", "NOUN"), "jog": ("jog", "NOUN"), "crouch": ("crouch", "NOUN"),
    "place": ("place", "NOUN"), "reverse": ("reverse", "NOUN"),
    # adjectives
    "slow": ("slow", "ADJ"), "fast": ("fast", "ADJ"), "normal": ("normal", "ADJ"), "steady": ("steady", "ADJ"),
    "left": ("left", "ADJ"), "right": ("right", "ADJ"), "full": ("full", "ADJ"), "half": ("half", "ADJ"),
    "light": ("light", "ADJ"), "star": ("star", "NOUN"), "jumping": ("jumping", "NOUN"),
    # adverbs
    "forward": ("forward", "ADV"), "backward": ("backward", "ADV"), "backwards": ("backwards", "ADV"),
    "ahead": ("ahead", "ADV"), "straight": ("straight", "ADV"), "slowly": ("slowly", "ADV"),
    "quickly": ("quickly", "ADV"), "briskly": ("briskly", "ADV"), "sideways": ("sideways", "ADV"),
    "around": ("around", "ADV"), "up": ("up", "ADV"), "down": ("down", "ADV"), "still": ("still", "ADV"),
    "all": ("all", "ADV"), "way": ("way", "NOUN"), "back": ("back", "ADV"), "hello": ("hello", "INTJ"),
    # verbs (third person singular -> lemma)
    "walks": ("walk", "VERB"), "moves": ("move", "VERB"), "steps": ("step", "VERB"), "strolls": ("stroll", "VERB"),
    "takes": ("take", "VERB"), "hurries": ("hurry", "VERB"), "backs": ("back", "VERB"), "jogs": ("jog", "VERB"),
    "does": ("do", "VERB"), "runs": ("run", "VERB"), "sprints": ("sprint", "VERB"), "dashes": ("dash", "VERB"),
    "crouching": ("crouch", "VERB"), "sneaks": ("sneak", "VERB"), "crouches": ("crouch", "VERB"),
    "creeps": ("creep", "VERB"), "crouched": ("crouch", "VERB"), "sidesteps": ("sidestep", "VERB"),
    "shuffles": ("shuffle", "VERB"), "side": ("side", "NOUN"), "turns": ("turn", "VERB"), "makes": ("make", "VERB"),
    "rotates": ("rotate", "VERB"), "spins": ("spin", "VERB"), "twirls": ("twirl", "VERB"), "jumps_v": ("jump", "VERB"),
    "leaps": ("leap", "VERB"), "hops": ("hop", "VERB"), "performs": ("perform", "VERB"), "waves": ("wave", "VERB"),
    "raises": ("raise", "VERB"), "lifts": ("lift", "VERB"), "puts": ("put", "VERB"), "holds": ("hold", "VERB"),
    "punches": ("punch", "VERB"), "throws": ("throw", "VERB"), "boxes": ("box", "VERB"), "jabs": ("jab", "VERB"),
    "claps": ("clap", "VERB"), "applauds": ("applaud", "VERB"), "kicks": ("kick", "VERB"), "squats_v": ("squat", "VERB"),
    "stands": ("stand", "VERB"), "bends": ("bend", "VERB"), "bows": ("bow", "VERB"), "straightens": ("straighten", "VERB"),
    "stays": ("stay", "VERB"), "waits": ("wait", "VERB"),
}

# Words whose part of speech depends on their position: a verb right after the subject or a connective.
_VERB_FORMS = {"jumps": "jumps_v", "squats": "squats_v"}
_VERB_CONTEXT = {"person", "man", "woman", "someone", "figure", "human", "he", "she", "then", "and", "first", "finally"}


def tokenize(caption: str) -> list[str]:
    """Lower-case words of a caption, punctuation dropped."""
    return re.findall(r"[a-z]+", caption.lower())


def pos_tokens(caption: str) -> str:
    """The HumanML3D token string ``lemma/POS lemma/POS ...`` of a caption (every word must be in
    :data:`LEXICON`; a KeyError names a missing one)."""
    words = tokenize(caption)
    out = []
    prev = ""
    for w in words:
        key = _VERB_FORMS[w] if w in _VERB_FORMS and prev in _VERB_CONTEXT else w
        lemma, pos = LEXICON[key]
        if w in ("left", "right") and prev == "turns":  # "turns left": an adverb, not the adjective of "left hand"
            pos = "ADV"
        out.append(f"{lemma}/{pos}")
        prev = w
    return " ".join(out)


def texts_file(captions: list[str]) -> str:
    """Contents of a HumanML3D ``texts/<id>.txt`` file for whole-motion captions."""
    return "".join(f"{c}#{pos_tokens(c)}#0.0#0.0\n" for c in captions)
