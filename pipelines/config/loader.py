"""YAML file -> `--set` overrides -> one strict validation -> a frozen `StageConfig`.

Every problem is collected and reported together, each naming its dotted field, the bad
value and what is allowed, so a user fixes a config in one pass.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from pipelines.config.runlocal import shrink
from pipelines.config.stage import StageConfig
from pipelines.errors import ConfigError
from pipelines.storage import RefusedFile, locate

_MEMBER_RE = re.compile(r"^(str|int|float|bool|none|(list|dict|tuple)\[.*\])$")
_NUMBER_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
# A config is a few hundred values; these bound what a hostile or broken file can make us build.
MAX_CONFIG_BYTES = 1 << 20
MAX_YAML_NODES = 100_000  # counted with every alias expanded (an alias bomb is ~10 lines)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> StageConfig:
    """Read, override and validate a job config; raises `ConfigError` listing every problem."""
    path = Path(path)
    raw = read_yaml(path)
    raw.setdefault("name", re.sub(r"[^A-Za-z0-9_.\-]", "_", path.stem))
    return config_from_dict(apply_overrides(raw, overrides))


def read_yaml(path: Path) -> dict[str, Any]:
    """A config file's YAML: a regular file only (a FIFO would block, /dev/zero never ends),
    each refusal naming what the path is."""
    try:
        data = locate(os.path.abspath(path)).read_regular(MAX_CONFIG_BYTES)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {str(path)!r} is a directory, not a YAML file") from None
    except RefusedFile as err:
        if err.reason == "too_large":
            raise ConfigError(f"{path} is not a config: at most {MAX_CONFIG_BYTES} bytes") from None
        raise ConfigError(f"config file {str(path)!r}: {err}; give a YAML file") from None
    except OSError as err:
        raise ConfigError(f"config file {str(path)!r}: {err.strerror or err}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: not a text (UTF-8) file: byte {err.start} is 0x{data[err.start]:02x}"
        ) from None
    try:
        raw = safe_load_bounded(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(
            f"{path}: not valid YAML{where}: {getattr(err, 'problem', None) or err}"
        ) from None
    except RecursionError:
        raise ConfigError(f"{path}: not a config: nested too deeply") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of sections, got a {type(raw).__name__}"
        )
    return raw


class _BoundedLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses documents expanding to more than MAX_YAML_NODES nodes."""

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        total = _expanded_size(node, {}, MAX_YAML_NODES)
        if total > MAX_YAML_NODES:
            raise yaml.YAMLError(
                f"its anchors and aliases expand to more than {MAX_YAML_NODES} values "
                "(an alias bomb?); write the values out"
            )
        return self.construct_document(node)


def _expanded_size(node: yaml.Node, seen: dict[int, int], limit: int) -> int:
    """Nodes under `node` counting every alias as a full copy; stops early past `limit`."""
    known = seen.get(id(node))
    if known is not None:
        return known
    seen[id(node)] = limit + 1  # a node met again while being counted: a cycle
    total = 1
    if isinstance(node, yaml.SequenceNode):
        children: list[yaml.Node] = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    else:
        children = []
    for child in children:
        total += _expanded_size(child, seen, limit)
        if total > limit:
            break
    seen[id(node)] = total
    return total


def safe_load_bounded(text: str) -> Any:
    """`yaml.safe_load` with a cap on the expanded size (aliases counted in full)."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def parse_override_value(text: str) -> Any:
    """A `--set` value as YAML, except that `3e-4` is a number (PyYAML 1.1 reads it as text)."""
    if _NUMBER_RE.match(text.strip()):
        value = float(text)
        return int(value) if re.fullmatch(r"[-+]?\d+", text.strip()) else value
    try:
        return safe_load_bounded(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply `a.b.c=value` strings to a nested dict (a copy); unknown keys are caught later."""
    result = _deep_copy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected section.field=value")
        node = result
        parts = key.strip().split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                dotted = ".".join(parts[: depth + 1])
                raise ConfigError(f"--set {item!r}: {dotted} is a value, not a section")
            node = child
        node[parts[-1]] = parse_override_value(value)
    return result


def config_from_dict(raw: dict[str, Any]) -> StageConfig:
    if raw.get("runlocal") is True:
        raw = shrink(raw)
    try:
        return StageConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError([_describe(e) for e in _one_member(err.errors())]) from None


def dump_config(config: StageConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _describe(error: dict[str, Any], root: type[BaseModel] = StageConfig) -> str:
    """One line for one pydantic error: dotted field, what was given, what is allowed.

    `root` is the model the error's location starts from.
    """
    loc = [str(p) for p in error["loc"]]
    place = _place(loc, root)
    dotted = ".".join(place.parts) or "config"
    given = error.get("input")
    kind = error["type"]
    if kind in ("missing", "extra_forbidden"):
        return _describe_key(dotted, _place(loc[:-1], root), kind)
    if kind in ("union_tag_invalid", "union_tag_not_found") and place.union:
        return _describe_tag(dotted, place.union, given)
    if kind in ("float_type", "int_type") and isinstance(given, str):
        hint = ""
        if _NUMBER_RE.match(given.strip()) and kind == "int_type":
            value = float(given)
            hint = (
                f" (YAML reads {given} as text: write the integer {int(value)})"
                if value.is_integer() and abs(value) < 1e18
                else " (an integer is required)"
            )
        elif _NUMBER_RE.match(given.strip()):
            hint = (
                f" (YAML reads {given} as text: write it with a decimal point and signed "
                f"exponent, e.g. {_yaml_float(given)})"
            )
        return f"{dotted}: expected a number, got the string {given!r}{hint}"
    if kind == "int_type" and isinstance(given, float):
        hint = f"; write {int(given)}" if given.is_integer() else ""
        return f"{dotted}: expected an integer, got {given!r}{hint}"
    if kind == "string_type" and isinstance(given, bool):
        return (
            f"{dotted}: expected a string, got {given} (YAML reads yes/no/on/off as booleans; "
            "quote the value)"
        )
    if kind == "value_error":
        message = str(error.get("ctx", {}).get("error", error["msg"]))
        return message if loc == [] or message.startswith(loc[0]) else f"{dotted}: {message}"
    return f"{dotted}: {error['msg']}, got {given!r}"


def _one_member(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A value that fits no member of a plain union (`str | list[...]`) is reported by every
    member, each under its label (`data.train_shards.str`); keep what the members of the value's
    own shape say (a list's: which entry is wrong), and leave the labels out of the location."""

    def label(error: dict[str, Any]) -> int | None:
        return next(
            (i for i, p in enumerate(error["loc"]) if isinstance(p, str) and _MEMBER_RE.match(p)),
            None,
        )

    kept = []
    for error in errors:
        at = label(error)
        if at is None:
            kept.append(error)
            continue
        loc = error["loc"]
        others = [
            e for e in errors if e is not error and label(e) == at and e["loc"][:at] == loc[:at]
        ]
        if others and len(loc) == at + 1 and error["type"].endswith("_type"):
            continue  # the value is not of this member's type; another member says what is wrong
        kept.append({**error, "loc": loc[:at] + loc[at + 1 :]})
    return kept


def _yaml_float(text: str) -> str:
    mantissa, _, exponent = text.strip().lower().partition("e")
    if "." not in mantissa:
        mantissa += ".0"
    if exponent and exponent[0] not in "+-":
        exponent = "+" + exponent
    return f"{mantissa}e{exponent}" if exponent else mantissa


class _Union(NamedTuple):
    """A section told apart by a key (`shard.source`, by `kind`), and the member chosen."""

    key: str
    members: dict[str, type[BaseModel]]
    tag: str | None

    def allowed(self) -> str:
        return ", ".join(self.members)


class _Place(NamedTuple):
    """An error location as the user writes it (pydantic puts the union tag in it:
    `shard.source.imagefolder.path`), the section it names, and the union it names or that
    section was chosen from."""

    parts: list[str]
    model: type[BaseModel] | None
    union: _Union | None


def _place(loc: list[str], root: type[BaseModel]) -> _Place:
    parts: list[str] = []
    model: type[BaseModel] | None = root
    union = None
    rest = iter(loc)
    for part in rest:
        parts.append(part)
        if part.isdigit():  # an entry of a list of sections: the same section
            continue
        field = model.model_fields.get(part) if model else None
        members = _tagged_members(field) if field else {}
        if field and members:
            tag = next(rest, None)
            union = _Union(str(field.discriminator), members, tag)
            model = members.get(tag) if tag else None
        else:
            model, union = (_model_in(field.annotation) if field else None), None
    return _Place(parts, model, union)


def _tagged_members(field: FieldInfo) -> dict[str, type[BaseModel]]:
    """tag -> section of a field whose sections are told apart by `field.discriminator`."""
    key = field.discriminator
    if not isinstance(key, str):
        return {}
    return {
        typing.get_args(member.model_fields[key].annotation)[0]: member
        for member in typing.get_args(field.annotation)
    }


def _describe_key(dotted: str, parent: _Place, kind: str) -> str:
    """A missing or an unknown key; a key of another member of a union says whose it is."""
    union = parent.union if parent.union and parent.union.tag else None
    of_tag = f" for {union.key} {union.tag!r}" if union else ""
    key = dotted.rpartition(".")[2]
    known = sorted(parent.model.model_fields) if parent.model else []
    if kind == "missing":
        field = parent.model.model_fields.get(key) if parent.model else None
        about = f": {field.description}" if field and field.description else ""
        return f"{dotted}: required{of_tag}, missing{about}"
    owners = [t for t, m in union.members.items() if key in m.model_fields] if union else []
    if union and owners:
        return (
            f"{dotted}: not a field of {union.key} {union.tag!r} (it is for {union.key} "
            f"{', '.join(map(repr, owners))}); allowed: {', '.join(known)}"
        )
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(known)}"
    return f"{dotted}: unknown key{of_tag}; {hint}"


def _describe_tag(dotted: str, union: _Union, given: Any) -> str:
    """The key that picks a union's member is missing, or names none of them."""
    where = f"{dotted}.{union.key}"
    if not isinstance(given, dict) or union.key not in given:
        return f"{where}: required, missing; allowed: {union.allowed()}"
    value = given[union.key]
    close = difflib.get_close_matches(str(value), list(union.members), n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{where}: unknown {union.key} {value!r}; {hint}allowed: {union.allowed()}"


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    union = isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
    if union or typing.get_origin(annotation) in (list, tuple):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found:
                return found
    return None
