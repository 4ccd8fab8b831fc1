import json

import pytest
import torch

from thrifty.errors import ThriftyError
from thrifty.train import checkpoint as ckpt


def _write(run_dir, step, payload=None):
    partial = ckpt.partial_dir(run_dir, step)
    partial.mkdir(parents=True)
    files = {
        "shared.pt": ckpt.save_file(partial, "shared.pt", {"w": torch.arange(1000.0) + step}),
        "rank0.pt": ckpt.save_file(partial, "rank0.pt", payload or {"rng": torch.get_rng_state()}),
    }
    final = ckpt.checkpoint_dir(run_dir, step)
    ckpt.publish(partial, final, step, 1, files)
    return final


def test_round_trip(tmp_path):
    final = _write(tmp_path, 7)
    assert ckpt.verify(final)["step"] == 7
    assert torch.equal(ckpt.load_file(final, "shared.pt")["w"], torch.arange(1000.0) + 7)
    assert not any(p.name.startswith(".") for p in final.iterdir())  # no temporary files left


def test_latest_valid_prefers_newest_and_skips_corrupt(tmp_path):
    _write(tmp_path, 1)
    newest = _write(tmp_path, 2)
    assert ckpt.latest_valid(tmp_path) == newest
    data = bytearray((newest / "shared.pt.thz").read_bytes())
    data[len(data) // 2] ^= 0x40  # one flipped bit
    (newest / "shared.pt.thz").write_bytes(bytes(data))
    warnings = []
    assert ckpt.latest_valid(tmp_path, warn=warnings.append) == ckpt.checkpoint_dir(tmp_path, 1)
    assert len(warnings) == 1 and "shared.pt.thz fails its SHA-256 checksum" in warnings[0]


@pytest.mark.parametrize("damage, fragment", [
    ("truncate", "is truncated"), ("flip", "fails its SHA-256"), ("delete", "is missing"),
    ("meta", "meta.json is corrupt"), ("nometa", "no meta.json"),
])
def test_damage_is_reported_and_never_loaded(tmp_path, damage, fragment):
    final = _write(tmp_path, 3)
    path = final / "rank0.pt.thz"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-10])
    elif damage == "flip":
        data = bytearray(path.read_bytes())
        data[100] ^= 1
        path.write_bytes(bytes(data))
    elif damage == "delete":
        path.unlink()
    elif damage == "meta":
        (final / "meta.json").write_text("{not json")
    else:
        (final / "meta.json").unlink()
    with pytest.raises(ThriftyError, match=fragment):
        ckpt.load_file(final, "rank0.pt")
    with pytest.raises(ThriftyError, match=fragment):
        ckpt.verify(final)
    assert ckpt.latest_valid(tmp_path, warn=lambda m: None) is None


def test_partial_checkpoints_are_invisible_and_pruned(tmp_path):
    ckpt.partial_dir(tmp_path, 5).mkdir(parents=True)
    assert ckpt.complete_checkpoints(tmp_path) == []
    for step in (1, 2, 3):
        _write(tmp_path, step)
    ckpt.prune(tmp_path, keep=2)
    assert [p.name for p in ckpt.complete_checkpoints(tmp_path)] == ["step_00000003", "step_00000002"]
    assert not ckpt.partial_dir(tmp_path, 5).exists()


def test_write_atomic_replaces_whole(tmp_path):
    target = tmp_path / "f.json"
    ckpt.write_atomic(target, b'{"a": 1}')
    ckpt.write_atomic(target, b'{"a": 2}')
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_write_atomic_errors_name_the_target_not_the_temporary(tmp_path):
    (tmp_path / "d").mkdir()
    cases = [(tmp_path / "no" / "f.json", FileNotFoundError), (tmp_path / "d", IsADirectoryError)]
    for target, kind in cases:
        with pytest.raises(kind) as err:
            ckpt.write_atomic(target, b"{}")
        assert err.value.filename == str(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"] and (tmp_path / "d").is_dir()


def test_a_full_disk_is_the_output_s_error(tmp_path):
    import errno

    from thrifty.files import atomic_writer

    target = tmp_path / "out.bin"
    with pytest.raises(OSError) as err, atomic_writer(target):
        raise OSError(errno.ENOSPC, "No space left on device")  # what a write() meets
    assert err.value.filename == str(target) and err.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as err, atomic_writer(target):
        raise OSError(errno.EIO, "Input/output error")  # could be the input's: left unnamed
    assert err.value.filename is None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("compress", [True, False])
def test_files_are_stored_compressed_or_plain(tmp_path, compress):
    state = {"w": torch.randn(200, 100), "m": torch.zeros(200, 100)}
    partial = ckpt.partial_dir(tmp_path, 1)
    partial.mkdir(parents=True)
    entry = ckpt.save_file(partial, "shared.pt", state, compress=compress)
    final = ckpt.checkpoint_dir(tmp_path, 1)
    ckpt.publish(partial, final, 1, 1, {"shared.pt": entry})
    assert entry["file"] == ("shared.pt.thz" if compress else "shared.pt")
    assert (entry["bytes"] < entry["raw_bytes"] * 0.8) if compress else entry["bytes"] == entry["raw_bytes"]
    back = ckpt.load_file(final, "shared.pt")
    assert all(torch.equal(back[k], state[k]) for k in state)
