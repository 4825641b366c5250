"""The latent world: facts, the closed lexicon that names them, posts and reference summaries.

A post is generated from latent *facts*, one per slot:

=========  ===================================================  =========================
slot       meaning                                               always present?
=========  ===================================================  =========================
who        the other person (``roommate``, ``boss``, ...)         yes
event      what happened; one of the topics (``car``, ``rent``)   yes
where      where it happened (``airport``, ``gym``, ...)          with probability 0.7
when       when it happened (``friday``, ``christmas``, ...)      with probability 0.7
feeling    how the poster feels (``furious``, ``guilty``, ...)    yes
ask        what the poster asks (``confront``, ``forgive``, ...)  yes
=========  ===================================================  =========================

Every fact is named in text by exactly one **key word** from a closed lexicon (:data:`LEXICON`), and
the templates are written so that a post contains the key words of its own facts and no other lexicon
word. So the facts of any text can be read back from the text alone (:func:`lexicon_words`), which is
what lets the gold reward score arbitrary text, and what a small transformer can learn: whether a
distinctive word of the summary also occurs in the post. Key words are single, frequent, distinctive
words, so a byte-level BPE of 2048 tokens learns most of them as one token.

Posts are readable English of 60-110 words (mostly 60-90): an optional opener, the event told in one of
several phrasings, the setting, one to three filler sentences (no lexicon words), a feeling and a
question, each with many phrasings. A reference summary states every key fact in 8-20 words.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

PROMPT_TEMPLATE = "{post}\nTL;DR:"
"""A prompt is the post followed by ``"\\nTL;DR:"``; a completion is ``" " + summary``."""

SLOTS = ("who", "event", "where", "when", "feeling", "ask")
REFERENCE_MAX_WORDS = 20
REFERENCE_MIN_WORDS = 8
POST_MIN_WORDS = 60
POST_MAX_WORDS = 110


def format_prompt(post: str) -> str:
    """The prompt shown to every model: ``f"{post}\\nTL;DR:"``."""
    return PROMPT_TEMPLATE.format(post=post)


def post_from_prompt(prompt: str) -> str:
    """Inverse of :func:`format_prompt` (the post a prompt was made from)."""
    suffix = "\nTL;DR:"
    if not prompt.endswith(suffix):
        raise ValueError(f"not a testbed prompt (does not end with {suffix!r}): {prompt[-40:]!r}")
    return prompt[: -len(suffix)]


def format_completion(summary: str) -> str:
    """A completion is the summary with one leading space."""
    return " " + summary.strip()


# ------------------------------------------------------------------------------------------- the lexicon

# who -> pronoun set ("m", "f", or "x" = either, drawn per post)
WHO: dict[str, str] = {
    "boyfriend": "m", "husband": "m", "brother": "m", "dad": "m", "uncle": "m", "grandpa": "m",
    "stepdad": "m", "son": "m", "nephew": "m",
    "girlfriend": "f", "wife": "f", "sister": "f", "mom": "f", "aunt": "f", "grandma": "f",
    "stepmom": "f", "daughter": "f", "niece": "f",
    "roommate": "x", "landlord": "x", "neighbor": "x", "boss": "x", "coworker": "x", "manager": "x",
    "friend": "x", "cousin": "x", "teacher": "x", "professor": "x", "coach": "x", "classmate": "x",
}  # fmt: skip

WHO_GROUPS: dict[str, tuple[str, ...]] = {
    "partner": ("boyfriend", "girlfriend", "husband", "wife"),
    "family": ("brother", "sister", "dad", "mom", "uncle", "aunt", "grandpa", "grandma", "stepdad",
               "stepmom", "son", "daughter", "nephew", "niece", "cousin"),
    "home": ("roommate", "landlord", "neighbor"),
    "work": ("boss", "coworker", "manager"),
    "school": ("teacher", "professor", "coach", "classmate"),
    "social": ("friend", "cousin", "roommate", "classmate"),
}  # fmt: skip

WHERE: tuple[str, ...] = (
    "kitchen", "office", "gym", "restaurant", "airport", "church", "mall", "beach", "hospital", "bar",
    "park", "library", "hotel", "cafe", "garage", "campus",
)  # fmt: skip

# when -> phrasings in a post or summary
WHEN: dict[str, tuple[str, ...]] = {
    "monday": ("on Monday", "last Monday"),
    "tuesday": ("on Tuesday", "last Tuesday"),
    "wednesday": ("on Wednesday", "last Wednesday"),
    "thursday": ("on Thursday", "last Thursday"),
    "friday": ("on Friday", "last Friday"),
    "saturday": ("on Saturday", "last Saturday"),
    "sunday": ("on Sunday", "last Sunday"),
    "christmas": ("at Christmas", "over Christmas"),
    "thanksgiving": ("at Thanksgiving", "on Thanksgiving"),
    "halloween": ("on Halloween", "at Halloween"),
    "easter": ("at Easter", "over Easter"),
    "graduation": ("at my graduation", "right after my graduation"),
}

FEELING: tuple[str, ...] = (
    "angry", "hurt", "anxious", "confused", "jealous", "guilty", "betrayed", "embarrassed", "frustrated",
    "heartbroken", "furious", "lonely", "overwhelmed", "scared", "disappointed", "humiliated",
)  # fmt: skip

# ask -> verb phrases ({O} = object pronoun)
ASK: dict[str, tuple[str, ...]] = {
    "confront": ("confront {O}", "confront {O} about it"),
    "apologize": ("apologize to {O}", "apologize first"),
    "forgive": ("forgive {O}", "just forgive {O}"),
    "report": ("report {O}", "report {O} to someone"),
    "ignore": ("ignore {O}", "ignore it"),
    "complain": ("complain", "complain to someone"),
    "quit": ("quit", "quit over this"),
    "sue": ("sue {O}", "sue {O} in small claims"),
    "reconcile": ("reconcile with {O}", "try to reconcile", "reconcile"),
    "escalate": ("escalate this", "escalate it"),
    "compromise": ("compromise", "offer a compromise"),
    "retaliate": ("retaliate", "retaliate somehow"),
}


@dataclass(frozen=True)
class Topic:
    """What happened. ``key`` is the event's key word; each variant is (post sentence(s), summary
    predicates), with placeholders ``{W}``/``{Wc}`` (``my roommate``/``My roommate``), ``{S}``/``{Sc}``
    (he/He), ``{O}`` (him), ``{P}`` (his), ``{R}`` (himself)."""

    key: str
    groups: tuple[str, ...]
    variants: tuple[tuple[str, tuple[str, ...]], ...]


TOPICS: tuple[Topic, ...] = (
    Topic("car", ("family", "partner", "home", "social"), (
        ("{Wc} borrowed my car without asking and brought it back with a huge dent in the door.",
         ("dented my car", "borrowed my car and dented it")),
        ("A while ago {W} asked to use my car for a few errands. {Sc} returned it with an empty tank "
         "and a scratched bumper.", ("scratched my car", "borrowed my car and scratched it")),
        ("{Wc} crashed my car while I was away and acted like it was no big deal.",
         ("crashed my car", "wrecked my car and shrugged it off")),
    )),
    Topic("rent", ("home", "partner"), (
        ("{Wc} has not paid {P} half of the rent for two months now.",
         ("won't pay {P} half of the rent", "stopped paying rent")),
        ("Every month I end up covering the rent because {W} says {S} is short on cash.",
         ("never pays {P} share of the rent", "makes me cover the rent")),
        ("{Wc} suddenly wants to raise the rent by a lot with almost no notice.",
         ("wants to raise the rent", "is hiking the rent with no notice")),
    )),
    Topic("wedding", ("family", "social"), (
        ("{Wc} is getting married and told me I am not invited to the wedding.",
         ("didn't invite me to the wedding", "left me out of {P} wedding")),
        ("{Wc} uninvited me from the wedding just two weeks before the big day.",
         ("uninvited me from {P} wedding", "kicked me out of the wedding")),
        ("{Wc} expects me to pay for half of the wedding even though it is not mine.",
         ("wants me to pay for {P} wedding", "expects me to fund the wedding")),
    )),
    Topic("birthday", ("partner", "family", "social"), (
        ("{Wc} completely forgot my birthday and did not even text me.",
         ("forgot my birthday", "completely forgot my birthday")),
        ("{Wc} planned a trip for {R} on my birthday and left me home alone.",
         ("ditched me on my birthday", "went away on my birthday")),
        ("For my birthday, {W} gave me a card that was clearly written by someone else.",
         ("half-assed my birthday", "barely tried for my birthday")),
    )),
    Topic("laptop", ("home", "family", "school"), (
        ("{Wc} spilled coffee all over my laptop and refuses to pay for the repair.",
         ("ruined my laptop and won't pay", "spilled coffee on my laptop")),
        ("{Wc} used my laptop without asking and deleted a bunch of my files.",
         ("deleted files on my laptop", "messed up my laptop")),
        ("{Wc} dropped my laptop and now the screen is cracked.",
         ("broke my laptop", "cracked my laptop screen")),
    )),
    Topic("dog", ("home", "family", "partner"), (
        ("{Wc} left the gate open and my dog ran away for a whole day.",
         ("lost my dog", "let my dog run away")),
        ("{Wc} keeps feeding my dog table scraps even though it makes him sick.",
         ("keeps feeding my dog scraps", "makes my dog sick")),
        ("{Wc} says my dog has to go or {S} will not visit anymore.",
         ("wants my dog gone", "wants me to get rid of my dog", "gave me an ultimatum about my dog")),
    )),
    Topic("promotion", ("work",), (
        ("{Wc} gave the promotion I was promised to someone who started after me.",
         ("gave away my promotion", "gave my promotion to someone else", "passed me over for a promotion")),
        ("{Wc} told me I would get a promotion this year and then went back on it.",
         ("went back on my promotion", "broke a promise about my promotion")),
    )),
    Topic("vacation", ("work", "partner", "family"), (
        ("{Wc} cancelled our vacation at the very last minute without explaining why.",
         ("cancelled our vacation", "bailed on our vacation")),
        ("{Wc} keeps denying my vacation request even though I asked months ahead.",
         ("keeps denying my vacation", "won't approve my vacation")),
        ("{Wc} invited {R} along on my vacation and now expects me to pay for it.",
         ("crashed my vacation", "invited {R} on my vacation")),
    )),
    Topic("loan", ("family", "social", "partner"), (
        ("Last year I gave {W} a loan to cover some bills, and {S} still has not paid a cent back.",
         ("never repaid my loan", "still owes me for a loan")),
        ("{Wc} asked me for another loan even though the first one was never paid back.",
         ("wants another loan", "asked for a second loan")),
    )),
    Topic("party", ("home", "social", "family"), (
        ("{Wc} threw a loud party while I was asleep and did not tell me beforehand.",
         ("threw a party without asking", "had a loud party while I slept")),
        ("{Wc} held a surprise party for me and invited people I really cannot stand.",
         ("threw me an awful surprise party", "ruined my party")),
        ("{Wc} skipped my party and posted photos from somewhere else that night.",
         ("skipped my party", "blew off my party")),
    )),
    Topic("phone", ("partner", "family"), (
        ("{Wc} went through my phone while I was asleep and read all my messages.",
         ("went through my phone", "snooped on my phone")),
        ("{Wc} grabbed my phone during an argument and threw it across the room.",
         ("threw my phone", "smashed my phone in a fight")),
    )),
    Topic("secret", ("social", "family", "partner", "work"), (
        ("{Wc} told a bunch of people a secret I shared in complete confidence.",
         ("spilled my secret", "told everyone my secret")),
        ("{Wc} has been keeping a big secret from me for months and I only just found out.",
         ("kept a huge secret from me", "hid a secret for months")),
    )),
    Topic("credit", ("work", "school"), (
        ("{Wc} took credit for my project in front of the whole team.",
         ("took credit for my work", "stole credit for my project")),
        ("{Wc} presented my idea as {P} own and got all the credit for it.",
         ("got credit for my idea", "took the credit for my idea")),
    )),
    Topic("grade", ("school",), (
        ("{Wc} gave me a failing grade on an essay I worked really hard on.",
         ("gave me an unfair grade", "failed me with a bad grade")),
        ("{Wc} lowered my grade because I missed one class while I was sick.",
         ("lowered my grade unfairly", "cut my grade over one absence")),
    )),
    Topic("cheating", ("partner",), (
        ("I found out that {W} has been cheating on me with someone {S} met online.",
         ("has been cheating on me", "is cheating on me")),
        ("{Wc} keeps accusing me of cheating even though I have done nothing wrong.",
         ("keeps accusing me of cheating", "thinks I am cheating")),
    )),
    Topic("smoking", ("home", "family", "partner"), (
        ("{Wc} started smoking inside even though we agreed it would stay outside.",
         ("keeps smoking inside", "started smoking indoors")),
        ("{Wc} promised to stop smoking but I keep finding packs hidden around.",
         ("lied about quitting smoking", "is still smoking behind my back")),
    )),
    Topic("noise", ("home",), (
        ("{Wc} makes so much noise every night that I cannot sleep at all.",
         ("makes too much noise", "keeps me up with noise")),
        ("{Wc} blasts music and the noise goes on until three in the morning.",
         ("makes noise all night", "won't stop the noise")),
    )),
    Topic("deposit", ("home",), (
        ("{Wc} is refusing to give back my deposit even though I left the place spotless.",
         ("won't return my deposit", "kept my deposit")),
        ("{Wc} took money out of my deposit for damage that was already there.",
         ("took money from my deposit", "charged my deposit unfairly")),
    )),
    Topic("dishes", ("home", "partner", "family"), (
        ("{Wc} never does the dishes and leaves them piled up for days.",
         ("never does the dishes", "leaves the dishes piled up")),
        ("{Wc} yelled at me for leaving one mug out after I did {P} dishes all week.",
         ("yelled at me about the dishes", "blew up over the dishes")),
    )),
    Topic("gift", ("partner", "family", "social"), (
        ("{Wc} returned the gift I gave {O} and kept the money for {R}.",
         ("returned my gift for cash", "returned my gift")),
        ("{Wc} regifted something I made by hand, and I saw the gift at someone else's house.",
         ("regifted my handmade gift", "gave away my gift")),
    )),
    Topic("job", ("partner", "family", "social"), (
        ("{Wc} lost {P} job a month ago and has been pretending to go to work every day.",
         ("hid losing {P} job", "lied about losing {P} job")),
        ("{Wc} keeps telling me my job is pointless and that I should find something better.",
         ("keeps insulting my job", "looks down on my job")),
    )),
    Topic("diet", ("family", "partner"), (
        ("{Wc} keeps commenting on my diet at every single meal.",
         ("keeps criticizing my diet", "won't stop commenting on my diet")),
        ("{Wc} secretly cooks things that break my diet and then acts surprised.",
         ("keeps sabotaging my diet", "undermines my diet")),
    )),
    Topic("tattoo", ("family", "partner"), (
        ("{Wc} freaked out when I got a small tattoo and has not spoken to me since.",
         ("freaked out over my tattoo", "won't talk to me about my tattoo")),
        ("{Wc} got a tattoo of my name without asking me first.",
         ("got a tattoo of my name", "put my name in a tattoo")),
    )),
    Topic("inheritance", ("family",), (
        ("{Wc} is trying to keep the whole inheritance for {R} and cut me out.",
         ("is keeping the whole inheritance", "cut me out of the inheritance")),
        ("{Wc} spent my share of the inheritance before I even knew about it.",
         ("spent my share of the inheritance", "blew my inheritance")),
    )),
    Topic("overtime", ("work",), (
        ("{Wc} keeps making me work overtime and never pays me for it.",
         ("makes me work unpaid overtime", "won't pay my overtime")),
        ("{Wc} gives all the overtime to {P} favorites and none to me.",
         ("hogs overtime for favorites", "never gives me overtime")),
    )),
    Topic("schedule", ("work", "school"), (
        ("{Wc} changed my schedule without asking and now I miss my evening classes.",
         ("changed my schedule without asking", "messed up my schedule")),
        ("{Wc} keeps posting the schedule late, so I can never plan anything.",
         ("posts the schedule late", "keeps changing the schedule")),
    )),
    Topic("password", ("home", "family"), (
        ("{Wc} changed the wifi password and refuses to share it with me.",
         ("changed the wifi password", "won't share the password")),
        ("{Wc} guessed my password and logged into my email.",
         ("guessed my password", "used my password to snoop")),
    )),
    Topic("haircut", ("partner", "family", "social"), (
        ("{Wc} made fun of my new haircut in front of a crowd of people.",
         ("mocked my haircut", "made fun of my haircut")),
        ("{Wc} talked me into a haircut I hate and now says it was my idea.",
         ("pushed me into a bad haircut", "blames me for my haircut")),
    )),
    Topic("concert", ("partner", "social"), (
        ("{Wc} sold the concert tickets we bought together without telling me.",
         ("sold our concert tickets", "sold my concert ticket")),
        ("{Wc} took someone else to the concert I had been looking forward to for months.",
         ("took someone else to the concert", "ditched me for the concert")),
    )),
    Topic("exam", ("school",), (
        ("{Wc} refused to let me retake an exam that I missed for a funeral.",
         ("won't let me retake an exam", "refused me a makeup exam")),
        ("{Wc} copied my answers on an exam and I got in trouble too.",
         ("copied my exam answers", "got me in trouble on an exam")),
    )),
    Topic("babysitting", ("family", "social"), (
        ("{Wc} expects me to do babysitting for free almost every week.",
         ("expects free babysitting", "keeps dumping babysitting on me")),
        ("{Wc} left me babysitting for nine hours when {S} said it would be one.",
         ("stuck me with hours of babysitting", "left me babysitting all day")),
    )),
    Topic("ring", ("partner", "family"), (
        ("{Wc} lost the ring I asked {O} to hold for me and does not seem to care.",
         ("lost my ring", "lost the ring I lent {O}")),
        ("{Wc} pawned a ring that I had left in {P} care.",
         ("pawned my ring", "sold my ring")),
    )),
    Topic("bike", ("home", "family", "social"), (
        ("{Wc} borrowed my bike, left it unlocked, and it got stolen.",
         ("got my bike stolen", "lost my bike")),
        ("{Wc} rides my bike every day without asking and broke the chain.",
         ("broke my bike", "keeps taking my bike")),
    )),
    Topic("debt", ("partner",), (
        ("{Wc} secretly ran up a huge debt on our joint card.",
         ("hid debt from me", "ran up debt behind my back", "hid a huge debt from me")),
        ("{Wc} wants me to help pay off {P} debt from before we met.",
         ("wants me to pay {P} debt", "expects me to cover {P} debt")),
    )),
    Topic("meeting", ("work",), (
        ("{Wc} yelled at me during a meeting for a mistake that was not mine.",
         ("yelled at me in a meeting", "blamed me in a meeting")),
        ("{Wc} keeps leaving me out of every important meeting.",
         ("leaves me out of every meeting", "excludes me from the meeting")),
    )),
    Topic("pregnancy", ("partner", "family", "social"), (
        ("{Wc} announced my pregnancy to everyone before I was ready to tell anyone.",
         ("announced my pregnancy", "spilled news of my pregnancy")),
        ("{Wc} was strangely cold when I told {O} about my pregnancy.",
         ("was cold about my pregnancy", "reacted badly to my pregnancy")),
    )),
)  # fmt: skip

EVENT: tuple[str, ...] = tuple(t.key for t in TOPICS)
TOPIC_BY_KEY: dict[str, Topic] = {t.key: t for t in TOPICS}

LEXICON: dict[str, str] = {
    **{w: "who" for w in WHO},
    **{w: "event" for w in EVENT},
    **{w: "where" for w in WHERE},
    **{w: "when" for w in WHEN},
    **{w: "feeling" for w in FEELING},
    **{w: "ask" for w in ASK},
}
"""Every key word of the world -> its slot. Lowercase; matched as whole ``[a-z0-9]+`` tokens."""

VALUES: dict[str, tuple[str, ...]] = {
    "who": tuple(WHO),
    "event": EVENT,
    "where": WHERE,
    "when": tuple(WHEN),
    "feeling": FEELING,
    "ask": tuple(ASK),
}

_TOKEN = re.compile(r"[a-z0-9]+")


def tokens(text: str) -> list[str]:
    """Lowercased ``[a-z0-9]+`` tokens (``"My roommate's"`` -> ``["my", "roommate", "s"]``)."""
    return _TOKEN.findall(text.lower())


def lexicon_words(text: str) -> set[str]:
    """The lexicon key words that occur in ``text`` (its facts, read from text alone)."""
    return {t for t in tokens(text) if t in LEXICON}


# ------------------------------------------------------------------------------------- post sentences

OPENERS = (
    "Throwaway account for obvious reasons.",
    "Long time lurker, first time posting.",
    "Sorry for any formatting issues, I am on mobile.",
    "I need some outside perspective on this.",
    "Not sure if this is the right place to post this.",
    "This might sound petty, but hear me out.",
    "I have never posted here before, so bear with me.",
)

INTROS = (
    "{Wc} and I have known each other for {dur}.",
    "Some background: {W} and I have been close for {dur}.",
    "{Wc} and I have always gotten along pretty well.",
    "I have had a good relationship with {W} for {dur}.",
    "For context, {W} and I have been through a lot together.",
)

DURATIONS = ("a few years", "a long time", "most of my life", "about six months", "over ten years",
             "almost two years")  # fmt: skip

SETTINGS_BOTH = (
    "It happened at the {where} {when}.",
    "This all went down {when} at the {where}.",
    "We were at the {where} {when} when it happened.",
    "The worst part was {when}, right there at the {where}.",
)
SETTINGS_WHERE = (
    "It happened at the {where}.",
    "We were at the {where} when it came up.",
    "It all came out at the {where}.",
)
SETTINGS_WHEN = (
    "It all happened {when}.",
    "This came to a head {when}.",
    "I found out {when}.",
)

FILLERS = (
    "I tried to bring it up once, but {S} changed the subject.",
    "We used to be really close, which makes this harder.",
    "Everyone I have asked gives me different advice.",
    "I do not want to make things worse than they already are.",
    "Maybe I am overthinking this, but it keeps bothering me.",
    "This is not the first time something like this has happened.",
    "I have not said anything yet.",
    "{Sc} acts like nothing happened.",
    "I keep replaying the whole thing in my head.",
    "It is not really about the money, it is about respect.",
    "I am usually pretty easygoing about stuff like this.",
    "{Sc} has a habit of brushing things off.",
    "We talked for a bit, but it ended in an argument.",
    "I barely slept last night thinking about it.",
    "Part of me thinks I should just let it go.",
    "It has been awkward between us ever since.",
    "I know there are two sides to every story.",
    "When I mentioned it, {S} laughed it off.",
    "I really value this relationship.",
    "This has been building up for a while.",
    "I do not have anyone else to ask about this.",
    "I wrote a long message to {O} but never sent it.",
    "{Sc} says I am making a big deal out of nothing.",
    "I want to handle this like an adult.",
)

FEELING_SENTENCES = (
    "Honestly, I feel {f}.",
    "I have been {f} ever since.",
    "Right now I am mostly just {f}.",
    "It left me feeling {f}.",
    "I am so {f} that I can barely focus.",
    "I cannot shake how {f} I feel.",
)

QUESTIONS = (
    "Should I {a}?",
    "Would it be wrong to {a}?",
    "Is it reasonable to {a}, or am I overreacting?",
    "Do I {a} or just let it go?",
    "Part of me wants to {a}. What would you do?",
    "How do I decide whether to {a}?",
)

# ---------------------------------------------------------------------------------- summary phrasings

# who words stay lowercase in summaries, as in posts: the same token in both (copy detection)
SUMMARY_SUBJECTS = ("My {w}", "my {w}")
SUMMARY_FEELINGS = ("I'm {f}", "feeling {f}", "I feel {f}", "now I'm {f}")
SUMMARY_ASKS = ("Should I {a}?", "Do I {a}?", "Wondering if I should {a}.", "should I {a}?")
# clauses used when a fact is absent (candidates that drop facts)
GENERIC_PREDICATES = ("did something awful", "crossed a line", "really let me down", "upset me badly")
GENERIC_ASKS = ("What do I do?", "What now?", "Advice?", "what should I do?")


@dataclass(frozen=True)
class Facts:
    """The latent facts of one post (``where``/``when`` may be absent) and how they are phrased.

    ``gender`` picks pronouns ("m"/"f"); ``variant`` indexes the topic's phrasings. Posts always have
    ``who``, ``event``, ``feeling`` and ``ask``; candidate summaries may drop any of them (``None``).
    """

    who: str | None
    event: str | None
    where: str | None
    when: str | None
    feeling: str | None
    ask: str | None
    gender: str
    variant: int

    def key_words(self) -> set[str]:
        """The key words of the present facts."""
        return {v for v in (self.who, self.event, self.where, self.when, self.feeling, self.ask) if v}

    def get(self, slot: str) -> str | None:
        return getattr(self, slot)


@dataclass(frozen=True)
class Post:
    """A generated post: its facts, its sentences (in order) and its text."""

    facts: Facts
    sentences: tuple[str, ...]
    text: str


def pronouns(gender: str) -> dict[str, str]:
    if gender == "m":
        s, o, p, r = "he", "him", "his", "himself"
    else:
        s, o, p, r = "she", "her", "her", "herself"
    return {"S": s, "Sc": s.capitalize(), "O": o, "P": p, "R": r}


def _fill(template: str, fields: dict[str, str]) -> str:
    return template.format(**fields)


def sample_facts(rng: random.Random) -> Facts:
    """Draw the latent facts of one post."""
    topic = rng.choice(TOPICS)
    group = rng.choice(topic.groups)
    who = rng.choice(WHO_GROUPS[group])
    g = WHO[who]
    gender = g if g != "x" else rng.choice("mf")
    return Facts(
        who=who,
        event=topic.key,
        where=rng.choice(WHERE) if rng.random() < 0.7 else None,
        when=rng.choice(tuple(WHEN)) if rng.random() < 0.7 else None,
        feeling=rng.choice(FEELING),
        ask=rng.choice(tuple(ASK)),
        gender=gender,
        variant=rng.randrange(len(topic.variants)),
    )


def _post_fields(facts: Facts, rng: random.Random) -> dict[str, str]:
    f = pronouns(facts.gender)
    f["W"] = f"my {facts.who}"
    f["Wc"] = f"My {facts.who}"
    f["dur"] = rng.choice(DURATIONS)
    return f


def _setting_sentence(facts: Facts, rng: random.Random) -> str | None:
    if facts.where and facts.when:
        t = rng.choice(SETTINGS_BOTH)
    elif facts.where:
        t = rng.choice(SETTINGS_WHERE)
    elif facts.when:
        t = rng.choice(SETTINGS_WHEN)
    else:
        return None
    when = rng.choice(WHEN[facts.when]) if facts.when else ""
    return t.format(where=facts.where or "", when=when)


def render_post(facts: Facts, rng: random.Random) -> Post:
    """Write a post (60-110 words) stating ``facts``; retries phrasings until the length fits."""
    best: tuple[str, ...] | None = None
    for _ in range(20):
        fields = _post_fields(facts, rng)
        topic = TOPIC_BY_KEY[facts.event]
        event = _fill(topic.variants[facts.variant][0], fields)
        feeling = rng.choice(FEELING_SENTENCES).format(f=facts.feeling)
        ask = rng.choice(ASK[facts.ask]).format(**fields)
        question = rng.choice(QUESTIONS).format(a=ask)
        fillers = [_fill(s, fields) for s in rng.sample(FILLERS, rng.choice((1, 2, 2, 3)))]
        body: list[str] = []
        if rng.random() < 0.4:
            body.append(rng.choice(OPENERS))
        if rng.random() < 0.6:
            body.append(_fill(rng.choice(INTROS), fields))
        body.append(event)
        setting = _setting_sentence(facts, rng)
        if setting:
            body.append(setting)
        # filler and feeling in varied order, the question last
        middle = [*fillers, feeling]
        rng.shuffle(middle)
        sentences = (*body, *middle, question)
        n = sum(len(s.split()) for s in sentences)
        if POST_MIN_WORDS <= n <= POST_MAX_WORDS:
            return Post(facts, sentences, " ".join(sentences))
        if best is None or n > sum(len(s.split()) for s in best):
            best = sentences
    assert best is not None  # pragma: no cover - fillers always suffice in practice
    return Post(facts, best, " ".join(best))


# -------------------------------------------------------------------------------------------- summaries


def summary_clauses(facts: Facts, rng: random.Random) -> dict[str, str]:
    """One phrasing of each summary clause of ``facts`` (``subject``, ``inner_subject`` (mid-sentence
    form), ``predicate``, ``setting``, ``feeling``, ``ask``); an absent fact gives a generic clause without
    key words (or an empty ``setting``/``feeling``)."""
    pr = pronouns(facts.gender)
    if facts.who:
        subject = rng.choice(SUMMARY_SUBJECTS).format(w=facts.who)
        inner = f"my {facts.who}"
    else:
        subject, inner = pr["Sc"], pr["S"]
    if facts.event:
        topic = TOPIC_BY_KEY[facts.event]
        variant = topic.variants[facts.variant % len(topic.variants)]
        predicate = rng.choice(variant[1]).format(**pr)
    else:
        predicate = rng.choice(GENERIC_PREDICATES)
    parts = []
    if facts.where:
        parts.append(f"at the {facts.where}")
    if facts.when:
        parts.append(rng.choice(WHEN[facts.when]))
    if len(parts) == 2 and rng.random() < 0.5:
        parts.reverse()
    setting = (" " + " ".join(parts)) if parts else ""
    feeling = rng.choice(SUMMARY_FEELINGS).format(f=facts.feeling) if facts.feeling else ""
    if facts.ask:
        ask = rng.choice(SUMMARY_ASKS).format(a=rng.choice(ASK[facts.ask]).format(**pr))
    else:
        ask = rng.choice(GENERIC_ASKS)
    return {
        "subject": subject,
        "inner_subject": inner,
        "predicate": predicate,
        "setting": setting,
        "feeling": feeling,
        "ask": ask,
    }


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def join_summary(c: dict[str, str], style: int) -> str:
    """Assemble clauses into a TL;DR in one of four styles."""
    event = f"{c['subject']} {c['predicate']}{c['setting']}"
    feel = c["feeling"]
    ask = c["ask"]
    if not feel:
        return (
            f"{_cap(event)}. {_cap(ask)}" if style % 2 == 0 else f"{_cap(event)}, {ask[:1].lower()}{ask[1:]}"
        )
    if style == 0:
        return f"{_cap(event)}. {_cap(feel)}, {ask[:1].lower()}{ask[1:]}"
    if style == 1:
        return f"{_cap(event)} and {feel}. {_cap(ask)}"
    if style == 2:
        return f"{_cap(event)}, {feel}. {_cap(ask)}"
    return f"{_cap(feel)} because {c['inner_subject']} {c['predicate']}{c['setting']}. {_cap(ask)}"


def render_summary(facts: Facts, rng: random.Random, max_words: int | None = REFERENCE_MAX_WORDS) -> str:
    """A TL;DR stating ``facts``; with ``max_words``, redraws phrasings until it fits, else falls back
    to the most compact phrasing (which fits for every post's facts)."""
    for _ in range(12):
        s = join_summary(summary_clauses(facts, rng), rng.randrange(4))
        if max_words is None or len(s.split()) <= max_words:
            return s
    return compact_summary(facts)


def compact_summary(facts: Facts) -> str:
    """The shortest phrasing of ``facts`` (deterministic): first-listed shortest clause of each kind."""

    def shortest(options: Sequence[str]) -> str:
        return min(options, key=lambda o: len(o.split()))

    pr = pronouns(facts.gender)
    subject = f"My {facts.who}" if facts.who else pr["Sc"]
    if facts.event:
        topic = TOPIC_BY_KEY[facts.event]
        predicate = shortest(topic.variants[facts.variant % len(topic.variants)][1]).format(**pr)
    else:
        predicate = shortest(GENERIC_PREDICATES)
    setting = "".join(
        [
            f" at the {facts.where}" if facts.where else "",
            f" {shortest(WHEN[facts.when])}" if facts.when else "",
        ]
    )
    feeling = f", I'm {facts.feeling}" if facts.feeling else ""
    ask = f"Should I {shortest(ASK[facts.ask]).format(**pr)}?" if facts.ask else shortest(GENERIC_ASKS)
    return f"{subject} {predicate}{setting}{feeling}. {ask}"


def reference_summary(post: Post, rng: random.Random) -> str:
    """The reference TL;DR of a post: every key fact, at most :data:`REFERENCE_MAX_WORDS` words."""
    return render_summary(post.facts, rng)


def sample_post(rng: random.Random) -> Post:
    return render_post(sample_facts(rng), rng)


def sample_posts(rng: random.Random, n: int, exclude: set[str] | None = None) -> list[Post]:
    """``n`` posts with distinct texts, none in ``exclude`` (which is updated with the new texts)."""
    seen = exclude if exclude is not None else set()
    out: list[Post] = []
    while len(out) < n:
        p = sample_post(rng)
        if p.text in seen:
            continue
        seen.add(p.text)
        out.append(p)
    return out


def generic_sentences(rng: random.Random, n: int) -> list[str]:
    """World sentences outside any post (corpus variety): lexicon words in general statements."""
    templates: Sequence[str] = (
        "When your {who} ignores your feelings, it can leave you {feeling}.",
        "Many people feel {feeling} when their {who} crosses a line.",
        "Arguments about the {event} are common between people who live or work together.",
        "The {where} gets crowded {when}.",
        "Some people {ask} when they are {feeling}, and others wait.",
        "It is normal to feel {feeling} about the {event} for a while.",
        "Advice columns get many letters about a difficult {who} and the {event}.",
        "If you decide to {ask}, it helps to stay calm.",
        "Running into your {who} at the {where} can be awkward.",
        "Plans {when} often change at the last minute.",
        "A short summary names who was involved, what happened, and what the writer asks.",
    )
    out = []
    for _ in range(n):
        t = rng.choice(templates)
        out.append(
            t.format(
                who=rng.choice(VALUES["who"]),
                feeling=rng.choice(FEELING),
                event=rng.choice(EVENT),
                where=rng.choice(WHERE),
                when=rng.choice(WHEN[rng.choice(VALUES["when"])]),
                ask=rng.choice(VALUES["ask"]),
            )
        )
    return out
