"""HDM prompt layout: template filling, empty parts, BREAK placement, formatting without a model."""

from __future__ import annotations

import pytest

from hdm_core import tipo
from hdm_core.tipo.prompt import parse_user_prompt, render_items, render_template

FULL = {
    "special": ["1girl"],
    "characters": ["izuna \\(blue archive\\)"],
    "copyrights": ["blue archive"],
    "artist": ["kita senri"],
    "general": ["smile", "fox ears"],
    "quality": ["masterpiece"],
    "rating": ["general"],
    "meta": ["absurdres"],
    "extended": "A girl smiles",
    "generated": "",
}


@pytest.mark.parametrize(
    "values, expected",
    [
        (
            FULL,
            "1girl,\nizuna \\(blue archive\\), blue archive,\nkita senri,\n\nsmile, fox ears,\n\nA girl smiles.\n\nmasterpiece, general, absurdres",
        ),
        # empty parts vanish with their separators; no blank-line pile-up, no dangling commas
        ({"general": ["smile"], "extended": "A girl smiles"}, "smile,\n\nA girl smiles."),
        ({"characters": ["a"], "artist": ["b"], "meta": ["absurdres"]}, "a,\nb,\n\nabsurdres"),
        ({"copyrights": ["x"], "rating": ["safe"]}, "x,\n\nsafe"),
        ({"general": ["smile"]}, "smile"),
        ({}, ""),
        # natural language that ends a sentence gets no second period
        ({"extended": "She smiles!"}, "She smiles!"),
        ({"extended": "She smiles."}, "She smiles."),
        # <|extended|> falls back to <|generated|>
        ({"generated": "TIPO wrote this"}, "TIPO wrote this."),
    ],
)
def test_hdm_template(values, expected):
    assert tipo.render_template(tipo.HDM_TEMPLATE, values) == expected


@pytest.mark.parametrize(
    "template, expected",
    [
        ("<|general|> | <|meta|>", "smile, fox ears | absurdres"),
        ("(masterpiece:1.2), <|special|>, <|copyrights|>, <|general|>", "(masterpiece:1.2), 1girl, blue archive, smile, fox ears"),
        ("<|extended|>. <|generated|>.", "A girl smiles."),
        ("<|rating|>,   <|meta|>,\n\n\n\n<|general|>", "general, absurdres,\n\nsmile, fox ears"),
    ],
)
def test_custom_templates(template, expected):
    assert render_template(template, FULL) == expected


def test_format_only_table():
    result = tipo.format_only(
        "absurdres, smile, izuna_(blue_archive), 1girl, (masterpiece:1.2), blue archive, kita senri, general, (fox ears:0.8)",
        "A girl (smiling) in a (shrine:1.2).",
    )
    assert result.prompt == (
        "1girl,\nizuna \\(blue archive\\), blue archive,\nkita senri,\n\nsmile, (fox ears:0.8),\n\n"
        "A girl \\(smiling\\) in a (shrine:1.2).\n\n(masterpiece:1.2), general, absurdres"
    )
    assert result.prompt_unescaped == result.prompt.replace("\\(", "(").replace("\\)", ")")
    assert result.categories["general"] == ["smile", "(fox ears:0.8)"]
    assert result.categories["extended"] == "A girl (smiling) in a (shrine:1.2)."
    assert tipo.format_only("izuna (blue archive)", escape=False).prompt == "izuna (blue archive)"


def test_format_only_is_idempotent():
    once = tipo.format_only("smile, izuna (blue archive), 1girl, (masterpiece:1.2)", "A girl (smiling).", template="<|special|>, <|characters|>, <|general|>, <|quality|>, <|extended|>")
    twice = tipo.format_only(once.prompt, "", template="<|special|>, <|characters|>, <|general|>, <|quality|>, <|extended|>")
    # the natural language went into the tag box the second time, but no bracket got escaped twice
    assert "\\\\" not in twice.prompt and "izuna \\(blue archive\\)" in twice.prompt and "(masterpiece:1.2)" in twice.prompt


def test_break_placement():
    def classify(tag):
        return ("special", tag) if tag == "1girl" else ("general", tag)

    user = parse_user_prompt("BREAK, 1girl, smile BREAK fox ears, BREAK", "", classify)
    categories = {"special": ["1girl"], "general": ["smile", "fox ears", "new tag"]}
    items = render_items(categories, user)
    assert items["special"] == ["BREAK", "1girl"]
    assert items["general"] == ["smile", "BREAK", "fox ears", "BREAK", "new tag"]
    # the tag a BREAK followed is gone (a custom category map): the BREAK is kept at the end
    items = render_items({"special": ["1girl"], "general": ["smile"]}, user)
    assert items["general"] == ["smile", "BREAK", "BREAK"]


def test_duplicate_user_tags_keep_the_first_spelling():
    result = tipo.format_only("smile, (smile:1.2), izuna (blue archive), izuna \\(blue archive\\)", template="<|characters|> / <|general|>")
    assert result.prompt == "izuna \\(blue archive\\) / smile"
