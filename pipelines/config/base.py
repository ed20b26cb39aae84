"""The base every config section derives from: frozen, strict, no unknown keys.

Strict mode is deliberate: PyYAML reads `3e-4` as the string "3e-4" and `no` as False; with
lax coercion those would silently become numbers or strings, so we reject them with a hint.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, validate_default=True)
