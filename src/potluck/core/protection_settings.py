"""The protections section: update compression, differential privacy, secure aggregation.

``potluck simulate`` and ``potluck server`` compose the same section, so a setting means
the same thing in simulation and deployment. A setting of a protection that is off
(``dp_clip`` without ``dp``, ``secagg_bits`` without ``secagg``, ``compression_bits``
without a quantizing ``compression``) is refused, so a forgotten switch cannot silently
leave a run unprotected. The rules that need the federation's size ask
:meth:`ProtectionSection.population`, which each configuration answers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from potluck.core.settings import Rule, Settings, setting, show

COMPRESSIONS = ("none", "quantize", "topk", "topk+quantize")  # node→server updates: docs/compression.md
DP_MODES = ("none", "central", "local", "distributed")  # differential privacy: docs/privacy.md


def _finite_positive(value: float) -> bool:
    return 0 < value < math.inf


@dataclass(frozen=True)
class ProtectionSection(Settings):
    compression: str = setting(
        "none", "Compress nodes' updates: none, quantize (--compression-bits per value), topk (send the "
        "--compression-ratio largest entries, keep the rest for later) or topk+quantize.", resumable=False,
        check=lambda v: v in COMPRESSIONS, rule=f"one of {', '.join(COMPRESSIONS)}")
    compression_bits: int = setting(8, "Bits per value, 1–8, for quantize and topk+quantize.", resumable=False,
                                    check=lambda v: 1 <= v <= 8, rule="in [1, 8]")
    compression_ratio: float = setting(0.01, "Fraction of entries topk sends, in (0, 1].", resumable=False,
                                       check=lambda v: 0 < v <= 1, rule="in (0, 1]")
    dp: str = setting(
        "none", "Differential privacy (docs/privacy.md): none; central (the server clips, sums and adds noise); "
        "local (each node clips and adds σ·C noise); distributed (each node adds σ·C/√n, the sum carries σ·C).",
        resumable=False, check=lambda v: v in DP_MODES, rule=f"one of {', '.join(DP_MODES)}")
    dp_noise_multiplier: float = setting(1.0, "σ: Gaussian noise std is σ·C on a round's sum.", resumable=False,
                                         check=_finite_positive, rule="a finite number > 0")
    dp_clip: float = setting(1.0, "C: the L2 norm each update is clipped to (the initial C when adaptive).",
                             resumable=False, check=_finite_positive, rule="a finite number > 0")
    dp_adaptive_clip: bool = setting(False, "Central DP: move C toward --dp-target-quantile of the update norms "
                                     "each round.", resumable=False)
    dp_target_quantile: float = setting(0.5, "Quantile of update norms adaptive clipping aims for.",
                                        resumable=False, check=lambda v: 0 < v < 1, rule="in (0, 1)")
    dp_delta: float = setting(1e-5, "δ at which ε is reported; below 1 / nodes.", resumable=False,
                              check=lambda v: 0 < v < 1, rule="in (0, 1)")
    dp_epsilon_budget: float = setting(0.0, "Stop before the round that would take ε above this (0: no budget).",
                                       resumable=True, check=lambda v: 0 <= v < math.inf,
                                       rule="a finite number ≥ 0 (0: no budget)")
    secagg: bool = setting(False, "Secure aggregation (docs/secure-aggregation.md): nodes mask their clipped, "
                           "quantised updates so the server learns only their sum.", resumable=False)
    secagg_neighbours: int = setting(0, "k: neighbours each node masks and shares with; even (0: 2·⌈log2 n⌉).",
                                     resumable=False, check=lambda v: v >= 0, rule="≥ 0 (0: automatic)")
    secagg_threshold: int = setting(0, "t: neighbours' shares needed to unmask a node, above k/2 (0: ⌊k/2⌋ + 1).",
                                    resumable=False, check=lambda v: v >= 0, rule="≥ 0 (0: automatic)")
    secagg_clip: float = setting(1.0, "c: each update value is clipped to [−c, c].", resumable=False,
                                 check=_finite_positive, rule="a finite number > 0")
    secagg_bits: int = setting(16, "b: bits per value; nodes per round · (2^b − 1) < 2^32.", resumable=False,
                               check=lambda v: 1 <= v <= 31, rule="in [1, 31]")

    def population(self) -> int:
        """Nodes in the federation, for privacy accounting and the no-wrap check."""
        raise NotImplementedError  # pragma: no cover - every configuration answers it

    def _rules(self) -> list[Rule]:
        return [*self._compression_rules(), *self._privacy_rules(), *self._secagg_rules()]

    def _compression_rules(self) -> list[Rule]:
        quantizes, sparsifies = self.compression in ("quantize", "topk+quantize"), self.compression.startswith("topk")
        return [
            ("compression_bits", quantizes or self.compression_bits == 8,
             f"left at 8 unless compression quantizes (quantize, topk+quantize); compression is "
             f"{show(self.compression)}"),
            ("compression_ratio", sparsifies or self.compression_ratio == 0.01,
             f"left at 0.01 unless compression is topk or topk+quantize; compression is {show(self.compression)}"),
        ]

    def _privacy_rules(self) -> list[Rule]:
        on, population = self.dp != "none", self.population()
        rules = [
            ("dp_adaptive_clip", not self.dp_adaptive_clip or self.dp == "central",
             f"false unless dp is central; dp is {show(self.dp)}"),
            ("dp_target_quantile", self.dp_adaptive_clip or self.dp_target_quantile == 0.5,
             "left at 0.5 unless dp_adaptive_clip is true"),
            ("dp_delta", not on or self.dp_delta * population < 1,
             f"below 1 / nodes = 1 / {show(population)} (a δ of 1/nodes allows one node's data to leak whole)"),
        ]
        for f in fields(self):
            if f.name.startswith("dp_") and not on:
                rules.append((f.name, getattr(self, f.name) == f.default,
                              f"left at {show(f.default)} unless dp is set (central, local or distributed)"))
        return rules

    def _secagg_rules(self) -> list[Rule]:
        k, t, population = self.secagg_neighbours, self.secagg_threshold, self.population()
        rules = [
            ("secagg_threshold", not (k and t) or k / 2 < t <= k,
             f"above half of secagg_neighbours and at most it ({show(k)}), so the server can never unmask one update"),
            ("secagg_bits", not self.secagg or population * (2**self.secagg_bits - 1) < 2**32,
             f"small enough that the sum of {show(population)} values cannot wrap around 2^32 "
             f"(nodes · (2^bits − 1) < 2^32)"),
            ("secagg", not self.secagg or self.compression == "none",
             f"false when compression is set (a masked update cannot be compressed); compression is "
             f"{show(self.compression)}"),
            ("secagg", not self.secagg or self.dp in ("none", "local", "distributed"),
             "false with dp = central (the server cannot clip updates it cannot see); use dp = distributed"),
        ]
        for f in fields(self):
            if f.name.startswith("secagg_") and not self.secagg:
                rules.append((f.name, getattr(self, f.name) == f.default,
                              f"left at {show(f.default)} unless secagg is true"))
        return rules
