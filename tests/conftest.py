import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(os.environ.get("EASYTUNE_FIXTURE", ROOT.parent / "shared" / "fixtures" / "humanml3d"))


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    if not (FIXTURE / "new_joint_vecs" / "012314.npy").is_file():
        pytest.skip(f"real HumanML3D fixture not found at {FIXTURE}")
    return FIXTURE


@pytest.fixture
def float32_default():
    """Run a test with float32 as torch's default dtype, restoring whatever was set before."""
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(old)


@pytest.fixture(scope="session")
def smoke_runs(tmp_path_factory) -> dict:
    """Smoke-sized runs shared by the distributed, crash/resume and bad-input tests: a procedural dataset
    (240 motions, enough test clips for the retrieval metrics), an MDM backbone (a few steps) and a reward
    (one epoch). Built in this process; torch is left on one thread so that runs compared across processes
    use the same arithmetic."""
    import torch

    from easytune_lab.cli import main

    root = tmp_path_factory.mktemp("smoke-runs")
    data, base, reward = root / "data", root / "mdm", root / "reward"
    for argv in (["data", "synth", "--out", str(data), "--num-motions", "240", "--seed", "5", "--workers", "1",
                  "--no-progress"],
                 ["pretrain", "--backbone", "mdm", "--data", str(data), "--profile", "smoke", "--iterations", "3",
                  "--out", str(base), "--device", "cpu", "--no-progress"],
                 ["reward", "train", "--data", str(data), "--profile", "smoke", "--epochs", "1", "--out", str(reward),
                  "--device", "cpu"]):
        assert main(argv) == 0, argv
    torch.set_num_threads(1)
    return {"root": root, "data": data, "base": base, "reward": reward}
