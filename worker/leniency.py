"""Which validation rules are relaxed for which chargers (profiles from a TOML file).

The relaxing itself is ``core/leniency.py``; this module only picks the rules.
"""

from __future__ import annotations

import fnmatch
import tomllib

__all__ = ["STRICT", "Leniency"]

STRICT: frozenset[str] = frozenset()  # no rule relaxed; shared, so a strict session costs no set of its own


class Leniency:
    """Per-model leniency profiles (TOML)::

        [[profile]]
        name = "acme-old-firmware"
        vendor = "ACME"            # glob on BootNotification vendor (optional)
        model = "AC22*"            # glob on model (optional)
        charger_id = "ACME-*"      # glob on charger id (optional)
        relax = ["unknown_fields", "numeric_strings", "enum_case", "naive_timestamps"]

    The first matching profile wins; strict is the default.
    """

    RULES = frozenset({"unknown_fields", "numeric_strings", "enum_case", "missing_timestamps",
                       "naive_timestamps"})

    def __init__(self, profiles: list[dict] | None = None) -> None:
        self.profiles = profiles or []
        for p in self.profiles:
            bad = set(p.get("relax", [])) - self.RULES
            if bad:
                raise ValueError(f"leniency profile {p.get('name')!r}: unknown rules {sorted(bad)}")

    @classmethod
    def from_file(cls, path: str) -> Leniency:
        if not path:
            return cls()
        with open(path, "rb") as f:
            return cls(tomllib.load(f).get("profile", []))

    def for_charger(self, charger_id: str, vendor: str, model: str) -> frozenset[str]:
        for p in self.profiles:
            if "charger_id" in p and not fnmatch.fnmatchcase(charger_id, p["charger_id"]):
                continue
            if "vendor" in p and not fnmatch.fnmatchcase(vendor, p["vendor"]):
                continue
            if "model" in p and not fnmatch.fnmatchcase(model, p["model"]):
                continue
            return frozenset(p.get("relax", []))
        return STRICT
