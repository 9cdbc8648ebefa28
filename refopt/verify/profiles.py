"""Convention profiles: refopt settings that reproduce the published behaviour of other libraries.

A profile names a refopt optimizer and the hyperparameters (convention switches) that make it follow
a library's update rule, with a note on what that library does differently from the paper. Each
profile is tested against a hand-computed two-step case of its library (tests/test_profiles.py).
The conventions table in docs/verify.md is generated from ``PROFILES`` (``python -m
refopt.verify.profiles`` prints it).
"""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Profile", "PROFILES", "get_profile", "conventions_table"]


@dataclass(frozen=True)
class Profile:
    library: str                 # e.g. "torch.optim.Adam"
    optimizer: str               # refopt optimizer name
    hyperparameters: dict = field(default_factory=dict)
    differs: str = ""            # what the library does differently from the paper
    source: str = ""             # where the behaviour is documented


PROFILES: dict[str, Profile] = {}


def _add(p: Profile) -> None:
    PROFILES[p.library] = p


_add(Profile("torch.optim.SGD", "sgd", {"lr": 0.1, "momentum": 0.9},
             "momentum buffer v ← μv + g without dampening (the paper's heavy ball uses v ← μv − ηg; equal for "
             "a constant η); Nesterov as a look-ahead on the gradient",
             "torch/optim/sgd.py (dampening=0)"))


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose from {', '.join(sorted(PROFILES))}")
    return PROFILES[name]


def conventions_table() -> str:
    """A Markdown table: library, refopt optimizer and settings, what differs from the paper."""
    rows = ["| library | refopt | settings | differs from the paper |", "|---|---|---|---|"]
    for p in PROFILES.values():
        settings = ", ".join(f"{k}={v!r}" for k, v in p.hyperparameters.items())
        rows.append(f"| {p.library} | `{p.optimizer}` | {settings} | {p.differs} |")
    return "\n".join(rows)


if __name__ == "__main__":  # pragma: no cover
    print(conventions_table())
