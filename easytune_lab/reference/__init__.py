"""What the EasyTune paper reports (arXiv 2602.07967, ICLR 2026), to print beside our numbers, never mixed into them.

``table1_humanml3d_mld.csv``: Table 1, the differentiable-reward methods fine-tuning MLD on HumanML3D with the
standard T2M evaluator (R-Precision top-1, FID, MM-Dist, training VRAM in GB). ``ablations.csv``: step vs chain
optimisation, x̂0 reward vs noise-aware reward, MLD++. Both are copied from the paper's tables.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
TABLES = {"table1": "table1_humanml3d_mld.csv", "ablations": "ablations.csv"}


def paper_table(name: str = "table1") -> pd.DataFrame:
    """The paper's ``table1`` or ``ablations`` as a DataFrame, with a ``source`` column naming the paper, so a table
    that shows it beside ours cannot be taken for our rows."""
    if name not in TABLES:
        raise ValueError(f"name: one of {', '.join(TABLES)} (got '{name}')")
    table = pd.read_csv(HERE / TABLES[name])
    table.insert(0, "source", "paper (arXiv 2602.07967, HumanML3D, MLD)")
    return table
