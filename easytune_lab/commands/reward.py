"""``easytune reward train|spl|study``: train the retrieval reward (optionally noise-aware), refine it with SPL.

Each run directory holds ``manifest.json``, ``weights.safetensors``, ``vocab.json`` and ``metrics.json``
(training history and retrieval metrics R@1/2/3/5/10 + median rank, text→motion and motion→text, over the
whole test split and in galleries of 32, at each evaluated noise level), and ``checkpoint/``, from which
``--resume`` continues an interrupted ``train`` or ``spl`` run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError
from ..io import write_json
from ..pipeline import results_dir
from ..reward import pipeline as stages  # called as stages.<name>, so that tests can replace a stage
from ..runs import add_allow_pickle, add_name_argument, run_path
from ..runtime import COUNT, OutputPath, SEED, check_json_out, integer, real
from .options import add_checkpoint_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reward", help="train the retrieval reward R(x, c) / R(x_t, t, c) and refine it with SPL")
    rsub = p.add_subparsers(dest="reward_command", metavar="SUBCOMMAND")
    rsub.required = True

    t = rsub.add_parser("train", help="train a retrieval reward with InfoNCE")
    _common(t)
    t.add_argument("--noise-aware", action="store_true", help="train R(x_t, t, c) on noised and clean motions")
    t.add_argument("--schedule", choices=["linear", "scaled_linear", "cosine"], default=None,
                   help="the backbone's noise schedule for --noise-aware (default: the profile's, cosine)")
    t.add_argument("--text-model", type=Path, default=None,
                   help="optional local Hugging Face text model directory (frozen; never downloaded)")
    t.add_argument("--epochs", type=COUNT, default=None, help="override the profile's number of epochs")
    t.add_argument("--init", type=run_path, default=None,
                   help="start from this reward run (its weights, vocabulary and model size) instead of a fresh "
                        "reward: with --noise-aware from a plain run (the timestep embedding starts at zero), "
                        "else the run is trained on for the profile's epochs")
    add_checkpoint_options(t)
    add_allow_pickle(t)
    add_name_argument(t)
    t.set_defaults(func=cmd_train, distributed=True, lock="out")

    s = rsub.add_parser("spl", help="refine a trained reward with Self-refinement Preference Learning")
    s.add_argument("--reward", required=True, type=run_path,
                   help="a reward run (from `reward train`; path or name)")
    _common(s)
    s.add_argument("--k", type=integer(1, 100000), default=None, help="top-k of the mining rule (default: the profile's, 10)")
    s.add_argument("--spl-weight", type=real(0.0, 1e6), default=None,
                   help="weight of the SPL loss (0 = control: same extra epochs, InfoNCE only)")
    s.add_argument("--spl-mode", choices=("ours", "official"), default="ours",
                   help="ours: pairs mined beyond the top-k, whole train split as gallery; official: the authors' "
                        "train_spm.py loss and settings (in-batch, (1/2,1/2)/(0,1) targets, weight 0.01, lr 1e-5)")
    s.add_argument("--epochs", type=COUNT, default=None, help="override the profile's number of SPL epochs")
    add_checkpoint_options(s)
    add_allow_pickle(s)
    add_name_argument(s)
    s.set_defaults(func=cmd_spl, distributed=True, lock="out")

    st = rsub.add_parser("study", help="SPL before/after (with a no-SPL control) over seeds; plain vs noise-aware")
    st.add_argument("--data", required=True, type=Path, help="HumanML3D-format dataset directory")
    st.add_argument("--profile", default="quick", help="smoke | quick | paper (default quick)")
    st.add_argument("--runs", required=True, type=OutputPath(directory=True), help="directory for the run directories (must not hold them yet)")
    st.add_argument("--results", type=OutputPath(directory=True), default=None,
                    help="summary JSON directory (default results/<profile>/reward)")
    st.add_argument("--seeds", type=SEED, nargs="*", default=[0, 1, 2], help="seeds of the plain/SPL runs")
    st.add_argument("--noise-seeds", type=SEED, nargs="*", default=[0], help="seeds of the noise-aware runs")
    st.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    st.add_argument("--summarise-only", action="store_true", help="only summarise the finished runs under --runs")
    st.set_defaults(func=cmd_study, lock="runs")
    ev = rsub.add_parser("eval", help="test-split retrieval of a reward run at chosen noise levels")
    ev.add_argument("--reward", required=True, type=run_path, help="a reward run (path or name)")
    ev.add_argument("--data", required=True, type=Path, help="HumanML3D-format dataset directory")
    ev.add_argument("--timesteps", default="0", help="comma-separated noise levels t in [0, 999] (default 0)")
    ev.add_argument("--out", required=True, type=OutputPath(".json"), help="output JSON file")
    ev.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    ev.set_defaults(func=cmd_eval)
    sw = rsub.add_parser("sweep", help="R@1 against noise level for the plain / noise-aware runs of a study")
    sw.add_argument("--runs", required=True, type=Path, help="the --runs directory of `easytune reward study`")
    sw.add_argument("--data", required=True, type=Path, help="HumanML3D-format dataset directory")
    sw.add_argument("--timesteps", required=True, help="comma-separated noise levels t in [0, 999]")
    sw.add_argument("--out", required=True, type=OutputPath(".json"), help="output JSON file")
    sw.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    sw.set_defaults(func=cmd_sweep)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path, help="HumanML3D-format dataset directory")
    p.add_argument("--profile", default="quick", help="smoke | quick | paper (default quick)")
    p.add_argument("--out", required=True, type=OutputPath(directory=True),
                   help="output run directory (absent or empty; with --resume: the run to continue)")
    p.add_argument("--seed", type=SEED, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto; under torchrun cuda = one "
                                                    "GPU per rank)")


def _checkpointing(args: argparse.Namespace) -> dict:
    return {"resume": args.resume, "stop_after": args.stop_after, "checkpoint_every": args.checkpoint_every}


def cmd_train(args: argparse.Namespace) -> int:
    stages.train_run(args.data, args.out, args.profile, args.seed, args.device, noise_aware=args.noise_aware,
                     epochs=args.epochs, schedule=args.schedule, text_model=args.text_model, init=args.init,
                     progress=True, **_checkpointing(args))
    return 0


def cmd_spl(args: argparse.Namespace) -> int:
    stages.spl_run(args.reward, args.data, args.out, args.profile, args.seed, args.device, k=args.k,
                   weight=args.spl_weight, epochs=args.epochs, progress=True, mode=args.spl_mode,
                   **_checkpointing(args))
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    if not args.seeds or not args.noise_seeds:
        raise UserError("--seeds/--noise-seeds: give at least one seed each")
    if args.results is None:
        args.results = results_dir(args.profile) / "reward"
    if args.summarise_only:
        stages.summarise(args.runs, args.results)
    else:
        stages.study(args.data, args.runs, args.results, args.profile, args.seeds, args.noise_seeds, args.device)
    print(f"wrote {args.results / 'spl.json'} and {args.results / 'noise_aware.json'}")
    return 0


def _json_out(path: Path) -> None:
    check_json_out(path)
    if not path.parent.is_dir():
        raise UserError(f"--out {path}: directory {path.parent} does not exist")


def cmd_eval(args: argparse.Namespace) -> int:
    timesteps = stages.parse_timesteps(args.timesteps)
    _json_out(args.out)
    retrieval = stages.eval_run(args.reward, args.data, timesteps, args.device)
    write_json(args.out, {"reward": str(args.reward), "data": str(args.data), "retrieval": retrieval})
    for t in timesteps:
        print(f"t={t}: {_r1_line(retrieval[f't={t}'])}")
    return 0


def _r1_line(metrics: dict) -> str:
    return ", ".join(f"{protocol} R@1 {m['t2m']['R@1']:.1f}" for protocol, m in metrics.items())


def cmd_sweep(args: argparse.Namespace) -> int:
    timesteps = stages.parse_timesteps(args.timesteps)
    _json_out(args.out)
    summary = stages.noise_sweep(args.runs, args.data, timesteps, args.out, args.device)
    for protocol in [k for k in summary if k.startswith("batch") or k == "all"]:
        for t in timesteps:
            row = summary[protocol][f"t={t}"]
            print(f"{protocol:>8s} t={t:<4d} " + "  ".join(f"{k} {v['mean']:.1f}±{v['sd']:.1f}" for k, v in row.items()))
    print(f"wrote {args.out}")
    return 0
