"""The built-in story corpus: deterministic, varied, in the expected file format, torch-free."""

from __future__ import annotations

import re
import subprocess
import sys

from diffusionlm.data.corpus import END_OF_TEXT, iter_stories, write_corpus_text


def _sentences(stories: list[str]) -> set[str]:
    return {s for story in stories for s in re.split(r"(?<=[.!?])\s+", story.replace("\n", " ")) if s}


def test_same_seed_gives_identical_stories():
    assert list(iter_stories(7, 50)) == list(iter_stories(7, 50))


def test_different_seeds_give_different_stories():
    assert set(iter_stories(1, 50)).isdisjoint(iter_stories(2, 50))


def test_yields_exactly_the_requested_number_of_stories():
    assert len(list(iter_stories(0, 123))) == 123


def test_stories_have_dialogue_and_at_most_two_paragraphs():
    stories = list(iter_stories(3, 200))
    assert all(1 <= story.count("\n") + 1 <= 2 for story in stories)
    assert sum('"' in story for story in stories) > 150
    assert all(story.strip() == story and "  " not in story for story in stories)


def test_corpus_has_thousands_of_distinct_sentences():
    assert len(_sentences(list(iter_stories(0, 2000)))) > 5000


def test_write_corpus_text_ends_every_story_with_endoftext(tmp_path):
    path = tmp_path / "corpus.txt"
    write_corpus_text(path, seed=5, num_stories=20)
    text = path.read_text(encoding="utf-8")
    assert text.split(f"\n{END_OF_TEXT}\n")[:-1] == list(iter_stories(5, 20))
    assert text.endswith(f"\n{END_OF_TEXT}\n")


def test_importing_the_corpus_loads_neither_torch_nor_datasets():
    code = "import sys, diffusionlm.data.corpus; print('torch' in sys.modules, 'datasets' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            timeout=120)
    assert result.stdout.split() == ["False", "False"]
