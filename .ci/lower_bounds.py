"""Print pip constraints that pin the project's bounded dependencies to the oldest release pyproject.toml allows.

`make test-oldest` installs with these constraints, so the lower bounds we publish are the ones we test.
"""

import re
import sys
import tomllib
from pathlib import Path

# Bounded dependencies tested at their lower bound (torch comes from TORCH_SPEC; its CPU build is pinned there).
TESTED = ("transformers", "peft", "accelerate", "lm-eval", "datasets", "kernels")


def main() -> None:
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    pins = {}
    for requirement in requirements:
        match = re.match(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)", requirement)
        if match and match.group(1) in TESTED:
            pins[match.group(1)] = match.group(2)
    missing = sorted(set(TESTED) - set(pins))
    if missing:
        sys.exit(f"pyproject.toml gives no lower bound for {missing}")
    print("\n".join(f"{name}=={version}" for name, version in sorted(pins.items())))


if __name__ == "__main__":
    main()
