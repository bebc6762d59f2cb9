"""`fastcofi.distributed`: the objective and training on a 2-worker Dask cluster (loopback only).

One module-scoped `LocalCluster` (two worker processes) serves every test; the worker-kill test
runs last and waits for the nanny to bring the worker back.
"""

import os

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

import fastcofi._params
from fastcofi import MatrixFactorization, Ratings
from fastcofi import distributed as fd
from fastcofi.app.cli import main
from fastcofi.model_file import load_model
from fastcofi.train.objective import FlatObjective, cost_and_grad

RTOL = 1e-9
# Short fits stop at max_iter on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::fastcofi.ConvergenceWarning")


@pytest.fixture(autouse=True)
def joint_scipy_solvers(monkeypatch):
    """A cluster runs CG and L-BFGS on both sides' curvature-rescaled parameters (the projected
    solvers' row solves need the ratings in one process): the single-machine references here
    take that path too."""
    monkeypatch.setattr(MatrixFactorization, "_precondition", "curvature")


@pytest.fixture(scope="module")
def cluster():
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None,
    )
    yield cluster
    cluster.close()


@pytest.fixture(scope="module")
def client(cluster):
    client = distributed.Client(cluster)
    yield client
    client.close()


def make_ratings(seed=0, n_users=120, n_items=70, nnz=1500, string_ids=False, declared=5):
    """Random ratings, with ``declared`` users and items that have no rating."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, nnz)
    items = rng.integers(0, n_items, nnz)
    values = rng.integers(1, 6, nnz).astype(np.float64)
    all_users, all_items = np.arange(n_users + declared), np.arange(n_items + declared - 1)
    if string_ids:
        return Ratings.from_arrays(
            [f"u{u}" for u in users], [f"i{i}" for i in items], values, duplicates="last",
            all_users=[f"u{u}" for u in all_users], all_items=[f"i{i}" for i in all_items],
        )
    if not declared:
        return Ratings.from_arrays(users, items, values, duplicates="last")
    return Ratings.from_arrays(
        users, items, values, duplicates="last", all_users=all_users, all_items=all_items
    )


@pytest.fixture(scope="module")
def ratings():
    return make_ratings()


@pytest.fixture(scope="module", params=["items", "users"])
def sharded(request, client, ratings):
    with fd.scatter(ratings, client, by=request.param) as handle:
        yield handle


def assert_close(actual, expected, rtol=RTOL):
    """Relative to the array's scale: entries near zero are sums that cancel."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    scale = max(float(np.max(np.abs(expected))), 1e-300)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def test_shards_cover_the_ratings(sharded, ratings):
    assert sharded.n_shards == 2
    assert sharded.nnz == ratings.nnz
    np.testing.assert_array_equal(sharded.user_ids, ratings.user_ids)
    np.testing.assert_array_equal(sharded.item_ids, ratings.item_ids)
    np.testing.assert_array_equal(sharded.item_counts, np.diff(ratings.by_item[0]))
    np.testing.assert_array_equal(sharded.user_counts, np.diff(ratings.by_user[0]))
    # Blocks balanced by ratings, not by items.
    counts = sharded.item_counts if sharded.by == "items" else sharded.user_counts
    per_shard = np.add.reduceat(counts, sharded.bounds[:-1])
    assert abs(int(per_shard[0]) - int(per_shard[1])) < 0.2 * ratings.nnz
    back = sharded.to_ratings()
    assert back is ratings


@pytest.mark.parametrize("k", [1, 5])
def test_cost_and_grad_matches_single_machine(sharded, ratings, k):
    rng = np.random.default_rng(k)
    X = rng.normal(size=(ratings.n_items, k))
    Theta = rng.normal(size=(ratings.n_users, k))
    cost, gx, gt = fd.cost_and_grad(X, Theta, sharded, 0.7)
    ref_cost, ref_gx, ref_gt = cost_and_grad(X, Theta, ratings, 0.7)
    assert cost == pytest.approx(ref_cost, rel=RTOL)
    assert_close(gx, ref_gx)
    assert_close(gt, ref_gt)
    # Rows without ratings get only the penalty's gradient.
    empty_users = np.diff(ratings.by_user[0]) == 0
    assert empty_users.any()
    np.testing.assert_array_equal(gt[empty_users], 0.7 * Theta[empty_users])


def test_cost_and_grad_scatters_a_ratings_for_one_call(client):
    ratings = make_ratings(seed=3, string_ids=True)
    rng = np.random.default_rng(0)
    X, Theta = rng.normal(size=(ratings.n_items, 3)), rng.normal(size=(ratings.n_users, 3))
    cost, gx, gt = fd.cost_and_grad(X, Theta, ratings, 0.2, client=client)
    ref = cost_and_grad(X, Theta, ratings, 0.2)
    assert cost == pytest.approx(ref[0], rel=RTOL)
    assert_close(gx, ref[1])
    assert_close(gt, ref[2])


def test_no_client_starts_a_local_cluster(ratings):
    rng = np.random.default_rng(1)
    X, Theta = rng.normal(size=(ratings.n_items, 2)), rng.normal(size=(ratings.n_users, 2))
    cost, gx, gt = fd.cost_and_grad(X, Theta, ratings, 0.3)
    ref = cost_and_grad(X, Theta, ratings, 0.3)
    assert cost == pytest.approx(ref[0], rel=RTOL)
    assert_close(gx, ref[1])
    assert_close(gt, ref[2])


@pytest.mark.parametrize("learn_biases", [False, True])
@pytest.mark.parametrize("reg_weighting", ["none", "count", "sqrt"])
def test_flat_objective_matches_single_machine(sharded, ratings, learn_biases, reg_weighting):
    rng = np.random.default_rng(7)
    k = 4
    kwargs = {
        "mu": 3.1, "learn_biases": learn_biases, "reg_bias": 0.3, "reg_weighting": reg_weighting,
        "item_bias": None if learn_biases else rng.normal(size=ratings.n_items),
    }
    local = FlatObjective(ratings, k, 0.2, **kwargs)
    remote = fd.DistributedObjective(sharded, k, 0.2, **kwargs)
    assert remote.size == local.size
    params = rng.normal(size=local.size)
    cost, grad = remote(params)
    ref_cost, ref_grad = local(params)
    assert cost == pytest.approx(ref_cost, rel=RTOL)
    # Per block of the layout, each at its own scale.
    for part, ref_part in zip(remote.unpack(grad), local.unpack(ref_grad)):
        if learn_biases or part.ndim == 2:
            assert_close(part, ref_part)
    # A fresh gradient per call (scipy's CG keeps the previous one).
    assert remote(params)[1] is not grad


@pytest.mark.parametrize("solver", ["cg", "lbfgs"])
def test_fit_gives_the_single_machine_model(sharded, ratings, solver):
    params = {"n_factors": 3, "solver": solver, "max_iter": 25, "tol": 0, "random_state": 4}
    ref = MatrixFactorization(**params).fit(ratings)
    model = MatrixFactorization(**params)
    assert fd.fit(model, sharded) is model
    assert model.n_iter_ == ref.n_iter_
    np.testing.assert_allclose(model.history_["cost"], ref.history_["cost"], rtol=1e-7)
    for name in ("item_factors_", "user_factors_", "item_bias_", "user_bias_"):
        np.testing.assert_allclose(getattr(model, name), getattr(ref, name), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(model.user_ids_, ref.user_ids_)
    assert model.global_mean_ == ref.global_mean_
    assert model.rating_range_ == ref.rating_range_
    np.testing.assert_array_equal(model.seen_indptr_, ref.seen_indptr_)
    np.testing.assert_array_equal(model.seen_indices_, ref.seen_indices_)


def test_a_cluster_takes_the_curvature_path_where_a_local_fit_projects(sharded, ratings,
                                                                       monkeypatch):
    monkeypatch.setattr(MatrixFactorization, "_precondition", True)
    params = {"n_factors": 3, "max_iter": 8, "tol": 0, "random_state": 4}
    local = MatrixFactorization(**params).fit(ratings)
    curvature = MatrixFactorization(**params)
    curvature._precondition = "curvature"
    curvature.fit(ratings)
    model = fd.fit(MatrixFactorization(**params), sharded)
    np.testing.assert_allclose(model.history_["cost"], curvature.history_["cost"], rtol=1e-7)
    # The local fit solves a side exactly at every evaluation: another path to the minimum.
    assert not np.allclose(local.history_["cost"], curvature.history_["cost"], rtol=1e-3)


def test_fit_item_mean_normalization_and_validation(sharded, ratings):
    params = {"n_factors": 2, "normalize": "item_mean", "reg_weighting": "none", "max_iter": 15,
                  "tol": 0, "random_state": 1}
    validation = make_ratings(seed=9)
    ref = MatrixFactorization(**params).fit(ratings, validation=validation)
    model = fd.fit(MatrixFactorization(**params), sharded, validation=validation)
    np.testing.assert_allclose(model.item_means_, ref.item_means_)
    np.testing.assert_allclose(model.item_factors_, ref.item_factors_, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(model.history_["val_rmse"], ref.history_["val_rmse"], rtol=1e-7)


def test_fit_refuses_als(sharded):
    with pytest.raises(ValueError, match="'cg' or 'lbfgs'.*'als'"):
        fd.fit(MatrixFactorization(solver="als"), sharded)


def test_auto_trains_with_cg_on_a_cluster_whatever_the_size(sharded, monkeypatch):
    """solver="auto" would pick ALS from `LARGE` ratings (lowered here), which a cluster cannot
    run: the cluster's objective drives CG, with the size's penalty weighting."""
    monkeypatch.setattr(fastcofi._params, "LARGE", 10)
    model = fd.fit(MatrixFactorization(n_factors=2, max_iter=3, random_state=0), sharded)
    assert (model.solver_, model.reg_weighting_) == ("cg", "count")
    assert len(model.history_["cost"]) == model.n_iter_ == 3


def test_input_errors(client, sharded):
    with pytest.raises(TypeError, match="expected a fastcofi.Ratings, a dask DataFrame"):
        fd.scatter({"user": [1]}, client)
    with pytest.raises(ValueError, match="n_shards must be a positive integer"):
        fd.scatter(make_ratings(), client, n_shards=0)
    with pytest.raises(ValueError, match="expected item_factors with 74 rows"):
        fd.cost_and_grad(np.zeros((3, 2)), np.zeros((sharded.n_users, 2)), sharded, 0.1)
    with pytest.raises(ValueError, match="by must be 'items' or 'users', found 'rows'"):
        fd.scatter(make_ratings(), client, by="rows")
    with pytest.raises(TypeError, match="client must be None, a dask.distributed.Client"):
        fd.scatter(make_ratings(), client=3)


def frame_of(ratings):
    pd = pytest.importorskip("pandas")
    users, items, values = ratings.coo()
    frame = pd.DataFrame({
        "user": ratings.user_ids[users], "item": ratings.item_ids[items], "rating": values,
    })
    # Shuffled, so partitions hold arbitrary mixes of items.
    return frame.sample(frac=1.0, random_state=0).reset_index(drop=True)


def check_same_ratings(sharded, ratings):
    """Same ids, same counts, and the same objective as the in-memory ratings (rated ids only:
    files and frames cannot declare ids without ratings)."""
    np.testing.assert_array_equal(sharded.user_ids, ratings.user_ids)
    np.testing.assert_array_equal(sharded.item_ids, ratings.item_ids)
    assert sharded.nnz == ratings.nnz
    rng = np.random.default_rng(2)
    X, Theta = rng.normal(size=(ratings.n_items, 3)), rng.normal(size=(ratings.n_users, 3))
    cost, gx, gt = fd.cost_and_grad(X, Theta, sharded, 0.4)
    ref = cost_and_grad(X, Theta, ratings, 0.4)
    assert cost == pytest.approx(ref[0], rel=RTOL)
    assert_close(gx, ref[1])
    assert_close(gt, ref[2])
    back = sharded.to_ratings()
    for a, b in zip(back.by_item + back.by_user, ratings.by_item + ratings.by_user):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def rated_only():
    return make_ratings(seed=5, n_users=60, n_items=40, nnz=900, declared=0)


def test_input_as_csv_and_parquet_paths(client, rated_only, tmp_path):
    pytest.importorskip("pyarrow")
    frame = frame_of(rated_only)
    thirds = np.array_split(np.arange(len(frame)), 3)
    paths = []
    for n, rows in enumerate(thirds):
        part = frame.iloc[rows]
        if n == 1:
            path = tmp_path / f"part{n}.parquet"
            part.to_parquet(path)
        else:
            path = tmp_path / f"part{n}.csv"
            part.to_csv(path, index=False)
        paths.append(str(path))
    with fd.scatter(paths, client, n_shards=3) as sharded:
        assert sharded.n_shards == 3
        assert sharded.ratings is None
        check_same_ratings(sharded, rated_only)


@pytest.mark.parametrize("by", ["items", "users"])
def test_input_as_dask_dataframe(client, rated_only, by):
    dd = pytest.importorskip("dask.dataframe")
    ddf = dd.from_pandas(frame_of(rated_only), npartitions=4)
    with fd.scatter(ddf, client, by=by) as sharded:
        assert sharded.by == by
        check_same_ratings(sharded, rated_only)
        params = {"n_factors": 2, "max_iter": 10, "tol": 0, "random_state": 0}
        ref = MatrixFactorization(**params).fit(rated_only)
        model = fd.fit(MatrixFactorization(**params), sharded)
        np.testing.assert_allclose(model.user_factors_, ref.user_factors_, rtol=1e-5, atol=1e-7)


def test_dataframe_duplicates_and_columns(client):
    pd = pytest.importorskip("pandas")
    dd = pytest.importorskip("dask.dataframe")
    frame = pd.DataFrame({"u": ["a", "b", "a"], "i": ["x", "x", "x"], "r": [1.0, 2.0, 5.0]})
    ddf = dd.from_pandas(frame, npartitions=2)
    with pytest.raises(ValueError, match="duplicated rating for user 'a' and item 'x'"):
        fd.scatter(ddf, client, user="u", item="i", rating="r")
    with fd.scatter(ddf, client, user="u", item="i", rating="r", duplicates="last") as sharded:
        assert sharded.nnz == 2
        assert sharded.to_ratings().values.tolist() == [5.0, 2.0]
    with pytest.raises(ValueError, match="no user column 'user'"):
        fd.scatter(ddf, client)


# Three files where (1, 10) is rated 2, 1 and 1 times and (2, 20) 1, 2 and 0 times: a mean of
# per-file means (2.0 and 3.75) differs from the mean of all the rows (1.875 and 4.0).
REPEATED_FILES = [
    [(1, 10, 1.0), (1, 10, 2.0), (2, 10, 5.0), (2, 20, 3.0)],
    [(1, 10, 4.0), (3, 20, 1.0), (2, 20, 4.0), (2, 20, 5.0)],
    [(3, 20, 2.0), (1, 10, 0.5), (4, 30, 3.0)],
]


def write_rating_files(folder, files):
    """One CSV per list of (user, item, rating) rows, and one holding all the rows in order."""
    def csv(rows):
        return "user,item,rating\n" + "".join(f"{u},{i},{r}\n" for u, i, r in rows)

    paths = []
    for n, rows in enumerate(files):
        paths.append(folder / f"part{n}.csv")
        paths[-1].write_text(csv(rows))
    whole = folder / "whole.csv"
    whole.write_text(csv([row for rows in files for row in rows]))
    return [str(p) for p in paths], whole


@pytest.mark.parametrize("by", ["items", "users"])
@pytest.mark.parametrize("duplicates", ["last", "mean"])
def test_files_give_the_ratings_of_one_file_of_all_their_rows(client, tmp_path, by, duplicates):
    from fastcofi.data.read import read_ratings

    paths, whole = write_rating_files(tmp_path, REPEATED_FILES)
    users, items, values = (np.array(c) for c in zip(*(r for f in REPEATED_FILES for r in f)))
    in_memory = Ratings.from_arrays(users, items, values, duplicates=duplicates)
    one_file = read_ratings(whole, duplicates=duplicates)
    with fd.scatter(paths, client, by=by, n_shards=2, duplicates=duplicates) as sharded:
        back = sharded.to_ratings()
    for expected in (in_memory, one_file):
        np.testing.assert_array_equal(back.user_ids, expected.user_ids)
        np.testing.assert_array_equal(back.item_ids, expected.item_ids)
        for a, b in zip(back.by_item + back.by_user, expected.by_item + expected.by_user):
            np.testing.assert_array_equal(a, b)
    u, i, v = back.coo()
    rated = dict(zip(zip(back.user_ids[u].tolist(), back.item_ids[i].tolist()), v.tolist()))
    expected = {"last": (0.5, 5.0), "mean": (1.875, 4.0)}[duplicates]
    assert (rated[1, 10], rated[2, 20]) == expected


def test_files_repeating_a_pair_are_refused_under_duplicates_error(client, tmp_path):
    from fastcofi.data._source import RatingsFileError
    from fastcofi.data.read import read_ratings

    paths, whole = write_rating_files(tmp_path, REPEATED_FILES)
    with pytest.raises(RatingsFileError, match="duplicated rating for user 1 and item 10"):
        read_ratings(whole)
    # Within a file: named by the file and its lines, as read_ratings names it.
    files = [[(2, 20, 1.0)], [(1, 10, 1.0), (2, 10, 2.0), (1, 10, 3.0)]]
    paths, _ = write_rating_files(tmp_path, files)
    with pytest.raises(RatingsFileError, match="for user 1 and item 10") as caught:
        fd.scatter(paths, client)
    assert caught.value.path == paths[1] and "lines 2 and 4" in str(caught.value)
    # Across files only.
    paths, _ = write_rating_files(tmp_path, [[(1, 10, 1.0), (2, 10, 2.0)], [(1, 10, 3.0)]])
    with pytest.raises(ValueError, match="duplicated rating for user 1 and item 10"):
        fd.scatter(paths, client)


def test_unknown_duplicates_policy_is_refused_before_connecting(tmp_path, monkeypatch):
    paths, _ = write_rating_files(tmp_path, REPEATED_FILES)
    monkeypatch.setattr(fd, "_connect", lambda client: pytest.fail("connected"))
    with pytest.raises(ValueError, match=r"duplicates must be one of .*found 'first'"):
        fd.scatter(paths, "tcp://127.0.0.1:9", duplicates="first")


@pytest.mark.parametrize("role", ["user", "item", "rating"])
def test_dataframe_missing_column_is_named_before_connecting(role, monkeypatch):
    pd = pytest.importorskip("pandas")
    dd = pytest.importorskip("dask.dataframe")
    frame = pd.DataFrame({"u": [1, 2], "i": [3, 3], "r": [1.0, 2.0]})
    ddf = dd.from_pandas(frame, npartitions=1)
    names = {"user": "u", "item": "i", "rating": "r", role: "typo"}
    # Checked on the driver: an unreachable scheduler is never tried.
    monkeypatch.setattr(fd, "_connect", lambda client: pytest.fail("connected"))
    with pytest.raises(ValueError) as caught:
        fd.scatter(ddf, "tcp://127.0.0.1:9", **names)
    message = str(caught.value)
    assert f"no {role} column 'typo'" in message
    assert "found the columns ['u', 'i', 'r']" in message
    assert "pass user=, item=, rating= to scatter" in message


def test_dataframe_integer_column_labels_are_found():
    pd = pytest.importorskip("pandas")
    dd = pytest.importorskip("dask.dataframe")
    ddf = dd.from_pandas(pd.DataFrame({0: [1, 2], 1: [3, 3], 2: [1.0, 2.0]}), npartitions=1)
    fd._check_frame_columns(ddf, {"user": 0, "item": 1, "rating": 2})
    with pytest.raises(ValueError, match=r"no rating column 3; found the columns \['0', '1'"):
        fd._check_frame_columns(ddf, {"user": 0, "item": 1, "rating": 3})


def test_dataframe_columns_are_converted_as_in_memory(client):
    """Columns go through `fastcofi.io`'s conversion, so a Dask DataFrame takes what
    `Ratings.from_dataframe` takes and refuses what it refuses."""
    pd = pytest.importorskip("pandas")
    dd = pytest.importorskip("dask.dataframe")
    base = frame_of(make_ratings(seed=6, n_users=30, n_items=20, nnz=200, declared=0))
    good = pd.DataFrame({
        "user": base["user"].astype("int16"),
        "item": base["item"].map("i{}".format).astype(object),
        "rating": base["rating"].astype("Int64"),  # nullable integers, no NA
    })
    expected = Ratings.from_dataframe(good)
    with fd.scatter(dd.from_pandas(good, npartitions=3), client) as sharded:
        check_same_ratings(sharded, expected)
    # Each refused with the same words by both paths.
    bad_ratings = {
        "numbers, found dtype bool": base["rating"] > 2,
        "numbers, found objects": base["rating"].map("r{}".format).astype(object),
        "ratings must be finite": base["rating"].where(base.index != 7),
    }
    for message, column in bad_ratings.items():
        bad = base.assign(rating=column)
        with pytest.raises(ValueError, match=message):
            Ratings.from_dataframe(bad)
        with pytest.raises(ValueError, match=message):
            fd.scatter(dd.from_pandas(bad, npartitions=2), client)


def test_blocked_rows_are_slices_with_the_same_sums(sharded, ratings, monkeypatch):
    """A shard's rows on the blocked side are the range of its block, so the driver sends and
    adds back slices; the sums are exactly those of indexing by the rows' positions."""
    summaries = sharded.client.gather(
        [sharded.client.submit(fd._shard_summary, s, pure=False) for s in sharded._shards]
    )
    side = "item" if sharded.by == "items" else "user"
    blocks = getattr(sharded, f"_{side}_rows")
    assert all(isinstance(rows, slice) for rows in blocks)
    for rows, summary in zip(blocks, summaries):
        np.testing.assert_array_equal(np.arange(rows.start, rows.stop), summary[f"{side}_index"])
    kwargs = {"mu": 3.1, "learn_biases": True, "reg_bias": 0.3, "reg_weighting": "count"}
    objective = fd.DistributedObjective(sharded, 4, 0.2, **kwargs)
    params = np.random.default_rng(11).normal(size=objective.size)
    cost, grad = objective(params)
    monkeypatch.setattr(sharded, f"_{side}_rows", [np.arange(r.start, r.stop) for r in blocks])
    indexed_cost, indexed_grad = objective(params)
    assert cost == indexed_cost
    np.testing.assert_array_equal(grad, indexed_grad)
    ref_cost, ref_grad = FlatObjective(ratings, 4, 0.2, **kwargs)(params)
    assert cost == pytest.approx(ref_cost, rel=RTOL)
    for part, ref_part in zip(objective.unpack(grad), objective.unpack(ref_grad)):
        assert_close(part, ref_part)
    # Every row of the blocked side is sent once; the other side once per shard that rates it.
    payload = sharded.bytes_per_evaluation(4)
    assert payload[f"{side}_rows"] == getattr(sharded, f"n_{side}s")
    other = "user" if side == "item" else "item"
    assert payload[f"{other}_rows"] == sum(s[f"{other}_index"].shape[0] for s in summaries)


def write_udata(path, n_users=30, n_items=20, per_user=8, seed=0):
    rng = np.random.default_rng(seed)
    lines = []
    for user in range(n_users):
        for item in rng.choice(n_items, per_user, replace=False):
            stamp = 881250949 + len(lines)
            lines.append(f"{user + 1}\t{item + 1}\t{rng.integers(1, 6)}\t{stamp}\n")
    path.write_text("".join(lines))
    return path


def test_cli_train_dask(cluster, tmp_path, capsys):
    data = write_udata(tmp_path / "u.data")
    flags = ["--factors", "3", "--max-iter", "12", "--seed", "2"]
    assert main(["train", str(data), "-o", str(tmp_path / "local.npz"), *flags]) == 0
    code = main(["train", str(data), "-o", str(tmp_path / "dask.npz"), *flags,
                 "--dask", cluster.scheduler_address])
    _out, err = capsys.readouterr()
    assert code == 0, err
    local, remote = load_model(tmp_path / "local.npz"), load_model(tmp_path / "dask.npz")
    np.testing.assert_allclose(remote.item_factors_, local.item_factors_, rtol=1e-5, atol=1e-7)


def test_cli_train_dask_errors(tmp_path, capsys, monkeypatch):
    data = write_udata(tmp_path / "u.data")
    out = str(tmp_path / "m.npz")
    monkeypatch.setattr(fd, "_CONNECT_TIMEOUT", "1s")
    code = main(["train", str(data), "-o", out, "--dask", "tcp://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("fastcofi: error: cannot connect to the Dask scheduler at")
    assert len(err.strip().splitlines()) == 1
    code = main(["train", str(data), "-o", out, "--dask", "tcp://127.0.0.1:9", "--solver", "als"])
    assert code == 2
    assert "--solver als" in capsys.readouterr().err

    def missing():
        raise ImportError("fastcofi.distributed needs Dask's distributed scheduler: "
                          "pip install 'fastcofi[distributed]'")

    monkeypatch.setattr(fd, "_import_distributed", missing)
    code = main(["train", str(data), "-o", out, "--dask", "tcp://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 2
    assert "pip install 'fastcofi[distributed]'" in err
    assert len(err.strip().splitlines()) == 1


def test_cluster_failure_is_a_clear_error(sharded, monkeypatch):
    def lost(*args, **kwargs):
        raise distributed.KilledWorker("('_shard_evaluate-123', 'tcp://127.0.0.1:1')", None)

    objective = fd.DistributedObjective(sharded, 2, 0.1)
    monkeypatch.setattr(sharded.client, "gather", lost)
    with pytest.raises(RuntimeError, match="distributed evaluation failed.*KilledWorker"):
        objective(np.zeros(objective.size))


def _inputs_without_a_task(dask_scheduler, keys):
    """Keys in the lineage of ``keys`` that the scheduler could not recompute (pure data)."""
    seen, missing, todo = set(), [], [dask_scheduler.tasks[k] for k in keys]
    while todo:
        ts = todo.pop()
        if ts.key in seen:
            continue
        seen.add(ts.key)
        if ts.run_spec is None:
            missing.append(str(ts.key))
        todo.extend(ts.dependencies)
    return missing


@pytest.mark.parametrize("source", ["ratings", "dataframe", "files"])
def test_every_shard_can_be_rebuilt_from_tasks(client, rated_only, source, tmp_path):
    """A shard lost with its worker is rebuilt from its lineage; scattered data has none (and the
    Active Memory Manager may keep a broadcast's only copy on the worker that dies)."""
    if source == "dataframe":
        dd = pytest.importorskip("dask.dataframe")
        data = dd.from_pandas(frame_of(rated_only), npartitions=3)
    elif source == "files":
        frame, data = frame_of(rated_only), [tmp_path / "a.csv", tmp_path / "b.csv"]
        frame.iloc[:400].to_csv(data[0], index=False)
        frame.iloc[400:].to_csv(data[1], index=False)
    else:
        data = rated_only
    with fd.scatter(data, client) as sharded:
        keys = [f.key for f in sharded._shards]
        assert client.run_on_scheduler(_inputs_without_a_task, keys=keys) == []


@pytest.mark.parametrize("source", ["ratings", "dataframe"])
def test_worker_killed_mid_training_is_recovered(client, rated_only, source):
    """Dask rebuilds the lost shard from its tasks and reruns the evaluation: the same model."""
    if source == "dataframe":
        dd = pytest.importorskip("dask.dataframe")
        data = dd.from_pandas(frame_of(rated_only), npartitions=3)
    else:
        data = rated_only
    params = {"n_factors": 3, "max_iter": 12, "tol": 0, "random_state": 8}
    client.wait_for_workers(2, timeout=60)
    with fd.scatter(data, client) as sharded:
        undisturbed = fd.fit(MatrixFactorization(**params), sharded)
    killed = []

    async def exit_now():  # wait=False needs a coroutine; a closure is pickled by value
        os._exit(1)

    def kill_one_worker(iteration, info):
        if iteration == 4:
            victim = min(client.scheduler_info()["workers"])
            client.run(exit_now, workers=[victim], wait=False)
            killed.append(victim)
        return False

    with fd.scatter(data, client) as sharded:
        model = fd.fit(MatrixFactorization(**params), sharded, callback=kill_one_worker)
        # The shards now live on the surviving worker (or the restarted one): still usable.
        X = np.ones((sharded.n_items, 3))
        Theta = np.ones((sharded.n_users, 3))
        after = fd.cost_and_grad(X, Theta, sharded, 0.1)[0]
    assert after == pytest.approx(cost_and_grad(X, Theta, rated_only, 0.1)[0], rel=RTOL)
    assert killed
    assert model.n_iter_ == undisturbed.n_iter_
    np.testing.assert_array_equal(model.item_factors_, undisturbed.item_factors_)
    np.testing.assert_array_equal(model.user_factors_, undisturbed.user_factors_)
    client.wait_for_workers(2, timeout=60)
