import re

import numpy as np

from fastcofi.app.cli import main
from fastcofi.app.demo import load_toy, run_demo

LINE = re.compile(r"^Predicting rating (\d+\.\d) for movie (.+)$")


def test_toy_data_matches_the_manifest(toy_data_dir):
    matrix, titles = load_toy()
    assert matrix.shape == (10, 5) and len(titles) == 10
    expected = [[8, 4, 0, 0, 4], [0, 0, 8, 10, 4], [8, 10, 0, 0, 6], [10, 10, 8, 10, 10],
                [0, 0, 0, 0, 0], [2, 0, 4, 0, 6], [8, 6, 4, 0, 0], [0, 0, 6, 4, 0],
                [0, 6, 0, 4, 10], [0, 4, 6, 8, 8]]
    np.testing.assert_array_equal(matrix, expected)
    assert titles[2] == "Ted (2012)" and titles[5] == "Notorious (2009)"


def _demo_lines(capsys, argv):
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    return [LINE.match(line) for line in out if line.startswith("Predicting")]


def test_demo_prints_every_movie_sorted_with_its_own_title(capsys):
    matches = _demo_lines(capsys, ["demo"])
    assert len(matches) == 10 and all(matches)
    scores = [float(m.group(1)) for m in matches]
    assert scores == sorted(scores, reverse=True)
    _, ranking = run_demo()
    _, titles = load_toy()
    assert sorted(m.group(2) for m in matches) == sorted(titles.values())
    # each printed score belongs to the title on its line (the tutorial's second bug)
    assert [(m.group(2), float(m.group(1))) for m in matches] == [
        (t, round(s, 1)) for t, s in ranking
    ]


def test_default_reg_carries_tastes_and_tutorial_reg_gives_item_means():
    model, ranking = run_demo()
    model30, ranking30 = run_demo(reg=30.0)
    means = dict(zip(model30.item_ids_.tolist(), model30.item_means_))
    _, titles = load_toy()
    by_title = {titles[i]: m for i, m in means.items()}
    # reg 30: every factor shrinks to zero, the list is the item means
    assert all(abs(score - by_title[title]) < 1e-3 for title, score in ranking30)
    # default: the new user's list departs from the item means
    assert max(abs(score - by_title[title]) for title, score in ranking) > 0.5
    assert [t for t, _ in ranking] != [t for t, _ in ranking30]
    # the new user's ratings pulled the movies they rated towards their rating
    default = dict(ranking)
    harold = titles[1]
    assert abs(default[harold] - 7.0) < abs(by_title[harold] - 7.0)


def test_demo_reg_flag_and_usage_error(capsys):
    assert len(_demo_lines(capsys, ["demo", "--reg", "30"])) == 10
    assert main(["demo", "--reg", "abc"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastcofi: error:") and "Traceback" not in err
