"""The `fastcofi` command line: every subcommand, JSON documents, exit codes and error lines."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastcofi.app.cli import main
from fastcofi.model_file import load_model

REPO = Path(__file__).resolve().parent.parent
N_USERS, N_ITEMS = 40, 30


def write_udata(path, n_users=N_USERS, n_items=N_ITEMS, per_user=12, seed=0):
    """A MovieLens u.data-like tab file (user, item, rating, timestamp) from planted factors."""
    rng = np.random.default_rng(seed)
    u, v = rng.normal(size=(n_users, 2)), rng.normal(size=(n_items, 2))
    lines = []
    for user in range(n_users):
        for item in rng.choice(n_items, per_user, replace=False):
            rating = int(np.clip(np.round(3 + u[user] @ v[item]), 1, 5))
            lines.append(f"{user + 1}\t{item + 1}\t{rating}\t{881250949 + len(lines)}\n")
    path.write_text("".join(lines))
    return path


def write_titles(path, n_items=N_ITEMS):
    path.write_text("".join(
        f"{i}|Movie {i} (1999)|01-Jan-1999||http://example.org|0|1\n" for i in range(1, n_items + 1)
    ), encoding="latin-1")
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_error(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fastcofi: error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


TRAIN = ["--factors", "3", "--reg", "1", "--max-iter", "15", "--normalize", "item_mean"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    return {
        "folder": folder,
        "ratings": write_udata(folder / "u.data"),
        "test": write_udata(folder / "u1.test", per_user=3, seed=1),
        "titles": write_titles(folder / "u.item"),
    }


@pytest.fixture(scope="module")
def model_path(data):
    """A model trained once through the CLI (with a held-out fraction and titles)."""
    path = data["folder"] / "model.npz"
    code = main(["train", str(data["ratings"]), *TRAIN, "--test-fraction", "0.2", "--seed", "3",
                 "--titles", str(data["titles"]), "-o", str(path)])
    assert code == 0
    return path


# -- train -----------------------------------------------------------------------------------------
def test_train_with_test_fraction(data, tmp_path, capsys):
    out_path = tmp_path / "m.npz"
    code, out, err = run(capsys, "train", data["ratings"], *TRAIN, "--test-fraction", "0.2",
                         "--validation-fraction", "0.2", "-o", out_path)
    assert code == 0, err
    progress = [line for line in err.splitlines() if line.startswith("iter")]
    assert progress and all("cost" in line and "elapsed" in line and "val_rmse" in line
                            for line in progress)
    assert "train RMSE" in out and "test RMSE" in out
    model = load_model(out_path)
    assert model.n_factors == 3 and model.normalize == "item_mean"
    assert model.item_factors_.shape == (N_ITEMS, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]


def test_train_is_seeded(data, tmp_path, capsys):
    for name in ("a.npz", "b.npz"):
        assert run(capsys, "train", data["ratings"], *TRAIN, "--test-fraction", "0.2", "--seed",
                   "5", "-o", tmp_path / name)[0] == 0
    a, b = load_model(tmp_path / "a.npz"), load_model(tmp_path / "b.npz")
    assert np.array_equal(a.item_factors_, b.item_factors_)


def test_train_with_test_file_als_biases(data, tmp_path, capsys):
    out_path = tmp_path / "m.npz"
    code, out, err = run(capsys, "train", data["ratings"], "--factors", "2", "--max-iter", "4",
                         "--solver", "als", "--normalize", "biases", "--test", data["test"],
                         "-o", out_path)
    assert code == 0, err
    assert "test RMSE" in out and "val_rmse" not in err  # the test set is not a validation set
    model = load_model(out_path)
    assert model.solver == "als" and model.item_bias_ is not None


def test_train_without_test_set(data, tmp_path, capsys):
    code, out, err = run(capsys, "train", data["ratings"], *TRAIN, "-o", tmp_path / "m.npz")
    assert code == 0, err
    assert "train RMSE" in out and "test RMSE" not in out
    assert "val_rmse" not in err and "iter" in err


def test_train_string_ids_csv(tmp_path, capsys):
    lines = ["user,item,rating"] + [
        f"u{u},m{i},{1 + (u * i) % 5}" for u in range(12) for i in range(10) if (u + i) % 3
    ]
    csv = tmp_path / "ratings.csv"
    csv.write_text("\n".join(lines) + "\n")
    model_path = tmp_path / "m.npz"
    code, _, err = run(capsys, "train", csv, "--format", "csv", *TRAIN, "-o", model_path)
    assert code == 0, err
    code, out, err = run(capsys, "recommend", model_path, "--user", "u1", "-n", "2", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["user"] == "u1" and len(doc["recommendations"]) == 2
    assert all(isinstance(r["item"], str) for r in doc["recommendations"])
    code, out, _ = run(capsys, "predict", model_path, "--user", "u2", "--item", "m0", "--json")
    assert json.loads(out)["known"] is True


# -- evaluate / recommend / predict / info ---------------------------------------------------------
def test_evaluate(model_path, data, capsys):
    code, out, err = run(capsys, "evaluate", model_path, data["test"], "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert {"rmse", "mae", "n"} <= set(doc)
    assert isinstance(doc["n"], int) and doc["n"] == N_USERS * 3
    from fastcofi.data.read import read_ratings
    from fastcofi.evaluate.metrics import mae, rmse

    test = read_ratings(data["test"])
    users, items, values = test.coo()
    pred = load_model(model_path).predict(test.user_ids[users], test.item_ids[items])
    assert (doc["rmse"], doc["mae"]) == (rmse(values, pred), mae(values, pred))
    code, out, _ = run(capsys, "evaluate", model_path, data["test"])
    assert code == 0 and "rmse" in out and "mae" in out


def test_recommend(model_path, capsys):
    code, out, err = run(capsys, "recommend", model_path, "--user", "7", "-n", "5", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["user"] == 7 and set(doc) == {"user", "recommendations"}
    recs = doc["recommendations"]
    assert len(recs) == 5
    model = load_model(model_path)
    for rec in recs:
        assert set(rec) == {"item", "score", "prediction", "title"}
        assert isinstance(rec["item"], int) and isinstance(rec["score"], float)
        assert rec["title"] == f"Movie {rec['item']} (1999)"
        # The prediction is what `predict` gives for the pair; the score is the raw ranking key.
        assert rec["prediction"] == model.predict(7, rec["item"])
        low, high = model.rating_range_
        assert rec["prediction"] == pytest.approx(min(max(rec["score"], low), high), abs=1e-12)
    assert [r["score"] for r in recs] == sorted((r["score"] for r in recs), reverse=True)
    ids, _ = load_model(model_path).recommend(7, n=5)
    assert [r["item"] for r in recs] == ids.tolist()
    code, out, _ = run(capsys, "recommend", model_path, "--user", "7", "-n", "3")
    assert code == 0 and len(out.strip().splitlines()) == 3 and "Movie" in out


def test_recommend_without_titles(data, tmp_path, capsys):
    path = tmp_path / "m.npz"
    assert run(capsys, "train", data["ratings"], *TRAIN, "-o", path)[0] == 0
    code, out, _ = run(capsys, "recommend", path, "--user", "1", "-n", "2", "--json")
    assert code == 0
    assert all(set(r) == {"item", "score", "prediction"}
               for r in json.loads(out)["recommendations"])


def test_predict(model_path, capsys):
    model = load_model(model_path)
    code, out, err = run(capsys, "predict", model_path, "--user", "3", "--item", "5", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc == {"user": 3, "item": 5, "prediction": model.predict(3, 5), "known": True}
    code, out, _ = run(capsys, "predict", model_path, "--user", "3", "--item", "999", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["known"] is False and doc["item"] == 999
    assert doc["prediction"] == model.predict(3, 999)
    code, out, _ = run(capsys, "predict", model_path, "--user", "12345", "--item", "5")
    assert code == 0 and "unknown user" in out


def test_info(model_path, capsys):
    code, out, err = run(capsys, "info", model_path, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert {"format_version", "n_users", "n_items", "n_factors", "params"} <= set(doc)
    assert doc["format_version"] == 2
    assert (doc["n_users"], doc["n_items"], doc["n_factors"]) == (N_USERS, N_ITEMS, 3)
    assert doc["params"]["reg"] == 1.0 and doc["params"]["max_iter"] == 15
    code, out, _ = run(capsys, "info", model_path)
    assert code == 0 and "version 2" in out and "3 factors" in out


def test_python_m_fastcofi_info(model_path):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "fastcofi", "info", str(model_path), "--json"],
                          capture_output=True, text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["n_items"] == N_ITEMS
    proc = subprocess.run([sys.executable, "-m", "fastcofi", "info", str(REPO / "README.md")],
                          capture_output=True, text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# -- errors ----------------------------------------------------------------------------------------
def test_unknown_and_malformed_ids(model_path, capsys):
    code, _, err = run(capsys, "recommend", model_path, "--user", "4242")
    assert_error(code, err, "unknown user 4242")
    code, _, err = run(capsys, "recommend", model_path, "--user", "abc")
    assert_error(code, err, "--user 'abc'", "integer")
    code, _, err = run(capsys, "predict", model_path, "--user", "1", "--item", "x1")
    assert_error(code, err, "--item 'x1'")


@pytest.mark.parametrize("argv, fragment", [
    (["nosuch"], "invalid choice"),
    (["recommend", "m.npz"], "--user"),
    (["train", "data.tsv"], "-o/--output"),
    (["train", "d", "-o", "m", "--factors", "many"], "invalid int value"),
    (["train", "d", "-o", "m", "--test", "t", "--test-fraction", "0.1"], "not allowed"),
    (["train", "d", "-o", "m", "--solver", "adam"], "invalid choice"),
])
def test_usage_errors(argv, fragment, capsys):
    code, out, err = run(capsys, *argv)
    assert_error(code, err, fragment)
    assert out == ""


@pytest.mark.parametrize("content, fragments", [
    ("1\t1\t5\n2\t1\tfive\n", ["u.data:2:", "rating"]),
    ("", ["empty"]),
    ("1\t1\t5\n1\t1\t4\n", ["u.data", "1"]),
    ("1\t1\tnan\n", ["u.data:1:"]),
])
def test_bad_ratings_file_writes_nothing(tmp_path, capsys, content, fragments):
    data = tmp_path / "u.data"
    data.write_text(content)
    out_path = tmp_path / "model.npz"
    code, _, err = run(capsys, "train", data, *TRAIN, "-o", out_path)
    assert_error(code, err, *fragments)
    assert not out_path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u.data"]


def test_failed_train_keeps_existing_model(tmp_path, capsys):
    data = tmp_path / "u.data"
    data.write_bytes(b"1\t1\t5\n\x00\xff\x13garbage\n")
    out_path = tmp_path / "model.npz"
    out_path.write_bytes(b"previous model")
    code, _, err = run(capsys, "train", data, *TRAIN, "-o", out_path)
    assert_error(code, err, str(data))
    assert out_path.read_bytes() == b"previous model"


def test_train_output_problems(data, tmp_path, capsys):
    code, _, err = run(capsys, "train", data["ratings"], *TRAIN, "-o", tmp_path / "no" / "m.npz")
    assert_error(code, err, "does not exist")
    code, _, err = run(capsys, "train", data["ratings"], *TRAIN, "-o", tmp_path)
    assert_error(code, err, "is a directory")
    code, _, err = run(capsys, "train", tmp_path / "missing.data", *TRAIN, "-o", tmp_path / "m.npz")
    assert_error(code, err, "missing.data")
    code, _, err = run(capsys, "train", data["ratings"], "--factors", "0", "-o", tmp_path / "m.npz")
    assert_error(code, err, "n_factors")
    code, _, err = run(capsys, "train", data["ratings"], *TRAIN, "--test-fraction", "1.5",
                       "-o", tmp_path / "m.npz")
    assert_error(code, err, "fraction")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [["info"], ["recommend", "--user", "1"],
                                     ["predict", "--user", "1", "--item", "1"]])
def test_bad_model_files(tmp_path, capsys, command):
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    code, _, err = run(capsys, command[0], empty, *command[1:])
    assert_error(code, err, str(empty), "empty")
    noise = tmp_path / "noise.npz"
    noise.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    code, _, err = run(capsys, command[0], noise, *command[1:])
    assert_error(code, err, str(noise))
    code, _, err = run(capsys, command[0], tmp_path / "missing.npz", *command[1:])
    assert_error(code, err, "missing.npz")
    code, _, err = run(capsys, command[0], tmp_path, *command[1:])
    assert_error(code, err, "directory")


def test_evaluate_bad_data(model_path, tmp_path, capsys):
    bad = tmp_path / "u.data"
    bad.write_text("1\t2\t3\n1\t2\n")
    code, out, err = run(capsys, "evaluate", model_path, bad, "--json")
    assert_error(code, err, "u.data:2")
    assert out == ""


def test_train_checkpoint_and_resume(data, tmp_path, capsys):
    ckpt = tmp_path / "state.npz"
    args = ["train", data["ratings"], "--factors", "3", "--solver", "cg", "--seed", "1"]
    code, _, err = run(capsys, *args, "--max-iter", "10", "--checkpoint", ckpt,
                       "--checkpoint-every", "5", "-o", tmp_path / "a.npz")
    assert code == 0, err
    assert ckpt.is_file()
    # 15: this fit converges at iteration 18, and the budget must be what ends it here.
    code, _, err = run(capsys, *args, "--max-iter", "15", "--checkpoint", ckpt, "--resume",
                       "-o", tmp_path / "b.npz")
    assert code == 0, err
    first_iter = [line for line in err.splitlines() if line.startswith("iter")][0]
    assert first_iter.split()[1] == "11"  # resumed after the 10 iterations already done
    assert load_model(tmp_path / "b.npz").n_iter_ == 15


def test_recommend_for_a_user_cluster(data, tmp_path, capsys):
    model_path = tmp_path / "m.npz"
    assert run(capsys, "train", data["ratings"], *TRAIN, "-o", model_path)[0] == 0
    code, out, err = run(capsys, "recommend", model_path, "--cluster", "1", "--clusters", "3",
                         "-n", "4", "--json")
    assert code == 0, err
    doc = json.loads(out)
    model = load_model(model_path)
    clusters = model.cluster_users(3, random_state=0)
    ids, scores = clusters.recommend(1, n=4)
    assert [r["item"] for r in doc["recommendations"]] == ids.tolist()
    assert doc["n_users"] == int((clusters.labels == 1).sum())
    code, _, err = run(capsys, "recommend", model_path, "--cluster", "5", "--clusters", "3")
    assert code == 2 and err.startswith("fastcofi: error:") and "cluster" in err
    assert run(capsys, "recommend", model_path, "--cluster", "1", "--user", "1")[0] == 2
