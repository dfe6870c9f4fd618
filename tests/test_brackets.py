"""hdm_core.brackets: the table of escaping cases, and properties checked with ComfyUI's own parser.

ComfyUI reads a prompt with ``sd1_clip.escape_important`` → ``token_weights`` →
``unescape_important``; the property tests run exactly that on what our functions write.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hdm_core.brackets import (
    BREAK,
    Piece,
    escape_brackets,
    escape_danbooru,
    escape_literal,
    parse_weights,
    render_pieces,
    reweight_text,
    split_tags,
    split_weight,
    unescape_brackets,
    weight_group_spans,
)

# --------------------------------------------------------------------------- tables

ESCAPE_LITERAL = [
    ("izuna (blue archive)", r"izuna \(blue archive\)"),
    (":)", r":\)"),
    ("", ""),
    ("[red hair]", "[red hair]"),  # square brackets are not ComfyUI syntax
    (r"a\b C:\path", r"a\b C:\path"),  # other backslashes pass through
    (r"a\(", r"a\\("),  # literal backslash before a bracket stays a backslash
    ("BREAK", "BREAK"),
    ("漢字 (ü)", r"漢字 \(ü\)"),
]


@pytest.mark.parametrize("text, expected", ESCAPE_LITERAL)
def test_escape_literal_table(text, expected):
    assert escape_literal(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("izuna (blue archive)", r"izuna \(blue archive\)"),
        (r"izuna \(blue archive\)", r"izuna \(blue archive\)"),  # never double-escaped
        (r"a\b", r"a\b"),
        ("", ""),
    ],
)
def test_escape_brackets_table(text, expected):
    assert escape_brackets(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"izuna \(blue archive\)", "izuna (blue archive)"),
        (r"C:\path \[x\]", r"C:\path \[x\]"),  # only \( and \) are unescaped
        (r"\\(", r"\("),
    ],
)
def test_unescape_brackets_table(text, expected):
    assert unescape_brackets(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("(smile:1.2)", "(smile:1.2)"),
        ("(a (b):1.2) c (d)", r"(a \(b\):1.2) c \(d\)"),
        ("izuna (blue archive)", r"izuna \(blue archive\)"),
        ("(re:zero)", r"\(re:zero\)"),  # not a float after the colon: literal
        ("(:3)", r"\(:3\)"),
        ("(unbalanced", r"\(unbalanced"),
        ("((blue eyes))", r"\(\(blue eyes\)\)"),
        ("(a (b:1.3):1.2)", "(a (b:1.3):1.2)"),
    ],
)
def test_escape_danbooru_table(text, expected):
    assert escape_danbooru(text) == expected


def test_weight_group_spans_and_split_weight():
    text = "(a:1.2), (b), (c (d:0.5):0.8), x"
    assert weight_group_spans(text) == [(0, 6), (14, 28)]
    assert weight_group_spans(text, outermost=False) == [(0, 6), (14, 28), (17, 23)]
    assert split_weight("re:zero:1.2") == ("re:zero", "1.2")
    assert split_weight("smile: 1.20") == ("smile", " 1.20")


# The table: what a user types in the tag box → tags (literal text, weight) → ComfyUI text.
SPLIT_TAGS = [
    # input unescapes only \( and \); name (series) stays one tag, escaped or not
    (r"izuna \(blue archive\)", [("izuna (blue archive)", None)], r"izuna \(blue archive\)"),
    ("izuna (blue archive)", [("izuna (blue archive)", None)], r"izuna \(blue archive\)"),
    (
        "artoria pendragon (lancer alter) (fate)",
        [("artoria pendragon (lancer alter) (fate)", None)],
        r"artoria pendragon \(lancer alter\) \(fate\)",
    ),
    # user weights kept verbatim, brackets inside them escaped
    ("(smile:1.2)", [("smile", "1.2")], "(smile:1.2)"),
    ("(smile: 1.20)", [("smile", " 1.20")], "(smile: 1.20)"),
    (r"(izuna \(blue archive\):1.3)", [("izuna (blue archive)", "1.3")], r"(izuna \(blue archive\):1.3)"),
    ("(izuna (blue archive):1.3)", [("izuna (blue archive)", "1.3")], r"(izuna \(blue archive\):1.3)"),
    ("(smile, blush:1.2)", [("smile", "1.2"), ("blush", "1.2")], "(smile:1.2), (blush:1.2)"),
    # emphasis without a number is not a weight here: literal, no float noise
    ("((blue eyes))", [("((blue eyes))", None)], r"\(\(blue eyes\)\)"),
    ("[red hair]", [("[red hair]", None)], "[red hair]"),
    (":), ;)", [(":)", None), (";)", None)], r":\), ;\)"),
    ("(unbalanced", [("(unbalanced", None)], r"\(unbalanced"),
    # backslashes and BREAK pass through
    (r"a\b, C:\path", [(r"a\b", None), (r"C:\path", None)], r"a\b, C:\path"),
    ("1girl, BREAK, solo", [("1girl", None), (BREAK, None), ("solo", None)], "1girl, BREAK, solo"),
    ("1girl BREAK solo", [("1girl", None), (BREAK, None), ("solo", None)], "1girl, BREAK, solo"),
    ("BREAKING news", [("BREAKING news", None)], "BREAKING news"),
    # tags with colons are not weights
    (":3, re:zero", [(":3", None), ("re:zero", None)], ":3, re:zero"),
    # empty input, stray commas, newlines, unicode
    ("", [], ""),
    (" , ,\n", [], ""),
    ("1girl,\nsolo ,  ", [("1girl", None), ("solo", None)], "1girl, solo"),
    ("ü (漢字)", [("ü (漢字)", None)], r"ü \(漢字\)"),
]


@pytest.mark.parametrize("text, tags, rendered", SPLIT_TAGS)
def test_split_tags_table(text, tags, rendered):
    got = split_tags(text)
    assert [(t.text, t.pieces[0].weight if len(t.pieces) == 1 else "mixed") for t in got] == tags
    assert ", ".join(t.render() for t in got) == rendered
    # unescaped form: the same tags without backslashes before brackets
    assert ", ".join(t.render(escape=False) for t in got) == unescape_brackets(rendered)


def test_split_tags_mixed_weights_are_kept_verbatim():
    (tag,) = split_tags("blue (eyes:1.2) girl")
    assert tag.text == "blue eyes girl"
    assert tag.weighted and not tag.is_break
    assert tag.render() == "blue (eyes:1.2) girl"


def test_tag_render_with_normalised_text_keeps_the_weight():
    (tag,) = split_tags("(blue_eyes:1.2)")
    assert tag.render(text="blue eyes") == "(blue eyes:1.2)"
    (plain,) = split_tags("izuna_(blue_archive)")
    assert plain.render(text="izuna (blue archive)") == r"izuna \(blue archive\)"


@pytest.mark.parametrize(
    "nl, literal, rendered",
    [
        ("A girl (smiling) in a shrine.", "A girl (smiling) in a shrine.", r"A girl \(smiling\) in a shrine."),
        ("A girl with a (cute:1.3) face.", "A girl with a cute face.", "A girl with a (cute:1.3) face."),
        (r"Izuna \(blue archive\) waves.", "Izuna (blue archive) waves.", r"Izuna \(blue archive\) waves."),
    ],
)
def test_natural_language_weights_round_trip(nl, literal, rendered):
    pieces = parse_weights(nl)
    assert "".join(p.text for p in pieces) == literal
    assert reweight_text(literal, pieces) == rendered
    assert reweight_text(literal, pieces, escape=False) == unescape_brackets(rendered)


def test_reweight_text_finds_whole_words_in_rewritten_text():
    pieces = parse_weights("(cute:1.3)")
    # the model wrote more text; the weight lands on the word, not inside "cuteness"
    assert reweight_text("Pure cuteness. A cute (small) girl.", pieces) == r"Pure cuteness. A (cute:1.3) \(small\) girl."
    # the word is gone: the weight is dropped, the text still escaped
    assert reweight_text("A (tall) girl.", pieces) == r"A \(tall\) girl."


# --------------------------------------------------------------------------- ComfyUI's parser


@pytest.fixture(scope="module")
def comfy_parse(comfyui_path):
    """ComfyUI's reading of a prompt: [(literal text, weight)], as SDTokenizer.tokenize_with_weights does."""
    from comfy.sd1_clip import escape_important, token_weights, unescape_important

    def parse(text: str) -> list[tuple[str, float]]:
        return [(unescape_important(seg), w) for seg, w in token_weights(escape_important(text), 1.0)]

    return parse


def merged(runs):
    """Adjacent runs of equal weight joined, empty runs dropped: the text the encoder sees per weight."""
    out: list[tuple[str, float]] = []
    for text, weight in runs:
        if not text:
            continue
        if out and out[-1][1] == weight:
            out[-1] = (out[-1][0] + text, weight)
        else:
            out.append((text, weight))
    return out


# ComfyUI replaces \( and \) with "\0\1" / "\0\2" while parsing: NUL cannot be represented at all.
_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
# prompt-like token soup (finds bracket/colon/number corner cases fast) or any characters
_TOKENS = ["(", ")", "(", ")", ":", "(:", ":3)", "1.2", "3", "a", "\\", ", ", " ", "b c", "\n", "BREAK", "ü"]
TEXT = st.one_of(
    st.lists(st.sampled_from(_TOKENS), max_size=14).map("".join),
    st.text(alphabet=st.one_of(st.sampled_from(list("()\\:,. 1.2ab")), _chars), max_size=40),
)
PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@PROPS
@given(text=TEXT)
def test_property_escape_literal_reads_back_as_the_literal_text(comfy_parse, text):
    assert merged(comfy_parse(escape_literal(text))) == ([(text, 1.0)] if text else [])


@PROPS
@given(text=TEXT)
def test_property_escape_brackets_reads_back_as_the_unescaped_text(comfy_parse, text):
    literal = unescape_brackets(text)
    assert merged(comfy_parse(escape_brackets(text))) == ([(literal, 1.0)] if literal else [])


@PROPS
@given(text=TEXT)
def test_property_unescape_then_escape_never_double_escapes(text):
    once = escape_literal(unescape_brackets(text))
    assert escape_literal(unescape_brackets(once)) == once
    assert escape_brackets(escape_brackets(text)) == escape_brackets(text)
    assert escape_danbooru(escape_danbooru(text)) == escape_danbooru(text)


WEIGHT = st.floats(min_value=0.05, max_value=3.0, allow_nan=False).map(lambda w: f"{w:.3g}")
RUNS = st.lists(st.tuples(TEXT, st.one_of(st.none(), WEIGHT)), max_size=6)


@PROPS
@given(runs=RUNS)
def test_property_rendered_pieces_read_back_with_their_weights(comfy_parse, runs):
    """Literal runs and weighted runs, rendered as the TIPO node writes them, read back exactly."""
    pieces = [Piece(text, weight) for text, weight in runs]
    # a weight group needs text before its colon; a run that merges into nothing is not a group
    assume(all(p.text for p in pieces if p.weight is not None))
    text = ", ".join(p.render() for p in pieces)
    expected = []
    for i, p in enumerate(pieces):
        if i:
            expected.append((", ", 1.0))
        expected.append((p.text, 1.0 if p.weight is None else float(p.weight)))
    assert merged(comfy_parse(text)) == merged(expected)
    # what we wrote is already escaped: escaping it again for ComfyUI changes nothing
    assert escape_danbooru(text) == text


@PROPS
@given(text=TEXT)
def test_property_parse_then_render_reads_like_escape_danbooru(comfy_parse, text):
    """Our parse/render keeps exactly the weights ComfyUI sees in escape_danbooru's output."""
    rendered = render_pieces(parse_weights(text))
    assert merged(comfy_parse(rendered)) == merged(comfy_parse(escape_danbooru(text)))
    assert render_pieces(parse_weights(rendered)) == rendered


@PROPS
@given(text=TEXT)
def test_property_split_tags_render_reads_back_as_the_tags(comfy_parse, text):
    tags = split_tags(text)
    for tag in tags:
        runs = [(p.text, 1.0 if p.weight is None else float(p.weight)) for p in tag.pieces]
        assert merged(comfy_parse(tag.render())) == merged(runs)
        assert "," not in tag.text and "\n" not in tag.text
        assert tag.text == tag.text.strip() and tag.text


@PROPS
@given(text=TEXT)
def test_property_escape_danbooru_leaves_no_emphasis(comfy_parse, text):
    """Only explicit weights survive escape_danbooru: ComfyUI never sees a bare (x) ×1.1 group."""
    escaped = escape_danbooru(text)
    explicit = {1.0} | {float(split_weight(escaped[o + 1 : c])[1]) for o, c in weight_group_spans(escaped, outermost=False)}
    assert {w for _, w in comfy_parse(escaped)} <= explicit
