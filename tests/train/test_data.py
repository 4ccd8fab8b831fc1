import pytest
import torch

from thrifty.errors import ThriftyError
from thrifty.train.config import DataConfig
from thrifty.train.data import Sampler, Windows, check_corpus, eval_batches, load_corpus, stdlib_dir


def test_default_corpus_is_the_stdlib_without_site_packages():
    corpus = load_corpus(DataConfig(), block_size=64)
    assert corpus.files > 500  # CPython ships well over a thousand .py files
    assert 0.02 < corpus.val.numel() / corpus.bytes < 0.10  # about val_fraction = 0.05
    again = load_corpus(DataConfig(), block_size=64)
    assert again.fingerprint == corpus.fingerprint  # the split is deterministic


def test_single_file_holds_out_its_tail(tmp_path):
    path = tmp_path / "book.txt"
    path.write_bytes(bytes(range(256)) * 40)
    corpus = load_corpus(DataConfig(corpus=str(path), val_fraction=0.1), block_size=16)
    text = path.read_bytes() + b"\n"  # each file ends with a separator
    assert corpus.train.numel() + corpus.val.numel() == len(text)
    assert bytes(corpus.val.tolist()) == text[corpus.train.numel():]


@pytest.mark.parametrize("setup, fragment", [("missing", "corpus not found"),
                                             ("empty", "no files matching"),
                                             ("tiny", "too small")])
def test_bad_corpus(tmp_path, setup, fragment):
    target = tmp_path / "c"
    if setup == "empty":
        target.mkdir()
    elif setup == "tiny":
        target.write_text("x = 1\n")
    with pytest.raises(ThriftyError, match=fragment):
        load_corpus(DataConfig(corpus=str(target)), block_size=64)


def test_too_small_says_how_much_is_needed(tmp_path):
    path = tmp_path / "short.txt"
    path.write_bytes(b"x" * 99)  # loaded with a separator: 100 bytes
    msg = "short.txt is too small: 100 bytes, and block_size 16 needs 161 "
    with pytest.raises(ThriftyError, match=msg):
        load_corpus(DataConfig(corpus=str(path), val_fraction=0.1), block_size=16)
    path.write_bytes(b"x" * 160)  # the figure the message gave is enough, one byte fewer is not
    corpus = load_corpus(DataConfig(corpus=str(path), val_fraction=0.1), block_size=16)
    assert corpus.val.numel() == 17
    path.write_bytes(b"x" * 159)
    with pytest.raises(ThriftyError, match="needs 161"):
        load_corpus(DataConfig(corpus=str(path), val_fraction=0.1), block_size=16)


@pytest.mark.parametrize("files", [1, 3])
def test_the_launchers_check_agrees_with_loading(tmp_path, files):
    """check_corpus, from file sizes alone, refuses exactly the corpora load_corpus refuses."""
    cfg = DataConfig(corpus=str(tmp_path), pattern="*.txt", val_fraction=0.1)
    for n in range(130, 200, 3):
        for i in range(files):
            (tmp_path / f"{i}.txt").write_bytes(b"y" * (n // files))
        try:
            load_corpus(cfg, block_size=16)
            loads = True
        except ThriftyError:
            loads = False
        try:
            check_corpus(cfg, block_size=16)
            checks = True
        except ThriftyError:
            checks = False
        assert loads == checks, n


def _windows(n=10_000, block=16, seed=3):
    return Windows(torch.arange(n, dtype=torch.int64), block, seed)  # token = its position


def test_targets_are_inputs_shifted_by_one():
    x, y = _windows().batch(0, 4)
    assert x.shape == y.shape == (4, 16)
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_ranks_split_the_global_batch_disjointly():
    w = _windows()
    single = Sampler(w, batch_size=8, micro=8, rank=0, world_size=1)
    ranks = [Sampler(w, batch_size=8, micro=2, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):
        (whole,) = single.next_step()
        parts = [torch.cat([x for x, _ in s.next_step()]) for s in ranks]
        assert torch.equal(torch.cat(parts), whole[0])
        assert not set(parts[0][:, 0].tolist()) & set(parts[1][:, 0].tolist())


def test_sampler_resumes_at_the_exact_window():
    w = _windows()
    a = Sampler(w, 4, 2, 0, 1)
    for _ in range(5):
        a.next_step()
    b = Sampler(_windows(), 4, 2, 0, 1)
    b.load_state_dict(a.state_dict())
    for _ in range(3):
        assert all(torch.equal(p[0], q[0]) for p, q in zip(a.next_step(), b.next_step(), strict=True))


def test_epochs_visit_every_window_once_in_a_new_order():
    w = _windows(n=16 * 20 + 1)
    assert w.count == 20
    first = [w._window_start(g) for g in range(20)]
    second = [w._window_start(g) for g in range(20, 40)]
    assert sorted(first) == sorted(second) == [i * 16 for i in range(20)]
    assert first != second


def test_eval_set_is_split_between_ranks():
    w = _windows()
    whole = torch.cat([x for x, _ in eval_batches(w, 8, 2, 8, 0, 1)])
    parts = [torch.cat([x for x, _ in eval_batches(w, 8, 2, 4, r, 2)]) for r in range(2)]
    assert sorted(map(tuple, whole.tolist())) == sorted(map(tuple, torch.cat(parts).tolist()))


def test_stdlib_dir_exists():
    assert (stdlib_dir() / "os.py").exists()
