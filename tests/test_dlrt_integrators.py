"""DLRT integrators: one step equals the algorithm's formulas evaluated densely in float64;
orthonormality, rank caps, basis augmentation, truncation and optimizer-state projection."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lowrank.config import OptimConfig
from lowrank.methods.dlrt.basis import augment_basis
from lowrank.methods.dlrt.optim_state import transform_state
from lowrank.methods.dlrt.integrators import make_dlrt_stepper
from lowrank.methods.dlrt.truncation import truncate
from lowrank.methods.dlrt.layer import DLRTLinear
from lowrank.linalg import (CHOLESKY_QR_MIN_COLS, CHOLESKY_QR_MIN_ROWS, cholesky_qr2, orthonormality_error,
                            ql_positive, qr_positive, rank_for_tolerance)

LR = 0.05
F64 = torch.float64


def tiny_model(m: int = 7, n: int = 6, r: int = 2, c: int = 3, seed: int = 0, dtype=F64) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(DLRTLinear(m, n, r, dtype=dtype, max_rank=min(m, n)), nn.Tanh(), nn.Linear(n, c, dtype=dtype))


def batch(m: int = 7, c: int = 3, seed: int = 1, dtype=F64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, m, generator=g, dtype=dtype), torch.randn(16, c, generator=g, dtype=dtype)


# ----------------------------------------------------------------------------- float64 reference

def dense_grads(W, b, W2, b2, x, y, l2=0.0):
    """dL/dW, dL/db, dL/dW2, dL/db2 of the dense network (the reference forms dL/dW explicitly)."""
    ps = [t.detach().clone().requires_grad_() for t in (W, b, W2, b2)]
    loss = F.mse_loss(torch.tanh(x @ ps[0].T + ps[1]) @ ps[2].T + ps[3], y)
    # l2 * ||S||^2 = l2 * ||W||^2 for orthonormal bases; the dense output layer's weight too.
    loss = loss + l2 * (ps[0] ** 2).sum() + l2 * (ps[2] ** 2).sum()
    return torch.autograd.grad(loss, ps)


def orth(a: torch.Tensor, tol: float = 1e-10) -> torch.Tensor:
    """Orthonormal basis of range(a) (rank-revealing, via SVD)."""
    u, s, _ = torch.linalg.svd(a, full_matrices=False)
    return u[:, : int((s > tol * max(1.0, float(s[0]) if s.numel() else 1.0)).sum())]


def truncate_ref(W: torch.Tensor, rank: int | None, tau: float, r_min: int, r_max: int,
                 outside_sq: float = 0.0, total_sq: float | None = None) -> torch.Tensor:
    """Best approximation of ``W`` at ``rank``, or at the smallest rank whose discarded energy
    (plus ``outside_sq``) is at most ``tau^2 total_sq`` (default ``||W||_F^2``), clamped."""
    P, s, Qh = torch.linalg.svd(W)
    if rank is None:
        total_sq = float((s ** 2).sum()) + outside_sq if total_sq is None else total_sq
        theta = max(tau * tau * total_sq - outside_sq, 0.0) ** 0.5
        rank = max(r_min, min(r_max, rank_for_tolerance(s, theta)))
    return P[:, :rank] @ torch.diag(s[:rank]) @ Qh[:rank]


def power_truncate_ref(W: torch.Tensor, V0: torch.Tensor, rank: int | None, tau: float, r_min: int, r_max: int):
    """:mod:`lowrank.methods.dlrt.power` densely: ``W`` projected onto ``range(W V0)``, then truncated
    with the energy that projection left out; the exact truncation when an adaptive step's
    tolerance is exceeded by that energy alone (and the cap allows growth)."""
    r0 = V0.shape[1]
    Qy = torch.linalg.qr(W @ V0)[0]
    M = Qy @ (Qy.T @ W)                        # rank r0: W restricted to range(W V0)
    total, outside = float((W ** 2).sum()), float((W ** 2).sum() - (M ** 2).sum())
    if rank is None and r0 < r_max and outside > tau * tau * total:
        return truncate_ref(W, None, tau, r_min, r_max)
    return truncate_ref(M, rank, tau, r_min, r_max, outside, total)


def reference_step(model: nn.Sequential, x, y, integrator: str, adaptive: bool, tau: float = 0.1, l2: float = 0.0,
                   truncation: str = "svd"):
    """(W1, b1, W2', b2') after one SGD step of the integrator, from the design's formulas."""
    layer, out = model[0], model[2]
    U0, S0, V0, b0 = (t.detach().clone() for t in (layer.U, layer.S, layer.V, layer.bias))
    W2, b2 = out.weight.detach().clone(), out.bias.detach().clone()
    W0 = U0 @ S0 @ V0.T
    Gw, gb, gW2, gb2 = dense_grads(W0, b0, W2, b2, x, y, l2)
    K1 = U0 @ S0 - LR * Gw @ V0
    L1 = V0 @ S0.T - LR * Gw.T @ U0
    r = S0.shape[0]

    def cut(What: torch.Tensor) -> torch.Tensor:
        rank = None if adaptive else r
        if truncation == "power":
            return power_truncate_ref(What, V0, rank, tau, layer.min_rank, layer.max_rank)
        return truncate_ref(What, rank, tau, layer.min_rank, layer.max_rank)

    if integrator == "kls":
        if adaptive:
            U1, V1 = orth(torch.cat([K1, U0], 1)), orth(torch.cat([L1, V0], 1))
        else:
            U1, V1 = torch.linalg.qr(K1)[0], torch.linalg.qr(L1)[0]
        St = (U1.T @ U0) @ S0 @ (V1.T @ V0).T
        Gt, gb, gW2, gb2 = dense_grads(U1 @ St @ V1.T, b0, W2, b2, x, y, l2)
        S1 = St - LR * U1.T @ Gt @ V1
        W1 = cut(U1 @ S1 @ V1.T) if adaptive else U1 @ S1 @ V1.T
    else:
        S1 = S0 - LR * U0.T @ Gw @ V0
        Ut = orth(K1 - U0 @ (U0.T @ K1))
        Vt = orth(L1 - V0 @ (V0.T @ L1))
        Sh = torch.zeros(r + Ut.shape[1], r + Vt.shape[1], dtype=F64)
        Sh[:r, :r], Sh[:r, r:], Sh[r:, :r] = S1, L1.T @ Vt, Ut.T @ K1
        W1 = cut(torch.cat([U0, Ut], 1) @ Sh @ torch.cat([V0, Vt], 1).T)
    return W1, b0 - LR * gb, W2 - LR * gW2, b2 - LR * gb2


def turn_bases_from(monkeypatch, rank: int) -> None:
    """Make the power step take turned bases from ``rank`` on (the tests' layers are far below
    :data:`~lowrank.methods.dlrt.basis.TURNED_MIN_RANK`)."""
    from lowrank.methods.dlrt import power

    monkeypatch.setattr(power, "TURNED_MIN_RANK", rank)


#: The integrators with each way they find their bases: the power step by QR (small ranks) and
#: turned (no QR); fixed-rank KLS by QR of K1 (small ranks) and from the move (no QR of K1).
INTEGRATOR_BASES = [("kls", "qr"), ("kls", "moved"), ("parallel", "qr"), ("parallel", "turned")]


def use_bases(monkeypatch, bases: str) -> None:
    if bases == "turned":
        turn_bases_from(monkeypatch, 1)
    if bases == "moved":
        from lowrank.methods.dlrt import kls
        from lowrank.methods.dlrt.basis import moved_qr

        def must_find(*args):                       # the step must take this path, not fall back
            found = moved_qr(*args)
            assert found is not None
            return found
        monkeypatch.setattr(kls, "MOVED_QR_MIN_RANK", 1)
        monkeypatch.setattr(kls, "moved_qr", must_find)


@pytest.mark.parametrize("integrator, bases", INTEGRATOR_BASES)
@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("shape", [(7, 6, 2), (9, 5, 3)])  # (9, 5, 3): 2r > n, augmentation is capped
@pytest.mark.parametrize("truncation", ["svd", "power"])
def test_one_sgd_step_matches_formulas(integrator: str, adaptive: bool, shape: tuple[int, int, int],
                                       truncation: str, bases: str, monkeypatch) -> None:
    use_bases(monkeypatch, bases)
    m, n, r = shape
    model = tiny_model(m, n, r)
    x, y = batch(m)
    expected = reference_step(model, x, y, integrator, adaptive, truncation=truncation)
    stepper = make_dlrt_stepper(model, OptimConfig(optimizer="sgd", lr=LR), integrator=integrator, adaptive=adaptive,
                          tau=0.1, truncation=truncation)
    loss = stepper.step(x, y, F.mse_loss)
    layer = model[0]
    got = (layer.dense_weight().detach(), layer.bias.detach(), model[2].weight.detach(), model[2].bias.detach())
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=1e-10, rtol=1e-10)
    assert loss.shape == () and not loss.requires_grad
    assert orthonormality_error(layer.U) < 1e-12 and orthonormality_error(layer.V) < 1e-12


@pytest.mark.parametrize("integrator, bases", INTEGRATOR_BASES)
@pytest.mark.parametrize("adaptive", [False, True])
def test_l2_penalty_reaches_k_and_l(integrator: str, adaptive: bool, bases: str, monkeypatch) -> None:
    use_bases(monkeypatch, bases)
    model = tiny_model()
    x, y = batch()
    expected = reference_step(model, x, y, integrator, adaptive, l2=0.01, truncation="power")
    stepper = make_dlrt_stepper(model, OptimConfig(optimizer="sgd", lr=LR, l2=0.01), integrator=integrator,
                          adaptive=adaptive, tau=0.1)
    stepper.step(x, y, F.mse_loss)
    torch.testing.assert_close(model[0].dense_weight().detach(), expected[0], atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(model[2].weight.detach(), expected[2], atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("integrator, bases", INTEGRATOR_BASES)
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_fixed_rank_steps_keep_bases_orthonormal_float32(integrator: str, optimizer: str, bases: str,
                                                         monkeypatch) -> None:
    use_bases(monkeypatch, bases)
    torch.manual_seed(0)
    model = nn.Sequential(DLRTLinear(40, 30, 5), nn.ReLU(), nn.Linear(30, 4))
    x, y = torch.randn(64, 40), torch.randint(0, 4, (64,))
    cfg = OptimConfig(optimizer=optimizer, lr=0.01, momentum=0.9 if optimizer == "sgd" else 0.0, clip=4.0)
    stepper = make_dlrt_stepper(model, cfg, integrator=integrator)
    for _ in range(30):
        stepper.step(x, y, F.cross_entropy)
        layer = model[0]
        assert layer.rank == 5
        assert orthonormality_error(layer.U) <= 1e-5 and orthonormality_error(layer.V) <= 1e-5


def test_fixed_rank_power_step_keeps_coordinates(monkeypatch) -> None:
    """The fixed-rank parallel power step takes the core's SVD only every ``diagonalize_every``
    steps. In between the bases move out of the old subspaces by the step's own size and do not
    turn within them: ``U0^T U1 = R_U^{-1}`` is upper triangular and ``I`` to second order
    (a QR of ``Y`` would turn them by ``O(step)`` unless ``S1`` were triangular)."""
    turn_bases_from(monkeypatch, 1)
    torch.manual_seed(0)
    model = nn.Sequential(DLRTLinear(40, 30, 6), nn.ReLU(), nn.Linear(30, 4))
    x, y = torch.randn(64, 40), torch.randint(0, 4, (64,))
    stepper = make_dlrt_stepper(model, OptimConfig(optimizer="adam", lr=1e-3), integrator="parallel", diagonalize_every=7)
    layer, eye = model[0], torch.eye(6)
    for step in range(20):
        U0, V0 = layer.U.detach().clone(), layer.V.detach().clone()
        stepper.step(x, y, F.cross_entropy)
        S = layer.S.detach()
        assert ((S - torch.diag(torch.diagonal(S))).abs().max() == 0) == (step % 7 == 0)   # diagonal after an SVD step only
        if step % 7:
            # Each step's motion is O(lr) = 1e-3 (an SVD step may turn the bases within the
            # subspace: equal singular values at init); within the subspace only O(lr^2).
            for B0, B1 in ((U0, layer.U.detach()), (V0, layer.V.detach())):
                C = B0.T @ B1
                assert 1e-4 < (B1 - B0).abs().max() < 0.05
                assert (C - eye).abs().max() < 1e-4 and torch.tril(C, -1).abs().max() < 1e-6


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("bases", ["qr", "turned"])
def test_aligned_steps_keep_state_turning_steps_project_it(monkeypatch, adaptive: bool, bases: str) -> None:
    """Aligned steps (no SVD, rank unchanged) keep the optimizer state as it is and move the bases
    by the step's own size; a step that diagonalizes the core (every ``diagonalize_every``-th,
    or a rank-adaptive step whose rule changes the rank) turns the bases and must project the
    state onto them."""
    use_bases(monkeypatch, bases)
    torch.manual_seed(0)
    model = nn.Sequential(DLRTLinear(40, 30, 8, max_rank=12), nn.ReLU(), nn.Linear(30, 4))
    x, y = torch.randn(64, 40), torch.randint(0, 4, (64,))
    stepper = make_dlrt_stepper(model, OptimConfig(optimizer="adam", lr=1e-3), integrator="parallel",
                          adaptive=adaptive, tau=0.3, diagonalize_every=7)
    projected, cores = [], []
    opt = stepper.optimizer                 # the DLRT optimizer runs the integrator
    monkeypatch.setattr(opt, "_project", lambda *a, **k: projected.append(True))
    set_factors = opt._set_factors
    def recording(i, U, S, V, **known):
        cores.append(S.clone())             # S itself is stepped in place later
        set_factors(i, U, S, V, **known)
    monkeypatch.setattr(opt, "_set_factors", recording)
    layer, kinds = model[0], set()
    for step in range(20):
        r0, U0 = layer.rank, layer.U.detach().clone()
        if step == 10:
            stepper.tau = 0.7               # a step that is not a multiple of 7 must drop ranks
        projected.clear()
        cores.clear()
        stepper.step(x, y, F.cross_entropy)
        diagonal = bool(torch.triu(cores[-1], 1).abs().max() == 0)
        turned = step % 7 == 0 or layer.rank != r0
        assert bool(projected) == diagonal == turned, (step, r0, layer.rank)
        assert turned or (layer.U.detach() - U0).abs().max() < 0.05
        kinds.add((turned, layer.rank != r0))
    assert (False, False) in kinds and (True, False) in kinds
    assert not adaptive or (True, True) in kinds, "the rank never changed: the test proves nothing"


def test_qr_and_ql_with_positive_diagonals() -> None:
    g = torch.Generator().manual_seed(0)
    B = torch.linalg.qr(torch.randn(20, 5, generator=g, dtype=F64))[0]
    T = torch.triu(torch.randn(5, 5, generator=g, dtype=F64), 1) + torch.diag(torch.rand(5, generator=g, dtype=F64) + 0.5)
    q, r = qr_positive(B @ T)
    torch.testing.assert_close(q, B)
    torch.testing.assert_close(r, T)
    q, lo = ql_positive(B @ T.T)
    torch.testing.assert_close(q, B)
    torch.testing.assert_close(lo, T.T)
    a = torch.randn(20, 5, generator=g, dtype=F64)
    q, lo = ql_positive(a)
    torch.testing.assert_close(q @ lo, a)
    assert torch.triu(lo, 1).abs().max() == 0 and bool((torch.diagonal(lo) >= 0).all())


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_cholesky_qr2_matches_householder_and_refuses_ill_conditioned(dtype) -> None:
    g = torch.Generator().manual_seed(0)
    k = CHOLESKY_QR_MIN_COLS                  # big enough for qr_positive to take CholeskyQR2
    B = torch.linalg.qr(torch.randn(max(3 * k, CHOLESKY_QR_MIN_ROWS), k, generator=g, dtype=F64))[0]
    rot = torch.linalg.qr(torch.randn(k, k, generator=g, dtype=F64))[0]
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for cond in (1.0, 1e2):
        a = ((B * torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), k, dtype=F64)) @ rot).to(dtype)
        q0, r0 = torch.linalg.qr(a.double())
        sign = torch.sign(torch.diagonal(r0))
        for q, r in (cholesky_qr2(a), qr_positive(a)):
            torch.testing.assert_close(q.double(), q0 * sign, atol=10 * tol * cond, rtol=0)
            torch.testing.assert_close(r.double(), r0 * sign[:, None], atol=10 * tol * cond, rtol=0)
            assert orthonormality_error(q.double()) <= tol and torch.triu(r).equal(r)
    # Beyond the accepted spread, and for rank-deficient input, it declines; qr_positive falls back.
    bad = ((B * torch.logspace(0, -8, k, dtype=F64)) @ rot).to(dtype)
    deficient = torch.cat([a[:, : k // 2], a[:, : k // 2]], dim=1)
    for m in (bad, deficient):
        assert cholesky_qr2(m) is None
        q, r = qr_positive(m)
        torch.testing.assert_close(q @ r, m, atol=tol * 10, rtol=0)
        assert orthonormality_error(q.double()) <= 10 * tol


def test_cholesky_ql2_matches_householder_on_reversed_columns() -> None:
    g = torch.Generator().manual_seed(1)
    k = CHOLESKY_QR_MIN_COLS
    a = torch.randn(CHOLESKY_QR_MIN_ROWS, k, generator=g)
    q, lo = cholesky_qr2(a, lower=True)
    q0, r0 = torch.linalg.qr(a.double().flip(-1))
    sign = torch.sign(torch.diagonal(r0))
    torch.testing.assert_close(q.double(), (q0 * sign).flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(lo.double(), (r0 * sign[:, None]).flip(-2, -1), atol=1e-4, rtol=0)
    assert torch.triu(lo, 1).abs().max() == 0 and orthonormality_error(q.double()) <= 1e-5
    assert ql_positive(a)[0].equal(q)        # ql_positive takes this path at this shape


@pytest.mark.parametrize("move", [1e-3, 1e-2])
def test_power_step_equals_float64_formulas(move: float) -> None:
    """The power step's weights ``W1 = Q_Y core Q_X^T`` equal the float64 projection of ``W^`` onto
    ``range(W^ V0)``, by turned bases (no QR) for a small move and by QRs (CholeskyQR2 at these
    shapes, ``C = S1 R_Y^{-1}``) for one whose turn exceeds ``MAX_TURN_SQ``; the QR path also
    gives the float64 QR / QL bases and core themselves. The float64 reference knows no turn."""
    from lowrank.methods.dlrt.basis import MAX_TURN_SQ
    from lowrank.methods.dlrt.power import parallel_power_step, qr_power_step

    g = torch.Generator().manual_seed(0)
    n, m, r = CHOLESKY_QR_MIN_ROWS, CHOLESKY_QR_MIN_ROWS + 100, CHOLESKY_QR_MIN_COLS
    U0 = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=F64))[0]
    V0 = torch.linalg.qr(torch.randn(m, r, generator=g, dtype=F64))[0]
    S1 = torch.randn(r, r, generator=g, dtype=F64) * 0.1 + torch.diag(torch.logspace(1, -1, r, dtype=F64))
    dK = U0 @ torch.randn(r, r, generator=g, dtype=F64) * move + move * torch.randn(n, r, generator=g, dtype=F64)
    dL = V0 @ torch.randn(r, r, generator=g, dtype=F64) * move + move * torch.randn(m, r, generator=g, dtype=F64)
    Zk, Zl = dK - U0 @ (U0.T @ dK), dL - V0 @ (V0.T @ dL)
    W = U0 @ S1 @ V0.T + Zk @ V0.T + U0 @ Zl.T              # W^ densely
    q, rr = torch.linalg.qr(W @ V0)
    Qy = q * torch.sign(torch.diagonal(rr))
    W1 = Qy @ (Qy.T @ W)                                    # the power truncation at rank r
    turn = float((dK @ torch.linalg.inv(S1)).square().sum())
    assert (turn <= MAX_TURN_SQ) == (move < 5e-3)           # the two cases take the two paths
    inputs = [t.float() for t in (U0, V0, S1, dK, dL)]
    st = parallel_power_step(*inputs)
    scale = float(W.abs().max())
    torch.testing.assert_close((st.left @ st.core @ st.right.T).double(), W1, atol=1e-5 * scale, rtol=0)
    assert orthonormality_error(st.left.double()) < 1e-5 and orthonormality_error(st.right.double()) < 1e-5
    torch.testing.assert_close(st.left_overlap.double(), U0.T @ st.left.double(), atol=1e-5, rtol=0)
    torch.testing.assert_close(st.right_overlap.double(), V0.T @ st.right.double(), atol=1e-5, rtol=0)
    assert st.total_sq == pytest.approx(float(W.square().sum()), rel=1e-5)
    assert st.outside_sq == pytest.approx(float((W - W1).square().sum()), rel=1e-2, abs=1e-6 * st.total_sq)
    triangular = bool(torch.tril(st.core, -1).abs().max() == 0)
    assert triangular == (turn > MAX_TURN_SQ)               # the QR path leaves L_X^T, the turned one not
    if turn <= MAX_TURN_SQ:                                 # turned bases: U0^T Q_Y = R_U^{-1} = I + O(turn)
        assert 0 < (st.left_overlap - torch.eye(r)).abs().max() < turn
        st = qr_power_step(*inputs)
    q, rr = torch.linalg.qr((W.T @ Qy).flip(-1))
    sign = torch.sign(torch.diagonal(rr))
    Qx, Lx = (q * sign).flip(-1), (rr * sign[:, None]).flip(-2, -1)
    torch.testing.assert_close(st.left.double(), Qy, atol=1e-4, rtol=0)
    torch.testing.assert_close(st.right.double(), Qx, atol=1e-4, rtol=0)
    torch.testing.assert_close(st.core.double(), Lx.T, atol=1e-4 * float(Lx.abs().max()), rtol=0)
    torch.testing.assert_close(st.left_overlap.double(), U0.T @ Qy, atol=1e-4, rtol=0)


@pytest.mark.parametrize("move", [1e-3, 3e-2])
def test_turned_basis_bounds_its_turn_and_folds_rotations(move: float) -> None:
    """``turned_basis`` from ``r x r`` products only: ``Q = B0 X + D P`` is the orthonormal basis of
    ``range(B0 + Z N)`` with ``B0^T Q = R^{-1}`` (float64 reference), its ``size`` bounds the turn
    ``||D N||_F^2`` from above, within 1 % for a small move and 2x for a large one; a rotation folded into
    the coefficients gives ``Q p``; and a power step's :meth:`rotated` bases are ``left p``,
    ``right q`` (turned bases for the small move, QRs for the large)."""
    from lowrank.methods.dlrt.basis import MAX_TURN_SQ, TurnedBasis, turned_basis
    from lowrank.methods.dlrt.power import parallel_power_step

    g = torch.Generator().manual_seed(3)
    n, r = 300, 40
    B0 = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=F64))[0]
    S1 = torch.randn(r, r, generator=g, dtype=F64) * 0.01 + torch.diag(torch.logspace(0.5, -0.5, r, dtype=F64))
    N = torch.linalg.inv(S1)
    D = (B0 @ torch.randn(r, r, generator=g, dtype=F64) + torch.randn(n, r, generator=g, dtype=F64)) * move
    Z = D - B0 @ (B0.T @ D)
    tb = turned_basis(B0.float(), D.float(), (B0.T @ D).float(), (D.T @ D).float(), N.float())
    Q = tb.form().double()
    q_ref = torch.linalg.qr(B0 + Z @ N)[0]
    assert orthonormality_error(Q) < 1e-5
    torch.testing.assert_close(Q @ (Q.T @ q_ref), q_ref, atol=1e-5, rtol=0)        # the same subspace
    torch.testing.assert_close(tb.R_inv.double(), B0.T @ Q, atol=1e-5, rtol=0)
    assert torch.triu(tb.R).equal(tb.R)
    turn = float((D @ N).square().sum())
    assert turn <= float(tb.size) <= (1.01 if move < 1e-2 else 2) * turn
    p = torch.linalg.qr(torch.randn(r, r - 3, generator=g))[0]                      # (r, r1) rotation
    torch.testing.assert_close(tb.form(p).double(), Q @ p.double(), atol=1e-5, rtol=0)
    st = parallel_power_step(B0.float(), B0.float(), S1.float(), D.float(), D.float(), energies=False)
    assert isinstance(st.left_basis, TurnedBasis) == (turn <= MAX_TURN_SQ)          # else by QR
    left, right = st.rotated(p, p)
    torch.testing.assert_close(left, st.left @ p, atol=1e-5, rtol=0)
    torch.testing.assert_close(right, st.right @ p, atol=1e-5, rtol=0)


@pytest.mark.parametrize("move", [1e-3, 1.0])
def test_moved_qr_equals_float64_qr(move: float) -> None:
    """The QR basis of ``K1 = U0 S0 + dK`` found from the move (no factorization of ``K1``, the
    ``r x r`` work in float64) equals the float64 positive QR of ``K1``, with ``M = U1^T U0``,
    for float32 inputs whose ``S0`` has condition ~2e3 (the same formulas with a float32 Gram
    matrix leave 4e-5 of orthonormality here); a move whose turn exceeds ``MAX_TURN_SQ``
    is declined, and ``kls_fixed_basis`` factors ``K1`` instead: the same basis."""
    from lowrank.methods.dlrt.basis import MAX_TURN_SQ, moved_qr
    from lowrank.methods.dlrt.kls import kls_fixed_basis

    g = torch.Generator().manual_seed(0)
    n, r = 600, 40
    U0 = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=F64))[0]
    S0 = torch.randn(r, r, generator=g, dtype=F64) * 0.1 + torch.diag(torch.logspace(1, -1, r, dtype=F64))
    dK = move * torch.randn(n, r, generator=g, dtype=F64)
    K1 = U0 @ S0 + dK
    Q, R = qr_positive(K1)
    turn = float((dK @ torch.linalg.inv(R)).square().sum())
    assert (turn <= MAX_TURN_SQ) == (move < 0.1)            # the two cases take the two paths
    inputs = [t.float() for t in (U0, S0, dK)]
    found = moved_qr(*inputs)
    assert (found is not None) == (move < 0.1)
    U1, M = kls_fixed_basis(*inputs)
    if found is not None:
        assert U1.equal(found[0]) and M.equal(found[1])
    torch.testing.assert_close(U1.double(), Q, atol=1e-5, rtol=0)
    torch.testing.assert_close(M.double(), Q.T @ U0, atol=1e-5, rtol=0)
    assert orthonormality_error(U1.double()) < 1e-5


@pytest.mark.parametrize("integrator", ["kls", "parallel"])
def test_adaptive_ranks_respect_caps(integrator: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(DLRTLinear(40, 30, 4, min_rank=3, max_rank=7), nn.ReLU(), nn.Linear(30, 4))
    x, y = torch.randn(64, 40), torch.randint(0, 4, (64,))
    # tau = 0 keeps every direction: the rank grows and must stop at max_rank ...
    stepper = make_dlrt_stepper(model, OptimConfig(optimizer="adam", lr=0.01), integrator=integrator, adaptive=True, tau=0.0)
    seen = set()
    for _ in range(6):
        stepper.step(x, y, F.cross_entropy)
        seen.add(model[0].rank)
    assert max(seen) == 7 and min(seen) >= 3
    assert stepper.exact_fallbacks > 0      # growing the rank needs the exact path of the power truncation
    # ... and a huge tolerance truncates everything: the rank must stop at min_rank.
    stepper.tau = 0.99
    for _ in range(3):
        stepper.step(x, y, F.cross_entropy)
    assert model[0].rank == 3
    stats = stepper.end_epoch(0)["ranks"]["0"]
    assert stats == {"rank": 3, "min": 3, "max": 7}


def test_augment_basis_fast_and_fallback_paths() -> None:
    torch.manual_seed(0)
    U0 = torch.linalg.qr(torch.randn(50, 6, dtype=F64))[0]
    K1 = U0 @ torch.randn(6, 6, dtype=F64) + 1e-3 * torch.randn(50, 6, dtype=F64)
    for k1 in (K1, U0 @ torch.randn(6, 6, dtype=F64), torch.zeros(50, 6, dtype=F64)):  # generic, in-span, zero
        Ut, R = augment_basis(U0, k1)
        assert Ut.shape == (50, 6)
        full = torch.cat([U0, Ut], 1)
        assert orthonormality_error(full) < 1e-12
        torch.testing.assert_close(Ut.T @ k1, R, atol=1e-12, rtol=0)
        # span [U0 | U~] contains K1
        torch.testing.assert_close(full @ (full.T @ k1), k1, atol=1e-12, rtol=0)
    small = torch.linalg.qr(torch.randn(8, 6, dtype=F64))[0]
    Ut, R = augment_basis(small, torch.randn(8, 6, dtype=F64))  # only 2 new directions fit
    assert Ut.shape == (8, 2) and R.shape == (2, 6)


def test_truncate_rule() -> None:
    S = torch.diag(torch.tensor([10.0, 5.0, 1.0, 0.1, 0.01], dtype=F64))
    P, s, Q = truncate(S, tau=0.05)
    assert s.numel() == rank_for_tolerance(torch.diag(S), 0.05 * float(torch.linalg.vector_norm(torch.diag(S))))
    assert s.numel() == 3
    assert truncate(S, tau=0.05, max_rank=2)[1].numel() == 2
    assert truncate(S, tau=0.99, min_rank=2)[1].numel() == 2
    assert truncate(S, tau=1.05, absolute=True)[1].numel() == 2   # ||(1, .1, .01)|| = 1.005 <= 1.05
    assert truncate(S, rank=4)[1].numel() == 4
    torch.testing.assert_close(P @ torch.diag(s) @ Q.T, torch.diag(torch.tensor([10.0, 5.0, 1.0, 0, 0], dtype=F64)))


def test_transform_state_linear_and_squared() -> None:
    p = nn.Parameter(torch.zeros(3, 3))
    opt = torch.optim.Adam([p])
    p.grad = torch.randn(3, 3)
    opt.step()
    m, v = opt.state[p]["exp_avg"].clone(), opt.state[p]["exp_avg_sq"].clone()
    A, B = torch.randn(5, 3), torch.randn(3, 2)
    transform_state(opt, p, A, B)
    st = opt.state[p]
    torch.testing.assert_close(st["exp_avg"], A @ m @ B)
    torch.testing.assert_close(st["exp_avg_sq"], (A * A) @ v @ (B * B))
    assert st["exp_avg_sq"].shape == (5, 2) and bool((st["exp_avg_sq"] >= 0).all())
    assert float(st["step"]) == 1.0


def test_optimizer_state_follows_rank_changes() -> None:
    for integrator in ("kls", "parallel"):
        torch.manual_seed(0)
        model = nn.Sequential(DLRTLinear(40, 30, 4, max_rank=10), nn.ReLU(), nn.Linear(30, 4))
        x, y = torch.randn(64, 40), torch.randint(0, 4, (64,))
        stepper = make_dlrt_stepper(model, OptimConfig(optimizer="adam", lr=0.02), integrator=integrator,
                              adaptive=True, tau=1e-3)
        ranks = set()
        for _ in range(15):
            stepper.step(x, y, F.cross_entropy)
            layer = model[0]
            r = layer.rank
            ranks.add(r)
            for p, shape in ((stepper.K[0], (30, r)), (stepper.L[0], (40, r)), (layer.S, (r, r))):
                st = stepper.optimizer.state[p]
                assert st["exp_avg"].shape == shape and st["exp_avg_sq"].shape == shape
                assert bool((st["exp_avg_sq"] >= 0).all())
        assert len(ranks) > 1, f"{integrator}: the rank never changed ({ranks}); the test proves nothing"


@pytest.mark.parametrize("failures", [1, 2])
def test_truncation_survives_svd_non_convergence(monkeypatch, failures: int) -> None:
    import lowrank.methods.dlrt.truncation as T

    real, calls = torch.linalg.svd, []

    def flaky(a, *args, **kw):
        calls.append(a.dtype)
        if len(calls) <= failures:
            raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")
        return real(a, *args, **kw)

    S = torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.5])) + 0.01 * torch.randn(4, 4)
    expected = real(S.double())
    monkeypatch.setattr(T.torch.linalg, "svd", flaky)
    P, s, Q = truncate(S, rank=2)
    torch.testing.assert_close(s.double(), expected[1][:2], atol=1e-5, rtol=0)
    torch.testing.assert_close((P @ torch.diag(s) @ Q.T).double(),
                               expected[0][:, :2] @ torch.diag(expected[1][:2]) @ expected[2][:2], atol=1e-5, rtol=0)
    monkeypatch.setattr(T.torch.linalg, "svd", lambda *a, **k: (_ for _ in ()).throw(torch.linalg.LinAlgError("x")))
    with pytest.raises(Exception, match="non-finite"):
        truncate(torch.full((3, 3), float("nan")), rank=1)


@pytest.mark.parametrize("integrator, adaptive, truncation, augments", [
    ("parallel", False, "power", False), ("parallel", True, "svd", True), ("kls", True, "power", True),
    ("kls", False, "svd", False)])
def test_training_accounting_counts_augmented_bases_only_when_formed(integrator, adaptive, truncation, augments):
    model = tiny_model()
    make_dlrt_stepper(model, OptimConfig(optimizer="adam"), integrator=integrator, adaptive=adaptive, truncation=truncation)
    layer = model[0]
    assert layer.augments is augments
    assert (layer.training_params() > layer.training_params(augmented=False)) is augments
