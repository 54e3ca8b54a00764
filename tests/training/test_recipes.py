"""Training recipes register themselves (``@recipe(name)`` in their own module); the table the CLI
reads is filled the first time it is read."""
import pytest

pytest.importorskip("torch")


def test_every_recipe_registers_itself():
    from napari_edof.training.train import RECIPES, get_recipe

    assert set(RECIPES) == {"stackmff-v2", "msas", "vaeedof", "ctmfusion", "fmb-fn"}
    for name, where in RECIPES.items():
        fn = get_recipe(name)
        assert callable(fn) and where.endswith(f":{fn.__name__}")
    assert "no-such-model" not in RECIPES
