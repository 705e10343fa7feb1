"""A1111 prompt editing / alternation schedules against hand-computed ones."""
import pytest

from sdcpp.tokenizer.schedule import prompt_schedule, text_at


@pytest.mark.parametrize("prompt,steps,expected", [
    ("a [cat:dog:0.5] photo", 10, [(5, "a cat photo"), (10, "a dog photo")]),
    ("[cat:dog:3]", 10, [(3, "cat"), (10, "dog")]),
    ("[cat::4]", 10, [(4, "cat"), (10, "")]),
    ("[dog:4]", 10, [(4, ""), (10, "dog")]),
    ("[:dog:4]", 10, [(4, ""), (10, "dog")]),
    ("x [cat|dog]", 4, [(1, "x cat"), (2, "x dog"), (3, "x cat"), (4, "x dog")]),
    ("[a|b|c]", 5, [(1, "a"), (2, "b"), (3, "c"), (4, "a"), (5, "b")]),
    ("[[a|b]:c:2]", 4, [(1, "a"), (2, "b"), (4, "c")]),
    ("[a:[b:c:3]:1]", 5, [(1, "a"), (3, "b"), (5, "c")]),
    ("([cat:dog:0.5]:1.2) [blurry]", 4, [(2, "(cat:1.2) [blurry]"), (4, "(dog:1.2) [blurry]")]),
    ("[a:b:0.25]", 10, [(2, "a"), (10, "b")]),
    ("[a:b:30]", 10, [(10, "a")]),
    ("[a:b:0]", 10, [(10, "b")]),
    ("[a : b : 5 ]", 10, [(5, "a "), (10, " b ")]),
    ("plain (emphasis:1.3) and [less]", 7, [(7, "plain (emphasis:1.3) and [less]")]),
    ("\\[cat:dog:0.5\\]", 10, [(10, "\\[cat:dog:0.5\\]")]),
    ("[cat:dog:x]", 10, [(10, "[cat:dog:x]")]),                       # not a schedule: as written
    ("(unclosed [a:b:2]", 4, [(4, "(unclosed [a:b:2]")]),
    ("[a:b:c:2]", 4, [(4, "[a:b:c:2]")]),
])
def test_schedules(prompt, steps, expected):
    assert prompt_schedule(prompt, steps) == expected


def test_text_at_maps_zero_based_steps():
    sched = prompt_schedule("[cat:dog:2]", 4)          # steps 1-2 cat, 3-4 dog
    assert [text_at(sched, s) for s in range(4)] == [0, 0, 1, 1]
