"""Cross-check of the NumPy backend against PyTorch CPU (an independent implementation).

Forward values and gradients, in float64 unless said: convolution and max/average/L2 pooling on
200 random geometries each (seeded, small shapes), convolution also on 50 in float32; relu,
sigmoid, tanh, the dense layer and the loss on 20 random shapes; add, mul and the dense layer
without bias gradient on 10; SGD in 3 configurations and Adam in 1 (test_optim.py adds 4 and 2x2
through the optimizer classes). Dropout has no counterpart here (torch draws its own masks); its
rule is checked in test_reference_definitions.py. Inputs are tie-free (random permutations of
evenly spaced values), so max-pool indices are unambiguous.
"""
import numpy as np
import pytest
from conftest import assert_close

from gpuconv import functional as F

torch = pytest.importorskip("torch")
TF = torch.nn.functional

pytestmark = [pytest.mark.torch, pytest.mark.usefixtures("numpy_default"),
              pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")]

CASES = 200


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # Tiny shapes: threads only add synchronisation overhead on a small shared machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tie_free(rng, shape):
    n = int(np.prod(shape))
    return rng.permutation((np.arange(n) + 0.5) / n * 2 - 1).reshape(shape)


def torch_leaf(a):
    return torch.tensor(a, requires_grad=True)


# ---- convolution -----------------------------------------------------------------------------

def same_pads(size, k_eff, stride):
    """TensorFlow's SAME padding as its documentation ("Notes on padding", tf.nn) writes it, from the
    remainder of size / stride (gpuconv.geometry derives it from the output size instead):
    max(k - stride, 0) when the stride divides the size, else max(k - size % stride, 0); the odd
    pixel at the end."""
    rem = size % stride
    total = max(k_eff - (stride if rem == 0 else rem), 0)
    return total // 2, total - total // 2


def random_conv_case(rng):
    groups = int(rng.choice([1, 1, 2, 3]))
    C, K = groups * int(rng.integers(1, 4)), groups * int(rng.integers(1, 4))
    R, S = int(rng.integers(1, 5)), int(rng.integers(1, 5))
    stride = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    dilation = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
    kind = rng.choice(["int", "pair", "valid", "same"])
    padding = {"int": int(rng.integers(0, 3)), "pair": (int(rng.integers(0, 3)), int(rng.integers(0, 3))),
               "valid": "valid", "same": "same"}[kind]
    pads = {"int": (padding, padding), "pair": padding}.get(kind, (0, 0))
    eff = ((R - 1) * dilation[0] + 1, (S - 1) * dilation[1] + 1)
    H = int(rng.integers(max(1, eff[0] - 2 * pads[0]), eff[0] + 8))
    W = int(rng.integers(max(1, eff[1] - 2 * pads[1]), eff[1] + 8))
    return dict(N=int(rng.integers(1, 4)), C=C, H=H, W=W, K=K, R=R, S=S, stride=stride,
                padding=padding, dilation=dilation, groups=groups)


def test_conv2d_matches_torch():
    rng = np.random.default_rng(2024)
    kinds = set()
    for _ in range(CASES):
        c = random_conv_case(rng)
        x = tie_free(rng, (c["N"], c["C"], c["H"], c["W"]))
        w = tie_free(rng, (c["K"], c["C"] // c["groups"], c["R"], c["S"]))
        b = tie_free(rng, (c["K"],))
        args = (c["stride"], c["padding"], c["dilation"], c["groups"])
        y = F.conv2d(x, w, b, *args)
        tx, tw, tb = torch_leaf(x), torch_leaf(w), torch_leaf(b)
        if c["padding"] == "same" and c["stride"] != (1, 1):
            eff = ((c["R"] - 1) * c["dilation"][0] + 1, (c["S"] - 1) * c["dilation"][1] + 1)
            top, bottom = same_pads(c["H"], eff[0], c["stride"][0])
            left, right = same_pads(c["W"], eff[1], c["stride"][1])
            ty = TF.conv2d(TF.pad(tx, (left, right, top, bottom)), tw, tb, c["stride"], 0, c["dilation"],
                           c["groups"])
            kinds.add("same-strided")
        else:
            ty = TF.conv2d(tx, tw, tb, *args)
            kinds.add(str(type(c["padding"]).__name__) + str(c["padding"] in ("same", "valid")))
        assert_close(y, ty, np.float64, what=f"y {c}")
        dy = rng.standard_normal(y.shape)
        ty.backward(torch.tensor(dy))
        dx, dw, db = F.conv2d_backward(dy, x, w, *args)
        assert_close(dx, tx.grad, np.float64, what=f"dx {c}")
        assert_close(dw, tw.grad, np.float64, what=f"dweight {c}")
        assert_close(db, tb.grad, np.float64, what=f"dbias {c}")
    assert len(kinds) == 4


def test_conv2d_float32_matches_torch():
    rng = np.random.default_rng(2025)
    for _ in range(50):
        c = random_conv_case(rng)
        if c["padding"] == "same" and c["stride"] != (1, 1):
            continue  # torch refuses strided 'same'; the float64 test covers it through explicit pads
        x = tie_free(rng, (c["N"], c["C"], c["H"], c["W"])).astype(np.float32)
        w = tie_free(rng, (c["K"], c["C"] // c["groups"], c["R"], c["S"])).astype(np.float32)
        args = (c["stride"], c["padding"], c["dilation"], c["groups"])
        tx, tw = torch_leaf(x), torch_leaf(w)
        ty = TF.conv2d(tx, tw, None, *args)
        y = F.conv2d(x, w, None, *args)
        assert y.dtype == np.float32
        assert_close(y, ty, np.float32, what=f"float32 y {c}")
        dy = rng.standard_normal(y.shape).astype(np.float32)
        ty.backward(torch.tensor(dy))
        dx, dw, _ = F.conv2d_backward(dy, x, w, *args)
        assert_close(dx, tx.grad, np.float32, what=f"float32 dx {c}")
        assert_close(dw, tw.grad, np.float32, what=f"float32 dweight {c}")


# ---- pooling ---------------------------------------------------------------------------------

def random_pool_case(rng, dilation_allowed):
    k = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
    d = (int(rng.integers(1, 3)), int(rng.integers(1, 3))) if dilation_allowed else (1, 1)
    eff = ((k[0] - 1) * d[0] + 1, (k[1] - 1) * d[1] + 1)
    stride = None if rng.random() < 0.2 else (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    # torch allows padding up to half the window without dilation (gpuconv: the dilated window)
    p = (int(rng.integers(0, k[0] // 2 + 1)), int(rng.integers(0, k[1] // 2 + 1)))
    H = int(rng.integers(max(1, eff[0] - 2 * p[0]), eff[0] + 8))
    W = int(rng.integers(max(1, eff[1] - 2 * p[1]), eff[1] + 8))
    shape = (int(rng.integers(1, 3)), int(rng.integers(1, 4)), H, W)
    return shape, dict(kernel_size=k, stride=stride, padding=p, ceil_mode=bool(rng.random() < 0.5)), d


def test_max_pool2d_values_indices_and_gradient_match_torch():
    rng = np.random.default_rng(7)
    checked_indices = 0
    for _ in range(CASES):
        shape, kw, d = random_pool_case(rng, dilation_allowed=True)
        x = tie_free(rng, shape)
        y, idx = F.max_pool2d(x, dilation=d, **kw)
        tx = torch_leaf(x)
        ty, tidx = TF.max_pool2d(tx, dilation=d, return_indices=True, **kw)
        ctx = (shape, kw, d)
        assert_close(y, ty, np.float64, what=f"y {ctx}")
        if (idx < 0).any():  # a window without input element: torch's index there is arbitrary
            continue
        np.testing.assert_array_equal(idx, tidx.numpy(), err_msg=str(ctx))
        dy = rng.standard_normal(y.shape)
        ty.backward(torch.tensor(dy))
        dx = F.max_pool2d_backward(dy, idx, shape, dilation=d, **kw)
        assert_close(dx, tx.grad, np.float64, what=f"dx {ctx}")
        checked_indices += 1
    assert checked_indices >= CASES * 0.9


def test_avg_pool2d_and_gradient_match_torch():
    rng = np.random.default_rng(8)
    for _ in range(CASES):
        shape, kw, _ = random_pool_case(rng, dilation_allowed=False)
        kw.update(count_include_pad=bool(rng.random() < 0.5),
                  divisor_override=None if rng.random() < 0.7 else int(rng.integers(1, 7)))
        x = tie_free(rng, shape)
        y = F.avg_pool2d(x, **kw)
        tx = torch_leaf(x)
        ty = TF.avg_pool2d(tx, **kw)
        assert_close(y, ty, np.float64, what=f"y {(shape, kw)}")
        dy = rng.standard_normal(y.shape)
        ty.backward(torch.tensor(dy))
        assert_close(F.avg_pool2d_backward(dy, shape, **kw), tx.grad, np.float64, what=f"dx {(shape, kw)}")


def test_l2_pool2d_and_gradient_match_torch_lp_pool():
    rng = np.random.default_rng(9)
    for _ in range(CASES):
        shape, kw, _ = random_pool_case(rng, dilation_allowed=False)
        x = tie_free(rng, shape)
        y = F.l2_pool2d(x, **kw)
        dy = rng.standard_normal(y.shape)
        dx = F.l2_pool2d_backward(dy, x, y, **kw)
        # lp_pool2d has no padding, and divides partial ceil_mode windows by their clipped size:
        # feed it x zero-padded so that every window is complete, with ceil_mode off.
        (kh, kwid), (ph, pw) = kw["kernel_size"], kw["padding"]
        sh, sw = kw["stride"] or kw["kernel_size"]
        P, Q = y.shape[2:]
        bottom = max(0, (P - 1) * sh + kh - shape[2] - ph)
        right = max(0, (Q - 1) * sw + kwid - shape[3] - pw)
        tx = torch_leaf(x)
        ty = TF.lp_pool2d(TF.pad(tx, (pw, right, ph, bottom)), 2, (kh, kwid), (sh, sw))
        ctx = (shape, kw)
        assert_close(y, ty[:, :, :P, :Q], np.float64, what=f"y {ctx}")
        assert ty.shape[2:] == (P, Q), ctx
        ty.backward(torch.tensor(dy))
        assert_close(dx, tx.grad, np.float64, what=f"dx {ctx}")


# ---- element-wise, dense, loss ---------------------------------------------------------------

def test_activations_linear_and_loss_match_torch():
    rng = np.random.default_rng(10)
    for _ in range(20):
        x = rng.standard_normal((int(rng.integers(1, 9)), int(rng.integers(1, 30)))) * 4
        dy = rng.standard_normal(x.shape)
        for ours, ours_bwd, theirs in [(F.relu, F.relu_backward, torch.relu),
                                       (F.sigmoid, F.sigmoid_backward, torch.sigmoid),
                                       (F.tanh, F.tanh_backward, torch.tanh)]:
            tx = torch_leaf(x)
            ty = theirs(tx)
            ty.backward(torch.tensor(dy))
            y = ours(x)
            assert_close(y, ty, np.float64, what=f"y {ours.__name__}")
            assert_close(ours_bwd(dy, y), tx.grad, np.float64, what=f"dx {ours.__name__}")
        w, b = rng.standard_normal((5, x.shape[1])), rng.standard_normal(5)
        tx, tw, tb = torch_leaf(x), torch_leaf(w), torch_leaf(b)
        ty = TF.linear(tx, tw, tb)
        dy = rng.standard_normal(ty.shape)
        ty.backward(torch.tensor(dy))
        assert_close(F.linear(x, w, b), ty, np.float64, what="y linear")
        grads = F.linear_backward(dy, x, w)
        for name, got, want in zip(("dx", "dw", "db"), grads, (tx.grad, tw.grad, tb.grad)):
            assert_close(got, want, np.float64, what=f"{name} linear")
        labels = rng.integers(0, 5, x.shape[0])
        logits = rng.standard_normal((x.shape[0], 5)) * 10
        tl = torch_leaf(logits)
        tloss = TF.cross_entropy(tl, torch.tensor(labels))
        tloss.backward()
        loss, d = F.softmax_cross_entropy(logits, labels)
        assert_close(loss, tloss, np.float64, what="loss cross entropy")
        assert_close(d, tl.grad, np.float64, what="dlogits cross entropy")


def test_add_mul_and_linear_without_bias_gradient_match_torch():
    rng = np.random.default_rng(11)
    for _ in range(10):
        shape = (int(rng.integers(1, 6)), int(rng.integers(1, 9)))
        a, b, dy = (rng.standard_normal(shape) for _ in range(3))
        ta, tb = torch_leaf(a), torch_leaf(b)
        assert_close(F.add(a, b), ta + tb, np.float64, what="add")
        tm = ta * tb
        tm.backward(torch.tensor(dy))
        assert_close(F.mul(a, b), tm, np.float64, what="mul")
        assert_close(F.mul(dy, b), ta.grad, np.float64, what="mul backward (dy * b)")
        w = rng.standard_normal((3, shape[1]))
        tx, tw = torch_leaf(a), torch_leaf(w)
        ty = TF.linear(tx, tw)
        gy = rng.standard_normal(ty.shape)
        ty.backward(torch.tensor(gy))
        dx, dw, db = F.linear_backward(gy, a, w, need_db=False)
        assert db is None
        assert_close(dx, tx.grad, np.float64, what="linear dx without bias")
        assert_close(dw, tw.grad, np.float64, what="linear dweight without bias")


def test_optimizer_steps_match_torch():
    rng = np.random.default_rng(12)
    shape = (4, 6)
    for momentum, dampening, nesterov, wd in [(0.0, 0.0, False, 0.0), (0.9, 0.1, False, 1e-2),
                                              (0.9, 0.0, True, 0.0)]:
        p = rng.standard_normal(shape)
        tp = torch.nn.Parameter(torch.tensor(p.copy()))
        opt = torch.optim.SGD([tp], lr=0.1, momentum=momentum, dampening=dampening, nesterov=nesterov,
                              weight_decay=wd)
        buf = np.zeros(shape) if momentum else None
        for step in range(3):
            g = rng.standard_normal(shape)
            tp.grad = torch.tensor(g)
            opt.step()
            F.sgd_step(p, g, buf, lr=0.1, momentum=momentum, dampening=dampening, weight_decay=wd,
                       nesterov=nesterov, first_step=step == 0)
        assert_close(p, tp, np.float64, what=f"sgd {(momentum, dampening, nesterov, wd)}")
    p = rng.standard_normal(shape)
    tp = torch.nn.Parameter(torch.tensor(p.copy()))
    opt = torch.optim.Adam([tp], lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)
    m, v = np.zeros(shape), np.zeros(shape)
    for step in range(1, 5):
        g = rng.standard_normal(shape)
        tp.grad = torch.tensor(g)
        opt.step()
        F.adam_step(p, g, m, v, step, lr=0.01, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.05)
    assert_close(p, tp, np.float64, what="adam")


# ---- batch normalisation ---------------------------------------------------------------------

def test_batch_norm_matches_torch():
    """F.batch_norm(_relu) and their backward against torch's batch_norm (autograd) over random
    shapes of rank 2 to 4, training and evaluation, with and without affine parameters and
    running statistics; saved_mean/saved_invstd against torch's native_batch_norm."""
    rng = np.random.default_rng(13)
    for case in range(CASES):
        rank = int(rng.integers(2, 5))
        shape = (int(rng.integers(1, 5)), int(rng.integers(1, 5))) + tuple(
            int(rng.integers(1, 6)) for _ in range(rank - 2))
        training = bool(rng.random() < 0.6)
        while training and shape[0] * int(np.prod(shape[2:])) < 3:
            # (two values per channel normalise to -1 and 1 whatever x is: dx is exactly 0, and
            # both sides return rounding noise)
            shape = (shape[0] + 1,) + shape[1:]
        C = shape[1]
        affine, track, relu = (bool(rng.random() < 0.7) for _ in range(3))
        track = track or not training
        momentum, eps = float(rng.uniform(0, 1)), float(rng.choice([1e-5, 1e-3, 0.1]))
        # Normal draws: evenly spaced values put a normalised value exactly on relu's kink.
        x = rng.standard_normal(shape) * 3 + rng.standard_normal()
        w, b = (rng.standard_normal(C), rng.standard_normal(C)) if affine else (None, None)
        rm, rv = (rng.standard_normal(C), rng.uniform(0.2, 2.0, C)) if track else (None, None)
        ctx = (case, shape, training, affine, track, relu, momentum, eps)
        tx = torch_leaf(x)
        tw, tb = (torch_leaf(w), torch_leaf(b)) if affine else (None, None)
        trm, trv = (torch.tensor(rm), torch.tensor(rv)) if track else (None, None)
        ty = TF.batch_norm(tx, trm, trv, tw, tb, training=training, momentum=momentum, eps=eps)
        if relu:
            ty = torch.relu(ty)
        dy = rng.standard_normal(shape)
        ty.backward(torch.tensor(dy))

        fwd = F.batch_norm_relu if relu else F.batch_norm
        y, mean, invstd = fwd(x, rm, rv, w, b, training=training, momentum=momentum, eps=eps)
        assert_close(y, ty, np.float64, what=f"y {ctx}")
        if track:
            assert_close(rm, trm, np.float64, what=f"running_mean {ctx}")
            assert_close(rv, trv, np.float64, what=f"running_var {ctx}")
        if training:
            _, tmean, tinv = torch.ops.aten.native_batch_norm(torch.tensor(x), None, None, None, None, True,
                                                              0.0, eps)
            assert_close(mean, tmean, np.float64, what=f"saved_mean {ctx}")
            assert_close(invstd, tinv, np.float64, what=f"saved_invstd {ctx}")
        if relu:
            dx, dw, db = F.batch_norm_relu_backward(dy, x, y, w, mean, invstd, training=training)
        else:
            dx, dw, db = F.batch_norm_backward(dy, x, w, mean, invstd, training=training)
        assert_close(dx, tx.grad, np.float64, what=f"dx {ctx}")
        if affine:
            assert_close(dw, tw.grad, np.float64, what=f"dweight {ctx}")
            assert_close(db, tb.grad, np.float64, what=f"dbias {ctx}")


def test_label_smoothing_matches_torch():
    rng = np.random.default_rng(14)
    for case in range(CASES):
        N, K = int(rng.integers(1, 9)), int(rng.integers(1, 12))
        eps = float(rng.choice([0.0, 1.0, rng.uniform(0, 1)]))
        logits = rng.standard_normal((N, K)) * 4 + rng.standard_normal() * 50
        labels = rng.integers(0, K, N)
        tl = torch_leaf(logits)
        tloss = TF.cross_entropy(tl, torch.tensor(labels), label_smoothing=eps)
        tloss.backward()
        loss, d = F.softmax_cross_entropy(logits, labels, label_smoothing=eps)
        assert_close(loss, tloss, np.float64, what=f"loss {(case, N, K, eps)}")
        assert_close(d, tl.grad, np.float64, what=f"dlogits {(case, N, K, eps)}")
