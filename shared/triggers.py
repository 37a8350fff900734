"""Trigger rules: which uploaded blobs start which runs. Pure.

A rule matches a blob by container and path prefix and names the recipe, its params and the
data prefix the run reads. The first matching rule, in the order configured, wins.

* Debounce (the default): every upload under the rule extends a quiet window; one run starts
  when the window has been quiet (``debounce_s``), so a burst of uploads is one run.
* Marker (``marker="_READY"``): only a blob with that file name starts a run, at once; the
  other blobs under the rule are ignored.

The data prefix of the run (``data`` not set):

* debounce rule: the first folder below the rule's prefix that holds the blob, so all files of
  one drop (``datasets/state-identifier/2025-03-01/**``) are one data set and one burst,
  however deep they sit. A blob directly in the prefix's folder gives that folder.
* marker rule: the marker's own folder (the folder it declares complete).

Rules live in ``CommonSettings`` (not only the coordinator's) because the local blob store's
event publisher uses them too: it emits events only for blobs some rule covers.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from shared.blobs.port import validate_prefix
from shared.errors import ConfigurationError, InvalidBlobNameError
from shared.events import BlobCreated
from shared.groups import GroupRule

# Where the stage workers write their outputs (shared.worker.ARTIFACTS_CONTAINER): a rule on it
# would start runs from the runs' own outputs, forever.
RESERVED_CONTAINERS = frozenset({"artifacts"})


class TriggerRule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    container: str
    # Path prefix inside the container; "" matches the whole container.
    prefix: str = ""
    recipe: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    # The run's data prefix (container/path); None: derived from the blob (module docstring).
    data: str | None = None
    # File name of the blob whose arrival starts the run, e.g. "_READY"; None: debounce.
    marker: str | None = None
    # Quiet window for this rule; None: the coordinator's trigger_debounce_s.
    debounce_s: float | None = Field(default=None, ge=0)
    # Start a run group over the data prefix (one member per sub-folder, or per CSV row)
    # instead of one run.
    group: GroupRule | None = None
    # Also start the rule's run (or group) on ``data`` at the times of this cron expression,
    # read in ``schedule_timezone`` (checked and run by the coordinator,
    # coordinator/schedules.py, which also checks the time zone's name).
    schedule: str | None = None
    schedule_timezone: str = "UTC"

    @field_validator("container")
    @classmethod
    def _container(cls, value: str) -> str:
        try:
            container, path = validate_prefix(value)
        except InvalidBlobNameError:
            raise ValueError(
                "container must be 3-63 lowercase letters, digits or single hyphens"
            ) from None
        if path:
            raise ValueError("a container name, without a path (put the path in 'prefix')")
        if container in RESERVED_CONTAINERS:
            raise ValueError(f"{container!r} holds the workers' outputs and cannot trigger runs")
        return container

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if value.startswith("/"):
            raise ValueError("the prefix is a path inside the container: no leading '/'")
        try:
            validate_prefix(f"aaa/{value}")
        except InvalidBlobNameError as exc:
            raise ValueError(exc.reason) from None
        return value

    @field_validator("data")
    @classmethod
    def _data(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                validate_prefix(value)
            except InvalidBlobNameError as exc:
                raise ValueError(exc.reason) from None
        return value

    @field_validator("marker")
    @classmethod
    def _marker(cls, value: str | None) -> str | None:
        if value is not None and (not value or "/" in value or value in (".", "..")):
            raise ValueError("a file name, e.g. '_READY', without '/'")
        return value

    def covers(self, blob_name: str) -> bool:
        """Whether the blob is under this rule's container and prefix."""
        container, _, path = blob_name.partition("/")
        return container == self.container and path.startswith(self.prefix)

    def describe(self) -> str:
        how = f"marker {self.marker}" if self.marker else "debounce"
        what = f"a {self.recipe} group" if self.group else self.recipe
        return f"{self.container}/{self.prefix}* -> {what} ({how})"


DEFAULT_TRIGGER_RULES: tuple[TriggerRule, ...] = (
    # The built-in recipe, where ``retrainer sample-data``/``retrainer demo`` put its data:
    # uploading datasets/state-identifier/<folder>/... trains on that folder.
    TriggerRule(container="datasets", prefix="state-identifier/", recipe="state_identifier"),
)

_RULES = TypeAdapter(list[TriggerRule])


def load_trigger_rules(
    rules: Sequence[TriggerRule] | None, rules_file: Path | None
) -> tuple[TriggerRule, ...]:
    """The configured rules: ``rules`` (RETRAINER_TRIGGER_RULES) then those in ``rules_file``
    (a JSON list); the defaults when neither is set. ``[]`` turns triggers off."""
    if rules is None and rules_file is None:
        return DEFAULT_TRIGGER_RULES
    loaded = list(rules or ())
    if rules_file is not None:
        try:
            loaded.extend(_RULES.validate_json(Path(rules_file).read_bytes()))
        except OSError as exc:
            raise ConfigurationError(f"trigger rules file {rules_file}: {exc}") from exc
        except ValidationError as exc:
            raise ConfigurationError(f"trigger rules file {rules_file}: {exc}") from exc
    return tuple(loaded)


def covered(blob_name: str, rules: Iterable[TriggerRule]) -> bool:
    return any(rule.covers(blob_name) for rule in rules)


@dataclass(frozen=True)
class TriggerMatch:
    """A blob event that counts towards a run."""

    event: BlobCreated
    rule: TriggerRule
    # The run's data prefix.
    data: str
    # A marker arrived: start now, no quiet window.
    immediate: bool


@dataclass(frozen=True)
class NoMatch:
    event: BlobCreated
    reason: str


def route(event: BlobCreated, rules: Sequence[TriggerRule]) -> TriggerMatch | NoMatch:
    rule = next((r for r in rules if r.covers(event.blob_name)), None)
    if rule is None:
        return NoMatch(event, "no trigger rule covers it")
    path = event.blob_name.partition("/")[2]
    if rule.marker is not None:
        if posixpath.basename(path) != rule.marker:
            return NoMatch(event, f"waiting for marker {rule.marker!r} ({rule.describe()})")
        data = rule.data or _join(rule.container, posixpath.dirname(path))
        return TriggerMatch(event, rule, data, immediate=True)
    data = rule.data or _join(rule.container, _drop_folder(path, rule.prefix))
    return TriggerMatch(event, rule, data, immediate=False)


def _drop_folder(path: str, prefix: str) -> str:
    """The first folder below ``prefix`` that holds ``path`` (module docstring)."""
    rest = path[len(prefix) :]
    if "/" in rest:
        return prefix + rest.split("/", 1)[0]
    return posixpath.dirname(path)


def _join(container: str, folder: str) -> str:
    return f"{container}/{folder}" if folder else container
