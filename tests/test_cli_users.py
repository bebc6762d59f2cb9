"""The command line as a new user meets it: any file's columns, honest held-out figures, scores
that agree with `predict`, failures one can act on (issue 15).

The data is a made-up restaurant-rating CSV, not MovieLens: string ids, a 0-2 scale, columns named
``userID,placeID,rating,food_rating,service_rating`` (no default name matches ``placeID``).
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastcofi import read_ratings
from fastcofi.app.cli import _build_parser, default_relevance_threshold, main
from fastcofi.evaluate.split import random_split
from fastcofi.model import MatrixFactorization
from fastcofi.model_file import load_model

from .conftest import JIT_DISABLED

REPO = Path(__file__).resolve().parent.parent
HEADER = "userID,placeID,rating,food_rating,service_rating"
ENV = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def restaurant_rows(n_users=60, n_places=40, per_user=15, seed=0, user_offset=1000):
    """(user, place, rating, food, service) rows on a 0-2 scale from planted factors; places
    p900-p902 are rated by one user each, so a few items have very few ratings."""
    rng = np.random.default_rng(seed)
    u, v = rng.normal(size=(n_users, 2)), rng.normal(size=(n_places, 2))
    rows = []
    for user in range(n_users):
        for place in rng.choice(n_places, per_user, replace=False):
            rating = int(np.clip(np.round(1 + 0.8 * u[user] @ v[place]), 0, 2))
            rows.append((f"U{user + user_offset}", f"p{place + 100}", rating,
                         int(rng.integers(0, 3)), int(rng.integers(0, 3))))
    for k in range(3):
        rows.append((f"U{k + user_offset}", f"p{900 + k}", 2, 2, 2))
    return rows


def write_csv(path, rows, header=HEADER, sep=","):
    lines = [header.replace(",", sep)] if header else []
    lines += [sep.join(str(f) for f in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_error(code, err, *fragments, absent=()):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastcofi: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    for fragment in absent:
        assert fragment not in lines[0], lines[0]


COLS = ["--user-col", "userID", "--item-col", "placeID", "--rating-col", "rating"]
TRAIN = ["--factors", "3", "--reg", "0.5", "--max-iter", "20", "--normalize", "biases"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("restaurants")
    rows = restaurant_rows()
    rng = np.random.default_rng(5)
    test_rows = [rows[i] for i in rng.choice(len(rows) - 3, 120, replace=False)]
    train_rows = [r for r in rows if r not in test_rows]
    return {
        "folder": folder,
        "all": write_csv(folder / "ratings.csv.txt", rows),
        "train": write_csv(folder / "train.csv", train_rows),
        "test": write_csv(folder / "test.csv", test_rows),
        # Other people, other places: nothing the model knows.
        "strangers": write_csv(folder / "strangers.csv", restaurant_rows(
            n_users=20, n_places=10, per_user=5, seed=9, user_offset=5000)),
    }


@pytest.fixture(scope="module")
def model_path(files):
    path = files["folder"] / "model.npz"
    code = main(["train", str(files["train"]), *COLS, *TRAIN, "-o", str(path)])
    assert code == 0
    return path


# -- 2. columns from the command line -----------------------------------------------------------
def test_missing_column_error_names_the_flag(files, tmp_path, capsys):
    code, _, err = run(capsys, "train", files["train"], *TRAIN, "-o", tmp_path / "m.npz")
    assert_error(code, err, "--item-col", "placeID", absent=("item=",))
    code, _, err = run(capsys, "train", files["train"], "--item-col", "place", *TRAIN,
                       "-o", tmp_path / "m.npz")
    assert_error(code, err, "--item-col", "'place'", absent=("item=",))
    code, _, err = run(capsys, "train", files["train"], "--item-col", "9", *TRAIN,
                       "-o", tmp_path / "m.npz")
    assert_error(code, err, "--item-col 9", "5 columns", absent=("item=",))
    assert not (tmp_path / "m.npz").exists()


def test_columns_by_name_and_by_position_agree(files, tmp_path, capsys):
    by_name, by_position = tmp_path / "a.npz", tmp_path / "b.npz"
    assert run(capsys, "train", files["train"], *COLS, *TRAIN, "-o", by_name)[0] == 0
    code, _, err = run(capsys, "train", files["train"], "--user-col", "0", "--item-col", "1",
                       "--rating-col", "2", *TRAIN, "-o", by_position)
    assert code == 0, err
    a, b = load_model(by_name), load_model(by_position)
    assert a.item_ids_.tolist() == b.item_ids_.tolist() and "p900" in a.item_ids_.tolist()
    assert np.array_equal(a.item_factors_, b.item_factors_)
    # --rating-col picks another column: the model learns other numbers.
    other = tmp_path / "c.npz"
    assert run(capsys, "train", files["train"], *COLS[:4], "--rating-col", "food_rating",
               *TRAIN, "-o", other)[0] == 0
    assert not np.array_equal(load_model(other).item_factors_, a.item_factors_)


def test_sep_no_header_and_duplicates(tmp_path, capsys):
    rows = [("alice", "pizza", 4), ("alice", "sushi", 2), ("bob", "pizza", 5),
            ("bob", "tacos", 3), ("carol", "sushi", 4), ("carol", "tacos", 1)]
    headless = write_csv(tmp_path / "r.txt", rows, header=None, sep=";")
    out = tmp_path / "m.npz"
    # Sniffed, the first line is a header and 'alice' is no column name: the message says what
    # to pass.
    code, _, err = run(capsys, "train", headless, "--format", "csv", "--sep", ";", *TRAIN,
                       "-o", out)
    assert_error(code, err, "--user-col", absent=("user=",))
    code, _, err = run(capsys, "train", headless, "--format", "csv", "--sep", ";",
                       "--no-header", *TRAIN, "-o", out)
    assert code == 0, err
    model = load_model(out)
    assert model.user_ids_.tolist() == ["alice", "bob", "carol"]
    assert model.rating_range_ == (1.0, 5.0)
    code, _, err = run(capsys, "train", headless, "--format", "csv", "--no-header", *TRAIN,
                       "-o", out)
    assert_error(code, err, "--sep", absent=("sep=",))
    code, _, err = run(capsys, "train", headless, "--format", "csv", "--sep", ";", "--no-header",
                       "--user-col", "name", *TRAIN, "-o", out)
    assert_error(code, err, "--user-col 'name'", "no header", absent=("user=",))

    repeated = write_csv(tmp_path / "rep.csv", rows + [("alice", "pizza", 2)],
                         header="user,item,rating")
    code, _, err = run(capsys, "train", repeated, *TRAIN, "-o", out)
    assert_error(code, err, "--duplicates last", "--duplicates mean", absent=("duplicates=",))
    code, _, err = run(capsys, "train", repeated, "--duplicates", "mean", *TRAIN, "-o", out)
    assert code == 0, err
    assert load_model(out).predict("alice", "pizza") <= 5.0


def test_every_reading_command_takes_the_column_flags(files, model_path, capsys):
    code, out, err = run(capsys, "evaluate", model_path, files["test"], *COLS, "--json")
    assert code == 0, err
    assert json.loads(out)["n"] == 120
    code, _, err = run(capsys, "evaluate", model_path, files["test"], "--json")
    assert_error(code, err, "--item-col")


# -- 1. honest evaluation -----------------------------------------------------------------------
OVERFIT = ["--factors", "10", "--reg", "1e-5", "--max-iter", "80", "--normalize", "biases",
           "--seed", "3"]


def test_test_set_never_influences_training(files, tmp_path, capsys):
    plain, with_test = tmp_path / "plain.npz", tmp_path / "test.npz"
    assert run(capsys, "train", files["train"], *COLS, *OVERFIT, "-o", plain)[0] == 0
    code, out, err = run(capsys, "train", files["train"], *COLS, *OVERFIT, "--test",
                         files["test"], "-o", with_test)
    assert code == 0, err
    assert "val_rmse" not in err and "test RMSE" in out
    a, b = load_model(plain), load_model(with_test)
    assert np.array_equal(a.item_factors_, b.item_factors_)
    assert np.array_equal(a.user_factors_, b.user_factors_)
    assert a.n_iter_ == b.n_iter_ == b.best_iteration_


def test_validation_fraction_is_carved_from_training(files, tmp_path, capsys):
    path = tmp_path / "m.npz"
    code, out, err = run(capsys, "train", files["train"], *COLS, *OVERFIT,
                         "--validation-fraction", "0.2", "-o", path)
    assert code == 0, err
    assert "val_rmse" in err and "validation RMSE" in out
    model = load_model(path)
    # The same model from the library: the seeded carve, then fit(validation=...).
    ratings = read_ratings(files["train"], user="userID", item="placeID", rating="rating")
    train, validation = random_split(ratings, 0.2, random_state=[3, 1])
    expected = MatrixFactorization(10, reg=1e-5, max_iter=80, normalize="biases",
                                   random_state=3).fit(train, validation=validation)
    assert np.array_equal(model.item_factors_, expected.item_factors_)
    assert model.best_iteration_ == expected.best_iteration_ < model.n_iter_
    # The same carve with a test set split off first, for the same seed and training data.
    code, _, _ = run(capsys, "train", files["train"], *COLS, *OVERFIT, "--test", files["test"],
                     "--validation-fraction", "0.2", "-o", tmp_path / "t.npz")
    assert code == 0
    assert np.array_equal(load_model(tmp_path / "t.npz").item_factors_, model.item_factors_)
    code, _, err = run(capsys, "train", files["train"], *COLS, "--validation-fraction", "1.5",
                       "-o", path)
    assert_error(code, err, "--validation-fraction")


def test_save_split_reruns_evaluate_on_the_held_out_ratings(files, tmp_path, capsys):
    split_dir, path = tmp_path / "split", tmp_path / "m.npz"
    code, out, err = run(capsys, "train", files["all"], "--format", "csv", *COLS, *TRAIN,
                         "--test-fraction", "0.2", "--validation-fraction", "0.1",
                         "--save-split", split_dir, "-o", path)
    assert code == 0, err
    assert sorted(p.name for p in split_dir.iterdir()) == [
        "test.csv", "train.csv", "validation.csv"]
    everything = read_ratings(files["all"], format="csv", user="userID", item="placeID",
                              rating="rating")

    def triples(ratings):
        users, items, values = ratings.coo()
        return sorted(zip(ratings.user_ids[users].tolist(), ratings.item_ids[items].tolist(),
                          values.tolist()))

    parts = [read_ratings(split_dir / f"{name}.csv") for name in ("train", "validation", "test")]
    assert [p.nnz for p in parts] == [everything.nnz - int(everything.nnz * 0.2)
                                      - int((everything.nnz - int(everything.nnz * 0.2)) * 0.1),
                                      int((everything.nnz - int(everything.nnz * 0.2)) * 0.1),
                                      int(everything.nnz * 0.2)]
    assert sorted(t for p in parts for t in triples(p)) == triples(everything)
    printed = float(next(line for line in out.splitlines()
                         if line.startswith("test RMSE")).split()[2])
    code, out, err = run(capsys, "evaluate", path, split_dir / "test.csv", "--json")
    assert code == 0, err
    assert abs(json.loads(out)["rmse"] - printed) <= 5e-5


# -- 3. evaluate on any scale --------------------------------------------------------------------
def test_evaluate_threshold_follows_the_training_scale(files, model_path, capsys):
    code, out, err = run(capsys, "evaluate", model_path, files["test"], *COLS, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert load_model(model_path).rating_range_ == (0.0, 2.0)
    assert doc["relevance_threshold"] == 1.5 and doc["k"] == 10
    assert doc["precision_at_k"] is not None and doc["ndcg_at_k"] is not None  # not NaN
    assert doc["warnings"] == [] and "warning" not in err
    code, out, _ = run(capsys, "evaluate", model_path, files["test"], *COLS, "--json",
                       "--relevance-threshold", "2", "--k", "3")
    doc = json.loads(out)
    assert doc["relevance_threshold"] == 2.0 and doc["k"] == 3
    assert default_relevance_threshold((1, 5)) == 4.0
    assert default_relevance_threshold((0.5, 5)) == 3.875
    code, _, err = run(capsys, "evaluate", model_path, files["test"], *COLS, "--k", "0")
    assert_error(code, err, "--k")


def test_evaluate_warns_when_the_data_is_unknown_to_the_model(files, model_path, capsys):
    code, out, err = run(capsys, "evaluate", model_path, files["strangers"], *COLS, "--json")
    assert code == 0
    doc = json.loads(out)
    assert len(doc["warnings"]) == 1 and "100% of the test users" in doc["warnings"][0]
    assert err.startswith("fastcofi: warning: ") and "unknown to the model" in err
    code, out, err = run(capsys, "evaluate", model_path, files["strangers"], *COLS)
    assert code == 0 and "unknown to the model" in err


# -- 4. one meaning for a score -------------------------------------------------------------------
def test_recommend_min_ratings(files, model_path, capsys):
    model = load_model(model_path)
    counts = dict(zip(model.item_ids_.tolist(),
                      np.bincount(model.seen_indices_, minlength=len(model.item_ids_)).tolist()))
    assert counts["p900"] == 1
    users = model.user_ids_[:20]
    plain = [model.recommend(u, n=10)[0].tolist() for u in users]
    assert any(counts[i] < 3 for ids in plain for i in ids)  # rare items do reach the top
    for user in users:
        ids, _ = model.recommend(user, n=10, min_item_ratings=3)
        assert len(ids) == 10 and all(counts[i] >= 3 for i in ids.tolist())
        rare = [i for i, c in counts.items() if c < 3]
        expected = model.recommend(user, n=10, filter_items=rare)
        assert ids.tolist() == expected[0].tolist()
    code, out, err = run(capsys, "recommend", model_path, "--user", "U1000", "--min-ratings",
                         "3", "-n", "40", "--json")
    assert code == 0, err
    rows = json.loads(out)["recommendations"]
    assert rows and all(counts[r["item"]] >= 3 for r in rows)
    assert all(r["prediction"] == model.predict("U1000", r["item"]) for r in rows)
    # Exactly the items with at least N training ratings stay candidates, for every N.
    for threshold in range(max(counts.values()) + 2):
        ids, _ = model.recommend("U1000", n=len(counts), exclude_seen=False,
                                 min_item_ratings=threshold)
        assert set(ids.tolist()) == {i for i, c in counts.items() if c >= threshold}
    with pytest.raises(ValueError, match="min_item_ratings"):
        model.recommend("U1000", min_item_ratings=-1)
    code, _, err = run(capsys, "recommend", model_path, "--user", "U1000", "--min-ratings", "-2")
    assert_error(code, err, "--min-ratings")


def test_recommend_shows_score_and_prediction(model_path, capsys):
    model = load_model(model_path)
    code, out, err = run(capsys, "recommend", model_path, "--user", "U1003", "-n", "40", "--json")
    assert code == 0, err
    rows = json.loads(out)["recommendations"]
    # On a 0-2 scale some raw scores leave the range: prediction is then the clipped number.
    assert any(r["score"] != r["prediction"] for r in rows)
    for r in rows:
        assert r["prediction"] == model.predict("U1003", r["item"])
        assert r["prediction"] == pytest.approx(min(max(r["score"], 0.0), 2.0), abs=1e-12)
    _, out, _ = run(capsys, "recommend", model_path, "--user", "U1003", "-n", "2")
    assert "score" in out and "prediction" in out


def test_rows_without_a_user_clip_like_predict(model_path):
    from fastcofi.app.documents import recommendation_rows

    model = load_model(model_path)  # rating range (0, 2)
    ids = model.item_ids_[:4]
    rows = recommendation_rows(model, ids, np.array([2.5, 1.25, -0.5, -np.inf]))
    assert [r["score"] for r in rows] == [2.5, 1.25, -0.5, None]
    assert [r["prediction"] for r in rows] == [2.0, 1.25, 0.0, None]  # padding stays padding


def test_predict_std_needs_a_posterior(model_path, capsys, monkeypatch):
    model = load_model(model_path)
    with pytest.raises(ValueError, match="has no posterior"):
        model.predict("U1000", "p100", return_std=True)
    code, _, err = run(capsys, "predict", model_path, "--user", "U1000", "--item", "p100",
                       "--std")
    assert_error(code, err, "--std", "no posterior")
    # A model with a posterior answers both numbers (the contract the Gibbs solver fills).
    monkeypatch.setattr(MatrixFactorization, "_predictive_std",
                        lambda self, u, i: np.full(np.shape(u), 0.25), raising=False)
    pred, std = model.predict(["U1000", "U1001"], ["p100", "p101"], return_std=True)
    assert std.tolist() == [0.25, 0.25]
    assert pred.tolist() == model.predict(["U1000", "U1001"], ["p100", "p101"]).tolist()
    code, out, err = run(capsys, "predict", model_path, "--user", "U1000", "--item", "p100",
                         "--std", "--json")
    assert code == 0, err
    assert json.loads(out) == {"user": "U1000", "item": "p100", "known": True,
                               "prediction": model.predict("U1000", "p100"), "std": 0.25}


# -- 5. failures one can act on -------------------------------------------------------------------
def test_overflowing_rating_refused_at_read_time(tmp_path, capsys):
    rows = [("a", "x", 1), ("a", "y", 2), ("b", "x", "1e308"), ("b", "y", 3)]
    data = write_csv(tmp_path / "r.csv", rows, header="user,item,rating")
    code, _, err = run(capsys, "train", data, *TRAIN, "-o", tmp_path / "m.npz")
    assert_error(code, err, "r.csv:4:", "too large")
    assert not (tmp_path / "m.npz").exists()
    for engine in ("builtin", "pyarrow"):
        with pytest.raises(ValueError, match=r"r\.csv:4: rating 1e\+308 is too large"):
            read_ratings(data, engine=engine)


def test_non_finite_cost_stops_training_and_writes_nothing(files, tmp_path, capsys,
                                                           monkeypatch):
    def diverging_fit(self, ratings, *, callback=None, **kwargs):
        callback(1, {"cost": 10.0, "seconds": 0.0})
        callback(2, {"cost": float("inf"), "seconds": 0.0})
        raise AssertionError("training went on after a non-finite cost")

    monkeypatch.setattr(MatrixFactorization, "fit", diverging_fit)
    out = tmp_path / "m.npz"
    code, _, err = run(capsys, "train", files["train"], *COLS, *TRAIN, "--solver", "lbfgs",
                       "-o", out)
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]  # after the progress lines
    assert last.startswith("fastcofi: error: training diverged")
    assert "lbfgs" in last and "iteration 2" in last and "nothing was written" in last
    assert not out.exists()


def test_wide_unicode_and_garbage_messages(tmp_path, capsys):
    text = "user,item,rating\n1,1,4\n2,1,3\n"
    for encoding, name in (("utf-16", "UTF-16"), ("utf-16-le", "UTF-16"), ("utf-32", "UTF-32")):
        path = tmp_path / f"{encoding}.csv"
        path.write_bytes(text.encode(encoding))
        code, _, err = run(capsys, "train", path, "-o", tmp_path / "m.npz")
        assert_error(code, err, name, "re-save it as UTF-8", absent=("binary",))
    noise = tmp_path / "noise.txt"
    noise.write_bytes(b"\x1b[2J\x07" + bytes(range(0x80, 0xff)) * 4 + b"\n")
    code, _, err = run(capsys, "train", noise, "-o", tmp_path / "m.npz")
    assert_error(code, err)
    assert len(err.replace(str(noise), "")) < 300 and err.rstrip("\n").isprintable()
    assert "\x1b" not in err and "\\x1b" in err


def test_sigint_exits_130_after_the_checkpoint(tmp_path):
    rng = np.random.default_rng(0)
    # Enough that training is still running when the signal lands. With the JIT off a CG
    # iteration on 40,000 ratings took 14 s, and the test 41-47 s; on 4,000 about 1 s.
    n = 4000 if JIT_DISABLED else 40000
    rows = zip(rng.integers(0, 3000, n), rng.integers(0, 800, n), rng.integers(1, 6, n))
    data = tmp_path / "big.csv"
    data.write_text("user,item,rating\n" + "".join(f"{u},{i},{r}\n" for u, i, r in rows))
    checkpoint, out = tmp_path / "state.npz", tmp_path / "m.npz"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastcofi", "train", str(data), "--duplicates", "last",
         "--factors", "20", "--reg", "0.001", "--max-iter", "100000", "--checkpoint",
         str(checkpoint), "--checkpoint-every", "1000000", "-o", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp_path,
    )
    try:
        for _ in range(2000):  # bounded: the first progress line comes within seconds
            line = proc.stderr.readline()
            if not line or line.startswith("iter"):
                break
        assert line.startswith("iter"), line
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    lines = [ln for ln in err.splitlines() if not ln.startswith("iter")]
    assert len(lines) == 1 and lines[0].startswith("fastcofi: interrupted"), err
    assert "--resume" in lines[0] and "Traceback" not in err
    assert checkpoint.exists() and not out.exists()


def test_closed_stdout_pipe_is_quiet(model_path):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line is written
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "fastcofi", "recommend", str(model_path), "--user", "U1000"],
            stdout=write_end, stderr=subprocess.PIPE, text=True, env=ENV, timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 0 and proc.stderr == ""


# -- 7. finish -------------------------------------------------------------------------------------
def test_version_and_bare_command(capsys):
    from fastcofi import __version__

    code, out, err = run(capsys, "--version")
    assert code == 0 and out.strip() == f"fastcofi {__version__}"
    code, out, err = run(capsys)
    assert code == 2 and out == ""
    assert err.startswith("usage: fastcofi") and "train" in err and "serve" in err
    assert "error" not in err


def test_every_subcommand_and_argument_has_help():
    parser = _build_parser()
    sub = next(a for a in parser._actions if a.choices and "train" in a.choices)
    assert set(sub.choices) == {"demo", "train", "evaluate", "recommend", "predict", "info",
                                "serve"}
    helps = {a.dest: a.help for a in sub._choices_actions}
    for name, command in sub.choices.items():
        assert command.description and helps[name], name
        for action in command._actions:
            assert action.help, f"fastcofi {name}: {action.option_strings or action.dest}"


def test_info_shows_penalties_kept_iteration_and_training_data(files, tmp_path, capsys):
    path = tmp_path / "m.npz"
    assert run(capsys, "train", files["train"], *COLS, *OVERFIT, "--validation-fraction", "0.2",
               "-o", path)[0] == 0
    model = load_model(path)
    code, out, err = run(capsys, "info", path)
    assert code == 0, err
    assert f"kept iteration {model.best_iteration_}" in out
    assert f"{model.n_iter_} iterations" in out
    assert f"reg_ {model.reg_:.6g}" in out and f"reg_bias_ {model.reg_bias_:.6g}" in out
    assert f"{model.seen_indices_.shape[0]} ratings" in out and "[0, 2]" in out
    assert f"{model.user_ids_.shape[0]} users" in out
    code, out, _ = run(capsys, "info", path, "--json")
    doc = json.loads(out)
    assert doc["best_iteration"] == model.best_iteration_ and doc["reg"] == model.reg_
    assert doc["rating_range"] == [0.0, 2.0]


def test_usage_error_names_the_command_once(capsys):
    code, _, err = run(capsys, "train")
    assert_error(code, err, "train: ", absent=("fastcofi: error: fastcofi",))
