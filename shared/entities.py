"""Entities: what one model of a recipe is *for* (a species, a site, ``site=A/species=B``).

A run may carry an entity; the registered model is then the recipe's model for that entity
(``Recipe.registered_model_name``), so every entity has its own champion. An entity is
refused unless its model-name form is a name MLflow (and Azure ML's registry) accepts:

* parts separated by ``/``, each starting with a letter or digit and holding only letters,
  digits, ``-``, ``_`` and ``=`` (so no ``..`` part, no ``:``, no spaces or quotes);
* in a model name ``/`` becomes ``.``, which an entity cannot hold, so two entities never
  share a model name.
"""

from __future__ import annotations

import re

from shared.errors import PermanentError

MAX_ENTITY_LENGTH = 128
# MLflow stores registered model names in a 256-character column.
MAX_MODEL_NAME_LENGTH = 256
_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_=-]*")
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=-]*")


class InvalidEntityError(PermanentError):
    def __init__(self, entity: str, reason: str) -> None:
        super().__init__(f"entity {entity!r}: {reason}")
        self.entity = entity
        self.reason = reason


def validate_entity(entity: str) -> str:
    """Returns ``entity``; raises InvalidEntityError saying what is wrong with it."""
    if not entity:
        raise InvalidEntityError(entity, "is empty")
    if len(entity) > MAX_ENTITY_LENGTH:
        raise InvalidEntityError(entity, f"is longer than {MAX_ENTITY_LENGTH} characters")
    for part in entity.split("/"):
        if part in ("", ".", ".."):
            raise InvalidEntityError(entity, f"has an empty, '.' or '..' part ({part!r})")
        if not _PART.fullmatch(part):
            bad = sorted({c for c in part if not (c.isascii() and (c.isalnum() or c in "_=-"))})
            shown = ", ".join(repr(c) for c in bad) or repr(part[0])
            raise InvalidEntityError(
                entity,
                f"part {part!r} has characters a model name cannot hold ({shown}); use letters,"
                " digits, '-', '_' and '=', starting with a letter or digit, and '/' between parts",
            )
    return entity


def entity_in_model_name(entity: str) -> str:
    """The entity as it appears in a registered model name (``site=A/sp`` -> ``site=A.sp``)."""
    return validate_entity(entity).replace("/", ".")


def validate_model_name(name: str) -> str:
    """Returns ``name`` if MLflow and Azure ML's registry accept it as a model name."""
    if len(name) > MAX_MODEL_NAME_LENGTH:
        raise InvalidEntityError(name, f"model name longer than {MAX_MODEL_NAME_LENGTH} characters")
    if not _MODEL_NAME.fullmatch(name) or ".." in name:
        raise InvalidEntityError(
            name, "is not a model name MLflow accepts (letters, digits, '-', '_', '.', '=')"
        )
    return name
