"""``sdar-skills``: list, show, add, retrieve and stats over a skill memory file (or the seed banks)."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from skills.base import Skill, SkillQuery
from skills.library import SkillLibrary
from skills.retrieval import TIERS
from skills.store import SEED_BANKS, SkillFileError

__all__ = ["main"]


def _library(args: argparse.Namespace, *, for_writing: bool = False) -> SkillLibrary:
    tier = getattr(args, "tier", "keyword")
    if args.file:
        if Path(args.file).exists():
            return SkillLibrary.load(args.file, tier=tier, seed=getattr(args, "seed", 0))
        if for_writing:  # a new memory file starts from the seed banks
            return SkillLibrary.from_seed_banks(tier=tier, path=args.file)
    elif for_writing:
        raise ValueError("add needs --file: the packaged seed banks are read-only")
    return SkillLibrary.from_seed_banks(tier=tier, seed=getattr(args, "seed", 0))


def _skill_table(lib: SkillLibrary, skills: Sequence[Skill], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("id", overflow="fold", min_width=24)
    table.add_column("task types", overflow="fold")
    table.add_column("title")
    for col in ("retrieved", "episodes", "success"):
        table.add_column(col, justify="right")
    for s in skills:
        st = lib.stats[s.id]
        rate = "-" if st.success_rate is None else f"{st.success_rate:.0%}"
        table.add_row(
            escape(s.id),
            escape(",".join(s.task_types) or "(general)"),
            escape(s.title),
            str(st.retrieved),
            str(st.episodes),
            rate,
        )
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sdar-skills", description=__doc__)
    parser.add_argument("--file", help="skill memory file (YAML); default: the packaged seed banks")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)  # --file and --json also work after the subcommand
    common.add_argument("--file", default=argparse.SUPPRESS, help="skill memory file (YAML)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    sub.add_parser = functools.partial(sub.add_parser, parents=[common])  # type: ignore[method-assign]
    p = sub.add_parser("list", help="the skills, one per row")
    p.add_argument("--env", help=f"only this environment (seed banks: {', '.join(SEED_BANKS)})")
    p = sub.add_parser("show", help="one skill in full")
    p.add_argument("id")
    p = sub.add_parser("add", help="add a skill to --file (created from the seed banks if missing)")
    p.add_argument("--id", required=True)
    p.add_argument("--env", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--title")
    p.add_argument("--task-types", default="", help="comma-separated; empty: a general skill")
    p.add_argument("--keywords", default="", help="comma-separated")
    p = sub.add_parser("retrieve", help="the skills a tier gives the teacher for a task")
    p.add_argument("--env", required=True)
    p.add_argument("--task", required=True, help="the task instruction")
    p.add_argument("--task-type", default="")
    p.add_argument("--tier", choices=list(TIERS), default="keyword")
    p.add_argument("-k", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("stats", help="usage statistics per environment and skill")
    p.add_argument("--env")
    args = parser.parse_args(argv)
    console = Console()
    try:
        return _run(args, console)
    except SkillFileError as e:
        print(f"sdar-skills: {e}", file=sys.stderr)
        return 2
    except (KeyError, ValueError) as e:
        print(f"sdar-skills: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, console: Console) -> int:
    if args.command == "add":
        lib = _library(args, for_writing=True)
        skill = Skill(
            args.id.strip(),
            (args.title or args.id).strip(),
            " ".join(args.text.split()),
            args.env,
            tuple(t.strip() for t in args.task_types.split(",") if t.strip()),
            tuple(t.strip() for t in args.keywords.split(",") if t.strip()),
        )
        if not skill.id or not skill.text:
            raise ValueError("--id and --text must not be empty")
        lib.add(skill)
        path = lib.save()
        console.print(f"added {escape(skill.id)} to {escape(str(path))} ({len(lib)} skills)")
        return 0
    lib = _library(args)
    if args.command == "show":
        s, st = lib.get(args.id), lib.stats[args.id]
        record = {**vars(s), "task_types": list(s.task_types), "keywords": list(s.keywords), "stats": vars(st)}
        if args.json:
            print(json.dumps(record, indent=2))
        else:
            for key, value in record.items():
                console.print(f"[bold]{key}[/bold]: {escape(str(value))}")
        return 0
    if args.command == "retrieve":
        query = SkillQuery(args.env, "cli", args.task, args.task_type)
        chosen = lib.retrieve(query, args.k)
        if args.json:
            print(json.dumps([{"id": s.id, "title": s.title, "text": s.text} for s in chosen], indent=2))
        else:
            for i, s in enumerate(chosen, 1):
                console.print(f"{i}. [bold]{escape(s.id)}[/bold] ({escape(s.title)})\n   {escape(s.text)}")
        return 0
    skills = lib.skills(args.env)
    if args.json:
        rows = [
            {"id": s.id, "env": s.env, "task_types": list(s.task_types), "title": s.title, **vars(lib.stats[s.id])}
            for s in skills
        ]
        print(json.dumps(rows, indent=2))
        return 0
    if args.command == "list":
        console.print(_skill_table(lib, skills, escape(f"{len(skills)} skills ({args.file or 'seed banks'})")))
        return 0
    # stats: one summary row per environment, then the skills that have been used
    table = Table(title="skill memory usage", title_justify="left")
    for col in ("env", "skills", "retrieved", "episodes", "successes"):
        table.add_column(col, justify="left" if col == "env" else "right")
    for env in sorted({s.env for s in skills}):
        mine = [lib.stats[s.id] for s in skills if s.env == env]
        table.add_row(
            escape(env),
            str(len(mine)),
            *(str(sum(getattr(st, f) for st in mine)) for f in ("retrieved", "episodes", "successes")),
        )
    console.print(table)
    used = [s for s in skills if lib.stats[s.id].retrieved or lib.stats[s.id].episodes]
    if used:
        console.print(_skill_table(lib, used, "used skills"))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
