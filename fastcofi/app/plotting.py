"""Convergence plot of a fitted model (matplotlib, the optional extra ``fastcofi[plot]``)."""

__all__ = ["plot_convergence"]


def plot_convergence(model, ax=None):
    """Plot the cost per iteration, and the validation RMSE on a second axis when recorded.

    Parameters
    ----------
    model : MatrixFactorization
        A fitted model (its ``history_`` is plotted).
    ax : matplotlib Axes, optional
        Drawn into a new figure when None.

    Returns
    -------
    matplotlib Axes
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            "plot_convergence needs matplotlib: pip install 'fastcofi[plot]'"
        ) from None
    history = getattr(model, "history_", None)
    if history is None:
        raise AttributeError("the model is not fitted yet; call fit(ratings) first")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    iterations = range(1, len(history["cost"]) + 1)
    ax.semilogy(iterations, history["cost"], color="tab:blue", label="training cost")
    ax.set_xlabel("iteration")
    ax.set_ylabel("cost", color="tab:blue")
    if history.get("val_rmse"):
        twin = ax.twinx()
        twin.plot(iterations, history["val_rmse"], color="tab:orange", label="validation RMSE")
        twin.set_ylabel("validation RMSE", color="tab:orange")
        best = getattr(model, "best_iteration_", None)
        if best:
            twin.axvline(best, color="tab:gray", linestyle=":", label="kept iteration")
    ax.set_title(f"{type(model).__name__}: {model.solver_}, k={model.n_factors}")
    return ax
