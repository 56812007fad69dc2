"""The beta/rho loss-balancing rule of the Sigma-weighted objective (V2V, "From Variance to Veracity").

Every ``interval`` steps the trainer measures, on one probe parameter, the gradient norm of the
flow loss, of the pose loss, and of the pose loss's translation and rotation parts. Each ratio
becomes a sample that is clipped relative to the current coefficient, kept in a short history,
and the coefficient is the mean of that history:

    beta <- mean(history of clip(pose_norm / flow_norm, beta / c, beta * c))
    rho  <- mean(history of clip(trans_norm / rot_norm, rho / c, rho * c))

beta scales the flow loss and rho the rotation part of the pose loss. Both are plain floats.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any, Mapping

import torch

logger = logging.getLogger(__name__)


@dataclass
class ProbeNorms:
    """Gradient norms of the loss parts with respect to the probe parameter (floored)."""

    flow: float
    pose: float
    translation: float
    rotation: float

    def as_tensor(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Return the four norms as a float64 ``(4,)`` tensor (for all-reduce across ranks)."""
        values = [self.flow, self.pose, self.translation, self.rotation]
        return torch.tensor(values, dtype=torch.float64, device=device)

    @classmethod
    def from_tensor(cls, values: torch.Tensor) -> "ProbeNorms":
        flow, pose, translation, rotation = (float(v) for v in values.tolist())
        return cls(flow, pose, translation, rotation)


class LossBalancer:
    """Running beta (flow-loss coefficient) and rho (rotation coefficient) with their histories."""

    def __init__(
        self,
        interval: int = 20,
        window: int = 51,
        clip_factor: float = 10.0,
        norm_floor: float = 1e-6,
        enabled: bool = True,
    ) -> None:
        if interval <= 0 or window <= 0 or clip_factor < 1.0:
            raise ValueError(
                f"invalid balance settings: interval={interval}, window={window}, "
                f"clip_factor={clip_factor} (need interval > 0, window > 0, clip_factor >= 1)"
            )
        self.interval = interval
        self.window = window
        self.clip_factor = clip_factor
        self.norm_floor = norm_floor
        self.enabled = enabled
        self.beta = 1.0
        self.rho = 1.0
        self.beta_history: deque[float] = deque(maxlen=window)
        self.rho_history: deque[float] = deque(maxlen=window)

    def is_due(self, step: int) -> bool:
        """Whether the probe norms should be measured at optimiser step ``step``."""
        return self.enabled and step > 0 and step % self.interval == 0

    def update(self, norms: ProbeNorms) -> tuple[float, float]:
        """Fold one set of probe norms into beta and rho; return the new ``(beta, rho)``."""
        floor = self.norm_floor
        flow, pose = max(norms.flow, floor), max(norms.pose, floor)
        translation, rotation = max(norms.translation, floor), max(norms.rotation, floor)
        self.beta = self._fold(self.beta, pose / flow, self.beta_history)
        self.rho = self._fold(self.rho, translation / rotation, self.rho_history)
        logger.debug("balance update: beta=%.4g rho=%.4g", self.beta, self.rho)
        return self.beta, self.rho

    def _fold(self, current: float, sample: float, history: deque[float]) -> float:
        clipped = min(max(sample, current / self.clip_factor), current * self.clip_factor)
        history.append(clipped)
        return sum(history) / len(history)

    def state_dict(self) -> dict[str, Any]:
        return {
            "beta": self.beta,
            "rho": self.rho,
            "beta_history": list(self.beta_history),
            "rho_history": list(self.rho_history),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.beta = float(state["beta"])
        self.rho = float(state["rho"])
        self.beta_history = deque((float(v) for v in state["beta_history"]), maxlen=self.window)
        self.rho_history = deque((float(v) for v in state["rho_history"]), maxlen=self.window)


def probe_gradient_norms(
    losses: Mapping[str, torch.Tensor], parameter: torch.nn.Parameter
) -> dict[str, float]:
    """Return the gradient norm of each loss with respect to ``parameter``, keeping the graph.

    A loss that does not reach ``parameter`` has norm 0. ``.grad`` fields are left untouched.
    """
    norms: dict[str, float] = {}
    for name, loss in losses.items():
        if not loss.requires_grad:
            norms[name] = 0.0
            continue
        (gradient,) = torch.autograd.grad(loss, parameter, retain_graph=True, allow_unused=True)
        norms[name] = 0.0 if gradient is None else float(gradient.detach().norm())
    return norms


def find_parameter(module: torch.nn.Module, name: str) -> torch.nn.Parameter:
    """Return the parameter called ``name``; raise ValueError listing close names if missing."""
    parameters = dict(module.named_parameters())
    if name in parameters:
        return parameters[name]
    candidates = [key for key in parameters if "weight" in key and ("update" in key or "gru" in key)]
    raise ValueError(
        f"probe parameter {name!r} not found in the network; set balance.probe_parameter to one of "
        f"{', '.join(candidates[:20]) or ', '.join(list(parameters)[:20])}"
    )
