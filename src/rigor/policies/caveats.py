"""What calibrate (and eval, from calibrate's records) says about a fit that should not be
trusted as it stands: temperature scaling that made val_calib worse, and a val_calib too
small for the alpha or target risk asked of it. Each warning names the number behind it and
what to do."""

from __future__ import annotations

import math
from typing import Any

# The coverage split conformal gives for one draw of n calibration samples is Beta
# distributed (Vovk 2012; Angelopoulos and Bates, "A Gentle Introduction to Conformal
# Prediction"), with a standard deviation of about sqrt(alpha (1 - alpha) / (n + 2)); the
# warning asks for that to be at most this share of alpha.
SPREAD_OF_ALPHA = 0.25
# Errors a threshold needs at its target risk on val_calib to be more than a guess.
MIN_ERRORS = 10


def conformal_samples_needed(alpha: float) -> int:
    """The val_calib size at which one draw's conformal coverage varies by at most
    alpha / 4 (one standard deviation)."""
    return math.ceil(round((1 - alpha) / (SPREAD_OF_ALPHA**2 * alpha), 9)) - 2


def calib_size_caveats(n: int, alpha: float | None, target_risk: float | None) -> list[str]:
    """val_calib too small for the conformal ``alpha`` or the threshold's ``target_risk``."""
    out = []
    if alpha is not None and n < conformal_samples_needed(alpha):
        spread = math.sqrt(alpha * (1 - alpha) / (n + 2))
        out.append(
            f"val_calib holds {n} samples: at alpha {alpha:g} the coverage one calibration "
            f"draw gives varies by about +/-{spread:.3f}; {conformal_samples_needed(alpha)} "
            "samples keep that within alpha/4: give val_calib more groups in data.splits"
        )
    if target_risk is not None and n * target_risk < MIN_ERRORS:
        needed = math.ceil(MIN_ERRORS / target_risk)
        out.append(
            f"val_calib holds {n} samples: at target risk {target_risk:g} the threshold is "
            f"chosen from about {n * target_risk:.1f} errors; {needed} samples give it "
            f"{MIN_ERRORS}: give val_calib more groups, or raise calibration.target_risk"
        )
    return out


def temperature_caveats(thresholds: dict[str, Any]) -> list[str]:
    """Temperature scaling that made ECE or NLL on val_calib worse."""
    out = []
    t = thresholds["temperature"]
    ece, nll = thresholds["ece"], thresholds["nll"]
    if ece["after"]["estimate"] > ece["before"]["estimate"]:
        out.append(
            f"temperature scaling (T = {t:.3g}) raised ECE on val_calib from "
            f"{ece['before']['estimate']:.3f} to {ece['after']['estimate']:.3f}: the policy "
            "uses the scaled confidences; consider calibration.temperature: none"
        )
    if nll["after"] > nll["before"]:
        out.append(
            f"temperature scaling (T = {t:.3g}) raised NLL on val_calib from "
            f"{nll['before']:.4f} to {nll['after']:.4f}: consider calibration.temperature: none"
        )
    return out
