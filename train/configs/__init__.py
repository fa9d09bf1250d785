"""Training configurations: plain ``get_config()`` functions returning a :class:`Config`."""

from train.configs.default import (Config, ConfigError, Recipe, apply_recipe, get_config,
                                   recipe_for)

__all__ = ["Config", "ConfigError", "Recipe", "apply_recipe", "get_config", "recipe_for"]
