"""Loading the authors' checkpoint layouts (SPEC section 3) and refusing bad files clearly.

Every checkpoint here is written by the test itself, in the authors' layouts, from the tensors of
the session demo checkpoint (``demo_state_dict``). The expectation is always that source dict: each
tensor of the loaded model must be ``torch.equal`` to the tensor the test put in the file. Files are
~380 MB, so each test writes only what it needs and files shared by several tests are module-scoped
(and deleted when the module is done).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from dcssa.export.checkpoint import CheckpointError, load_checkpoint
from dcssa.export.cli import main as export_cli

MARKER = "dcssa_demo_checkpoint"  # written by write_demo_checkpoint beside the authors' keys
DS = "ShoeV2"
# The split trio of the phase-1 training code: file kind -> the two groups it holds.
TRIO = {
    "backbone": ("sample_embedding_network", "sketch_embedding_network"),
    "attention": ("attention", "sketch_attention"),
    "linear": ("linear", "sketch_linear"),
}
PHASE1_GROUPS = {g for groups in TRIO.values() for g in groups}


# ----------------------------------------------------------------------------- helpers


def _weights(sd: dict) -> dict:
    """The demo file's tensors without the demo marker: what the model should end up holding."""
    return {k: v for k, v in sd.items() if k != MARKER}


def _phase1(sd: dict) -> dict:
    """A phase-1 full state_dict: the phase-2 keys without the stroke head (and without the marker)."""
    return {k: v for k, v in _weights(sd).items() if not k.startswith("attn.")}


def _assert_same_tensors(model: torch.nn.Module, source: dict) -> None:
    """The model holds exactly the source keys, each tensor bit-identical."""
    got = model.state_dict()
    assert set(got) == set(source), (
        f"keys only in model: {sorted(set(got) - set(source))[:5]}, "
        f"only in source: {sorted(set(source) - set(got))[:5]}"
    )
    differ = [k for k, v in source.items() if not torch.equal(got[k], v)]
    assert not differ, f"{len(differ)} tensors differ from the file, e.g. {differ[:5]}"


def _write_trio(folder: Path, phase1_sd: dict) -> dict[str, Path]:
    """The three phase-1 files exactly as the authors save them: {group: sub-state-dict}."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind, groups in TRIO.items():
        obj = {g: {k[len(g) + 1 :]: v for k, v in phase1_sd.items() if k.startswith(g + ".")} for g in groups}
        assert all(obj[g] for g in groups)  # the split itself must not come out empty
        paths[kind] = folder / f"{DS}_top5_{kind}.pth"
        torch.save(obj, paths[kind])
    return paths


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _names(msg: str, key: str) -> bool:
    """``key`` appears as a whole key (so 'attention.x' is not matched by 'sketch_attention.x')."""
    return re.search(rf"(?<![\w.]){re.escape(key)}(?![\w.])", msg) is not None


@pytest.fixture
def scratch(tmp_path):
    """A per-test folder whose big files are deleted as soon as the test ends."""
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.fixture(scope="module")
def phase1_file(demo_state_dict, tmp_path_factory):
    folder = tmp_path_factory.mktemp("phase1_full")
    path = folder / f"{DS}_best_top5.pth"
    torch.save(_phase1(demo_state_dict), path)
    yield path
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def trio(demo_state_dict, tmp_path_factory):
    folder = tmp_path_factory.mktemp("phase1_split") / "trio"
    paths = _write_trio(folder, _phase1(demo_state_dict))
    yield folder, paths
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def truncated_file(demo_ckpt, tmp_path_factory):
    folder = tmp_path_factory.mktemp("truncated")
    path = folder / "best_top5_model.pth"
    size = demo_ckpt.stat().st_size
    with open(demo_ckpt, "rb") as f:
        path.write_bytes(f.read(size // 2))
    yield path
    shutil.rmtree(folder, ignore_errors=True)


# ----------------------------------------------------------------------------- the three layouts


def test_phase2_full_state_dict(demo_ckpt, demo_state_dict):
    assert MARKER in demo_state_dict  # the fixture is the demo file this test relies on
    loaded = load_checkpoint(demo_ckpt)
    assert loaded.layout == "phase2-full"
    assert loaded.phase == 2
    assert loaded.embed == 64
    assert loaded.demo is True
    assert loaded.unexpected_keys == []
    assert hasattr(loaded.model, "attn")
    assert not loaded.model.training
    _assert_same_tensors(loaded.model, _weights(demo_state_dict))
    assert loaded.files == [
        {"name": "best_top5_model.pth", "sha256": _sha256(demo_ckpt), "bytes": os.path.getsize(demo_ckpt)}
    ]


def test_dataparallel_module_prefix(demo_state_dict, scratch):
    path = scratch / "best_top5_model.pth"
    torch.save({f"module.{k}": v for k, v in demo_state_dict.items()}, path)
    loaded = load_checkpoint(path)
    assert (loaded.layout, loaded.phase, loaded.embed, loaded.demo) == ("phase2-full", 2, 64, True)
    assert loaded.unexpected_keys == []
    _assert_same_tensors(loaded.model, _weights(demo_state_dict))


def test_phase1_full_state_dict(demo_state_dict, phase1_file):
    loaded = load_checkpoint(phase1_file)
    assert (loaded.layout, loaded.phase, loaded.embed) == ("phase1-full", 1, 64)
    assert not hasattr(loaded.model, "attn")
    assert loaded.demo is False  # no marker in this file
    assert loaded.unexpected_keys == []
    _assert_same_tensors(loaded.model, _phase1(demo_state_dict))


def test_phase1_split_trio_as_folder(demo_state_dict, trio):
    folder, paths = trio
    loaded = load_checkpoint(folder)
    assert (loaded.layout, loaded.phase, loaded.embed, loaded.demo) == ("phase1-split", 1, 64, False)
    assert not hasattr(loaded.model, "attn")
    assert sorted(f["name"] for f in loaded.files) == sorted(p.name for p in paths.values())
    _assert_same_tensors(loaded.model, _phase1(demo_state_dict))


def test_phase1_split_trio_as_three_paths_any_order(demo_state_dict, trio):
    _, paths = trio
    loaded = load_checkpoint([str(paths["linear"]), paths["backbone"], paths["attention"]])
    assert (loaded.layout, loaded.phase, loaded.embed) == ("phase1-split", 1, 64)
    _assert_same_tensors(loaded.model, _phase1(demo_state_dict))


def test_known_harmless_extras_are_ignored(demo_state_dict, scratch):
    # Real files saved from torchvision's Inception3 carry fc / AuxLogits weights, and files from
    # older torch lack num_batches_tracked: both must load.
    extras = {
        "sample_embedding_network.fc.weight": torch.zeros(1000, 2048),
        "sample_embedding_network.fc.bias": torch.zeros(1000),
        "sample_embedding_network.AuxLogits.conv0.conv.weight": torch.zeros(128, 768, 1, 1),
        "sketch_embedding_network.fc.weight": torch.zeros(1000, 2048),
    }
    kept = {k: v for k, v in _weights(demo_state_dict).items() if not k.endswith("num_batches_tracked")}
    assert len(kept) < len(_weights(demo_state_dict))  # there were some to drop
    path = scratch / "best_top5_model.pth"
    torch.save({**kept, **extras}, path)
    loaded = load_checkpoint(path)
    assert (loaded.layout, loaded.phase) == ("phase2-full", 2)
    assert sorted(loaded.ignored_keys) == sorted(extras)
    assert loaded.unexpected_keys == []
    got = loaded.model.state_dict()
    assert not any(k in got for k in extras)
    differ = [k for k, v in kept.items() if not torch.equal(got[k], v)]
    assert not differ, differ[:5]


# ----------------------------------------------------------------------------- bad files


def _error_for(path: Path) -> str:
    """The loader's error for ``path``, which must name the file and say how to fix it."""
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert str(path) in msg and "\n  fix: " in msg
    return msg


def _refusal(sd, scratch) -> str:
    """Save ``sd`` as a checkpoint and return the loader's error, which must name the file."""
    path = scratch / "best_top5_model.pth"
    torch.save(sd, path)
    return _error_for(path)


HOSTILE = "would run code"
UNREADABLE = "is not a readable PyTorch checkpoint"


def _unreadable(path: Path) -> str:
    """The error for a file that is no checkpoint at all: said so, never called a code-running pickle."""
    msg = _error_for(path)
    assert UNREADABLE in msg and HOSTILE not in msg and "refused" not in msg
    assert "torch.save() wrote" in msg  # the fix names what to pass instead
    return msg


def test_missing_required_key_is_named(demo_state_dict, scratch):
    sd = dict(_weights(demo_state_dict))
    del sd["sketch_attention.mha.in_proj_weight"]
    msg = _refusal(sd, scratch)
    assert _names(msg, "sketch_attention.mha.in_proj_weight")
    # only the missing key is reported, not its neighbours that are present
    assert not _names(msg, "sketch_attention.mha.in_proj_bias")
    assert not _names(msg, "attention.mha.in_proj_weight")


def test_truncated_file(truncated_file):
    assert "truncated" in _unreadable(truncated_file)


@pytest.mark.parametrize("keep", [4, 30, 0.5, 0.99], ids=["4-bytes", "30-bytes", "half", "all-but-1%"])
def test_truncated_small_torch_save_zip(keep, tmp_path):
    whole = tmp_path / "whole.pth"
    torch.save({"linear.head_layer.weight": torch.arange(64 * 32, dtype=torch.float32).reshape(64, 32)}, whole)
    data = whole.read_bytes()
    assert data[:4] == b"PK\x03\x04"  # torch.save writes a zip archive
    path = tmp_path / "best_top5_model.pth"
    path.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    assert "truncated" in _unreadable(path)


def test_text_file(tmp_path):
    path = tmp_path / "best_top5_model.pth"
    path.write_text("epoch 12, top5 0.41\nsaved by train.py\n")
    msg = _unreadable(path)
    assert "text ('epoch 12, top5 0.41'" in msg


def test_empty_file(tmp_path):
    path = tmp_path / "best_top5_model.pth"
    path.touch()
    assert "empty (0 bytes)" in _unreadable(path)


def test_plain_pickle_of_numbers(tmp_path):
    path = tmp_path / "best_top5_model.pth"
    path.write_bytes(pickle.dumps({"epoch": 3, "acc": [0.1, 0.2]}))
    assert "plain pickle" in _unreadable(path)


class _RunsCommand:
    """A pickle whose loading runs a shell command (the attack weights_only=True must stop)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("writer", ["pickle", "pickle-protocol-0", "torch.save", "torch.save-legacy"])
def test_hostile_pickle_is_refused_without_running(writer, tmp_path):
    # Control: the payload is live, unpickling it unrestricted really runs the command.
    control = tmp_path / "control-ran"
    pickle.loads(pickle.dumps(_RunsCommand(control)))
    assert control.exists()

    marker = tmp_path / "payload-ran"
    path = tmp_path / "best_top5_model.pth"
    payload = {"linear.head_layer.weight": torch.zeros(64, 2048), "evil": _RunsCommand(marker)}
    if writer.startswith("pickle"):
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=0 if writer.endswith("-0") else None)
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=not writer.endswith("-legacy"))
    msg = _error_for(path)
    assert "refused" in msg and HOSTILE in msg and UNREADABLE not in msg
    assert f"{os.system.__module__}.system" in msg.split("imports ", 1)[1]  # the import that runs code is named
    assert not marker.exists()


@pytest.mark.parametrize("obj", [[1, 2, 3], {"epoch": 3, "lr": 0.1}], ids=["list", "dict-without-tensors"])
def test_not_a_state_dict(obj, tmp_path):
    path = tmp_path / "model.pth"
    torch.save(obj, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


def test_forced_phase2_on_phase1_file_names_head_keys(demo_state_dict, phase1_file):
    head_keys = sorted(k for k in demo_state_dict if k.startswith("attn."))
    assert len(head_keys) == 8  # norm (2), in_proj (2), out_proj (2), proj.head_layer (2)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(phase1_file, phase=2)
    msg = str(err.value)
    assert str(phase1_file) in msg
    unnamed = [k for k in head_keys if not _names(msg, k)]
    assert not unnamed, f"not named in {msg!r}: {unnamed}"


def test_wrong_tensor_shape_is_named(demo_state_dict, scratch):
    sd = dict(_weights(demo_state_dict))
    assert tuple(sd["attention.norm.weight"].shape) == (2048,)
    sd["attention.norm.weight"] = torch.ones(1000)
    msg = _refusal(sd, scratch)
    assert _names(msg, "attention.norm.weight")
    assert not _names(msg, "sketch_attention.norm.weight")  # that one is fine


# ----------------------------------------------------------------------------- the CLI


def _assert_clean_failure(result, ckpt: Path, out: Path) -> None:
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), f"crashed instead of failing cleanly: {result.exception!r}"
    assert "Traceback" not in result.output
    assert str(ckpt) in result.output
    assert not out.exists()
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    assert leftovers == []


def test_cli_missing_checkpoint(tmp_path):
    ckpt, out = tmp_path / "MISSING.pth", tmp_path / "X"
    result = CliRunner().invoke(export_cli, ["--ckpt", str(ckpt), "--out", str(out), "-q"])
    _assert_clean_failure(result, ckpt, out)


def test_cli_truncated_checkpoint(truncated_file, tmp_path):
    out = tmp_path / "X"
    result = CliRunner().invoke(export_cli, ["--ckpt", str(truncated_file), "--out", str(out), "-q"])
    _assert_clean_failure(result, truncated_file, out)
    assert list(tmp_path.iterdir()) == []
    assert UNREADABLE in result.output and HOSTILE not in result.output


def test_cli_text_file_is_not_called_hostile(tmp_path):
    ckpt, out = tmp_path / "notes.pth", tmp_path / "X"
    ckpt.write_text("not a checkpoint\n")
    result = CliRunner().invoke(export_cli, ["--ckpt", str(ckpt), "--out", str(out), "-q"])
    _assert_clean_failure(result, ckpt, out)
    assert result.exit_code == 2
    assert f"{ckpt}: {UNREADABLE}: it is text" in result.output and HOSTILE not in result.output


@pytest.mark.parametrize(
    "args, mentions",
    [(["--help"], ["--ckpt", "--out", "demo-checkpoint"]), (["demo-checkpoint", "--help"], ["--seed", "OUT"])],
    ids=["main", "demo-checkpoint"],
)
def test_cli_help(args, mentions):
    result = CliRunner().invoke(export_cli, args)
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    for word in mentions:
        assert word in result.output
