"""Unit tests of the plot stage's pure pieces (the stage itself runs in test_pipeline's `dvc repro`)."""
import numpy as np

from stages.plot import curves_figure, low_res_span, parse_log

HEADER = "epoch,train_loss,train_acc,test_loss,test_acc,lr,seconds"


def log(sizes=None):
    rows = [f"{e},1.0,0.5,1.0,0.5,0.1,2.0" + ("" if sizes is None else f",{sizes[e - 1]}")
            for e in range(1, 5)]
    return parse_log("\n".join([HEADER + ("" if sizes is None else ",train_size")] + rows))


def test_parse_log_reads_every_column_as_floats():
    got = log([24, 24, 32, 32])
    assert list(got) == HEADER.split(",") + ["train_size"]
    assert got["train_size"].tolist() == [24.0, 24.0, 32.0, 32.0]


def test_low_res_span_names_the_downscaled_epochs_and_their_size():
    assert low_res_span(log([24, 24, 32, 32])) == (1, 2, 24)


def test_low_res_span_is_none_without_progressive_resizing_or_without_the_column():
    assert low_res_span(log([32, 32, 32, 32])) is None
    assert low_res_span(log()) is None  # a log written before train_size existed


def test_curves_shade_the_low_res_epochs_in_every_panel():
    def shaded(fig):
        return [[p.get_x() for p in ax.patches] for ax in fig.axes]
    assert shaded(curves_figure({"bn": log([24, 24, 32, 32]), "gn": log([24, 24, 32, 32])})) == [[0.5]] * 4
    assert shaded(curves_figure({"bn": log([32] * 4)})) == [[]] * 4
    assert np.isclose(curves_figure({"bn": log()}).axes[0].lines[0].get_ydata()[-1], 1.0)
