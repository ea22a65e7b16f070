"""The quick ground truth and quick MDM under the legacy and the t2m evaluation protocol (same evaluator, seed,
replications): results/quick/evaluation/protocol_change.json. Run from the repository root:
``python scripts/protocol_change.py`` (uses and fills the run cache of the quick profile)."""
import json, time, torch
from pathlib import Path
from easytune_lab.pipeline import workbench
from easytune_lab.io import write_json
torch.set_num_threads(1)
wb = workbench("quick", seed=0, device="cpu")
out = Path("results/quick/evaluation/protocol_change.json")
mdm = wb.backbone("mdm")
res = {"profile": "quick", "seed": 0, "device": "cpu", "evaluator_run": str(Path(wb.evaluator).name),
       "data": str(wb.data), "models": {"gt": "gt", "mdm": str(Path(mdm).name)},
       "replications": None, "split": "test", "metrics": {}}
from easytune_lab.pipeline import EVAL_REPLICATIONS
res["replications"] = EVAL_REPLICATIONS["quick"]
res["sampling"] = dict(zip(("sampler", "steps"), wb.sampling(mdm)))
res["note"] = ("one replication over the test split: the change of each number mixes the protocol's effect with "
               "the different crops and lengths it draws; captions are drawn alike under both protocols")
for name, model in (("gt", "gt"), ("mdm", mdm)):
    for protocol in ("legacy", "t2m"):
        t0 = time.time()
        m = wb.evaluation(model, protocol=protocol)
        res["metrics"].setdefault(name, {})[protocol] = {k: v["mean"] for k, v in m.items() if isinstance(v, dict) and "mean" in v}
        print(name, protocol, round(time.time() - t0), res["metrics"][name][protocol], flush=True)
        write_json(out, res)
for name in res["metrics"]:
    if len(res["metrics"][name]) == 2:
        a, b = res["metrics"][name]["legacy"], res["metrics"][name]["t2m"]
        res["metrics"][name]["change"] = {k: b[k] - a[k] for k in a if k in b}
write_json(out, res)
print("done")
