"""Embedded configs shipped inside the package (the demo's default lives here)."""

from importlib.resources import files


def recipe_text(name: str) -> str:
    """The TOML text of an embedded recipe, e.g. ``recipe_text("demo_digits")``."""
    path = files(__package__) / f"{name}.toml"
    if not path.is_file():
        raise FileNotFoundError(f"no embedded recipe {name!r}")
    return path.read_text()
