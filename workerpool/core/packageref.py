"""A step's reference to a package: which one, which version, from which feed, extracted?"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from workerpool.core.errors import BadInput

NAME = re.compile(r"[A-Za-z0-9_.-]+")
PACKAGE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
VERSION = re.compile(r"[0-9][A-Za-z0-9_.+-]*")
FEED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
BUILTIN_FEED = "builtin"
KEYS = ("name", "id", "version", "feed", "extract")
TRUE = ("true", "yes", "1")
FALSE = ("false", "no", "0")
EXAMPLE = "name=db,id=Acme.Database,version=1.2.0,feed=builtin,extract=true"


def check_name(value: str) -> str:
    """The reference name, used as a directory and in ``Package[NAME]`` variables."""
    if not isinstance(value, str) or not NAME.fullmatch(value) or set(value) == {"."}:
        raise BadInput(f"package reference name {value!r} must be letters, digits, '_', '.' or "
                       "'-' (not only dots), e.g. 'db'")
    return value


def check_package_id(value: str) -> str:
    if not isinstance(value, str) or not PACKAGE_ID.fullmatch(value):
        raise BadInput(f"package id {value!r} must start with a letter, digit or '_' and hold "
                       "only letters, digits, '_', '.' or '-', e.g. 'Acme.Database'")
    return value


def check_version(value: str) -> str:
    if not isinstance(value, str) or not VERSION.fullmatch(value):
        raise BadInput(f"package version {value!r} must start with a digit and hold only "
                       "letters, digits, '.', '-', '+' or '_', e.g. '1.2.0'")
    return value


def check_feed_name(value: str) -> str:
    if not isinstance(value, str) or not FEED_NAME.fullmatch(value) or len(value) > 100:
        raise BadInput(f"feed name {value!r} must start with a letter or digit and hold only "
                       "letters, digits, '_', '.' or '-' (at most 100), e.g. 'acme-nuget'")
    return value


def parse_bool(key: str, raw: str) -> bool:
    if raw.lower() in TRUE:
        return True
    if raw.lower() in FALSE:
        return False
    raise BadInput(f"package reference {key}={raw!r} is not a yes/no value; use true or false")


@dataclass(frozen=True)
class PackageRef:
    """``name`` is how the step refers to the package: ``Package[name].ExtractedPath``."""

    name: str
    package_id: str
    version: str
    feed: str = BUILTIN_FEED
    extract: bool = True

    def __post_init__(self) -> None:
        check_name(self.name)
        check_package_id(self.package_id)
        check_version(self.version)
        check_feed_name(self.feed)
        if not isinstance(self.extract, bool):
            raise BadInput(f"package reference extract={self.extract!r} must be True or False")

    @classmethod
    def parse(cls, text: str) -> PackageRef:
        """``name=db,id=Acme.Database,version=1.2.0[,feed=builtin][,extract=true]``."""
        fields = _pairs(text)
        missing = [key for key in ("name", "id", "version") if not fields.get(key)]
        if missing:
            raise BadInput(f"package reference {text!r} lacks {', '.join(missing)}; "
                           f"write it as {EXAMPLE}")
        return cls(name=fields["name"], package_id=fields["id"], version=fields["version"],
                   feed=fields.get("feed") or BUILTIN_FEED,
                   extract=parse_bool("extract", fields.get("extract", "true")))

    def to_text(self) -> str:
        """The form ``parse`` reads."""
        return (f"name={self.name},id={self.package_id},version={self.version},"
                f"feed={self.feed},extract={str(self.extract).lower()}")

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "package_id": self.package_id, "version": self.version,
                "feed": self.feed, "extract": self.extract}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> PackageRef:
        try:
            name, package_id, version = data["name"], data["package_id"], data["version"]
        except KeyError as exc:
            raise BadInput(f"stored package reference lacks {exc.args[0]!r}: {dict(data)}") \
                from None
        feed, extract = data.get("feed", BUILTIN_FEED), data.get("extract", True)
        if not all(isinstance(v, str) for v in (name, package_id, version, feed)) \
                or not isinstance(extract, bool):
            raise BadInput(f"stored package reference has values of the wrong type: {dict(data)}")
        return cls(str(name), str(package_id), str(version), str(feed), extract)


def _pairs(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep:
            raise BadInput(f"package reference part {item.strip()!r} is not key=value; "
                           f"write it as {EXAMPLE}")
        if key not in KEYS:
            raise BadInput(f"package reference key {key!r} is unknown; use {', '.join(KEYS)}")
        if key in fields:
            raise BadInput(f"package reference gives {key!r} twice in {text!r}")
        fields[key] = value.strip()
    return fields
