"""The MSAS training recipe: registered, runs, and resumes to the same weights."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")


@pytest.fixture
def one_thread():
    """The recipe's threads=1 sets torch's global thread count: restore it afterwards."""
    n = torch.get_num_threads()
    yield 1
    torch.set_num_threads(n)


def test_recipe_is_registered_and_resumes_exactly(tmp_path, one_thread):
    from napari_edof.training.train import get_recipe
    from napari_edof.training.train_msas import train_msas

    assert get_recipe("msas") is train_msas
    kw = dict(steps=2, seed=3, batch_size=2, crop=32, warmup=0, ckpt_every=1, widths=(4, 4, 8), gcb_width=4,
              threads=one_thread, progress=False)
    a = train_msas(out=tmp_path / "a", **kw)
    assert a["done"] and (tmp_path / "a" / "weights.pt").is_file()
    b1 = train_msas(out=tmp_path / "b", stop_after=1, **kw)
    assert not b1["done"] and b1["step"] == 1
    train_msas(out=tmp_path / "b", resume=True, **kw)
    wa = torch.load(tmp_path / "a" / "weights.pt", weights_only=True)
    wb = torch.load(tmp_path / "b" / "weights.pt", weights_only=True)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0)


def test_items_are_pure_functions_of_their_seed():
    from napari_edof.training.datasets import PairDataset, StackDataset
    from napari_edof.training.train_msas import make_item

    pairs = PairDataset(seed=0, crop=(32, 32), rgb=False)
    stacks = StackDataset(seed=1, crop=(32, 32), n_range=(3, 5))
    for b in range(4):
        x = make_item(np.random.default_rng([0, 5, 0, b]), pairs, stacks, (0.4, 0.3, 0.3), 0.5)
        y = make_item(np.random.default_rng([0, 5, 0, b]), pairs, stacks, (0.4, 0.3, 0.3), 0.5)
        for u, v in zip(x, y):
            assert u.shape == (32, 32) and u.dtype == np.float32
            np.testing.assert_array_equal(u, v)
        t, w = x[2], x[3]
        assert set(np.unique(t)) <= {0.0, 0.5, 1.0} and set(np.unique(w)) <= {0.0, 1.0}


def test_realistic_pairs_targets_and_resume(tmp_path, one_thread):
    """Pairs from the realistic generator: pure functions of their seed, targets that follow the true
    plane (1 where it is nearer the first input, 0.5 on the composite's own plane), no weight where the
    stack has no focus information; a fine-tuning run from ``init`` resumes to the same weights."""
    from napari_edof.training.realistic_data import realistic_item
    from napari_edof.training.train_msas import realistic_pairs, train_msas

    def draw():
        return realistic_pairs(np.random.default_rng([7, 0x5EA2, 0, 0]), 32, (3, 5), (0.5, 0.35, 0.15), 0.8, 6)

    x, y = draw(), draw()
    for p, q in zip(x, y):
        for u, v in zip(p, q):
            assert u.shape == (32, 32) and u.dtype == np.float32
            np.testing.assert_array_equal(u, v)
    rng = np.random.default_rng([7, 0x5EA2, 0, 0])  # the stack those pairs came from (the same draws)
    n = int(rng.integers(3, 6))
    it = realistic_item(rng, n, 32, 0.8)
    stack, info = it["stack"], it["informative"]
    for a, b, t, w in x:
        assert set(np.unique(t)) <= {0.0, 0.5, 1.0} and set(np.unique(w)) <= {0.0, 1.0}
        assert w.any() and not np.any(w[~info])
        assert any(np.array_equal(a, p) or np.array_equal(b, p) for p in stack)  # a plane of that stack
    kw = dict(steps=2, seed=3, batch_size=5, crop=32, warmup=0, ckpt_every=1, widths=(4, 4, 8), gcb_width=4,
              threads=one_thread, progress=False, data="realistic", n_range=(2, 4))
    a = train_msas(out=tmp_path / "a", **kw)
    init = tmp_path / "a" / "weights.pt"
    kw["init"] = str(init)
    c = train_msas(out=tmp_path / "c", **kw)
    b1 = train_msas(out=tmp_path / "b", stop_after=1, **kw)
    assert a["done"] and c["done"] and not b1["done"]
    train_msas(out=tmp_path / "b", resume=True, **kw)
    wc = torch.load(tmp_path / "c" / "weights.pt", weights_only=True)
    wb = torch.load(tmp_path / "b" / "weights.pt", weights_only=True)
    for k in wc:
        torch.testing.assert_close(wc[k], wb[k], rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown training data"):
        train_msas(out=tmp_path / "d", **{**kw, "data": "nope"})
