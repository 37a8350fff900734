"""How a run group lists its members, as the API, trigger rules and schedules spell it.

Pure data; ``coordinator/groups.py`` reads the blob store to expand these into members.

* ``SubPrefixes``: one member per folder directly under ``prefix``; the folder's name is the
  entity and the folder is the member's data (``datasets/species/cygnus-buccinator/``).
* ``CsvRows``: one member per row of a CSV blob (e.g. ``candidate_species.csv``): the entity
  from ``entity_column``, the data from ``data_column`` or ``data_template`` (``{entity}``
  filled in), and ``param_columns`` as the member's own params.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SubPrefixes(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["sub_prefixes"] = "sub_prefixes"
    prefix: str = Field(min_length=1, examples=["datasets/species"])


class CsvRows(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["csv_rows"] = "csv_rows"
    blob: str = Field(min_length=1, examples=["datasets/species/candidate_species.csv"])
    entity_column: str = "entity"
    data_column: str | None = None
    data_template: str | None = Field(default=None, examples=["datasets/species/{entity}"])
    param_columns: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _one_way_to_the_data(self) -> CsvRows:
        if (self.data_column is None) == (self.data_template is None):
            raise ValueError("give exactly one of data_column and data_template")
        if self.data_template is not None and "{entity}" not in self.data_template:
            raise ValueError("data_template must contain {entity}")
        return self


Expansion = Annotated[SubPrefixes | CsvRows, Field(discriminator="kind")]


class GroupRule(BaseModel):
    """In a trigger rule or a schedule: start a group over the run's data prefix instead of
    one run: one member per sub-folder of it, or per row of the CSV file ``csv`` in it (whose
    members' data are the folders named by ``entity_column``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    expand: Literal["sub_prefixes", "csv_rows"] = "sub_prefixes"
    csv: str | None = None
    entity_column: str = "entity"
    concurrency: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _csv_for_rows(self) -> GroupRule:
        if (self.expand == "csv_rows") != (self.csv is not None):
            raise ValueError("csv (a file name in the data folder) goes with expand='csv_rows'")
        if self.csv is not None and ("/" in self.csv or self.csv in ("", ".", "..")):
            raise ValueError("csv is a file name in the data folder, without '/'")
        return self

    def expansion(self, data: str) -> SubPrefixes | CsvRows:
        folder = data.rstrip("/")
        if self.expand == "sub_prefixes":
            return SubPrefixes(prefix=folder)
        return CsvRows(
            blob=f"{folder}/{self.csv}",
            entity_column=self.entity_column,
            data_template=f"{folder}/{{entity}}",
        )
