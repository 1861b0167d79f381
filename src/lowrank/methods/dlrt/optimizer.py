"""Dynamical low-rank training as a ``torch.optim.Optimizer``: :class:`DLRT`.

    opt = lowrank.DLRT(model, torch.optim.Adam, lr=1e-3, integrator="parallel", adaptive=True, tau=0.1)
    for x, y in loader:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()                    # "kls": opt.step(closure), closure() re-evaluating the loss

``DLRT(model, ...)`` returns the integrator's subclass (:class:`~.parallel_step.ParallelDLRT`,
:class:`~.kls_step.KLSDLRT`); the algorithms are described there. This module holds
what they share.

Parameters. Per DLRT layer (:class:`~.layer.DLRTLayer` found in ``model``) the integrator
treats ``K (n, r)``, ``L (m, r)`` and ``S (r, r)`` as parameters of one ordinary torch
optimizer, the *inner* optimizer (``optimizer_cls``: SGD, momentum, Adam, AdamW, weight
decay ... all work), together with every other trainable parameter of the model (biases,
dense layers). ``K`` and ``L`` belong to the DLRT optimizer, not to the model. A step of
the rule is "``p.data`` = current value (``K = U0 S0``, ``L = V0 S0^T``), ``p.grad`` = the
integrator's gradient, ``inner.step()``". :attr:`param_groups` and :attr:`state` *are* the
inner optimizer's (the same objects), so learning-rate schedulers, ``zero_grad`` and
anything that reads or changes hyperparameters act on the rule the integrator uses.

Capture. The layers are attached to the optimizer: in every grad-enabled forward pass
they feed ``K``, ``L`` to their product, whose backward returns ``G_K = dL/dW V`` and
``G_L = dL/dW^T U`` as their gradients. So after ``loss.backward()`` the gradients the
integrator uses are the ``.grad`` of the tensors in ``opt.param_groups``: ``K``, ``L``,
``S`` and the rest. Several backward passes before one ``step()`` add up, as for any
parameter (gradient accumulation). ``step()`` consumes ``K.grad`` and ``L.grad`` (sets
them to None); ``zero_grad()`` clears all of them (``model.zero_grad()`` too: a forward
pass that finds ``S.grad`` cleared drops the sinks' gradients). ``torch.autograd.grad``
(e.g. for adversarial inputs) leaves ``K.grad``, ``L.grad`` alone; the two integrator
options that keep more per backward pass in the layers (rank-adaptive KLS: each use's
input and output gradient; ``lift_penalties``: the task part of ``dS``) do not tell such
a call from a training backward, so call ``zero_grad()`` after it there.

Clipping: ``K`` and ``L`` are not parameters of the model, so
``clip_grad_norm_(model.parameters(), c)`` would leave ``G_K``, ``G_L`` out. Clip what the
optimizer holds: ``torch.nn.utils.clip_grad_norm_(opt.params(), c)`` (or
:meth:`DLRT.clip_grad_norm_`) between ``backward()`` and ``step()``; or pass ``clip=c``
and the optimizer clips inside ``step()``, per inner optimizer call, as the CLI's
``--clip`` does (see :class:`DLRT`).

Truncation (``truncation``): ``"power"`` (default) reduces the augmented weights by one
block power step warm-started at the current bases and takes the SVD of the resulting
``r x r`` core (:mod:`.power`); a rank-adaptive step whose tolerance asks for a higher rank
falls back to the exact path (counted in ``exact_fallbacks``). ``"svd"`` always takes the
exact SVD of the augmented core (:mod:`.truncation`), the algorithm as published.

Optimizer state across a change of basis is projected onto the new basis
(:mod:`.optim_state`), never reset: first moments linearly, second moments by the
squared maps.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

import torch
from torch import nn

from ...errors import CheckpointError, ConfigError
from .layer import DLRTLayer, attach
from .optim_state import steps_are_shift_free, transform_state
from .parallel import rotate_basis
from .phase_clock import PhaseClock
from .truncation import TRUNCATIONS

__all__ = ["DLRT", "OptimizerFactory"]

#: What builds the inner optimizer from a list of parameters: a torch optimizer class (called
#: as ``optimizer_cls(params, **optimizer_kwargs)``) or any such callable.
OptimizerFactory = Callable[..., torch.optim.Optimizer]

Closure = Callable[[], Any]


class DLRT(torch.optim.Optimizer):
    """Dynamical low-rank training of ``model``'s DLRT layers, any torch optimizer as the rule.

    Args:
        model: a model with at least one DLRT layer (``lowrank.convert(model, "dlrt", rank=...)``).
            Its DLRT layers are attached to this optimizer (a layer is trained by the last
            DLRT built over it); its other trainable parameters are stepped by the inner
            optimizer directly.
        optimizer_cls: the inner optimizer's class (or a callable ``params -> Optimizer``).
        integrator: ``"parallel"`` (one forward/backward pass per step) or ``"kls"``
            (fixed rank: two passes, ``step(closure)``; rank-adaptive: one pass).
        adaptive: rank-adaptive truncation with tolerance ``tau`` (settable between steps).
        tau: truncation tolerance, relative to ``||S||_F`` unless ``tau_absolute``.
        tau_absolute: read ``tau`` as an absolute tolerance.
        truncation: ``"power"`` or ``"svd"`` (see the module docstring).
        min_rank, max_rank: new rank caps for every DLRT layer (default: keep the caps the
            conversion set); the current ranks must lie within them.
        reorth_every: every this many steps reorthonormalize ``U``, ``V`` by QR (folding the
            triangular factors into ``S``, so ``W`` is unchanged). Every step rotates the
            bases in float32, adding ~3e-8 of random orthonormality error; this bounds the
            walk over long runs (turned bases, :func:`~.basis.turned_basis`, inherit the old
            bases' error too). 0 disables it.
        diagonalize_every: the parallel integrator's SVD interval (see
            :class:`~.parallel_step.ParallelDLRT`); ignored by KLS.
        clip: if set, clip the gradient norm to this inside :meth:`step`, over the gradients
            of each inner optimizer call: ``K, L, S`` and the rest together (parallel), ``K, L``
            then ``S`` and the rest (KLS). The alternative is clipping yourself between
            ``backward()`` and ``step()``, over :meth:`params` (``clip_grad_norm_(opt.params(),
            c)``): exact for the parallel integrator; for fixed-rank KLS it bounds the K- and
            L-steps, and a clip inside the closure bounds the S-step; rank-adaptive KLS forms
            its S-step gradient from the captured pass (``clip=`` bounds it).
            ``clip_grad_norm_(model.parameters(), c)`` does not see ``G_K``, ``G_L``: they are
            gradients of this optimizer's ``K``, ``L``.
        lift_penalties: also give the K- and L-steps the gradient of loss terms that depend
            on ``S`` directly (an L1/L2 penalty on the model's parameters): ``U0 dP/dS``,
            ``V0 (dP/dS)^T``, the gradient of ``P(U^T W V)`` in ``W``, with ``dP/dS = S.grad -
            dS_task`` (the task part the layers captured). Without it such a term reaches the
            S-step only. It reads ``S.grad`` as the backward left it: clip with ``clip=``,
            not before :meth:`step`.
        **optimizer_kwargs: the inner optimizer's arguments (``lr``, ``weight_decay``, ...).

    Gradients and clipping (the choice made): the gradients a step uses are the ``.grad``
    of the tensors in :attr:`param_groups` (``K``, ``L`` of every layer, then ``S`` and the
    rest), so ``torch.nn.utils.clip_grad_norm_(opt.params(), c)`` (the same tensors as
    ``p for g in opt.param_groups for p in g["params"]``), gradient-norm logging and AMP's
    ``GradScaler.unscale_(opt)`` see exactly them. ``clip_grad_norm_(model.parameters(), c)``
    cannot: making it see ``G_K``, ``G_L`` would mean registering ``K``, ``L`` in the model
    (new state_dict keys, parameter counts, and plain optimizers over ``model.parameters()``
    would change) or passing ``G_K`` off as ``U.grad`` (it is not ``dL/dU``, and writing it
    from the backward would break ``torch.autograd.grad``, which must not touch ``.grad``).

    Layers attached to a DLRT optimizer never raise; a DLRT layer in training mode that is
    not attached raises :class:`~lowrank.errors.ConfigError` in a backward pass (a plain
    optimizer would train only ``S`` and the bias; see :mod:`.layer`).

    :meth:`step` takes a closure that zeroes the gradients, re-evaluates the loss, calls
    ``backward()`` and returns the loss (as for ``torch.optim.LBFGS``). It is called first
    when no backward pass has captured gradients since the last step, and again by
    fixed-rank KLS for its second pass (run without capture); ``step`` returns the value
    of its first call, or None. Under ``torch.autocast`` the layers' forward runs in the
    autocast dtype; their captured gradients and the integrator stay in the parameters'
    dtype.
    """

    #: The integrator's name (a key of :data:`INTEGRATORS`).
    integrator: ClassVar[str]
    #: Integrator name -> the subclass that implements it (filled by ``__init_subclass__``).
    INTEGRATORS: ClassVar[dict[str, type["DLRT"]]] = {}

    def __init_subclass__(cls, integrator: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if integrator is not None:
            cls.integrator = integrator
            DLRT.INTEGRATORS[integrator] = cls

    def __new__(cls, *args: Any, integrator: str | None = None, **kwargs: Any) -> "DLRT":
        if cls is DLRT:
            name = "parallel" if integrator is None else integrator
            if name not in DLRT.INTEGRATORS:
                raise ConfigError(f"integrator {name!r} is not one of {', '.join(DLRT.INTEGRATORS)}")
            cls = DLRT.INTEGRATORS[name]
        return super().__new__(cls)

    def __init__(self, model: nn.Module, optimizer_cls: OptimizerFactory = torch.optim.Adam, *,
                 integrator: str | None = None, adaptive: bool = False, tau: float = 0.1,
                 tau_absolute: bool = False, truncation: str = "power", min_rank: int | None = None,
                 max_rank: int | None = None, reorth_every: int = 50, diagonalize_every: int = 10,
                 clip: float | None = None, lift_penalties: bool = False, **optimizer_kwargs: Any):
        if integrator is not None and integrator != self.integrator:
            raise ConfigError(f"{type(self).__name__} is the {self.integrator!r} integrator, not {integrator!r}")
        if truncation not in TRUNCATIONS:
            raise ConfigError(f"truncation {truncation!r} is not one of {', '.join(TRUNCATIONS)}")
        if not isinstance(tau, (int, float)) or not tau >= 0:
            raise ConfigError(f"tau must be >= 0, got {tau!r}")
        if not isinstance(reorth_every, int) or reorth_every < 0:
            raise ConfigError(f"reorth_every must be an integer >= 0, got {reorth_every!r}")
        if not isinstance(diagonalize_every, int) or diagonalize_every < 1:
            raise ConfigError(f"diagonalize_every must be an integer >= 1, got {diagonalize_every!r}")
        if clip is not None and not clip > 0:
            raise ConfigError(f"clip must be positive (or None), got {clip!r}")
        if isinstance(optimizer_cls, torch.optim.Optimizer):
            raise ConfigError(f"pass the inner optimizer's class, not an optimizer: "
                              f"DLRT(model, torch.optim.{type(optimizer_cls).__name__}, lr=...)")
        self.names: list[str] = []
        self.layers: list[DLRTLayer] = []
        for name, mod in model.named_modules():
            if isinstance(mod, DLRTLayer):
                self.names.append(name)
                self.layers.append(mod)
        if not self.layers:
            raise ConfigError(f"the model ({type(model).__name__}) has no DLRT layer: convert it first: "
                              f"lowrank.convert(model, 'dlrt', rank=...)")
        if min_rank is not None or max_rank is not None:
            for layer in self.layers:
                layer.set_rank_caps(min_rank, max_rank)
        self.model = model
        self.tau, self.tau_absolute = float(tau), bool(tau_absolute)
        self.truncation = truncation
        self.reorth_every = int(reorth_every)
        self.diagonalize_every = int(diagonalize_every)
        self.clip = None if clip is None else float(clip)
        self.lift_penalties = bool(lift_penalties)
        self.steps = 0
        #: Averages, in place, every set of gradients a step reads before it uses them (data-parallel
        #: training: :class:`~lowrank.distributed.GradientAverager`); None: one process.
        self.gradient_averager: Callable[[list[torch.Tensor | None]], None] | None = None
        #: False while a step runs a pass whose gradients must not be captured (KLS pass 2).
        self.capture_enabled = True
        for layer in self.layers:
            layer.U.requires_grad_(False)
            layer.V.requires_grad_(False)
            layer.S.requires_grad_(True)
        # K (n, r) and L (m, r): this optimizer's parameters, not the model's. Between steps their
        # values are placeholders (only the shape matters); a step sets them to U0 S0, V0 S0^T.
        self.K = [nn.Parameter(l.U.detach().new_zeros(()).expand(l.U.shape)) for l in self.layers]
        self.L = [nn.Parameter(l.V.detach().new_zeros(()).expand(l.V.shape)) for l in self.layers]
        own = {id(p) for l in self.layers for p in (l.U, l.S, l.V)}
        self.rest = [p for p in model.parameters() if p.requires_grad and id(p) not in own]
        params: list[nn.Parameter] = []
        for k, lp, layer in zip(self.K, self.L, self.layers):
            params += [k, lp, layer.S]
        self.inner = optimizer_cls(params + self.rest, **optimizer_kwargs)
        held = {id(p) for g in self.inner.param_groups for p in g["params"]}
        if held != {id(p) for p in params + self.rest}:
            raise ConfigError(f"{optimizer_cls!r} built an optimizer that does not hold exactly the parameters "
                              f"it was given (K, L, S of every DLRT layer and the model's other trainable ones)")
        # Optimizer.__init__ adopts the inner groups (the same dicts); then share the list and
        # the state too, so schedulers, zero_grad and state_dict see the rule the integrator uses.
        super().__init__(self.inner.param_groups, self.inner.defaults)
        self.param_groups = self.inner.param_groups
        self.state = self.inner.state
        self._all_params = params + self.rest
        self.clock = PhaseClock(("fwd_bwd", "linalg", "optim"), cuda=any(p.is_cuda for p in self._all_params))
        # Per layer: S's diagonal when S is known to be diagonal (after a truncation), else None;
        # and the K-, L-steps' starting values U0 S0, V0 S0^T of the current step when kept.
        self._sigma: list[torch.Tensor | None] = [None] * len(self.layers)
        self._KL0: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.layers)
        self._adaptive = bool(adaptive)
        for layer, k, lp in zip(self.layers, self.K, self.L):
            attach(layer, self, k, lp)
        self._configure_layers()
        self._reset_epoch_stats()

    # ------------------------------------------------------------------ what a subclass defines

    @abstractmethod
    def _integrate(self, closure: Closure | None) -> None:
        """One step of the integrator from the captured gradients (``closure``: a further pass)."""

    @abstractmethod
    def _augments(self) -> bool:
        """Does a step hold the augmented ``2r`` bases? (for :meth:`DLRTLinear.training_params`)"""

    @property
    def _reads_moves(self) -> bool:
        """Does the step read the K- and L-steps' moves ``K1 - U0 S0`` (:meth:`_moves`) rather than
        ``K1``? Then a rule whose step does not depend on the starting point
        (:func:`steps_are_shift_free`) starts ``K``, ``L`` from 0."""
        return False

    @property
    def _keep_KL0(self) -> bool:
        """Does a step read the K-, L-steps' starting values ``U0 S0``, ``V0 S0^T`` after the
        optimizer has moved them? (to form augmented bases)"""
        return False

    @property
    def _keep_io(self) -> bool:
        """Must the layers keep each use's input and output gradient? (rank-adaptive KLS)"""
        return False

    def _needs_closure(self) -> bool:
        """Does a step need a second forward/backward pass? (fixed-rank KLS)"""
        return False

    # ------------------------------------------------------------------ settings

    @property
    def adaptive(self) -> bool:
        """Rank-adaptive truncation (``tau``); set it between steps (e.g. adaptive, then fixed)."""
        return self._adaptive

    @adaptive.setter
    def adaptive(self, value: bool) -> None:
        self._adaptive = bool(value)
        self._configure_layers()

    def _configure_layers(self) -> None:
        for layer in self.layers:
            layer.augments = self._augments()
            layer.keep_io = self._keep_io
            layer.keep_task_ds = self.lift_penalties

    def params(self) -> Iterator[torch.Tensor]:
        """Every tensor the inner optimizer steps (``K, L, S`` per layer, then the rest): the
        ``.grad`` of these are the gradients a step uses (clip them, log their norm ...)."""
        return (p for g in self.param_groups for p in g["params"])

    def clip_grad_norm_(self, max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
        """``torch.nn.utils.clip_grad_norm_`` over :meth:`params`; returns the total norm."""
        return torch.nn.utils.clip_grad_norm_([p for p in self.params() if p.grad is not None], max_norm,
                                              norm_type)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """As ``torch.optim.Optimizer``'s: the new parameters are stepped as the rest are."""
        super().add_param_group(param_group)
        if hasattr(self, "_all_params"):            # after __init__: groups are the inner's
            new = [p for p in param_group["params"] if all(p is not q for q in self._all_params)]
            self.rest += new
            self._all_params += new

    @property
    def timings(self) -> dict[str, float]:
        """Seconds this epoch in forward/backward passes this optimizer ran or was told of
        (``fwd_bwd``), the inner optimizer (``optim``) and the integrator's own linear algebra
        (``linalg``)."""
        return self.clock.totals

    # ------------------------------------------------------------------ the step

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of :meth:`params` (``K``, ``L``: the captured ``G_K``, ``G_L``) and
        the layers' other captured buffers."""
        super().zero_grad(set_to_none)
        for layer in self.layers:
            layer.clear_capture()

    def has_captured(self) -> bool:
        """Did a backward pass capture gradients since the last step or ``zero_grad``?"""
        return any(k.grad is not None or lp.grad is not None for k, lp in zip(self.K, self.L))

    def step(self, closure: Closure | None = None) -> Any:  # type: ignore[override]
        """One integrator step from the gradients of the backward pass(es) since ``zero_grad``.

        ``closure``: zeroes the gradients, re-evaluates the loss, calls ``backward()``, returns
        the loss. Called first when no gradients were captured yet; fixed-rank KLS calls it for
        its second pass (and needs it). Returns the value of its first call, or None.
        """
        if closure is None and self._needs_closure():
            raise ConfigError(f"the {self.integrator!r} integrator at fixed rank takes a second forward/backward "
                              f"pass per step: call opt.step(closure) with closure() doing opt.zero_grad(), "
                              f"the forward pass, loss.backward() and returning the loss")
        loss = None
        self.clock.start()
        if closure is not None and not self.has_captured():
            with torch.enable_grad():
                loss = closure()
            self.clock.lap("fwd_bwd")
        with torch.no_grad():
            self._average_gradients()
            self._integrate(closure)
        for k, lp in zip(self.K, self.L):           # consumed
            k.grad = lp.grad = None
        for layer in self.layers:
            layer.clear_capture()
        self.steps += 1
        if self.reorth_every and self.steps % self.reorth_every == 0:
            with torch.no_grad():
                self._reorthonormalize()
        self._track_ranks()
        return loss

    def _second_pass(self, closure: Closure) -> None:
        """Run ``closure`` (a forward/backward pass) without capturing ``G_K``, ``G_L``; timed;
        its gradients averaged across processes."""
        self.capture_enabled = False
        try:
            with torch.enable_grad():
                closure()
        finally:
            self.capture_enabled = True
        self._average_gradients()
        self.clock.lap("fwd_bwd")

    def _average_gradients(self, extra: list[torch.Tensor] | None = None) -> None:
        """Data-parallel: average the gradients of :meth:`params`, the layers' captured task ``dS``
        (and ``extra``) across processes, in place, before the integrator reads them."""
        if self.gradient_averager is None:
            return
        if extra is not None:
            self.gradient_averager(extra)
            return
        self.gradient_averager([p.grad for p in self.params()] + [l.grad_S_task for l in self.layers])

    # ------------------------------------------------------------------ pieces of a step

    def _clip(self, params: Iterable[torch.Tensor]) -> None:
        if self.clip:
            torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], self.clip)

    def _set_kl_grads(self, i: int) -> bool:
        """``K.data = U0 S0``, ``L.data = V0 S0^T`` for the captured gradients ``K.grad``,
        ``L.grad`` (plus the lifted penalty gradient); False when layer ``i`` was not used in
        the captured pass (then it is left alone)."""
        layer, K, L = self.layers[i], self.K[i], self.L[i]
        gk, gl = K.grad, L.grad
        if gk is None or gl is None:        # layer not used in this forward pass: leave it alone
            K.grad = L.grad = None
            return False
        U0, S0, V0 = layer.U.data, layer.S.data, layer.V.data
        if self.lift_penalties and layer.S.grad is not None and layer.grad_S_task is not None:
            dpen = layer.S.grad - layer.grad_S_task          # (r, r): penalty gradient in S
            gk = torch.addmm(gk, U0, dpen)                   # + U0 dP/dS
            gl = torch.addmm(gl, V0, dpen.T)                 # + V0 (dP/dS)^T
        if self._reads_moves and steps_are_shift_free(self.inner):
            # The step leaves its move in K, L when started from 0: no U0 S0, V0 S0^T to form.
            K.data, L.data = torch.zeros_like(U0), torch.zeros_like(V0)
            self._KL0[i] = None
        else:
            sigma = self._sigma[i]
            if sigma is not None:                            # S0 = diag(sigma) after a truncation
                K0, L0 = U0 * sigma, V0 * sigma              # (n, r), (m, r): no matrix product
            else:
                K0, L0 = U0 @ S0, V0 @ S0.T
            if self._keep_KL0 or self._reads_moves:          # kept: the optimizer steps K, L in place
                self._KL0[i] = (K0, L0)
                K0, L0 = K0.clone(), L0.clone()
            K.data = K0
            L.data = L0
        K.grad, L.grad = gk, gl
        layer.grad_S_task = None
        return True

    def _moves(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``i``'s K- and L-steps' moves ``dK = K1 - U0 S0`` (n, r), ``dL = L1 - V0 S0^T`` (m, r),
        after the inner optimizer's step (for integrators that :attr:`_reads_moves`)."""
        K, L, start = self.K[i].data, self.L[i].data, self._KL0[i]
        return (K, L) if start is None else (K - start[0], L - start[1])

    def _set_all_kl_grads(self) -> list[bool]:
        """:meth:`_set_kl_grads` for every layer: which layers the captured pass used."""
        return [self._set_kl_grads(i) for i in range(len(self.layers))]

    def _optimizer_step(self, params: Iterable[torch.Tensor]) -> None:
        """Clip the gradients of ``params`` (the ones this optimizer call uses), step, time it."""
        self._clip(params)
        self.inner.step()
        self.clock.lap("optim")

    # ------------------------------------------------------------------ state projection

    def _project(self, i: int, A: torch.Tensor | None, B: torch.Tensor | None,
                 KB: torch.Tensor | None, LB: torch.Tensor | None) -> None:
        """Carry layer ``i``'s optimizer state: ``S -> A S B``, ``K -> K KB``, ``L -> L LB``."""
        opt = self.inner
        A2 = None if A is None else A * A
        B2 = None if B is None else B * B
        transform_state(opt, self.layers[i].S, A, B, A2, B2)
        transform_state(opt, self.K[i], None, KB)
        transform_state(opt, self.L[i], None, LB)

    def _set_factors(self, i: int, U: torch.Tensor, S: torch.Tensor, V: torch.Tensor, *,
                     sigma: torch.Tensor | None = None) -> None:
        """Layer ``i``'s new factors, with what is known of them: ``S = diag(sigma)``."""
        self.layers[i].set_factors(U, S, V)
        self._sigma[i] = sigma

    def _set_truncated(self, i: int, U0: torch.Tensor, Ut: Any, P: torch.Tensor, sigma: torch.Tensor,
                       V0: torch.Tensor, Vt: Any, Q: torch.Tensor) -> None:
        """Layer ``i``'s factors after truncating an augmented core ``S^ ~= P diag(sigma) Q^T``:
        ``U1 = [U0 | U~] P (n, r1)``, ``S1 = diag(sigma)``, ``V1 = [V0 | V~] Q (m, r1)``
        (``U~``, ``V~`` as :func:`~.parallel.rotate_basis` takes them)."""
        self._set_factors(i, rotate_basis(U0, Ut, P), torch.diag(sigma), rotate_basis(V0, Vt, Q), sigma=sigma)

    def _reorthonormalize(self) -> None:
        """``U = Q_U R_U``, ``V = Q_V R_V``, ``S <- R_U S R_V^T``: same ``W``, fresh orthonormal bases."""
        for layer in self.layers:
            layer.reorthonormalize()
        self._sigma = [None] * len(self.layers)

    # ------------------------------------------------------------------ ranks & epochs

    def _reset_epoch_stats(self) -> None:
        self.clock.reset()
        self.exact_fallbacks = 0
        self._rank_lo = [l.rank for l in self.layers]
        self._rank_hi = [l.rank for l in self.layers]

    def _track_ranks(self) -> None:
        for i, layer in enumerate(self.layers):
            r = layer.rank
            if r < self._rank_lo[i]:
                self._rank_lo[i] = r
            if r > self._rank_hi[i]:
                self._rank_hi[i] = r

    def ranks(self) -> dict[str, int]:
        """Layer name -> current rank."""
        return {name: layer.rank for name, layer in zip(self.names, self.layers)}

    def epoch_stats(self, reset: bool = True) -> dict[str, Any]:
        """Since the last reset: ranks (current, min, max per layer), the largest orthonormality
        error, phase timings (``time_linalg``, ``time_fwd_bwd``, ``time_optim``), ``adaptive`` and
        ``exact_fallbacks``; ``reset`` starts the next period."""
        ranks = {name: {"rank": layer.rank, "min": lo, "max": hi}
                 for name, layer, lo, hi in zip(self.names, self.layers, self._rank_lo, self._rank_hi)}
        orth = max(layer.orthonormality_error() for layer in self.layers)
        t = self.timings
        out = {"ranks": ranks, "orth_error": orth, "time_linalg": t["linalg"],
               "time_fwd_bwd": t["fwd_bwd"], "time_optim": t["optim"],
               "adaptive": self.adaptive, "exact_fallbacks": self.exact_fallbacks}
        if reset:
            self._reset_epoch_stats()
        return out

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """The inner optimizer's state (``"optimizer"``), the step count, the settings and ranks.

        The model's factors are not included: save the model (its state_dict and
        ``lowrank.convert.structure(model)``) next to this.
        """
        return {"optimizer": self.inner.state_dict(), "steps": self.steps, "adaptive": self.adaptive,
                "rank_lo": list(self._rank_lo), "rank_hi": list(self._rank_hi),
                "exact_fallbacks": self.exact_fallbacks, "integrator": self.integrator,
                "settings": {"tau": self.tau, "tau_absolute": self.tau_absolute, "truncation": self.truncation,
                             "reorth_every": self.reorth_every, "diagonalize_every": self.diagonalize_every,
                             "clip": self.clip, "lift_penalties": self.lift_penalties},
                "ranks": self.ranks()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        """Restore :meth:`state_dict` into an optimizer built over a model whose DLRT layers
        already have the saved ranks (restore the model's structure and weights first)."""
        state = state_dict
        saved = state.get("integrator", self.integrator)
        if saved != self.integrator:
            raise CheckpointError(f"the state is of the {saved!r} integrator, this optimizer runs "
                                  f"{self.integrator!r}: build it with integrator={saved!r}")
        ranks = state.get("ranks")
        if ranks is not None and dict(ranks) != self.ranks():
            raise CheckpointError(f"the state is of DLRT layers with ranks {dict(ranks)}, the model's are "
                                  f"{self.ranks()}: restore the model first (lowrank.convert.restore_structure "
                                  f"and model.load_state_dict)")
        self.inner.load_state_dict(state["optimizer"])
        # torch's load_state_dict gives the inner optimizer new group dicts and a new state:
        # share them again, else a learning rate set through this optimizer (a scheduler, the
        # CLI's cosine schedule) would no longer reach the rule that steps.
        self.param_groups = self.inner.param_groups
        self.state = self.inner.state
        for key, value in (state.get("settings") or {}).items():
            if key in ("tau", "tau_absolute", "truncation", "reorth_every", "diagonalize_every", "clip",
                       "lift_penalties"):
                setattr(self, key, value)
        self._sigma = [None] * len(self.layers)
        self.steps = int(state["steps"])
        self.adaptive = bool(state.get("adaptive", self.adaptive))
        self._rank_lo = [int(v) for v in state.get("rank_lo", self._rank_lo)]
        self._rank_hi = [int(v) for v in state.get("rank_hi", self._rank_hi)]
        self.exact_fallbacks = int(state.get("exact_fallbacks", self.exact_fallbacks))
