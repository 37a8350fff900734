"""``retrainer group start|watch|list|show|cancel|retry``: run groups over the REST API."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from cli.main import CliError, _checked, _client, _parse_param, resolve_id

FINISHED = {"succeeded", "failed", "cancelled"}
# The member statuses in the order a line of `group watch` shows them.
ORDER = ("waiting", "queued", "running", "succeeded", "failed", "cancelled")


def describe_counts(group: dict[str, Any]) -> str:
    counts: dict[str, int] = group["counts"]
    finished = sum(counts.get(status, 0) for status in FINISHED)
    parts = ", ".join(f"{status} {counts[status]}" for status in ORDER if counts.get(status))
    return f"[{finished}/{group['members']}] {group['status']}: {parts}"


def describe_group(group: dict[str, Any]) -> str:
    """The group and a line per member: entity, status, stage, model version, promotion."""
    lines = [
        f"group {group['id']}  {group['recipe']}  concurrency {group['concurrency']}",
        describe_counts(group),
    ]
    width = max([len(m["entity"]) for m in group.get("member_runs", [])] + [6])
    for member in group.get("member_runs", []):
        model = member.get("model") or {}
        version = f"{model['name']} v{model['version']}" if model.get("version") else ""
        champion = model.get("champion")
        promoted = "" if champion is None else ("champion" if champion else "not promoted")
        where = member.get("stage") or ""
        text = f"  {member['entity']:<{width}}  {member['status']:<9} {where:<11} {version}"
        text += f"  {promoted}" if promoted else ""
        if member.get("error"):
            text += f"  {member['error']}"
        lines.append(text.rstrip())
    return "\n".join(lines)


def watch_group(
    client: httpx.Client,
    group_id: str,
    *,
    out: Callable[[str], None] = print,
    poll_s: float = 1.0,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """A line whenever the members' counts change, until the group finishes; returns it."""
    started = time.monotonic()
    last = None
    while True:
        group: dict[str, Any] = _checked(client.get(f"/run-groups/{group_id}"))
        line = describe_counts(group)
        if line != last:
            out(f"{time.monotonic() - started:7.1f}s  {line}")
            last = line
        if group["status"] != "running":
            return group
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            raise CliError(f"group {group_id} still running after {timeout_s:.0f} s")
        time.sleep(poll_s)


def read_members(path: Path) -> list[dict[str, Any]]:
    """Members from a JSON list of {entity, data, params} or a CSV with entity,data columns."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        members = json.loads(text)
        if not isinstance(members, list):
            raise CliError(f"{path}: a JSON list of members expected")
        return members
    rows = list(csv.DictReader(text.splitlines()))
    if rows and not {"entity", "data"} <= set(rows[0]):
        raise CliError(f"{path}: a CSV with columns entity and data expected")
    return [
        {
            "entity": row["entity"],
            "data": row["data"],
            "params": {k: v for k, v in row.items() if k not in ("entity", "data") and v},
        }
        for row in rows
    ]


def group_request(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {
        "recipe": args.recipe,
        "params": dict(_parse_param(p) for p in args.param),
        "force": args.force,
    }
    if args.concurrency is not None:
        body["concurrency"] = args.concurrency
    if args.member:
        body["members"] = [_member(text) for text in args.member]
    elif args.members_file:
        body["members"] = read_members(args.members_file)
    elif args.sub_prefixes:
        body["expand"] = {"kind": "sub_prefixes", "prefix": args.sub_prefixes}
    elif args.csv:
        body["expand"] = {
            "kind": "csv_rows",
            "blob": args.csv,
            "entity_column": args.entity_column,
            "data_template": args.data_template,
            "param_columns": args.param_column,
        }
    else:
        raise CliError("name the members: --member, --members-file, --sub-prefixes or --csv")
    return body


def _member(text: str) -> dict[str, Any]:
    entity, sep, data = text.partition("=")
    if not sep or not entity or not data:
        raise CliError(f"member {text!r} is not ENTITY=DATA_PREFIX")
    return {"entity": entity, "data": data}


def cmd_group_start(args: argparse.Namespace) -> int:
    with _client(args) as client:
        group = _checked(client.post("/run-groups", json=group_request(args)))
        print(group["id"])
        if not args.watch:
            print(describe_counts(group))
            return 0
        return _watch(client, group["id"])


def cmd_group_watch(args: argparse.Namespace) -> int:
    with _client(args) as client:
        return _watch(client, resolve_id(client, args.group_id, kind="group"))


def _watch(client: httpx.Client, group_id: str) -> int:
    """Exit status: 0 if every member succeeded, 1 otherwise, 130 on Ctrl-C."""
    try:
        group = watch_group(client, group_id)
    except KeyboardInterrupt:
        print(
            f"\nstopped watching; the group goes on (retrainer group watch {group_id})",
            file=sys.stderr,
        )
        return 130
    print(describe_group(group))
    return 0 if group["status"] == "succeeded" else 1


def cmd_group_list(args: argparse.Namespace) -> int:
    query = {"limit": args.limit, **({"status": args.status} if args.status else {})}
    with _client(args) as client:
        body = _checked(client.get("/run-groups", params=query))
    for group in body["groups"]:
        print(
            f"{group['id']}  {group['recipe']:<20} {group['created_at']}  {describe_counts(group)}"
        )
    return 0


def cmd_group_show(args: argparse.Namespace) -> int:
    query = {"status": args.status} if args.status else {}
    with _client(args) as client:
        group = _checked(
            client.get(
                f"/run-groups/{resolve_id(client, args.group_id, kind='group')}", params=query
            )
        )
    print(json.dumps(group, indent=2) if args.json else describe_group(group))
    return 0


def cmd_group_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        group = _checked(
            client.post(f"/run-groups/{resolve_id(client, args.group_id, kind='group')}/cancel")
        )
    print(describe_counts(group))
    return 0


def cmd_group_retry(args: argparse.Namespace) -> int:
    with _client(args) as client:
        group = _checked(
            client.post(
                f"/run-groups/{resolve_id(client, args.group_id, kind='group')}/retry-failed"
            )
        )
        if not args.watch:
            print(describe_counts(group))
            return 0
        return _watch(client, group["id"])


def add_group_commands(commands: Any) -> None:
    """The ``group`` command and its subcommands, on the CLI's subparsers."""
    group = commands.add_parser("group", help="start, watch, list, show, cancel or retry groups")
    sub = group.add_subparsers(dest="group_command", required=True)

    start = sub.add_parser("start", help="one run per member (entity + data), K at a time")
    start.add_argument("recipe")
    members = start.add_mutually_exclusive_group()
    members.add_argument(
        "--member",
        action="append",
        default=[],
        metavar="ENTITY=DATA",
        help="a member: its entity and its data prefix or asset:<name>@<version> (repeatable)",
    )
    members.add_argument(
        "--members-file",
        type=Path,
        help="a JSON list of {entity, data, params} or a CSV (entity,data,...)",
    )
    members.add_argument(
        "--sub-prefixes",
        metavar="PREFIX",
        help="one member per folder under PREFIX (the folder names the entity)",
    )
    members.add_argument("--csv", metavar="BLOB", help="one member per row of a CSV blob")
    start.add_argument("--entity-column", default="entity", help="with --csv")
    start.add_argument(
        "--data-template",
        default=None,
        help="with --csv: the member's data prefix or asset reference, {entity} filled in",
    )
    start.add_argument(
        "--param-column",
        action="append",
        default=[],
        help="with --csv: a column holding a param of the member (repeatable)",
    )
    start.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE")
    start.add_argument("--concurrency", type=int, default=None, help="members in a stage at once")
    start.add_argument("--force", action="store_true", help="skip every stage's cache")
    start.add_argument("--watch", action="store_true")
    start.set_defaults(func=cmd_group_start)

    watch = sub.add_parser("watch", help="follow a group until it finishes")
    watch.add_argument("group_id")
    watch.set_defaults(func=cmd_group_watch)

    listing = sub.add_parser("list")
    listing.add_argument("--status", choices=["running", "succeeded", "failed", "cancelled"])
    listing.add_argument("--limit", type=int, default=20)
    listing.set_defaults(func=cmd_group_list)

    show = sub.add_parser("show", help="a group and a line per member")
    show.add_argument("group_id")
    show.add_argument("--status", help="only the members in this status")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_group_show)

    cancel = sub.add_parser("cancel", help="cancel every unfinished member")
    cancel.add_argument("group_id")
    cancel.set_defaults(func=cmd_group_cancel)

    retry = sub.add_parser("retry", help="retry the failed and cancelled members only")
    retry.add_argument("group_id")
    retry.add_argument("--watch", action="store_true")
    retry.set_defaults(func=cmd_group_retry)
