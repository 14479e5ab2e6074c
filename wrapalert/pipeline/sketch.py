"""Distinct counting in fixed memory: exact while small, a HyperLogLog estimate beyond.

`Distinct` keeps up to `exact_limit` values in a set; past that it moves to a
HyperLogLog of 2**P one-byte registers (1 KiB, standard error about 3.3 %)
seeded with the set, so no value is counted twice across the switch.
"""

from __future__ import annotations

import base64
import hashlib
import math
from typing import Any

P = 10
M = 1 << P
_ALPHA = 0.7213 / (1 + 1.079 / M)
_REST_BITS = 64 - P
_MASK = (1 << _REST_BITS) - 1
_blake2b = hashlib.blake2b


class Distinct:
    """How many distinct strings were added."""

    __slots__ = ("exact", "exact_limit", "registers")

    def __init__(self, exact_limit: int = 256) -> None:
        self.exact_limit = exact_limit
        self.exact: set[str] | None = set()
        self.registers: bytearray | None = None

    def add(self, value: str) -> None:
        registers = self.registers
        if registers is None:
            exact = self.exact
            assert exact is not None  # noqa: S101 - one of the two is always set
            exact.add(value)
            if len(exact) > self.exact_limit:
                self.registers = bytearray(M)
                for seen in exact:
                    self._hll_add(seen)
                self.exact = None
            return
        self._hll_add(value)

    def _hll_add(self, value: str) -> None:
        """One value into the registers: the flood path of every rolled-up group."""
        registers = self.registers
        assert registers is not None  # noqa: S101 - set when exact is dropped
        h = int.from_bytes(_blake2b(value.encode(), digest_size=8).digest())
        index = h >> _REST_BITS
        rank = _REST_BITS + 1 - (h & _MASK).bit_length()
        if rank > registers[index]:  # noqa: PLR1730 - most adds change nothing: skip the store
            registers[index] = rank

    @property
    def is_exact(self) -> bool:
        return self.exact is not None

    def count(self) -> int:
        if self.exact is not None:
            return len(self.exact)
        assert self.registers is not None  # noqa: S101 - one of the two is always set
        estimate = _ALPHA * M * M / sum(2.0**-r for r in self.registers)
        zeros = self.registers.count(0)
        if estimate <= 2.5 * M and zeros:
            estimate = M * math.log(M / zeros)  # linear counting for small cardinalities
        return max(self.exact_limit + 1, round(estimate))

    def to_dict(self) -> dict[str, Any]:
        if self.exact is not None:
            return {"limit": self.exact_limit, "exact": sorted(self.exact)}
        assert self.registers is not None  # noqa: S101 - one of the two is always set
        return {"limit": self.exact_limit, "hll": base64.b64encode(self.registers).decode()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Distinct:
        sketch = cls(int(data["limit"]))
        if "hll" in data:
            sketch.exact = None
            sketch.registers = bytearray(base64.b64decode(data["hll"]))
        else:
            sketch.exact = {str(v) for v in data["exact"]}
        return sketch
