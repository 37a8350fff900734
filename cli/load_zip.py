"""``retrainer load-zip SOURCE PREFIX``: a delivered zip -> the recipe's raw layout in the store.

SOURCE is a local path or an https URL (an Azure Storage SAS URL: its query, the signature, is
never printed or logged). The recipe's ``load_archive`` checks and converts the archive (for
``symbol_detection``: JPEG images + ``.npy`` labels -> ``images/`` + ``labels/``, see
``recipes/symbol_detection/loader.py``); each top-level folder it writes is uploaded under
``PREFIX/<folder>`` (or where ``--to folder=prefix`` says), images before labels, through the blob
store port, so a trigger rule on PREFIX starts a run. Usable as a library: ``load_zip``.
"""

from __future__ import annotations

import argparse
import ipaddress
import tempfile
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from shared.bootstrap import create_blob_store
from shared.settings import CommonSettings

# A download larger than this is refused (the archive's own bounds are the recipe's).
DEFAULT_MAX_DOWNLOAD_BYTES = 8 * 1024**3
DOWNLOAD_TIMEOUT_S = 60.0


class LoadZipError(Exception):
    """The archive could not be fetched, converted or uploaded; the message says why."""


def redacted(source: str) -> str:
    """A URL without its query and fragment (a SAS token's signature), or the path as is."""
    parts = urllib.parse.urlsplit(source)
    if parts.scheme in ("http", "https"):
        hidden = "?<redacted>" if parts.query else ""
        return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")) + hidden
    return source


def fetch_archive(source: str, dest: Path, *, max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES) -> Path:
    """A local zip as is, or an https URL downloaded to ``dest`` (at most ``max_bytes``).
    Plain http only to a loopback address."""
    parts = urllib.parse.urlsplit(source)
    if parts.scheme not in ("http", "https"):
        path = Path(source)
        if not path.is_file():
            raise LoadZipError(f"no such file: {source}")
        if path.stat().st_size > max_bytes:
            raise LoadZipError(f"{source} is larger than {max_bytes} bytes")
        return path
    if parts.scheme == "http" and not _loopback(parts.hostname or ""):
        raise LoadZipError(f"{redacted(source)}: only https URLs (plain http only to loopback)")
    written = 0
    try:
        with (
            httpx.stream("GET", source, timeout=DOWNLOAD_TIMEOUT_S, follow_redirects=False) as r,
            Path(dest).open("wb") as out,
        ):
            if r.status_code != 200:
                raise LoadZipError(f"{redacted(source)}: HTTP {r.status_code}")
            declared = r.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise LoadZipError(f"{redacted(source)}: {declared} bytes; at most {max_bytes}")
            for chunk in r.iter_bytes():
                written += len(chunk)
                if written > max_bytes:
                    raise LoadZipError(f"{redacted(source)}: more than {max_bytes} bytes")
                out.write(chunk)
    except httpx.HTTPError as exc:
        # httpx's message may quote the URL: name the exception type only.
        raise LoadZipError(f"{redacted(source)}: download failed ({type(exc).__name__})") from None
    return Path(dest)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_zip(
    settings: CommonSettings,
    source: str,
    prefix: str,
    *,
    recipe_name: str = "symbol_detection",
    folder_prefixes: Mapping[str, str] | None = None,
    max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
) -> dict[str, Any]:
    """Fetch, convert and upload; returns the recipe's summary plus ``uploaded``: folder ->
    (prefix, blob count). Raises LoadZipError."""
    from shared.blobs.port import validate_prefix
    from shared.blobs.transfer import upload_directory
    from shared.errors import RetrainerError
    from shared.recipe_registry import get_recipe

    try:
        recipe = get_recipe(recipe_name, tuple(settings.recipe_modules))
    except RetrainerError as exc:
        raise LoadZipError(str(exc)) from exc
    if recipe.load_archive is None:
        raise LoadZipError(f"recipe {recipe_name!r} does not load archives")
    prefix = prefix.strip("/")
    targets = dict(folder_prefixes or {})
    try:
        for target in [prefix, *targets.values()]:
            validate_prefix(target)
    except RetrainerError as exc:
        raise LoadZipError(str(exc)) from exc
    store = create_blob_store(settings)
    with tempfile.TemporaryDirectory() as tmp:
        archive = fetch_archive(source, Path(tmp) / "archive.zip", max_bytes=max_download_bytes)
        out = Path(tmp) / "out"
        try:
            summary = dict(recipe.load_archive(archive, out))
        except ValueError as exc:  # the recipe's ArchiveError: what is wrong with the zip
            raise LoadZipError(f"{redacted(source)}: {exc}") from None
        uploaded: dict[str, Any] = {}
        # Sorted: images/ before labels/, so a label never arrives before its image.
        for folder in sorted(p for p in out.iterdir() if p.is_dir()):
            target = targets.get(folder.name, f"{prefix}/{folder.name}").strip("/")
            try:
                names = upload_directory(store, folder, target)
            except RetrainerError as exc:
                raise LoadZipError(f"upload to {target}/ failed: {exc}") from exc
            uploaded[folder.name] = {"prefix": target, "blobs": len(names)}
    summary["uploaded"] = uploaded
    return summary


def _folder_target(text: str) -> tuple[str, str]:
    folder, sep, target = text.partition("=")
    if not sep or not folder or not target:
        raise argparse.ArgumentTypeError("FOLDER=PREFIX, e.g. images=datasets/drawings/images")
    return folder, target


def add_load_zip_command(commands: Any) -> None:
    parser = commands.add_parser(
        "load-zip",
        help="convert a delivered zip (e.g. drawings + .npy labels) and upload it",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", help="the zip: a local path or an https (SAS) URL")
    parser.add_argument("prefix", help="blob prefix of the data, e.g. datasets/symbol-detection")
    parser.add_argument("--recipe", default="symbol_detection")
    parser.add_argument(
        "--to",
        action="append",
        default=[],
        type=_folder_target,
        metavar="FOLDER=PREFIX",
        help="upload a folder elsewhere than PREFIX/FOLDER (repeatable)",
    )
    parser.add_argument(
        "--max-download-bytes", type=int, default=DEFAULT_MAX_DOWNLOAD_BYTES, help="bound"
    )
    parser.set_defaults(func=cmd_load_zip)


def cmd_load_zip(args: argparse.Namespace) -> int:
    from cli.main import CliError
    from shared.triggers import covered, load_trigger_rules

    settings = CommonSettings()
    try:
        summary = load_zip(
            settings,
            args.source,
            args.prefix,
            recipe_name=args.recipe,
            folder_prefixes=dict(args.to),
            max_download_bytes=args.max_download_bytes,
        )
    except LoadZipError as exc:
        raise CliError(str(exc)) from exc
    shown = {k: v for k, v in summary.items() if k != "uploaded"}
    print(", ".join(f"{k}: {v}" for k, v in shown.items() if v not in ([], {}, None)))
    for folder, where in summary["uploaded"].items():
        print(f"{folder}: {where['blobs']} blob(s) under {where['prefix']}/")
    rules = load_trigger_rules(settings.trigger_rules, settings.trigger_rules_file)
    probes = [f"{w['prefix']}/x" for w in summary["uploaded"].values()]
    if any(covered(name, rules) for name in probes):
        print("a trigger rule covers them: the coordinator starts a run (see: retrainer runs list)")
    else:
        print(
            f"no trigger rule covers them; start a run with: retrainer run {args.recipe} "
            f"{args.prefix.strip('/')}"
        )
    return 0
