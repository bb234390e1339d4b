"""Command line: parse arguments and dispatch to the stages. No logic lives here.

Options come from the config dataclasses (`sharpen.config`), so a default is stated once. Each command imports
its stage where it runs: the stages import torch, and `sharpen --help` and `sharpen report DIR` must work
without it (tests/test_layers.py allows these imports, and only these, inside functions).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .config import (
    GRPO_STEPS,
    PREFERENCE_LR,
    RL_LR,
    SFT_LR,
    BonConfig,
    DpoConfig,
    EvalConfig,
    GrpoConfig,
    PowerConfig,
    SftConfig,
    TrainConfig,
    XpoConfig,
    bounded,
)
from .errors import SharpenError
from .report import grpo as grpo_report
from .report import rlhf as rlhf_report
from .report import sft as sft_report
from .report.bon import format_table, write_report
from .report.compare import write_compare
from .report.kit import format_eval, label_console
from .report.paired import write_paired
from .runs import append_jsonl, forget_opened, opened, prepare_run_dir, read_json
from .tasks import TASKS


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad option in one line (exit code 2) instead of the full usage block."""
    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def add_config_args(parser: argparse.ArgumentParser, cls: type, defaults: dict[str, Any] | None = None) -> None:
    """One --option per dataclass field, with the field's default and help: defaults are stated once (`defaults`:
    a stage's own value for a shared field, such as the learning rate)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "").replace("%", "%%")  # argparse %-formats help texts
        if f.name == "task":
            help_ += ": " + ", ".join(TASKS)
        kind = hints[f.name]
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_)
            continue
        if "parse" in f.metadata:  # a field that takes a number or a word, e.g. --beta auto
            kind = f.metadata["parse"]
        elif isinstance(kind, types.UnionType):  # X | None
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        default = (defaults or {}).get(f.name, f.default if f.default is not dataclasses.MISSING else None)
        parser.add_argument(flag, type=kind, default=default,
                            help=f"{help_} (default: {default})" if default is not None else help_)


def config_from_args(cls: type, args: argparse.Namespace) -> Any:
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def _cmd_bon(args: argparse.Namespace) -> int:
    from .stages.bon import run_bon

    cfg = config_from_args(BonConfig, args)
    summary = run_bon(cfg)
    print(format_table(summary))
    print(f"report: {cfg.out}/report.md")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    if not (run_dir / "summary.json").exists():
        raise SharpenError(f"{run_dir} has no summary.json: give a finished run directory "
                           "(re-run its command to finish it)")
    command = read_json(run_dir / "config.json").get("command", "bon") if (run_dir / "config.json").exists() else "bon"
    writer = {"sft": sft_report.write_sft_report, "dpo": rlhf_report.write_rlhf_report,
              "xpo": rlhf_report.write_rlhf_report, "grpo": grpo_report.write_grpo_report}.get(command, write_report)
    print(f"report: {writer(run_dir)}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    if args.control and not args.paired:
        raise SharpenError("--control compares trained runs item by item on a held-out table: add --paired BON_DIR")
    if args.paired:
        path = write_paired(args.paired, args.run_dir, args.out, controls=args.control or ())
        print(path.read_text(encoding="utf-8"))
        print(f"md: {path}")
        return 0
    paths = write_compare(args.run_dir, args.out)
    print(paths["md"].read_text(encoding="utf-8"))
    print("   ".join(f"{ext}: {path}" for ext, path in paths.items()))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .stages.bon import run_bon

    start = time.time()
    cfg = BonConfig(task="prontoqa", limit=args.limit, n=args.n, seeds=10, max_new_tokens=args.max_new_tokens,
                    out=args.out, data_dir=args.data_dir)
    print(f"sharpen demo: best-of-{cfg.n} with self-reward on {cfg.limit} ProntoQA items, "
          f"embedded model {cfg.model}, {cfg.seeds} subsampling seeds")
    summary = run_bon(cfg)
    print(format_table(summary))
    print(f"report: {cfg.out}/report.md   (wall time {time.time() - start:.0f} s)")
    return 0


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[..., int]]] = {}


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sharpen", description="Sharpen a language model toward its own most likely responses.")
    parser.add_argument("--version", action="version", version=f"sharpen {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("bon", help="best-of-N with self-reward: sample, score every selector, report",
                       description="Draw N samples per prompt with their log-probs, compute every selector "
                                   "(logprob, logprob_mean, majority, random, oracle, greedy) offline, write a report.")
    add_config_args(p, BonConfig)
    p.set_defaults(func=_cmd_bon)

    p = sub.add_parser("report", help="rebuild report.md and plots from a run directory's files")
    p.add_argument("run_dir", help="a run directory written by sharpen bon")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("compare", help="one table and lift heatmap across run directories (no model loaded)",
                       description="Compare finished bon / sft / dpo / xpo / eval run directories: accuracy with "
                                   "its 95% interval, balanced accuracy, majority-label baseline, lift over "
                                   "greedy; writes OUT/compare.md, OUT/compare.csv and OUT/compare.png.")
    p.add_argument("run_dir", nargs="+", help="run directories written by sharpen bon / sft / dpo / xpo / grpo / "
                                               "power / eval (with --paired: sft / dpo / xpo / grpo / power)")
    p.add_argument("--out", default="compare", help="output folder, new or empty or one compare wrote (default: "
                                                    "compare, in the current directory)")
    p.add_argument("--paired", metavar="BON_DIR", default=None,
                   help="instead: the base model's bon run on the held-out items; writes OUT/paired.md, where "
                        "base greedy, base best-of-N and every trained run's greedy answers are compared item by "
                        "item with base greedy, the majority label and base majority@N; power runs also with base "
                        "best-of-k at the response tokens they spent; and OUT/paired.png, accuracy against "
                        "tokens spent beside the base best-of-k curve")
    p.add_argument("--control", metavar="RUN_DIR", action="append", default=None,
                   help="with --paired: a trained control run (e.g. grpo --reward random, sft --selector random) "
                        "every other trained run is also compared with, item by item: greedy and sample accuracy "
                        "(a table after the main one); repeat for several controls")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("demo", help="a small best-of-N run on the embedded model (minutes on a CPU)")
    p.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    p.add_argument("--limit", type=int, default=64, help="ProntoQA items (default: 64)")
    p.add_argument("--n", type=int, default=8, help="samples per prompt (default: 8)")
    p.add_argument("--max-new-tokens", type=int, default=48, help="maximum response tokens (default: 48)")
    p.add_argument("--data-dir", default=None, help="data directory (default: $SHARPEN_DATA_DIR, else generated)")
    p.set_defaults(func=_cmd_demo)

    for name, (help_, add, func) in COMMANDS.items():
        p = sub.add_parser(name, help=help_)
        add(p)
        p.set_defaults(func=func)
    return parser


# ---- training stages: `sharpen sft` and `sharpen eval` ---------------------------------------------------

def _add_sft(p: argparse.ArgumentParser) -> None:
    add_config_args(p, SftConfig)
    add_config_args(p, TrainConfig, {"lr": SFT_LR})


def _cmd_sft(args: argparse.Namespace) -> int:
    from .stages.sft import run_sft

    cfg = config_from_args(SftConfig, args)
    summary = run_sft(cfg, config_from_args(TrainConfig, args))
    if summary:  # empty on the non-main processes of a multi-GPU launch
        print(sft_report.format_summary(summary))
        print(f"report: {cfg.out}/report.md   adapter: {cfg.out}/adapter")
    return 0


def _add_eval(p: argparse.ArgumentParser) -> None:
    add_config_args(p, EvalConfig)


def _cmd_eval(args: argparse.Namespace) -> int:
    from .stages.evaluate import run_eval

    cfg = config_from_args(EvalConfig, args)
    result = run_eval(cfg)
    print(format_eval({k: result[k] for k in ("greedy", "sample") if k in result},
                      title=f"{cfg.task} / {cfg.model}" + (f" + {cfg.adapter}" if cfg.adapter else "")))
    print("\n".join(label_console(result.get("labels"))))
    return 0


COMMANDS["sft"] = ("SFT-sharpening: train LoRA adapters on each prompt's best-of-N response", _add_sft, _cmd_sft)
COMMANDS["eval"] = ("greedy / sample accuracy and mean log pi_base of a model (optionally with an adapter)",
                    _add_eval, _cmd_eval)


# ---- RLHF-sharpening: `sharpen dpo` and `sharpen xpo` ------------------------------------------------------

def _cmd_rlhf(args: argparse.Namespace) -> int:
    from .stages import rlhf

    cls, run = (DpoConfig, rlhf.run_dpo) if args.command == "dpo" else (XpoConfig, rlhf.run_xpo)
    cfg = config_from_args(cls, args)
    summary = run(cfg, config_from_args(TrainConfig, args))
    print(rlhf_report.format_summary(summary))
    print(f"report: {cfg.out}/report.md   adapter: {cfg.out}/adapter")
    return 0


def _add_dpo(p: argparse.ArgumentParser) -> None:
    add_config_args(p, DpoConfig)
    add_config_args(p, TrainConfig, {"lr": PREFERENCE_LR})


def _add_xpo(p: argparse.ArgumentParser) -> None:
    add_config_args(p, XpoConfig)
    add_config_args(p, TrainConfig, {"lr": PREFERENCE_LR})


COMMANDS["dpo"] = ("RLHF-sharpening, offline: reward-based DPO (Eq. 4/8) on pairs of base samples", _add_dpo,
                   _cmd_rlhf)
COMMANDS["xpo"] = ("RLHF-sharpening, online: reward-based XPO (Algorithm 1) in rounds", _add_xpo, _cmd_rlhf)


# ---- online label-free RL: `sharpen grpo` -------------------------------------------------------------------

def _add_grpo(p: argparse.ArgumentParser) -> None:
    add_config_args(p, GrpoConfig)
    add_config_args(p, TrainConfig, {"lr": RL_LR, "max_steps": GRPO_STEPS, "eval_every": 16})


def _cmd_grpo(args: argparse.Namespace) -> int:
    from .stages.grpo import run_grpo

    cfg = config_from_args(GrpoConfig, args)
    summary = run_grpo(cfg, config_from_args(TrainConfig, args))
    print(grpo_report.format_summary(summary))
    print(f"report: {cfg.out}/report.md   adapter: {cfg.out}/adapter")
    return 0


COMMANDS["grpo"] = ("online RL with a label-free reward (GRPO): sample groups from the policy, reward within each "
                    "group (vote, self_certainty, logprob; controls gold, random)", _add_grpo, _cmd_grpo)


# ---- power sampling: `sharpen power` -------------------------------------------------------------------------

def _add_power(p: argparse.ArgumentParser) -> None:
    add_config_args(p, PowerConfig)


def _cmd_power(args: argparse.Namespace) -> int:
    from .stages.power import run_power

    cfg = config_from_args(PowerConfig, args)
    summary = run_power(cfg)
    print(format_table(summary))
    pw = summary["power"]
    print(f"power sampling: pi^{cfg.alpha:g} ({cfg.method}), {pw['tokens_spent_per_prompt']:.0f} response tokens "
          f"spent per prompt" + (f", acceptance rate {pw['acceptance_rate']:.2f}" if pw.get("acceptance_rate")
                                 is not None else ""))
    print(f"report: {cfg.out}/report.md")
    return 0


COMMANDS["power"] = ("power sampling: draw from pi^alpha (MH or SMC) with no training, in the bon format",
                     _add_power, _cmd_power)


# ---- theory lab: `sharpen theory` --------------------------------------------------------------------------

def _add_theory(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/theory", help="output directory (default: runs/theory)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default: 0)")
    p.add_argument("--seeds", type=bounded(int, 1), default=5, help="number of seeds (default: 5)")
    p.add_argument("--beta", type=bounded(float, 0, strict=True), default=0.05,
                   help="KL weight of RLHF-sharpening (default: 0.05)")
    p.add_argument("--alpha", type=bounded(float, 0), default=1e-3, help="XPO optimism weight (default: 0.001)")


def _cmd_theory(args: argparse.Namespace) -> int:
    from .stages.theory import run_theory

    out = prepare_run_dir(args.out, {k: getattr(args, k) for k in ("seed", "seeds", "beta", "alpha")}, {},
                          command="theory")
    result = run_theory(out, seed=args.seed, n_seeds=args.seeds, beta=args.beta, alpha=args.alpha)
    print(result["summary"])
    print(f"plot: {out}/theory.png   numbers: {out}/theory.json")
    return 0


COMMANDS["theory"] = ("theory lab: SFT-sharpening vs XPO on a synthetic problem with poor coverage",
                      _add_theory, _cmd_theory)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    start, status = time.time(), "error"
    forget_opened()
    try:
        rc = args.func(args)
        status = "done"
        return rc
    except SharpenError as e:
        if args.debug:
            raise
        print(f"sharpen: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sharpen: interrupted; re-run the same command to continue where it stopped", file=sys.stderr)
        status = "interrupted"
        return 130
    finally:
        _record_time(args, start, status)


def _record_time(args: argparse.Namespace, start: float, status: str) -> None:
    """Append this invocation's wall time to DIR/timing.jsonl of the run it worked on (a resumed run's wall time
    is the sum of its lines): only a run directory this process opened, never one it refused. Main process only;
    never fails the command."""
    out = getattr(args, "out", None)
    if not out or args.command == "compare" or not opened(out) or os.environ.get("RANK", "0") != "0":
        return
    try:
        append_jsonl(Path(out) / "timing.jsonl", [{"command": args.command, "status": status,
                                                   "started": round(start, 3),
                                                   "seconds": round(time.time() - start, 3)}])
    except (OSError, SharpenError):
        pass


if __name__ == "__main__":
    sys.exit(main())
