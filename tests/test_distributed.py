"""Data-parallel training: communicators, gradient buckets, sharding, and real multi-rank runs.

The multi-rank tests start ``mpirun -np 2`` subprocesses (tests/dist_worker.py or the CLI) with
timeouts; they are skipped, with the reason, where mpirun or mpi4py is missing (.ci/run installs
both through scripts/install_mpi.sh).
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from gpuconv import BackendUnavailable, datasets, distributed, nn
from gpuconv.distributed.comm import Communicator, Work, completed
from gpuconv.models import build_model
from gpuconv.tolerances import FLOAT32_RTOL, passes, scaled_error

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "dist_worker.py"


# ---- in one process ---------------------------------------------------------------------

def test_parameter_grad_hook_fires_on_each_assignment_and_can_be_removed():
    p = nn.Parameter(np.zeros(3, np.float32))
    seen = []
    remove = p.register_grad_hook(lambda q: seen.append((q, q.grad.copy())))
    p.grad = np.ones(3, np.float32)
    p.grad = None  # zero_grad: no hook
    p.grad = np.full(3, 2.0, np.float32)
    assert [q for q, _ in seen] == [p, p] and [g[0] for _, g in seen] == [1.0, 2.0]
    remove()
    p.grad = np.ones(3, np.float32)
    assert len(seen) == 2
    with pytest.raises(TypeError, match="hook must be callable"):
        p.register_grad_hook(3)


def test_layers_fire_grad_hooks_in_backward_order():
    model = build_model("lenet", 1, 8, 10, seed=0)
    order = []
    for name, p in model.named_parameters():
        p.register_grad_hook(lambda q, name=name: order.append(name))
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    model.backward(np.ones_like(model.forward(x)))
    names = [n for n, _ in model.named_parameters()]
    assert sorted(order) == sorted(names)
    assert [n.split(".")[0] for n in order] == [n.split(".")[0] for n in reversed(names)]


@pytest.mark.parametrize("ranks", [1, 2, 3, 5])
@pytest.mark.parametrize("drop_last", [False, True])
def test_shards_of_every_global_batch_make_up_the_single_process_batch(ranks, drop_last):
    images = np.arange(23)[:, None].astype(np.float32)
    labels = np.arange(23, dtype=np.int32)
    kw = dict(shuffle=True, seed=3, epoch=2, drop_last=drop_last)
    whole = [y for _, y in datasets.iterate_batches(images, labels, 8, **kw)]
    shards = [[y for _, y in datasets.iterate_batches(images, labels, 8, shard=(r, ranks), **kw)]
              for r in range(ranks)]
    for r in range(ranks):
        assert len(shards[r]) == len(whole)
    for i, batch in enumerate(whole):
        for r in range(ranks):
            np.testing.assert_array_equal(shards[r][i], batch[r::ranks])
        assert sorted(np.concatenate([s[i] for s in shards]).tolist()) == sorted(batch.tolist())


@pytest.mark.parametrize("shard", [(2, 2), (-1, 2), (0, 0), [0, 1], (0.0, 1), (True, 2)])
def test_bad_shard_is_a_value_error(shard):
    with pytest.raises(ValueError, match="shard"):
        next(datasets.iterate_batches(np.zeros((4, 1)), np.zeros(4), 2, shard=shard))


def test_single_process_collectives_and_argument_errors():
    comm = distributed.SingleProcess(timeout=5)
    assert (comm.rank, comm.size, comm.kind) == (0, 1, "single")
    a = np.arange(6, dtype=np.float32)
    assert comm.allreduce(a) is a and comm.allreduce(a, op="mean") is a
    np.testing.assert_array_equal(a, np.arange(6))
    assert comm.broadcast(a, root=0) is a
    comm.barrier()
    with pytest.raises(ValueError, match="op must be"):
        comm.allreduce(a, op="max")
    with pytest.raises(TypeError, match="op='mean' needs a floating array"):
        comm.allreduce(np.arange(3), op="mean")
    with pytest.raises(TypeError, match="dtype"):
        comm.allreduce(np.arange(3, dtype=np.int8))
    with pytest.raises(ValueError, match="C-contiguous"):
        comm.allreduce(np.zeros((4, 4), np.float32)[:, 1])
    with pytest.raises(TypeError, match="NumPy or CuPy array"):
        comm.allreduce([1.0, 2.0])
    with pytest.raises(ValueError, match="root must be a rank"):
        comm.broadcast(a, root=1)


@pytest.mark.parametrize("raw, expected", [("", 600.0), ("2.5", 2.5), (" 30 ", 30.0)])
def test_timeout_from_environment(raw, expected):
    assert distributed.timeout_from_env({distributed.TIMEOUT_ENV: raw}) == expected


@pytest.mark.parametrize("raw", ["0", "-1", "nan", "inf", "soon"])
def test_bad_timeout_is_a_value_error_naming_the_variable(raw):
    with pytest.raises(ValueError, match="GPUCONV_DIST_TIMEOUT"):
        distributed.timeout_from_env({distributed.TIMEOUT_ENV: raw})
    with pytest.raises(ValueError, match="timeout"):
        distributed.SingleProcess(timeout=float(raw) if raw != "soon" else raw)


def test_a_collective_that_never_completes_times_out_naming_it_and_the_rank():
    comm = distributed.SingleProcess(timeout=0.2)
    aborted, raised = [], []
    work = Work(lambda: False, "allreduce of 8 bytes (float32[2])", comm,
                on_timeout=lambda: aborted.append(1))

    def wait():
        try:
            work.wait()
        except distributed.CollectiveTimeout as exc:
            raised.append(str(exc))

    waiter = threading.Thread(target=wait, daemon=True)  # a wait without deadline must not hang the suite
    t0 = time.monotonic()
    waiter.start()
    waiter.join(timeout=10)
    assert not waiter.is_alive(), "Work.wait() did not give up after its timeout"
    assert 0.2 <= time.monotonic() - t0 < 5.0 and aborted == [1]
    assert raised and re.fullmatch(r"allreduce of 8 bytes \(float32\[2\]\) timed out on rank 0 of 1 after "
                                   r"0.2 s \(GPUCONV_DIST_TIMEOUT\): another rank died, hung or did not "
                                   r"reach this collective", raised[0]), raised


class _Recorder(Communicator):
    """Rank 0 of two, in one process: the other rank is taken to hold the same gradient (a sum
    doubles the array). Records each collective in ``log``."""

    kind = "recorder"

    def __init__(self, log):
        super().__init__(0, 2, timeout=5)
        self.log = log

    def iallreduce(self, array):
        self.check_array(array)
        self.log.append(("allreduce", array.nbytes))
        array *= 2
        return completed("allreduce", self)

    def broadcast(self, array, root=0):
        self.log.append(("broadcast", array.nbytes))
        return array


def _batch(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, n).astype(np.int32)


def test_data_parallel_on_one_rank_is_the_model_alone():
    x, y = _batch()
    ref = build_model("lenet", 1, 8, 10, seed=0)
    model = build_model("lenet", 1, 8, 10, seed=0)
    dp = distributed.DataParallel(model, distributed.SingleProcess())
    loss_fn = nn.SoftmaxCrossEntropy()
    loss_fn.forward(ref.forward(x), y)
    ref.backward(loss_fn.backward())
    loss_fn.forward(dp.forward(x), y)
    dp.backward(loss_fn.backward())
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        np.testing.assert_array_equal(p.grad, q.grad, err_msg=name)
    assert dp.bucket_sizes == [] and all(not p._grad_hooks for p in model.parameters())


def test_buckets_start_while_backward_runs_in_index_order_and_hold_the_weighted_sum():
    """ResNet-20-Fixup's shortcut convolutions are registered after, but differentiated after,
    their block's body: with small buckets, hooks complete buckets out of index order, and the
    all-reduces must still start in index order, the first long before backward ends."""
    log = []
    model = build_model("resnet20-fixup", 1, 8, 10, seed=0)
    ref = build_model("resnet20-fixup", 1, 8, 10, seed=0)
    for name, p in model.named_parameters():
        p.register_grad_hook(lambda q, name=name: log.append(("grad", name)))
    dp = distributed.DataParallel(model, _Recorder(log), bucket_bytes=8 * 1024)
    n_params = len(list(model.parameters()))
    assert [e[0] for e in log] == ["broadcast"] * n_params
    sizes = dp.bucket_sizes
    assert len(sizes) > 5 and sum(sizes) == 4 * model.num_parameters()
    del log[:]
    x, y = _batch()
    loss_fn = nn.SoftmaxCrossEntropy()
    loss_fn.forward(dp.forward(x), y)
    dy = loss_fn.backward()
    dp.backward(dy, fraction=0.25)
    assert [n for kind, n in log if kind == "allreduce"] == sizes
    first_allreduce = next(i for i, e in enumerate(log) if e[0] == "allreduce")
    last_grad = max(i for i, e in enumerate(log) if e[0] == "grad")
    assert first_allreduce < last_grad / 4, log[:first_allreduce + 1]
    # each gradient: 2 ranks x 0.25 x the local gradient
    loss_fn.forward(ref.forward(x), y)
    ref.backward(loss_fn.backward())
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        np.testing.assert_allclose(p.grad, 0.5 * q.grad, rtol=1e-6, atol=0, err_msg=name)
    # a rank without samples contributes zeros, in the same bucket order
    del log[:]
    assert dp.backward(None, fraction=0.0) is None
    assert [n for kind, n in log if kind == "allreduce"] == sizes
    assert all(not np.any(p.grad) for p in model.parameters())


def test_data_parallel_argument_errors():
    model = build_model("lenet", 1, 8, 10, seed=0)
    with pytest.raises(TypeError, match="model must be"):
        distributed.DataParallel(object(), distributed.SingleProcess())
    with pytest.raises(TypeError, match="comm must be"):
        distributed.DataParallel(model, object())
    with pytest.raises(ValueError, match="bucket_bytes"):
        distributed.DataParallel(model, distributed.SingleProcess(), bucket_bytes=0)
    dp = distributed.DataParallel(model, _Recorder([]))
    with pytest.raises(ValueError, match="fraction"):
        dp.backward(np.zeros((1, 10), np.float32), fraction=1.5)
    with pytest.raises(ValueError, match="dy is None"):
        dp.backward(None, fraction=0.5)
    # a parameter whose layer skipped its backward is named
    first = dp.model[0]
    first.backward = lambda dy: dy
    dp.forward(_batch()[0])
    with pytest.raises(RuntimeError, match=r"parameters \['0.weight', '0.bias'\] got no gradient"):
        dp.backward(np.ones((4, 10), np.float32), fraction=0.5)


def test_layers_that_sync_across_ranks_get_the_communicator():
    class SyncStats(nn.Identity):
        def attach_communicator(self, comm):
            self.comm = comm

    layer = SyncStats()
    model = nn.Sequential(nn.Linear(3, 2, rng=0), layer)
    comm = _Recorder([])
    distributed.DataParallel(model, comm)
    assert layer.comm is comm


def test_no_launcher_means_one_process_without_mpi4py():
    code = ("import sys, gpuconv, gpuconv.distributed as d, gpuconv.tools.train; "
            "c = d.communicator_for('numpy'); print(type(c).__name__, c.size, 'mpi4py' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in distributed.LAUNCHER_VARIABLES}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["SingleProcess", "1", "False"]


def test_launched_without_mpi4py_is_an_error_that_says_what_to_install(monkeypatch):
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(BackendUnavailable,
                       match=r"OMPI_COMM_WORLD_SIZE=2.*mpi4py is not installed.*gpuconv\[mpi\]"):
        distributed.communicator_for("numpy")


def test_launcher_detection():
    assert distributed.launched_by_mpi({}) is None
    assert distributed.launched_by_mpi({"PMI_SIZE": "4"}) == "PMI_SIZE"
    assert distributed.launched_by_mpi({"OMPI_COMM_WORLD_SIZE": ""}) is None


# ---- several ranks under mpirun -------------------------------------------------------------

def _mpi_missing() -> str:
    if shutil.which("mpirun") is None:
        return "mpirun not found (install Open MPI: scripts/install_mpi.sh)"
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py not installed (pip install 'gpuconv[mpi]', or scripts/install_mpi.sh)"
    return ""


needs_mpi = pytest.mark.skipif(bool(_mpi_missing()), reason=_mpi_missing() or "mpi available")


def _mpirun(ranks, args, timeout=180, dist_timeout=60):
    """Run ``args`` (after the Python executable) on ``ranks`` ranks; returns CompletedProcess."""
    version = subprocess.run(["mpirun", "--version"], capture_output=True, text=True).stdout
    extra = ["--oversubscribe"] if "Open MPI" in version else []
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               GPUCONV_DIST_TIMEOUT=str(dist_timeout))
    cmd = ["mpirun", *extra, "-np", str(ranks), sys.executable, *args] if ranks else [sys.executable, *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _run_worker(tmp_path, name, ranks, *args, **kw):
    out = tmp_path / name
    out.mkdir()
    proc = _mpirun(ranks, [str(WORKER), "--out", str(out), *args], **kw)
    return proc, out


@needs_mpi
@pytest.mark.parametrize("model, optimizer, samples, bucket_bytes", [
    ("lenet", "adam", 97, distributed.DEFAULT_BUCKET_BYTES),  # last global batch: 1 sample, rank 1 none
    # last: 5 samples, split 3 / 2; many buckets. Without batch norm: with it each rank normalises
    # with its own half batch's statistics, which one process on the whole batch does not.
    ("resnet20-fixup", "sgd", 69, 16 * 1024),
])
def test_two_ranks_train_like_one_rank_with_the_summed_batch(tmp_path, model, optimizer, samples,
                                                             bucket_bytes):
    common = ["--model", model, "--optimizer", optimizer, "--samples", str(samples), "--steps", "20",
              "--bucket-bytes", str(bucket_bytes)]
    one, out1 = _run_worker(tmp_path, "one", 0, *common, "--batch-size", "32")
    assert one.returncode == 0, one.stderr
    two, out2 = _run_worker(tmp_path, "two", 2, *common, "--batch-size", "32")  # 16 per rank
    assert two.returncode == 0, two.stdout + two.stderr
    ref, r0, r1 = (np.load(p) for p in (out1 / "rank0.npz", out2 / "rank0.npz", out2 / "rank1.npz"))
    if bucket_bytes < distributed.DEFAULT_BUCKET_BYTES:
        assert len(r0["buckets"]) > 3
    assert ref["losses"].shape == (20,)
    _, rel = scaled_error(r0["losses"], ref["losses"])
    assert passes(rel, FLOAT32_RTOL), (rel, r0["losses"], ref["losses"])
    assert ref["losses"][-5:].mean() < 0.7 * ref["losses"][:5].mean()  # it trains
    for name in ref.files:
        if name in ("losses", "buckets"):
            continue
        np.testing.assert_array_equal(r0[name], r1[name], err_msg=f"{name}: ranks disagree")
        _, rel = scaled_error(r0[name], ref[name])
        assert passes(rel, FLOAT32_RTOL), (name, rel)


@needs_mpi
def test_collectives_on_two_ranks(tmp_path):
    code = """
import sys
import numpy as np
from gpuconv import distributed
c = distributed.communicator_for("numpy")
a = np.array([1.0, 2.0], np.float32) * (c.rank + 1)
c.allreduce(a)
b = np.array([c.rank + 1.0, 4.0])
c.allreduce(b, op="mean")
i = np.array([c.rank, 10], np.int64)
c.allreduce(i)
r = np.full(3, float(c.rank))
c.broadcast(r, root=1)
c.barrier()
with open(f"{sys.argv[1]}/rank{c.rank}.txt", "w") as f:  # one file per rank: mpirun interleaves stdout
    print(c.kind, c.rank, c.size, a.tolist(), b.tolist(), i.tolist(), r.tolist(), file=f)
"""
    proc = _mpirun(2, ["-c", code, str(tmp_path)], timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = [(tmp_path / f"rank{r}.txt").read_text().strip() for r in (0, 1)]
    assert lines == [f"mpi {r} 2 [3.0, 6.0] [1.5, 4.0] [1, 20] [1.0, 1.0, 1.0]" for r in (0, 1)]


@needs_mpi
@pytest.mark.parametrize("mode", ["exit", "stop"])
def test_a_rank_that_dies_or_hangs_ends_the_job_with_a_clear_error(tmp_path, mode):
    t0 = time.monotonic()
    proc, _ = _run_worker(tmp_path, mode, 2, "--fail-rank", "1", "--fail-at-step", "3", "--fail-mode", mode,
                          timeout=90, dist_timeout=4)
    elapsed = time.monotonic() - t0
    assert proc.returncode != 0
    assert elapsed < 60, elapsed
    text = proc.stdout + proc.stderr
    if mode == "exit":  # mpirun notices the exit and ends the job
        assert "exit code" in text.lower() or "exited" in text.lower(), text
    else:  # rank 1 is alive but stopped: rank 0's collective times out
        assert ("gpuconv: error on rank 0 of 2: CollectiveTimeout: allreduce of 244728 bytes "
                "(float32[61182]) timed out on rank 0 of 2 after 4 s") in text, text


@needs_mpi
def test_checkpoint_from_two_ranks_resumes_on_one(tmp_path):
    """Two ranks train epochs 1-2 of a 3-epoch run (cosine schedule), one rank resumes the
    checkpoint for epoch 3: the losses and final weights are those of one rank training 3 epochs.

    SGD, not Adam: with Adam, a weight whose only gradient was a cancellation at rounding level
    (|g| ~ 4e-8, near Adam's eps, with a 0.4 % difference between the two summation orders) moves
    by lr-sized steps that carry that difference, and ends 2e-5 apart after 135 steps; the
    loss curves agree either way."""
    ckpt, straight = tmp_path / "ck.npz", tmp_path / "straight.npz"
    base = ["-m", "gpuconv", "train", "--backend", "numpy", "--model", "lenet", "--epochs", "3",
            "--batch-size", "32", "--optimizer", "sgd"]
    two = _mpirun(2, base + ["--stop-after", "2", "--save", str(ckpt), "--json", str(tmp_path / "two.json")])
    assert two.returncode == 0, two.stderr
    # logs from rank 0 only: one line per epoch
    assert sum(line.startswith("epoch ") for line in two.stdout.splitlines()) == 2, two.stdout
    assert "data-parallel on 2 ranks" in two.stdout
    resumed = _mpirun(0, ["-m", "gpuconv", "train", "--backend", "numpy", "--resume", str(ckpt),
                          "--json", str(tmp_path / "resumed.json")])
    assert resumed.returncode == 0, resumed.stderr
    one = _mpirun(0, base + ["--save", str(straight), "--json", str(tmp_path / "one.json")])
    assert one.returncode == 0, one.stderr
    docs = {k: json.loads((tmp_path / f"{k}.json").read_text()) for k in ("two", "resumed", "one")}
    assert docs["two"]["ranks"] == 2 and docs["resumed"]["ranks"] == 1
    assert [h["epoch"] for h in docs["resumed"]["history"]] == [1, 2, 3]
    for key in ("train_loss", "test_loss"):
        got = np.array([h[key] for h in docs["resumed"]["history"]])
        want = np.array([h[key] for h in docs["one"]["history"]])
        _, rel = scaled_error(got, want)
        assert passes(rel, FLOAT32_RTOL), (key, got, want)
    resumed_weights, straight_weights = (nn.read_checkpoint(p)["model"] for p in (ckpt, straight))
    for name, want in straight_weights.items():
        _, rel = scaled_error(resumed_weights[name], want)
        assert passes(rel, FLOAT32_RTOL), (name, rel)


# ---- the NCCL communicator's wiring, against a stand-in for CuPy ----------------------------

class _DeviceArray(np.ndarray):
    """A NumPy array posing as a CuPy one: ``data.ptr`` and ``device.id``."""

    @property
    def data(self):
        return type("Memory", (), {"ptr": self.__array_interface__["data"][0]})()

    @property
    def device(self):
        return type("Device", (), {"id": 0})()


def _stand_in_cupy(log):
    """Modules ``cupy``, ``cupy.cuda`` and ``cupy.cuda.nccl`` with what nccl.py and
    scripts/nccl_check.py call; collectives act on one rank (the sum is the array itself) and
    every stream and NCCL call is appended to ``log``."""
    import types

    cupy, cuda, nccl = (types.ModuleType(n) for n in ("cupy", "cupy.cuda", "cupy.cuda.nccl"))

    class Stream:
        count = 0

        def __init__(self, non_blocking=False):
            Stream.count += 1
            self.ptr, self.name = Stream.count, f"stream{Stream.count}"

        def wait_event(self, event):
            log.append(("wait", self.name, event.name))

        def __enter__(self):
            stack.append(self)
            return self

        def __exit__(self, *exc):
            stack.pop()

    class Event:
        count = 0

        def __init__(self, disable_timing=False):
            Event.count += 1
            self.name, self.done = f"event{Event.count}", False

        def record(self, stream):
            log.append(("record", self.name, stream.name))
            self.done = True

    stack = [Stream()]
    cuda.Stream, cuda.Event, cuda.get_current_stream = Stream, Event, lambda: stack[-1]
    cuda.Device = lambda i=0: type("Device", (), {"id": 0, "use": lambda self: None})()
    cuda.nccl = nccl
    nccl.NCCL_SUM, nccl.NCCL_FLOAT32, nccl.NCCL_FLOAT64, nccl.NCCL_INT32, nccl.NCCL_INT64 = 0, 7, 8, 2, 4
    nccl.get_unique_id = lambda: tuple(range(-64, 64))
    nccl.get_version = lambda: 22304

    class NcclCommunicator:
        def __init__(self, ndev, commId, rank):
            assert (ndev, rank, commId) == (1, 0, tuple(range(-64, 64)))

        def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
            log.append(("allReduce", sendbuf == recvbuf, count, datatype, op, stream))

        def bcast(self, buff, count, datatype, root, stream):
            log.append(("bcast", count, datatype, root, stream))

        def abort(self):
            log.append(("abort",))

    nccl.NcclCommunicator = NcclCommunicator
    cupy.cuda, cupy.ndarray = cuda, _DeviceArray
    cupy.float32, cupy.float64 = np.float32, np.float64
    cupy.asarray = lambda a: np.array(a).view(_DeviceArray)
    cupy.asnumpy = lambda a: np.array(a).view(np.ndarray)
    cupy.full = lambda shape, value, dtype: np.full(shape, value, dtype).view(_DeviceArray)
    return {"cupy": cupy, "cupy.cuda": cuda, "cupy.cuda.nccl": nccl}


def test_nccl_communicator_calls_nccl_on_its_own_stream_after_the_current_one(monkeypatch, capsys):
    log = []
    for name, module in _stand_in_cupy(log).items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("nccl_check", ROOT / "scripts" / "nccl_check.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main() == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert out.startswith("nccl 2.23.4 on CUDA device 0 (bootstrap: single), rank 0 of 1")
    assert "0 failure(s)" in out and "FAIL" not in out
    # first collective: float32 sum of 1,000,003 elements, in place, on the communicator's stream
    # (stream2), which first waits for an event recorded on the caller's current stream (stream1)
    first = log.index(next(e for e in log if e[0] == "allReduce"))
    assert log[first - 2:first + 3] == [
        ("record", "event1", "stream1"), ("wait", "stream2", "event1"),
        ("allReduce", True, 1_000_003, 7, 0, 2), ("record", "event2", "stream2"),
        ("wait", "stream1", "event2")]
    assert [e[3] for e in log if e[0] == "allReduce"][:6] == [7, 7, 8, 8, 2, 4]
    # under a non-default current stream (stream3), the collective waits for that stream's work
    # and the wait orders that stream
    i = next(i for i, e in enumerate(log) if e[0] == "record" and e[2] == "stream3")
    ev = log[i][1]
    assert [e[:3] for e in log[i + 1:i + 5]] == [("wait", "stream2", ev), ("allReduce", True, 1_000_003),
                                                  ("record", log[i + 3][1], "stream2"),
                                                  ("wait", "stream3", log[i + 3][1])]
    assert ("bcast", 1000, 8, 0, 2) in log
