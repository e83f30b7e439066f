"""The answer parser on a table of real-looking bad answers, and on seeded random garbage."""

from __future__ import annotations

import json
import random

import pytest

from worker.engine.parse import normalise, parse_answer

CANDIDATES = ["m10", "m20", "m30", "m40", "m50"]  # aliases 1..5
PREVIOUS = ["m50", "m10", "m40", "m20", "m30"]  # the latest pool entry, not the upstream order
OFFERED = ("accuracy", "diversity", "fairness", "backward", "stop")
GOOD = ["m30", "m10", "m20", "m50", "m40"]  # what "3, 1, 2, 5, 4" means


def parse(
    raw: str,
    *,
    offered: tuple[str, ...] = OFFERED,
    expect_ranking: bool = True,
    aliases: bool = True,
    previous: list[str] = PREVIOUS,
):
    return parse_answer(
        raw,
        candidates=CANDIDATES,
        previous=previous,
        offered=offered,
        expect_ranking=expect_ranking,
        aliases=aliases,
    )


# (id, raw answer, expected ranking or None, expected next node, note fragments, problem fragment)
TABLE = [
    ("clean json", '{"ranking": [3, 1, 2, 5, 4], "next_node": "diversity"}', GOOD, "diversity", [], None),
    ("clean text", "[3, 1, 2, 5, 4]; stop", GOOD, "stop", [], None),
    (
        "prose around json",
        "Sure! Here is the reranked list based on the goal:\n"
        '{"ranking": [3, 1, 2, 5, 4], "next_node": "stop"}\nHope this helps.',
        GOOD,
        "stop",
        [],
        None,
    ),
    (
        "json in a code fence",
        'Here you go:\n```json\n{"ranking": [3, 1, 2, 5, 4], "next_node": "fairness"}\n```',
        GOOD,
        "fairness",
        [],
        None,
    ),
    (
        "prose around text",
        "After weighing the user's history, my ranking is:\n[3, 1, 2, 5, 4]; diversity\n"
        "Diversity next, because the top is all Action.",
        GOOD,
        "diversity",
        [],
        None,
    ),
    (
        "think section with a decoy list",
        "<think>The user likes action, so [1, 1, 1, 1, 1]; backward would be wrong. "
        "Maybe [5, 4, 3, 2, 1]?</think>\n[3, 1, 2, 5, 4]; fairness",
        GOOD,
        "fairness",
        [],
        None,
    ),
    (
        "think section before json",
        '<think>{"ranking": [1, 2, 3, 4, 5], "next_node": "backward"}</think>'
        '{"ranking": [3, 1, 2, 5, 4], "next_node": "stop"}',
        GOOD,
        "stop",
        [],
        None,
    ),
    ("full-width digits and brackets", "［３，　１，　２，　５，　４］；　ｓｔｏｐ", GOOD, "stop", [], None),
    (
        "full-width digits in json",
        '{"ranking": ["３", "１", "２", "５", "４"], "next_node": "stop"}',
        GOOD,
        "stop",
        [],
        None,
    ),
    ("arabic-indic digits", "[٣, ١, ٢, ٥, ٤]; stop", GOOD, "stop", [], None),
    ("devanagari digits", "[३, १, २, ५, ४]; stop", GOOD, "stop", [], None),
    ("item_ids instead of aliases", "[m30, m10, m20, m50, m40]; stop", GOOD, "stop", [], None),
    (
        "quoted item_ids in json",
        '{"ranking": ["m30", "m10", "m20", "m50", "m40"], "next_node": "stop"}',
        GOOD,
        "stop",
        [],
        None,
    ),
    ("item_ids in another case", "[M30, M10, M20, M50, M40]; stop", GOOD, "stop", [], None),
    ("aliases with punctuation", "[#3, 1., 2:, *5*, 4]; stop", GOOD, "stop", [], None),
    ("duplicates", "[3, 3, 1, 2, 1, 5, 4]; stop", GOOD, "stop", ["dropped 2 duplicate(s): 3, 1"], None),
    ("unknown ids", "[3, 9, 1, 2, m99, 5, 4]; stop", GOOD, "stop", ["dropped 2 unknown id(s): 9, m99"], None),
    ("zero is no alias", "[0, 3, 1, 2, 5, 4]; stop", GOOD, "stop", ["dropped 1 unknown id(s): 0"], None),
    (
        "missing ids appended in the previous order",
        "[3, 1, 2]; stop",
        ["m30", "m10", "m20", "m50", "m40"],
        "stop",
        ["appended 2 missing item(s) in the previous order"],
        None,
    ),
    (
        "duplicates, unknown and missing at once",
        "[3, 3, 7, 1, 2]; stop",
        ["m30", "m10", "m20", "m50", "m40"],
        "stop",
        ["dropped 1 unknown id(s): 7", "dropped 1 duplicate(s): 3", "appended 2 missing"],
        None,
    ),
    (
        "node with a full stop",
        "[3, 1, 2, 5, 4]; Diversity.",
        GOOD,
        "diversity",
        ["read as 'diversity'"],
        None,
    ),
    ("node in bold", "[3, 1, 2, 5, 4]; **stop**", GOOD, "stop", ["read as 'stop'"], None),
    (
        "node in upper case",
        '{"ranking": [3, 1, 2, 5, 4], "next_node": "FAIRNESS"}',
        GOOD,
        "fairness",
        ["read as 'fairness'"],
        None,
    ),
    (
        "node with a label",
        "[3, 1, 2, 5, 4]; Next node: Fairness",
        GOOD,
        "fairness",
        ["read as 'fairness'"],
        None,
    ),
    (
        "node with a node suffix",
        '{"ranking": [3, 1, 2, 5, 4], "next_node": "Diversity node"}',
        GOOD,
        "diversity",
        ["read as 'diversity'"],
        None,
    ),
    (
        "node on the next line",
        "[3, 1, 2, 5, 4]\nI would go to diversity next.",
        GOOD,
        "diversity",
        ["found in prose"],
        None,
    ),
    (
        "json with a string ranking",
        '{"ranking": "3, 1, 2, 5, 4", "next_node": "stop"}',
        GOOD,
        "stop",
        [],
        None,
    ),
    (
        "json with 'next' instead of next_node",
        '{"ranking": [3, 1, 2, 5, 4], "next": "stop"}',
        GOOD,
        "stop",
        [],
        None,
    ),
    ("json truncated after the list", '{"ranking": [3, 1, 2, 5, 4], "next_no', GOOD, None, [], None),
    ("json truncated inside the list", '{"ranking": [3, 1, 2', None, None, [], "no list of candidates found"),
    (
        "json without a ranking",
        '{"next_node": "stop"}',
        None,
        "stop",
        ["json answer without a ranking"],
        "no list of candidates found",
    ),
    ("empty answer", "", None, None, [], "no list of candidates found"),
    ("whitespace answer", "  \n ", None, None, [], "no list of candidates found"),
    (
        "refusal",
        "I'm sorry, but I can't rank these items without more information.",
        None,
        None,
        [],
        "no list of candidates found",
    ),
    ("too few known ids", "[1, 2]; stop", None, "stop", [], "only 2 of 5 candidates recognised"),
    ("only unknown ids in text", "[11, 12, 13, 14, 15]; stop", None, None, [], "no list of candidates found"),
    (
        "only unknown ids in json",
        '{"ranking": [11, 12, 13, 14, 15], "next_node": "stop"}',
        None,
        "stop",
        ["dropped 5 unknown"],
        "only 0 of 5 candidates recognised",
    ),
    (
        "format echoed back",
        "[candidate numbers, each exactly once, comma-separated]; next_node",
        None,
        None,
        [],
        "no list of candidates found",
    ),
]


@pytest.mark.parametrize(
    ("raw", "ranking", "node", "notes", "problem"), [t[1:] for t in TABLE], ids=[t[0] for t in TABLE]
)
def test_bad_answer_table(
    raw: str, ranking: list[str] | None, node: str | None, notes: list[str], problem: str | None
) -> None:
    parsed = parse(raw)
    assert parsed.ranking == ranking
    assert parsed.next_node == node
    assert parsed.problem == problem if problem is None else problem in (parsed.problem or "")
    joined = " | ".join(parsed.notes)
    for fragment in notes:
        assert fragment in joined, parsed.notes
    if ranking is not None and not notes and node is not None:
        assert parsed.notes == [] or all(any(f in n for f in QUIET_REPAIRS) for n in parsed.notes)


QUIET_REPAIRS = ("read as", "prose", "reasoning section", "to ASCII", "around the JSON")


def test_normalising_repairs_are_noted() -> None:
    assert (
        "dropped a reasoning section ending in </think>"
        in parse("<think>maybe [1, 1]</think>[3, 1, 2, 5, 4]; stop").notes
    )
    assert (
        "mapped full-width or non-ASCII digits and signs to ASCII"
        in parse("[３, １, ２, ５, ４]; stop").notes
    )
    assert (
        "ignored text around the JSON answer"
        in parse('Here you go: {"ranking": [3, 1, 2, 5, 4], "next_node": "stop"} Enjoy!').notes
    )


def test_a_clean_answer_has_no_notes() -> None:
    assert parse("[3, 1, 2, 5, 4]; stop").notes == []
    assert parse('{"ranking": [3, 1, 2, 5, 4], "next_node": "stop"}').notes == []


def test_a_node_not_on_offer_is_refused_with_a_note() -> None:
    offered = ("accuracy", "diversity", "fairness")  # the pool is empty: no backward, no stop
    parsed = parse("[3, 1, 2, 5, 4]; backward", offered=offered)
    assert parsed.ranking == GOOD and parsed.next_node is None
    assert any("'backward' is not on offer" in n for n in parsed.notes)
    parsed = parse('{"ranking": [3, 1, 2, 5, 4], "next_node": "novelty"}')
    assert parsed.next_node is None
    assert any("'novelty' is not on offer" in n for n in parsed.notes)


def test_the_paper_set_uses_item_ids_not_aliases() -> None:
    parsed = parse("[m30, m10, m20, m50, m40]; stop", aliases=False)
    assert parsed.ranking == GOOD
    parsed = parse("[3, 1, 2, 5, 4]; stop", aliases=False)
    assert parsed.ranking is None and parsed.problem == "no list of candidates found"
    parsed = parse('{"ranking": [3, 1, 2, 5, 4], "next_node": "stop"}', aliases=False)
    assert parsed.ranking is None and "only 0 of 5" in (parsed.problem or "")


@pytest.mark.parametrize(
    ("raw", "node", "note"),
    [
        ("accuracy", "accuracy", None),
        ('{"next_node": "Fairness"}', "fairness", "read as 'fairness'"),
        ("**Diversity.**", "diversity", "'diversity' found in prose"),
        ("I would go back and try diversity again.", "diversity", "found in prose"),
        ("<think>stop? no.</think>accuracy", "accuracy", None),
    ],
)
def test_backward_answers_only_name_a_node(raw: str, node: str, note: str | None) -> None:
    parsed = parse(raw, offered=("accuracy", "diversity", "fairness"), expect_ranking=False)
    assert parsed.ranking is None and parsed.problem is None
    assert parsed.next_node == node
    if note:
        assert any(note in n for n in parsed.notes), parsed.notes


@pytest.mark.parametrize("raw", ["", "I cannot decide.", "stop", '{"next_node": "backward"}'])
def test_backward_answer_without_an_offered_node_is_a_problem(raw: str) -> None:
    parsed = parse(raw, offered=("accuracy", "diversity", "fairness"), expect_ranking=False)
    assert parsed.next_node is None and parsed.problem == "no next node named"


def test_normalise_maps_unicode_digits_and_drops_reasoning() -> None:
    assert normalise("<think>[1, 2]</think>［１２］ ٣٤ ۵۶ ४") == "[12] 34 56 4"
    assert normalise("no think here: 12") == "no think here: 12"


@pytest.mark.parametrize(
    "raw",
    ["[❸, ❶, ❷, ❺, ❹]; stop", "[፫, ፩, ፪, ፭, ፬]; stop", '{"ranking": ["❸", 1, 2, 5, 4], "next_node": "stop"}'],
)
def test_non_decimal_digits_never_crash_the_parser(raw: str) -> None:
    parsed = parse(raw)
    assert parsed.ranking is None or sorted(parsed.ranking) == sorted(CANDIDATES)


# ---------------------------------------------------------------------------------------------
# property: whatever the model says, a usable answer is a permutation and the node is on offer

WORDS = [
    "Sure",
    "here",
    "is",
    "the",
    "list",
    "ranking",
    "next_node",
    "node",
    "I",
    "think",
    "Accuracy",
    "DIVERSITY",
    "fairness.",
    "**stop**",
    "Backward",
    "novelty",
    "because",
    "\n",
    ":",
    ";",
    ",",
    ".",
    "[",
    "]",
    "{",
    "}",
    '"',
    "'",
    "<think>",
    "</think>",
    "```json",
    "```",
    "null",
    "true",
    "-1",
    "0",
    "999",
    "m99",
    "3.5",
    "１",
    "٣",
    "२",
    "ranking:",
    "\t",
]


def garbage(rng: random.Random, n: int) -> str:
    kind = rng.randrange(4)
    perm = list(range(1, n + 1))
    rng.shuffle(perm)
    node = rng.choice([*OFFERED, "novelty", "Stop.", "**Diversity**", "", "halt"])
    if kind == 0:  # a valid answer, mutated
        text = rng.choice(
            [json.dumps({"ranking": perm, "next_node": node}), f"[{', '.join(map(str, perm))}]; {node}"]
        )
        for _ in range(rng.randrange(1, 6)):
            at = rng.randrange(len(text) + 1)
            op = rng.randrange(3)
            if op == 0:
                text = text[:at]
            elif op == 1:
                text = text[:at] + rng.choice(WORDS) + text[at:]
            else:
                text = text[:at] + text[at + rng.randrange(1, 4) :]
        return text
    if kind == 1:  # random tokens
        pool = [*WORDS, *map(str, range(-2, n + 3)), *(f"m{10 * i}" for i in range(8))]
        return " ".join(rng.choice(pool) for _ in range(rng.randrange(0, 40)))
    if kind == 2:  # lists with wrong content
        items = [str(rng.randrange(-1, n + 4)) for _ in range(rng.randrange(0, 2 * n))]
        return f"{rng.choice(WORDS)} [{', '.join(items)}]; {node} {rng.choice(WORDS)}"
    # random printable characters, a few of them digits in other scripts
    alphabet = "0123456789[]{},;:\"' \nabcdefghijklmnopqrstuvwxyz１２３٣٤۵४"
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 80)))


def test_random_garbage_gives_a_permutation_or_a_problem() -> None:
    rng = random.Random(2406_12433)
    usable = unusable = 0
    for _ in range(3000):
        n = rng.randrange(2, 12)
        candidates = [f"m{10 * i}" for i in range(n)]
        previous = rng.sample(candidates, n)
        offered = tuple(rng.sample(OFFERED, rng.randrange(1, len(OFFERED) + 1)))
        expect = rng.random() < 0.85
        raw = garbage(rng, n)
        parsed = parse_answer(
            raw,
            candidates=candidates,
            previous=previous,
            offered=offered,
            expect_ranking=expect,
            aliases=rng.random() < 0.7,
        )
        assert parsed.next_node is None or parsed.next_node in offered, raw
        if not expect:
            assert parsed.ranking is None
            assert (parsed.problem is None) == (parsed.next_node is not None), raw
            continue
        if parsed.ranking is None:
            unusable += 1
            assert parsed.problem, raw
        else:
            usable += 1
            assert sorted(parsed.ranking) == sorted(candidates), raw
            assert parsed.problem is None
    assert usable > 300 and unusable > 300  # the generator covers both outcomes
