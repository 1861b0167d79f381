"""Carry a torch optimizer's state across a DLRT change of basis (and of rank).

A DLRT parameter lives in coordinates of the current bases: ``K = W V`` in ``V``'s,
``L = W^T U`` in ``U``'s, ``S = U^T W V`` in both. When the bases move from
``U0, V0`` to ``U1, V1`` the same quantity in the new coordinates is ``K V0^T V1``,
``L U0^T U1``, ``(U1^T U0) S (V0^T V1)``. The optimizer's state (momentum, Adam's
moments) is a running average of gradients in the old coordinates, so we carry it
over the same way instead of resetting it:

- first moments (SGD ``momentum_buffer``, Adam ``exp_avg`` and any other state tensor
  shaped like the parameter) map linearly, ``X -> A X B``: exact for the part of the
  history that lies in the new span, and the part outside it is dropped;
- second moments (``exp_avg_sq``, ``max_exp_avg_sq``) map by the elementwise squares,
  ``X -> (A∘A) X (B∘B)``: the variance of ``A g B`` when the entries of ``g`` are
  independent with variances ``X``. It keeps them non-negative (so Adam's square root
  stays real) and is exact for permutations and sign flips, which is what the
  bases of consecutive steps mostly differ by;
- step counters and other scalars are kept.

Shapes follow ``A (r1, r0)`` and ``B (r0', r1')``; a rank change resizes the state.
Resetting instead would restart Adam's bias correction on every step of an
integrator that changes bases each step, i.e. turn Adam into sign-SGD.

:func:`steps_are_shift_free` tells whether an optimizer's step of a parameter depends on the
parameter's value at all (it does not for the common rules without weight decay).
"""

from __future__ import annotations

import torch

__all__ = ["transform_state", "fill_augmented_state", "SECOND_MOMENTS", "SHIFT_FREE", "steps_are_shift_free"]

#: torch optimizers whose step ``p1 - p0`` depends on the gradients and the state only, never on
#: ``p0``, when every group's ``weight_decay`` is 0 (weight decay is their only use of ``p0``).
SHIFT_FREE: tuple[type[torch.optim.Optimizer], ...] = (
    torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop, torch.optim.Adagrad,
    torch.optim.Adamax, torch.optim.NAdam, torch.optim.RAdam)


def steps_are_shift_free(optimizer: torch.optim.Optimizer) -> bool:
    """Is ``optimizer``'s step of every parameter independent of the parameter's value? (then a step
    from 0 gives the move a step from anywhere would). Only the :data:`SHIFT_FREE` classes
    themselves (not subclasses, which may step differently), with no weight decay."""
    return type(optimizer) in SHIFT_FREE and all(not g.get("weight_decay") for g in optimizer.param_groups)

#: State entries that hold second moments (non-negative, transformed by squared maps).
SECOND_MOMENTS = frozenset({"exp_avg_sq", "max_exp_avg_sq", "square_avg", "sum"})


def transform_state(optimizer: torch.optim.Optimizer, param: torch.Tensor, left: torch.Tensor | None = None,
                    right: torch.Tensor | None = None, left_sq: torch.Tensor | None = None,
                    right_sq: torch.Tensor | None = None) -> None:
    """In place: every 2-D state tensor ``X`` of ``param`` becomes ``left @ X @ right``.

    ``None`` means identity on that side. ``left_sq`` / ``right_sq`` may pass
    precomputed elementwise squares (shared by several parameters of one layer).
    """
    state = optimizer.state.get(param)
    if not state:
        return
    for key, x in state.items():
        if not torch.is_tensor(x) or x.dim() != 2:
            continue
        if key in SECOND_MOMENTS:
            a = None if left is None else (left_sq if left_sq is not None else left * left)
            b = None if right is None else (right_sq if right_sq is not None else right * right)
        else:
            a, b = left, right
        if a is not None:
            x = a @ x
        if b is not None:
            x = x @ b
        state[key] = x


def fill_augmented_state(optimizer: torch.optim.Optimizer, S: torch.Tensor, K: torch.Tensor, L: torch.Tensor,
                         Ut: torch.Tensor, Vt: torch.Tensor, r: int) -> None:
    """Seed the new blocks of ``S``'s state after the KLS basis augmentation ``[U0 | U~]``, ``[V0 | V~]``.

    The augmented core's coordinates are ``[U0 | U~]^T (.) [V0 | V~]``. Its old block
    ``U0^T (.) V0`` holds the embedded state of ``S``; the blocks touching one new basis
    are exactly what the K- and L-states track, ``(.) V0`` and ``(.)^T U0``, seen in the
    new directions:

        bottom-left  U~^T (.) V0 = U~^T K-state,       top-right  U0^T (.) V~ = (V~^T L-state)^T

    (second moments through the squared maps, as in :func:`transform_state`). The
    new-new block has no history: its first moment stays 0 and its second moment
    is set to the mean of the two seeded blocks. Without this, Adam would meet
    ``2 r k + k^2`` coordinates with zero state every step and move each of them by
    about ``3 lr`` (``(1 - beta1) / sqrt(1 - beta2)``), a large random jump.
    ``S``'s state must already have the augmented shape ``(r + kU, r + kV)``.
    """
    sS, sK, sL = optimizer.state.get(S), optimizer.state.get(K), optimizer.state.get(L)
    if not sS or not sK or not sL:
        return
    ku, kv = Ut.shape[1], Vt.shape[1]
    Ut2 = Vt2 = None
    for key, x in sS.items():
        if not torch.is_tensor(x) or x.dim() != 2 or key not in sK or key not in sL:
            continue
        mk, ml = sK[key], sL[key]                  # (n, r), (m, r)
        if key in SECOND_MOMENTS:
            Ut2 = Ut * Ut if Ut2 is None else Ut2
            Vt2 = Vt * Vt if Vt2 is None else Vt2
            bl, tr = Ut2.T @ mk, (Vt2.T @ ml).T    # (kU, r), (r, kV)
        else:
            bl, tr = Ut.T @ mk, (Vt.T @ ml).T
        x[r:r + ku, :r] = bl
        x[:r, r:r + kv] = tr
        if key in SECOND_MOMENTS and ku and kv:
            x[r:r + ku, r:r + kv] = 0.5 * (bl.mean() + tr.mean())
