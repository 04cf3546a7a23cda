"""`dimba configs`: where the shipped configs are, so that an install from a wheel can use them."""

from __future__ import annotations

from dimba.config import config_path
from dimba.errors import DimbaError


def configs(name: str | None = None) -> None:
    """list the shipped configs (or print the path of one, for `dimba fit --config "$(dimba configs --name ...)"`)

    Args:
        name: a config relative to the configs folder, e.g. base.yaml or model/masked.yaml
    """
    root = config_path()
    if name is not None:
        path = (root / name).resolve()
        if root not in path.parents or not path.is_file():
            raise DimbaError(f"no shipped config {name!r}; `dimba configs` lists them")
        print(path)
        return
    for path in sorted(root.rglob("*.yaml")):
        print(path)
