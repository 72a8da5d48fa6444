"""What a user sees while ``gpuconv train`` works (``gpuconv.tools.progress``): a live bar with rate,
time left and running loss on a terminal, a few plain lines elsewhere, nothing with --quiet, and
the same plain lines in a log file."""
from __future__ import annotations

import io
import re

import pytest

from gpuconv.tools.cli import main
from gpuconv.tools.progress import Reporter, format_seconds
from gpuconv.tools.train import TrainConfig, train


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_epoch(reporter: Reporter, clock: Clock, total: int = 100, step: int = 5, seconds: float = 1.0):
    """``total`` samples in batches of ``step``, each taking ``seconds``, running loss 1/(batch no.)."""
    with reporter.task("epoch 1/3", total) as task:
        for i in range(total // step):
            clock.now += seconds
            task.update(step, 1.0 / (i + 1))


def test_format_seconds():
    assert [format_seconds(s) for s in (0, 9.6, 61, 3599, 3600, 3725)] == [
        "0:00", "0:10", "1:01", "59:59", "1:00:00", "1:02:05"]


def test_a_terminal_gets_a_live_bar_with_rate_time_left_and_running_loss():
    out, err, clock = io.StringIO(), Terminal(), Clock()
    rep = Reporter(out, err, clock=clock, bar_seconds=0)      # redraw at every update
    assert rep.live
    run_epoch(rep, clock)
    shown = err.getvalue()
    assert "\r" in shown and "epoch 1/3" in shown
    assert re.search(r"\d+/100", shown)
    assert "samples/s" in shown                      # the rate, in samples
    assert re.search(r"<\d+:\d\d", shown)            # tqdm's time left
    assert "loss 0.0500" in shown                     # the running loss after the last batch
    assert shown.endswith("\r") or shown.endswith("\x1b[A")    # erased at the end (leave=False)
    assert "% 50/100 samples" not in shown           # no plain lines on a terminal
    assert out.getvalue() == ""


def test_elsewhere_a_plain_line_at_most_every_10_s_and_10_percent():
    out, err, clock = io.StringIO(), io.StringIO(), Clock()
    rep = Reporter(out, err, clock=clock)
    assert not rep.live
    # 20 batches of 5 samples, 1 s each: 10 s have passed at 50 samples (50%), then at 100 (the end,
    # which the epoch's own line reports): one plain line
    run_epoch(rep, clock)
    assert err.getvalue() == "epoch 1/3   50% 50/100 samples  5 samples/s  0:10 left  loss 0.1000\n"
    # fast batches: 10 s pass only at the end, no line at all
    err.truncate(0), err.seek(0)
    run_epoch(rep, clock, seconds=0.4)
    assert err.getvalue() == ""
    # slow batches (20 s each): a line whenever 10% more is done, not one per batch of 5%
    err.truncate(0), err.seek(0)
    run_epoch(rep, clock, seconds=20.0)
    lines = err.getvalue().splitlines()
    assert [line.split()[3] for line in lines] == ["10/100", "20/100", "30/100", "40/100", "50/100",
                                                   "60/100", "70/100", "80/100", "90/100"]
    assert lines[0] == "epoch 1/3   10% 10/100 samples  0.25 samples/s  6:00 left  loss 0.5000"


def test_quiet_shows_nothing_and_the_log_gets_every_line():
    out, err, log, clock = Terminal(), Terminal(), io.StringIO(), Clock()
    rep = Reporter(out, err, quiet=True, log=log, clock=clock)
    rep.say("training lenet")
    rep.note("a note")
    run_epoch(rep, clock)
    rep.say("epoch   1/3  loss 0.05")
    assert out.getvalue() == "" and err.getvalue() == ""
    assert log.getvalue().splitlines() == [
        "training lenet", "a note", "epoch 1/3   50% 50/100 samples  5 samples/s  0:10 left  loss 0.1000",
        "epoch   1/3  loss 0.05"]


def test_the_log_gets_plain_lines_while_the_terminal_shows_the_bar():
    err, log, clock = Terminal(), io.StringIO(), Clock()
    rep = Reporter(io.StringIO(), err, log=log, clock=clock)
    run_epoch(rep, clock)
    assert "\r" in err.getvalue()
    assert log.getvalue() == "epoch 1/3   50% 50/100 samples  5 samples/s  0:10 left  loss 0.1000\n"


def test_train_shows_the_bar_on_a_terminal_and_writes_the_log_even_when_quiet(tmp_path):
    out, err = io.StringIO(), Terminal()
    train(TrainConfig(backend="numpy", epochs=1, batch_size=256), out=out, err=err)
    assert "epoch 1/1" in err.getvalue() and "samples/s" in err.getvalue()
    assert re.search(r"loss \d\.\d{4}", err.getvalue())      # the running loss reaches the bar
    assert "epoch   1/1  loss" in out.getvalue()             # the epoch line is unchanged
    log = tmp_path / "run.log"
    out, err = io.StringIO(), Terminal()
    assert main(["train", "--backend", "numpy", "--epochs", "1", "--batch-size", "256", "--quiet",
                 "--log", str(log)]) == 0
    lines = log.read_text().splitlines()
    assert lines[0].startswith("training lenet") and lines[1].startswith("recipe default: lenet, adam")
    assert lines[2].startswith("epoch   1/1  loss")
    assert lines[-1].startswith("test accuracy")
    main(["train", "--backend", "numpy", "--epochs", "1", "--batch-size", "256", "--quiet",
          "--log", str(log)])
    assert len(log.read_text().splitlines()) == 2 * len(lines)     # appended, not replaced


def test_task_refuses_an_empty_loop():
    with pytest.raises(ValueError, match="total must be >= 1"):
        Reporter(io.StringIO(), io.StringIO()).task("epoch 1/1", 0)
