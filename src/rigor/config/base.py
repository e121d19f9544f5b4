"""The base of every config section."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are re-validated, and
    every float is finite (a NaN or infinite weight decay or learning rate is exit 2)."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False
    )
