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
