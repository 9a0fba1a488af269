"""Generate msgspec message types from the official OCPP JSON schemas.

    python core/codegen.py                 # regenerate core/messages/*.py
    python core/codegen.py --from-ocpp     # first copy the schemas shipped by the
                                           # installed ``ocpp`` package into core/schemas

Every constraint the schemas use becomes part of the type, so that decoding with
msgspec *is* validation: ``required`` (fields without default), ``type``,
``enum`` (``Literal``), ``maxLength``, ``minimum``/``maximum``, ``minItems``/
``maxItems``, ``additionalProperties: false`` (``forbid_unknown_fields``),
``format: date-time`` (timezone-aware ``datetime``) and nested objects. The one
rule msgspec checks differently from JSON Schema, ``multipleOf`` on numbers, is
generated as a ``__post_init__`` check that uses JSON Schema's own arithmetic.
``format: uri`` is not checked (jsonschema does not check it either without
an optional package). Optional fields default to ``UNSET`` so encoding omits them.
"""

from __future__ import annotations

import argparse
import json
import keyword
import math
import re
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCHEMAS = HERE / "schemas"
OUT = HERE / "messages"
VERSIONS = {"v16": "1.6", "v201": "2.0.1", "v21": "2.1"}


def snake(name: str) -> str:
    s = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    s = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", s).lower()
    s = re.sub(r"[^0-9a-z_]", "_", s)
    if keyword.iskeyword(s) or s in {"copy", "replace"}:
        s += "_"
    return s


def pascal(name: str) -> str:
    return name[:1].upper() + name[1:]


def action_files(version_dir: Path):
    """Yield (action, kind, path) with kind 'request' or 'response'."""
    v16 = version_dir.name == "v16"
    for path in sorted(version_dir.glob("*.json")):
        stem = path.stem
        if stem.endswith("Response"):
            yield stem[: -len("Response")], "response", path
        elif v16:
            yield stem, "request", path
        elif stem.endswith("Request"):
            yield stem[: -len("Request")], "request", path
        else:  # 2.1 NotifyPeriodicEventStream: a SEND, no response
            yield stem, "request", path


def inline(schema, root):
    """The schema with every $ref replaced by its definition (for identity checks)."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            return inline(root["definitions"][schema["$ref"].split("/")[-1]], root)
        return {k: inline(v, root) for k, v in schema.items()
                if k not in ("description", "javaType", "comment", "$id", "title", "$schema")}
    if isinstance(schema, list):
        return [inline(v, root) for v in schema]
    return schema


class Gen:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.by_canon: dict[str, str] = {}
        self.names: set[str] = set()
        self.needs_multiple_of = False

    def unique(self, name: str, hint: str) -> str:
        if name not in self.names:
            return name
        n = f"{name}_{hint}"
        i = 2
        while n in self.names:
            n = f"{name}_{hint}{i}"
            i += 1
        return n

    def resolve(self, schema: dict, root: dict) -> tuple[dict, str | None]:
        if "$ref" in schema:
            ref = schema["$ref"]
            assert ref.startswith("#/definitions/"), ref
            name = ref.split("/")[-1]
            return root["definitions"][name], name
        return schema, None

    def type_of(self, schema: dict, root: dict, hint: str, action: str) -> str:
        schema, defname = self.resolve(schema, root)
        t = schema.get("type")
        if t is None:
            return "Any"
        if t == "object":
            if "properties" not in schema:
                if schema.get("additionalProperties") is False:
                    return self.struct({"properties": {}, "additionalProperties": False},
                                       root, defname or hint, action)
                return "dict[str, Any]"
            return self.struct(schema, root, defname or hint, action)
        if t == "array":
            item = self.type_of(schema["items"], root, hint, action)
            meta = []
            if "minItems" in schema:
                meta.append(f"min_length={schema['minItems']}")
            if "maxItems" in schema:
                meta.append(f"max_length={schema['maxItems']}")
            base = f"list[{item}]"
            return f"Annotated[{base}, Meta({', '.join(meta)})]" if meta else base
        if t == "string":
            if "enum" in schema:
                return "Literal[" + ", ".join(json.dumps(v) for v in schema["enum"]) + "]"
            if schema.get("format") == "date-time":
                return "DateTime"
            if "maxLength" in schema:
                return f"Annotated[str, Meta(max_length={schema['maxLength']})]"
            return "str"
        if t in ("integer", "number"):
            base = "int" if t == "integer" else "float"
            meta = []
            lo, hi = schema.get("minimum"), schema.get("maximum")
            if t == "integer":  # msgspec wants integer bounds for int (schemas say 0.0)
                lo = None if lo is None else math.ceil(lo)
                hi = None if hi is None else math.floor(hi)
            if lo is not None:
                meta.append(f"ge={lo!r}")
            if hi is not None:
                meta.append(f"le={hi!r}")
            return f"Annotated[{base}, Meta({', '.join(meta)})]" if meta else base
        if t == "boolean":
            return "bool"
        raise ValueError(f"unsupported schema type {t!r} in {action}")

    def struct(self, schema: dict, root: dict, name: str, action: str) -> str:
        canon = json.dumps(inline(schema, root), sort_keys=True)
        key = f"{name}|{canon}"
        if key in self.by_canon:
            return self.by_canon[key]
        cls = self.unique(pascal(name), action)
        self.names.add(cls)
        self.by_canon[key] = cls
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        fields_req, fields_opt, checks = [], [], []
        used: set[str] = set()
        for prop, sub in props.items():
            py = snake(prop)
            if py in used:
                py = py + "_"
            used.add(py)
            typ = self.type_of(sub, root, f"{name}{pascal(prop)}", action)
            resolved, _ = self.resolve(sub, root)
            if "multipleOf" in resolved:
                self.needs_multiple_of = True
                checks.append((py, resolved["multipleOf"], prop in required))
            if prop in required:
                fields_req.append(f"    {py}: {typ} = field(name={prop!r})")
            else:
                fields_opt.append(f"    {py}: {typ} | UnsetType = field(name={prop!r}, default=UNSET)")
        forbid = schema.get("additionalProperties") is False
        out = [
            f"class {cls}(Struct, kw_only=True, omit_defaults=True, gc=False"
            + (", forbid_unknown_fields=True" if forbid else "") + "):"
        ]
        body = fields_req + fields_opt
        if not body:
            body = ["    pass"]
        out += body
        if checks:
            out.append("")
            out.append("    def __post_init__(self) -> None:")
            for py, m, req in checks:
                if req:
                    out.append(f"        multiple_of(self.{py}, {m!r}, {py!r})")
                else:
                    out.append(f"        if self.{py} is not UNSET:")
                    out.append(f"            multiple_of(self.{py}, {m!r}, {py!r})")
        self.lines += out + ["", ""]
        return cls

    def top(self, action: str, kind: str, path: Path) -> str:
        root = json.loads(path.read_text(encoding="utf-8-sig"))
        name = f"{action}{'Request' if kind == 'request' else 'Response'}"
        return self.struct(root, root, name, action)


HEADER = '''"""OCPP {version} message types. Generated by core/codegen.py from core/schemas/{vdir}: do not edit."""
# ruff: noqa: E501
from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, Struct, UnsetType, field

from ..checks import DateTime{extra}

'''


def generate(vdir: str) -> str:
    g = Gen()
    requests, responses, files = {}, {}, {}
    for action, kind, path in action_files(SCHEMAS / vdir):
        cls = g.top(action, kind, path)
        (requests if kind == "request" else responses)[action] = cls
        files[(action, kind)] = path.name
    head = HEADER.format(version=VERSIONS[vdir], vdir=vdir,
                         extra=", multiple_of" if g.needs_multiple_of else "")
    reg = ["VERSION = " + repr(VERSIONS[vdir]), "",
           "REQUESTS: dict[str, type[Struct]] = {"]
    reg += [f"    {a!r}: {c}," for a, c in sorted(requests.items())] + ["}", ""]
    reg += ["RESPONSES: dict[str, type[Struct]] = {"]
    reg += [f"    {a!r}: {c}," for a, c in sorted(responses.items())] + ["}", ""]
    reg += ["SCHEMA_FILES: dict[tuple[str, str], str] = {"]
    reg += [f"    ({a!r}, {k!r}): {f!r}," for (a, k), f in sorted(files.items())] + ["}", ""]
    return head + "\n".join(g.lines).rstrip() + "\n\n\n" + "\n".join(reg)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from-ocpp", action="store_true",
                    help="refresh core/schemas from the installed ocpp package first")
    args = ap.parse_args(argv)
    if args.from_ocpp:
        import ocpp  # type: ignore[import-untyped]

        src = Path(ocpp.__file__).parent
        for vdir in VERSIONS:
            dst = SCHEMAS / vdir
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src / vdir / "schemas", dst)
    OUT.mkdir(exist_ok=True)
    (OUT / "__init__.py").write_text('"""Generated OCPP message types, one module per version."""\n')
    for vdir in VERSIONS:
        code = generate(vdir)
        (OUT / f"{vdir}.py").write_text(code)
        print(f"wrote {OUT / (vdir + '.py')} ({code.count(chr(10))} lines)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
