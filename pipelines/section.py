"""The base every config section derives from: frozen, strict, no unknown keys. It sits outside
`config/` so that a section kept beside the component it configures (each input source) derives
from it without importing the whole config package.

Strict mode is deliberate: PyYAML reads `3e-4` as the string "3e-4" and `no` as False; with
lax coercion those would silently become numbers or strings, so we reject them with a hint.
`.inf` and `.nan` are refused in every float field. `Seed` is the one range every seed shares
(numpy's legacy generator and torch's both take it; derived seeds stay below 2^64).
`MAX_IMG_SIZE` bounds every image size a section takes (the model's, a source's rendering).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

Seed = Annotated[int, Field(ge=0, lt=2**32, description="0 <= seed < 2^32")]
# Beyond this an image size is a typo, not an image anyone trains on: it only stops a typo from
# allocating terabytes (vit_core owns what a valid model is).
MAX_IMG_SIZE = 4096


class Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, validate_default=True, allow_inf_nan=False
    )
