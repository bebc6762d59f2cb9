"""Model files: round trips, atomic writes, every bad file, and the version-1 fixtures."""

import json
import os
import stat
import warnings
from pathlib import Path

import numpy as np
import pytest

from fastcofi import MatrixFactorization, Ratings
from fastcofi import _model_format as fio
from fastcofi.app.demo import toy_ratings_with_new_user
from fastcofi.model_file import ModelFileError, load_model, model_info, save_model

FIXTURES = Path(__file__).resolve().parent / "fixtures"
NORMALIZE = ["item_mean", "biases", "none"]


def close(a, b, tol=1e-12):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return False
    return np.max(np.abs(a - b), initial=0.0) / (1 + np.max(np.abs(b), initial=0.0)) <= tol


def fit(ratings, **params):
    params = {
        "n_factors": 3, "reg": 1.0, "normalize": "item_mean", "reg_weighting": "none", "tol": 1e-4,
        "max_iter": 15, "random_state": 0, "n_threads": 1, **params,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MatrixFactorization(**params).fit(ratings)


def string_toy():
    ratings, _ = toy_ratings_with_new_user()
    users, items, values = ratings.coo()
    item_names = np.array([f"movie-{i:02d}" for i in ratings.item_ids[items]])
    return Ratings.from_arrays(
        np.array([f"user-{u}" for u in ratings.user_ids[users]]),
        item_names,
        values,
        all_items=np.append(np.unique(item_names), "movie-99"),  # movie-99: nobody rated it
    )


@pytest.fixture(scope="module")
def toy():
    return toy_ratings_with_new_user()


@pytest.fixture(scope="module", params=NORMALIZE)
def int_model(request, toy):
    return fit(toy[0], normalize=request.param)


@pytest.fixture(scope="module", params=NORMALIZE)
def str_model(request):
    return fit(string_toy(), normalize=request.param)


def round_trip(model, tmp_path, name="model.npz"):
    path = tmp_path / name
    model.save(path)
    return load_model(path)


def assert_same_model(a, b):
    for name in ("item_factors_", "user_factors_", "item_means_", "item_bias_", "user_bias_"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert np.array_equal(x, y), name
    for name in ("item_ids_", "user_ids_"):
        x, y = getattr(a, name), getattr(b, name)
        assert np.array_equal(x, y) and x.dtype.kind == y.dtype.kind, name
    assert a.global_mean_ == b.global_mean_
    assert a.rating_range_ == b.rating_range_
    assert a.n_iter_ == b.n_iter_ and a.best_iteration_ == b.best_iteration_
    assert a.history_ == b.history_
    # The file holds the solver and weighting training used, "auto" resolved.
    assert b.get_params() == {**a.get_params(), "solver": a.solver_,
                              "reg_weighting": a.reg_weighting_}
    assert (a.solver_, a.reg_weighting_) == (b.solver_, b.reg_weighting_)
    assert np.array_equal(a.seen_indptr_, b.seen_indptr_)
    assert np.array_equal(a.seen_indices_, b.seen_indices_)


# -- round trips ---------------------------------------------------------------------------------
def test_round_trip_int_ids(int_model, tmp_path):
    loaded = round_trip(int_model, tmp_path)
    assert_same_model(int_model, loaded)
    assert loaded.result_ is None
    assert loaded.item_ids_.dtype == np.int64
    users = np.array([1, 2, 6, 6, 99, 3])
    items = np.array([1, 5, 4, 99, 2, 77])
    assert np.array_equal(int_model.predict(users, items), loaded.predict(users, items))
    # ids typed as text are parsed as for the fitted model
    assert loaded.predict("6", "4") == int_model.predict(6, 4)
    before = int_model.recommend(6, n=5)
    after = loaded.recommend(6, n=5)
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])
    for exclude in (True, False):
        b = int_model.recommend(np.array([1, 6]), n=20, exclude_seen=exclude)
        a = loaded.recommend(np.array([1, 6]), n=20, exclude_seen=exclude)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_round_trip_string_ids(str_model, tmp_path):
    loaded = round_trip(str_model, tmp_path)
    assert_same_model(str_model, loaded)
    assert loaded.item_ids_.dtype.kind == "U" and loaded.user_ids_.dtype.kind == "U"
    users = np.array(["user-1", "user-6", "nobody", "user-2"])
    items = np.array(["movie-01", "movie-99", "movie-03", "unknown"])
    assert np.array_equal(str_model.predict(users, items), loaded.predict(users, items))
    before = str_model.recommend("user-6", n=20)
    after = loaded.recommend("user-6", n=20)
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])
    ids, _ = loaded.recommend(np.array(["user-1", "user-6"]), n=20)
    assert ids.shape == (2, 20) and (ids == "").any()  # padding: fewer candidates than n


def test_round_trip_of_a_default_model_keeps_the_resolved_penalties(toy, tmp_path):
    model = fit(toy[0], reg=None, reg_bias=None, normalize="biases")
    loaded = round_trip(model, tmp_path)
    assert loaded.reg is None and loaded.reg_bias is None
    assert loaded.reg_ == model.reg_ > 0 and loaded.reg_bias_ == model.reg_bias_ == 0.8
    items, values = model.item_ids_[:3], np.array([5.0, 1.0, 4.0])
    for a, b in zip(loaded.fold_in(items, values), model.fold_in(items, values)):
        np.testing.assert_array_equal(a, b)
    info = model_info(tmp_path / "model.npz")
    assert info["params"]["reg"] is None and info["reg"] == model.reg_


def test_file_holds_arrays_only_and_no_objects(int_model, tmp_path):
    path = tmp_path / "m.npz"
    int_model.save(path)
    with np.load(path, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    assert str(arrays["fastcofi_format"]) == "fastcofi-model"
    assert int(arrays["format_version"]) == 2
    assert float(arrays["reg"]) == int_model.reg_
    assert float(arrays["reg_bias"]) == int_model.reg_bias_
    assert all(a.dtype != object for a in arrays.values())
    expected = {"item_mean": {"item_means"}, "biases": {"item_bias", "user_bias"}, "none": set()}
    present = {"item_means", "item_bias", "user_bias"} & set(arrays)
    assert present == expected[int_model.normalize]
    assert arrays["seen_indptr"].dtype == np.int64
    assert arrays["seen_indptr"].shape == (int_model.user_factors_.shape[0] + 1,)


def test_loaded_arrays_are_read_only_and_serving_works(tmp_path, toy):
    model = fit(toy[0])
    loaded = round_trip(model, tmp_path)
    for arr in (loaded.item_factors_, loaded.user_factors_, loaded.item_means_, loaded.seen_indices_):
        assert not arr.flags.writeable
    ids, _ = loaded.recommend(6, n=3)
    assert np.array_equal(ids, model.recommend(6, n=3)[0])
    assert np.isfinite(loaded.predict([1, 2], [3, 4])).all()


def test_titles_round_trip(tmp_path, toy):
    ratings, titles = toy
    model = fit(ratings)
    model.titles_ = {**titles, 12345: "not in the model"}
    loaded = round_trip(model, tmp_path)
    assert loaded.titles_ == titles
    no_titles = round_trip(fit(ratings), tmp_path, "plain.npz")
    assert not hasattr(no_titles, "titles_")


def test_titles_keyed_by_text_for_string_ids(tmp_path):
    model = fit(string_toy())
    model.titles_ = {"movie-01": "First", "movie-99": "Unrated", "other": "dropped"}
    assert round_trip(model, tmp_path).titles_ == {"movie-01": "First", "movie-99": "Unrated"}


def test_validation_history_round_trip(tmp_path, toy):
    ratings = toy[0]
    users, items, values = ratings.coo()
    val = Ratings.from_arrays(ratings.user_ids[users[:5]], ratings.item_ids[items[:5]], values[:5])
    model = fit(ratings, max_iter=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(ratings, validation=val)
    loaded = round_trip(model, tmp_path)
    assert set(loaded.history_) == {"cost", "seconds", "val_rmse"}
    assert loaded.history_ == model.history_
    assert loaded.best_iteration_ == model.best_iteration_


def test_params_with_clip_range_and_generator_seed(tmp_path, toy):
    model = fit(toy[0], clip=(1.5, 9.0), random_state=np.random.default_rng(3))
    loaded = round_trip(model, tmp_path)
    assert loaded.clip == (1.5, 9.0)
    assert loaded.random_state is None  # a Generator cannot be stored
    assert np.array_equal(loaded.predict([1, 6], [1, 4]), model.predict([1, 6], [1, 4]))


def test_path_used_exactly_and_overwrite_keeps_mode(tmp_path, toy):
    model = fit(toy[0])
    path = tmp_path / "model.bin"
    save_model(model, path)
    assert path.is_file() and not (tmp_path / "model.bin.npz").exists()
    os.chmod(path, 0o640)
    save_model(model, str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]
    assert np.array_equal(load_model(path).item_factors_, model.item_factors_)


def test_unfitted_model_cannot_be_saved(tmp_path):
    with pytest.raises(AttributeError, match="not fitted"):
        MatrixFactorization().save(tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()


def test_model_info(tmp_path, toy):
    model = fit(toy[0], normalize="biases")
    model.titles_ = toy[1]
    path = tmp_path / "m.npz"
    model.save(path)
    info = model_info(path)
    assert info["format_version"] == 2
    assert (info["n_users"], info["n_items"], info["n_factors"]) == (6, 10, 3)
    assert info["params"]["normalize"] == "biases" and info["n_titles"] == 10
    assert info["n_ratings"] == toy[0].nnz


# -- atomic writes -------------------------------------------------------------------------------
def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_failed_write_leaves_old_file_and_no_temp(tmp_path, toy, monkeypatch):
    model = fit(toy[0])
    path = tmp_path / "model.npz"
    path.write_bytes(b"the old model")

    def half_write(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fio.np, "savez", half_write)
    with pytest.raises(OSError, match="No space left"):
        model.save(path)
    assert path.read_bytes() == b"the old model"
    assert _leftovers(tmp_path) == ["model.npz"]


def test_failed_write_creates_nothing(tmp_path, toy, monkeypatch):
    model = fit(toy[0])

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fio.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        model.save(tmp_path / "new.npz")
    assert _leftovers(tmp_path) == []


def test_save_to_directory_or_missing_folder(tmp_path, toy):
    model = fit(toy[0])
    with pytest.raises(IsADirectoryError):
        model.save(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model.save(tmp_path / "no" / "such" / "m.npz")
    assert _leftovers(tmp_path) == []


# -- bad files -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_bytes(tmp_path_factory, toy):
    path = tmp_path_factory.mktemp("good") / "m.npz"
    model = fit(toy[0], normalize="biases")
    model.titles_ = toy[1]
    model.save(path)
    return path.read_bytes()


def members(data, tmp_path):
    path = tmp_path / "source.npz"
    path.write_bytes(data)
    with np.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def write_npz(tmp_path, arrays, name="bad.npz"):
    path = tmp_path / name
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def assert_bad(path, *fragments):
    with pytest.raises(ModelFileError) as info:
        load_model(path)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    assert isinstance(info.value, ValueError)
    return message


def test_empty_file(tmp_path):
    path = tmp_path / "empty.npz"
    path.write_bytes(b"")
    assert_bad(path, "empty")


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.95])
def test_truncated_file(tmp_path, good_bytes, fraction):
    path = tmp_path / "cut.npz"
    path.write_bytes(good_bytes[: int(len(good_bytes) * fraction)])
    assert_bad(path, "truncated")


def test_corrupted_byte_in_a_member(tmp_path, good_bytes):
    data = bytearray(good_bytes)
    at = data.index(b"item_factors.npy") + 300  # inside the factors' float data
    data[at] ^= 0xFF
    path = tmp_path / "flipped.npz"
    path.write_bytes(bytes(data))
    assert_bad(path, "corrupted")


@pytest.mark.parametrize("prefix", [b"", b"PK\x03\x04"])
def test_random_bytes(tmp_path, prefix):
    path = tmp_path / "noise.npz"
    path.write_bytes(prefix + np.random.default_rng(0).bytes(5000))
    assert_bad(path)


def test_npy_file_is_not_a_model(tmp_path):
    path = tmp_path / "array.npy"
    np.save(path, np.arange(5))
    assert_bad(path, "not a fastcofi model")


def test_foreign_npz(tmp_path):
    path = write_npz(tmp_path, {"weights": np.ones((3, 2)), "bias": np.zeros(2)})
    assert_bad(path, "not a fastcofi model", "fastcofi_format")


def test_wrong_marker(tmp_path, good_bytes):
    arrays = members(good_bytes, tmp_path)
    arrays["fastcofi_format"] = np.array("something-else")
    assert_bad(write_npz(tmp_path, arrays), "format marker")


class _Exploit:
    """Unpickling this object would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("member", ["item_factors", "params", "zz_extra"])
def test_pickled_object_array_never_runs(tmp_path, good_bytes, member):
    marker = tmp_path / "PWNED"
    arrays = members(good_bytes, tmp_path)
    arrays[member] = np.array([_Exploit(marker), 1], dtype=object)
    path = tmp_path / "evil.npz"
    with open(path, "wb") as f:
        np.savez(f, **arrays)  # numpy pickles the object array into the member
    assert b"PWNED" in path.read_bytes()
    assert_bad(path, "pickle", repr(member))
    assert not marker.exists()


def test_pickle_file_never_runs(tmp_path):
    import pickle

    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Exploit(marker)))
    assert_bad(path, "not a fastcofi model")
    assert not marker.exists()


def test_newer_format_version(tmp_path, good_bytes):
    arrays = members(good_bytes, tmp_path)
    arrays["format_version"] = np.array(7, dtype=np.int64)
    message = assert_bad(write_npz(tmp_path, arrays), "version 7", "versions 1, 2")
    assert "newer" in message


def test_version_1_file_takes_penalties_from_params(tmp_path, good_bytes):
    arrays = members(good_bytes, tmp_path)
    params = json.loads(str(arrays["params"]))
    params.update(reg=0.7, reg_bias=None)
    arrays.update(format_version=np.array(1, dtype=np.int64), params=np.array(json.dumps(params)))
    del arrays["reg"], arrays["reg_bias"]
    loaded = load_model(write_npz(tmp_path, arrays))
    assert (loaded.reg_, loaded.reg_bias_) == (0.7, 0.7)
    params["reg"] = None
    arrays["params"] = np.array(json.dumps(params))
    assert_bad(write_npz(tmp_path, arrays), "version 1", "reg")


def test_fold_in_uses_the_stored_penalties(tmp_path, good_bytes):
    arrays = members(good_bytes, tmp_path)
    plain = load_model(write_npz(tmp_path, arrays, "plain.npz"))
    arrays["reg"] = np.array(50.0)
    strong = load_model(write_npz(tmp_path, arrays, "strong.npz"))
    items, values = plain.item_ids_[:4], np.array([5.0, 1.0, 4.0, 2.0])
    assert strong.reg_ == 50.0 and plain.reg_ == 1.0
    assert np.linalg.norm(strong.fold_in(items, values)[0]) < np.linalg.norm(
        plain.fold_in(items, values)[0])


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"item_factors": None}, "'item_factors' is missing"),
        ({"user_bias": None}, "'user_bias' is missing"),
        ({"seen_indices": None}, "'seen_indices' is missing"),
        ({"format_version": np.array(1.0)}, "format_version"),
        ({"item_factors": np.ones((9, 3))}, "expected 10"),
        ({"user_factors": np.ones((6, 2))}, "same number of factors"),
        ({"item_factors": np.ones(30)}, "2-D"),
        ({"item_factors": np.full((10, 3), "x")}, "'item_factors' has dtype"),
        ({"item_bias": np.full(10, np.nan)}, "NaN"),
        ({"item_ids": np.arange(10)[::-1].astype(np.int64)}, "not sorted"),
        ({"item_ids": np.zeros(10)}, "integer or unicode ids"),
        ({"seen_indptr": np.zeros(3, dtype=np.int64)}, "n_users + 1"),
        ({"seen_indptr": np.arange(7, dtype=np.int64)[::-1].copy()}, "CSR row pointer"),
        ({"seen_indices": np.full(32, 10, dtype=np.int32)}, "outside [0, 10)"),
        ({"rating_range": np.array([5.0, 1.0])}, "rating_range"),
        ({"reg": None}, "'reg' is missing"),
        ({"reg_bias": np.array(-1.0)}, "reg and reg_bias must be >= 0"),
        ({"params": np.array("{not json")}, "JSON"),
        ({"params": np.array('{"n_factors": -1}')}, "invalid hyperparameters"),
        ({"normalize": np.array("zscore")}, "invalid hyperparameters"),
        ({"history_cost": np.ones(3)}, "history_"),
        ({"title_texts": np.array(["only one"])}, "one per title id"),
        ({"title_ids": np.array([f"m{i}" for i in range(10)])}, "different types"),
    ],
)
def test_malformed_members(tmp_path, good_bytes, change, fragment):
    arrays = members(good_bytes, tmp_path)
    for name, value in change.items():
        if value is None:
            del arrays[name]
        else:
            arrays[name] = value
    assert_bad(write_npz(tmp_path, arrays), fragment)


def test_non_npy_member(tmp_path, good_bytes):
    import zipfile

    path = tmp_path / "extra.npz"
    path.write_bytes(good_bytes)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("readme.txt", "hello")
    assert_bad(path, "readme.txt")


def test_directory_and_missing_path(tmp_path):
    assert_bad(tmp_path, "directory")
    missing = tmp_path / "nope.npz"
    with pytest.raises(FileNotFoundError) as info:
        load_model(missing)
    assert str(missing) in str(info.value)


# -- version 1 fixtures (written once; later versions must still read them) ---------------------
def test_fixture_v1_item_mean_int_ids():
    model = load_model(FIXTURES / "model_v1.npz")
    assert model.normalize == "item_mean" and model.n_factors == 3
    assert model.item_ids_.tolist() == list(range(1, 11))
    assert model.user_ids_.tolist() == list(range(1, 7))
    assert model.titles_[1] == "Harold and Kumar Escape From Guantanamo Bay (2008)"
    assert len(model.titles_) == 10
    pairs = [(1, 1), (6, 4), (6, 1), (3, 10), (2, 7), (99, 4), (6, 99)]
    expected = [7.6878144392725, 10.0, 6.696223495998753, 6.006849034271539, 5.880214772139331,
                9.6, 6.6875]
    users, items = zip(*pairs)
    assert close(model.predict(list(users), list(items)), expected)
    ids, scores = model.recommend(6, n=4)
    assert ids.tolist() == [4, 3, 2, 10]
    assert close(scores, [10.082959794715446, 7.724795463796486, 7.7147006952134305,
                          7.201552957408558])
    assert model.recommend(6, n=10)[0].shape == (7,)  # the user's three movies are excluded


def test_fixture_v1_biases_string_ids():
    model = load_model(FIXTURES / "model_v1_biases.npz")
    assert model.normalize == "biases" and model.item_bias_ is not None
    assert model.item_ids_.dtype.kind == "U"
    pairs = [("u1", "m01"), ("u6", "m04"), ("u3", "m10"), ("u2", "m07"), ("u99", "m04"),
             ("u6", "m99")]
    expected = [7.866101976786065, 9.492620106544178, 6.739807420448617, 6.200556489334392,
                9.276283410659222, 6.468888418822855]
    users, items = zip(*pairs)
    assert close(model.predict(list(users), list(items)), expected)
    assert not hasattr(model, "titles_")
