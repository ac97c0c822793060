"""report.png's --along x axis: the same range in every panel, a tick at each value the runs have (no log-scale
minor tick labels crowding each other), and the key named by what it counts."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pekd.report.plot import _axis  # noqa: E402


def test_along_axis_ticks_are_the_values_and_the_label_says_what_they_count() -> None:
    fig, (log_ax, lin_ax) = plt.subplots(1, 2)
    _axis(log_ax, "data.subset", [500.0, 2000.0, 7000.0, 27000.0, 500.0])
    assert log_ax.get_xscale() == "log"
    assert list(log_ax.get_xticks()) == [500.0, 2000.0, 7000.0, 27000.0]
    assert [t.get_text() for t in log_ax.get_xticklabels()] == ["500", "2,000", "7,000", "27,000"]
    assert log_ax.xaxis.get_minor_locator()() == []  # no 2x10^3 3x10^3 ... between them
    assert log_ax.get_xlabel() == "training images (data.subset)"
    _axis(lin_ax, "method.weird", [1.0, 3.0])
    assert lin_ax.get_xscale() == "linear" and lin_ax.get_xlabel() == "method.weird"
    low, high = lin_ax.get_xlim()
    assert low < 1.0 and high > 3.0
    plt.close(fig)
