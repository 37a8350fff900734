"""Listing a run group's members: given, or expanded from the blob store; and checking them.

``members_of`` turns a request into members (reading the blob store for an expansion) and
``check_members`` finds every problem with them before anything starts, so a bad group is one
422 naming each bad member and starts nothing: no members, more than the maximum, a
duplicate entity, an entity MLflow would refuse, params the recipe refuses, or data that is not
a prefix holding blobs.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from shared.blobs.port import BlobStore, validate_prefix
from shared.blobs.transfer import holds_blobs
from shared.data_assets.port import InvalidDataAssetError, is_asset_reference
from shared.entities import InvalidEntityError
from shared.errors import BlobNotFoundError, InvalidBlobNameError
from shared.groups import CsvRows, SubPrefixes
from shared.recipe import Recipe

# A CSV of members is read whole; this bounds it (1,000 rows of a few columns fit easily).
MAX_CSV_BYTES = 1024 * 1024


@dataclass(frozen=True)
class MemberRequest:
    entity: str
    data: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Problem:
    """One reason a request was refused; ``loc`` is the path of the field in the request."""

    loc: tuple[str | int, ...]
    msg: str


def members_of(
    blobs: BlobStore,
    members: Sequence[MemberRequest] | None,
    expansion: SubPrefixes | CsvRows | None,
    *,
    max_members: int,
) -> tuple[list[MemberRequest], list[Problem]]:
    """The members a request names or expands to, or the problems that stop it."""
    if (members is None) == (expansion is None):
        return [], [Problem(("members",), "give either members or expand, not both")]
    if members is not None:
        return list(members), []
    if isinstance(expansion, SubPrefixes):
        return _sub_prefixes(blobs, expansion, max_members)
    assert expansion is not None
    return _csv_rows(blobs, expansion)


def _sub_prefixes(
    blobs: BlobStore, expansion: SubPrefixes, max_members: int
) -> tuple[list[MemberRequest], list[Problem]]:
    try:
        validate_prefix(expansion.prefix)
    except InvalidBlobNameError as exc:
        return [], [Problem(("expand", "prefix"), str(exc))]
    folder = expansion.prefix.rstrip("/") + "/"
    names: list[str] = []
    for blob in blobs.list_blobs(folder):
        head, slash, _ = blob.name[len(folder) :].partition("/")
        if slash and (not names or names[-1] != head):
            names.append(head)
            if len(names) > max_members:
                # Enough to refuse it: no need to list the rest of a huge prefix.
                break
    members = [MemberRequest(entity=name, data=folder + name) for name in names]
    return members, []


def _csv_rows(blobs: BlobStore, expansion: CsvRows) -> tuple[list[MemberRequest], list[Problem]]:
    where: tuple[str | int, ...] = ("expand", "blob")
    try:
        properties = blobs.get_blob_properties(expansion.blob)
        if properties.size > MAX_CSV_BYTES:
            return [], [Problem(where, f"{expansion.blob} is larger than {MAX_CSV_BYTES} bytes")]
        text = blobs.download_blob(expansion.blob).data.decode("utf-8-sig")
    except (BlobNotFoundError, InvalidBlobNameError) as exc:
        return [], [Problem(where, str(exc))]
    except UnicodeDecodeError as exc:
        return [], [Problem(where, f"{expansion.blob} is not UTF-8 text: {exc}")]
    reader = csv.DictReader(io.StringIO(text))
    columns = [expansion.entity_column, *expansion.param_columns]
    if expansion.data_column:
        columns.append(expansion.data_column)
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        found = ", ".join(reader.fieldnames or []) or "none"
        return [], [Problem(where, f"{expansion.blob} lacks columns {missing} (has {found})")]
    members = []
    for row in reader:
        entity = (row[expansion.entity_column] or "").strip()
        if expansion.data_column:
            data = (row[expansion.data_column] or "").strip()
        else:
            assert expansion.data_template is not None
            data = expansion.data_template.replace("{entity}", entity)
        params = {name: row[name] for name in expansion.param_columns if row[name] != ""}
        members.append(MemberRequest(entity=entity, data=data, params=params))
    return members, []


def check_members(
    blobs: BlobStore,
    recipe: Recipe,
    shared_params: Mapping[str, Any],
    members: Sequence[MemberRequest],
    *,
    max_members: int,
    check_asset: Callable[[str], str | None],
) -> list[Problem]:
    """Every problem with ``members``; none means the group may start. ``check_asset``: the
    problem with a member's ``asset:<name>@<version>`` data, or None."""
    if not members:
        return [Problem(("members",), "a group needs at least one member")]
    if len(members) > max_members:
        return [
            Problem(
                ("members",),
                f"{len(members)} members is more than the maximum of {max_members}"
                " (RETRAINER_GROUP_MAX_MEMBERS)",
            )
        ]
    problems: list[Problem] = []
    first_seen: dict[str, int] = {}
    for index, member in enumerate(members):
        where: tuple[str | int, ...] = ("members", index)
        if member.entity in first_seen:
            problems.append(
                Problem(
                    (*where, "entity"),
                    f"duplicate entity {member.entity!r} (also member {first_seen[member.entity]})",
                )
            )
        else:
            first_seen[member.entity] = index
        try:
            recipe.registered_model_name(member.entity)
            recipe.data_asset_name(member.entity)
        except (InvalidEntityError, InvalidDataAssetError) as exc:
            problems.append(Problem((*where, "entity"), str(exc)))
        try:
            recipe.parse_params({**shared_params, **member.params})
        except ValidationError as exc:
            problems.extend(
                Problem((*where, "params", *error["loc"]), error["msg"]) for error in exc.errors()
            )
        if is_asset_reference(member.data):
            asset_problem = check_asset(member.data)
            if asset_problem is not None:
                problems.append(Problem((*where, "data"), asset_problem))
            continue
        try:
            validate_prefix(member.data)
        except InvalidBlobNameError as exc:
            problems.append(Problem((*where, "data"), str(exc)))
        else:
            if not holds_blobs(blobs, member.data.rstrip("/") + "/"):
                problems.append(Problem((*where, "data"), f"no blobs under {member.data!r}"))
    return problems
