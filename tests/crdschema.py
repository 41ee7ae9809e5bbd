"""Validate manifests against KubeRay's real CRDs the way the API server does (a test helper).

The CRDs (RayCluster, RayService) are read once from ../shared/kuberay. ``check`` applies the
schema's ``default:`` values, then checks the defaulted object like ``kubectl apply`` with strict
field validation: unknown fields everywhere (except under ``x-kubernetes-preserve-unknown-fields``),
types, formats (int32, int64, date-time), required fields, enums, patterns, lengths and bounds,
``x-kubernetes-int-or-string``, list-type map/set uniqueness, embedded resources, and the object's
apiVersion, kind and metadata. It also applies KubeRay's own admission rules on names (DNS-1035,
at most 53 / 47 characters), reported with a ``kuberay:`` prefix. CEL rules
(``x-kubernetes-validations``) are not evaluated: the two in these CRDs guard updates and one
enum-like field. A schema keyword this module does not know raises, so nothing is skipped silently.
"""

from __future__ import annotations

import copy
import datetime as dt
import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml

KUBERAY_DIR = Path(__file__).resolve().parents[2] / "shared" / "kuberay"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayService": "ray.io_rayservices.yaml"}
KUBERAY_MAX_NAME = {"RayCluster": 53, "RayService": 47}

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_CHECKED = {
    "type",
    "properties",
    "required",
    "items",
    "additionalProperties",
    "default",
    "enum",
    "pattern",
    "format",
    "maxLength",
    "minLength",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "maxItems",
    "minItems",
    "maxProperties",
    "minProperties",
    "nullable",
    "anyOf",
    "allOf",
    "oneOf",
    "not",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-embedded-resource",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
}
# Keywords that do not constrain a created object: docs, merge strategy, CEL (see docstring).
_IGNORED = {
    "description",
    "title",
    "example",
    "externalDocs",
    "x-kubernetes-map-type",
    "x-kubernetes-validations",
}
_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "boolean": (bool,),
    "integer": (int,),
    "number": (int, float),
}
_INT_RANGE = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_NAME_PART = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_OBJECT_META = {
    "name",
    "generateName",
    "namespace",
    "labels",
    "annotations",
    "finalizers",
    "ownerReferences",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
}


@cache
def crd(kind: str) -> dict[str, Any]:
    """Return the parsed CustomResourceDefinition for a KubeRay kind (parsed once)."""
    with open(KUBERAY_DIR / CRD_FILES[kind], encoding="utf-8") as fh:
        return yaml.load(fh, Loader=_LOADER)


def schema_for(api_version: str, kind: str) -> dict[str, Any] | None:
    """Return the openAPIV3Schema of a served version, or None."""
    if kind not in CRD_FILES:
        return None
    definition = crd(kind)
    for version in definition["spec"]["versions"]:
        if api_version == f"{definition['spec']['group']}/{version['name']}" and version["served"]:
            return version["schema"]["openAPIV3Schema"]
    return None


def load_documents(path: Path) -> list[dict[str, Any]]:
    """Read every YAML document of a file (skipping empty ones)."""
    with open(path, encoding="utf-8") as fh:
        return [doc for doc in yaml.load_all(fh, Loader=_LOADER) if doc]


def check(manifest: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Default and validate a manifest; return the defaulted copy and the errors (path: problem).

    The input is not changed.
    """
    obj = _jsonify(copy.deepcopy(manifest))
    errors: list[str] = []
    if not isinstance(obj, dict):
        return obj, [f"<root>: a manifest is an object, got {type(obj).__name__}"]
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    schema = schema_for(str(api_version), kind) if isinstance(kind, str) else None
    if schema is None:
        served = ", ".join(f"ray.io/v1 {k}" for k in CRD_FILES)
        return obj, [f"apiVersion/kind: no served CRD for {api_version!r} {kind!r} ({served})"]
    root = {k: v for k, v in schema.items() if k != "properties"}
    root["properties"] = {k: v for k, v in schema["properties"].items() if k != "metadata"}
    meta = obj.get("metadata")
    rest = {k: v for k, v in obj.items() if k != "metadata"}
    _validate(rest, root, "", errors)
    obj.update(rest)
    _metadata(meta, "metadata", errors, namespaced=True)
    name = meta.get("name") if isinstance(meta, dict) else None
    if isinstance(name, str):
        _kuberay_name(str(kind), name, errors)
    return obj, errors


def validate_manifest(manifest: dict[str, Any]) -> list[str]:
    """Return the API server's complaints about a manifest (empty when it would be accepted)."""
    return check(manifest)[1]


def defaulted(manifest: dict[str, Any]) -> dict[str, Any]:
    """Return a copy with the CRD's defaults applied, as the API server would store it."""
    obj, errors = check(manifest)
    if errors:
        raise ValueError("invalid manifest:\n" + "\n".join(errors))
    return obj


def _jsonify(value: Any) -> Any:
    """Turn what YAML parsed into what the API server receives as JSON (timestamps, int keys)."""
    if isinstance(value, dict):
        return {str(k): _jsonify(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonify(v) for v in value]
    if isinstance(value, dt.datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", key):
        return f"{path}.{key}" if path else key
    return f"{path}[{key}]"


def _type_ok(value: Any, type_name: str) -> bool:
    if isinstance(value, bool) and type_name != "boolean":
        return False
    return isinstance(value, _TYPES[type_name])


def _validate(value: Any, schema: dict[str, Any], path: str, errors: list[str]) -> None:
    unknown = set(schema) - _CHECKED - _IGNORED
    if unknown:
        raise AssertionError(f"crdschema cannot check schema keywords {sorted(unknown)} at {path}")
    where = path or "<root>"
    if value is None:
        if not schema.get("nullable"):
            errors.append(f"{where}: null is not allowed here")
        return
    if schema.get("x-kubernetes-int-or-string"):
        if not (_type_ok(value, "integer") or _type_ok(value, "string")):
            errors.append(f"{where}: must be an integer or a string, got {type(value).__name__}")
            return
    elif "type" in schema and not _type_ok(value, schema["type"]):
        errors.append(
            f"{where}: must be of type {schema['type']}, got {type(value).__name__} {value!r:.60}"
        )
        return
    before = len(errors)
    _scalar_rules(value, schema, where, errors)
    _combinators(value, schema, path, where, errors)
    if len(errors) > before:
        return
    if isinstance(value, dict):
        _object(value, schema, path, errors)
    elif isinstance(value, list):
        _array(value, schema, path, errors)


def _scalar_rules(value: Any, schema: dict[str, Any], where: str, errors: list[str]) -> None:
    if "enum" in schema and value not in schema["enum"]:
        errors.append(
            f"{where}: unsupported value {value!r}: supported values are "
            + ", ".join(repr(v) for v in schema["enum"])
        )
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where}: {value!r} does not match {schema['pattern']!r}")
        if len(value) > schema.get("maxLength", len(value)):
            errors.append(f"{where}: longer than {schema['maxLength']} characters")
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{where}: shorter than {schema['minLength']} characters")
        if schema.get("format") == "date-time":
            try:
                dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                errors.append(f"{where}: {value!r} is not an RFC 3339 date-time")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        bounds = _INT_RANGE.get(schema.get("format", ""))
        if isinstance(value, int) and bounds and not bounds[0] <= value <= bounds[1]:
            errors.append(f"{where}: {value} does not fit in {schema['format']}")
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: {value} is less than the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: {value} is greater than the maximum {schema['maximum']}")
        if schema.get("exclusiveMinimum") is True and value == schema.get("minimum"):
            errors.append(f"{where}: {value} must be greater than {schema['minimum']}")
        if schema.get("exclusiveMaximum") is True and value == schema.get("maximum"):
            errors.append(f"{where}: {value} must be less than {schema['maximum']}")
        if "multipleOf" in schema and value % schema["multipleOf"]:
            errors.append(f"{where}: {value} is not a multiple of {schema['multipleOf']}")
    if isinstance(value, list):
        if len(value) > schema.get("maxItems", len(value)):
            errors.append(f"{where}: more than {schema['maxItems']} items")
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{where}: fewer than {schema['minItems']} items")
    if isinstance(value, dict):
        if len(value) > schema.get("maxProperties", len(value)):
            errors.append(f"{where}: more than {schema['maxProperties']} properties")
        if len(value) < schema.get("minProperties", 0):
            errors.append(f"{where}: fewer than {schema['minProperties']} properties")


def _passes(value: Any, schema: dict[str, Any], path: str) -> bool:
    scratch: list[str] = []
    _validate(copy.deepcopy(value), schema, path, scratch)
    return not scratch


def _combinators(
    value: Any, schema: dict[str, Any], path: str, where: str, errors: list[str]
) -> None:
    """anyOf / allOf / oneOf / not: value validation only (structural schemas never prune there)."""
    if "anyOf" in schema and not any(_passes(value, s, path) for s in schema["anyOf"]):
        errors.append(f"{where}: {value!r:.60} matches none of the allowed forms")
    for sub in schema.get("allOf", []):
        _validate(copy.deepcopy(value), sub, path, errors)
    if "oneOf" in schema and sum(_passes(value, s, path) for s in schema["oneOf"]) != 1:
        errors.append(f"{where}: {value!r:.60} must match exactly one of the allowed forms")
    if "not" in schema and _passes(value, schema["not"], path):
        errors.append(f"{where}: {value!r:.60} matches a forbidden form")


def _object(value: dict[str, Any], schema: dict[str, Any], path: str, errors: list[str]) -> None:
    props: dict[str, Any] = schema.get("properties", {})
    extra = schema.get("additionalProperties")
    for name, sub in props.items():
        if name not in value and "default" in sub:
            value[name] = copy.deepcopy(sub["default"])
    for name in schema.get("required", []):
        if name not in value:
            errors.append(f"{_join(path, name)}: Required value")
    embedded = schema.get("x-kubernetes-embedded-resource")
    for key, item in value.items():
        sub_path = _join(path, key)
        if key in props:
            _validate(item, props[key], sub_path, errors)
        elif isinstance(extra, dict):
            _validate(item, extra, sub_path, errors)
        elif embedded and key in ("apiVersion", "kind", "metadata"):
            continue
        elif extra is True or schema.get("x-kubernetes-preserve-unknown-fields"):
            continue
        else:
            errors.append(f"{sub_path}: unknown field {key!r}")
    if embedded:
        for key in ("apiVersion", "kind"):
            if not isinstance(value.get(key), str) or not value[key]:
                errors.append(f"{_join(path, key)}: Required value (embedded resource)")
        if "metadata" in value and "metadata" not in props:
            _metadata(value["metadata"], _join(path, "metadata"), errors, namespaced=True)


def _array(value: list[Any], schema: dict[str, Any], path: str, errors: list[str]) -> None:
    items = schema.get("items")
    if isinstance(items, dict):
        for i, item in enumerate(value):
            _validate(item, items, _join(path, i), errors)
    list_type = schema.get("x-kubernetes-list-type")
    if list_type == "set":
        seen: list[Any] = []
        for i, item in enumerate(value):
            if item in seen:
                errors.append(f"{_join(path, i)}: Duplicate value: {item!r}")
            seen.append(item)
    elif list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        seen_keys: set[tuple[Any, ...]] = set()
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                continue
            missing = [k for k in keys if k not in item]
            if missing:
                errors.append(f"{_join(path, i)}: Required value: list map key {missing}")
                continue
            ident = tuple(repr(item[k]) for k in keys)
            if ident in seen_keys:
                shown = ", ".join(f"{k}={item[k]!r}" for k in keys)
                errors.append(f"{_join(path, i)}: Duplicate value: {shown}")
            seen_keys.add(ident)


def _metadata(meta: Any, path: str, errors: list[str], *, namespaced: bool) -> None:
    """ObjectMeta, which the API server validates itself (the CRD only says 'type: object')."""
    if not isinstance(meta, dict):
        errors.append(f"{path}: Required value: an object with a name")
        return
    for key in meta:
        if key not in _OBJECT_META:
            errors.append(f"{_join(path, key)}: unknown field {key!r}")
    name = meta.get("name")
    if name is None and not meta.get("generateName"):
        errors.append(f"{path}.name: Required value: name or generateName is required")
    elif name is not None and (
        not isinstance(name, str) or len(name) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(name)
    ):
        errors.append(
            f"{path}.name: Invalid value {name!r}: a lowercase RFC 1123 subdomain must "
            "consist of lower case alphanumeric characters, '-' or '.'"
        )
    namespace = meta.get("namespace")
    if namespace is not None and (
        not isinstance(namespace, str)
        or len(namespace) > 63
        or not _DNS1123_LABEL.fullmatch(namespace)
    ):
        errors.append(f"{path}.namespace: Invalid value {namespace!r}: not a DNS-1123 label")
    for field in ("labels", "annotations"):
        mapping = meta.get(field, {})
        if not isinstance(mapping, dict):
            errors.append(f"{path}.{field}: must be a map of strings")
            continue
        for key, val in mapping.items():
            if not _qualified_name(key):
                errors.append(f"{path}.{field}[{key}]: Invalid key: not a qualified name")
            if not isinstance(val, str):
                errors.append(f"{path}.{field}[{key}]: must be a string, got {type(val).__name__}")
            elif field == "labels" and val and (len(val) > 63 or not _NAME_PART.fullmatch(val)):
                errors.append(f"{path}.labels[{key}]: Invalid value {val!r}: not a label value")


def _qualified_name(key: Any) -> bool:
    if not isinstance(key, str):
        return False
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(prefix)):
        return False
    return len(name) <= 63 and bool(_NAME_PART.fullmatch(name))


def _kuberay_name(kind: str, name: str, errors: list[str]) -> None:
    """KubeRay's admission rule (utils.ValidateRayClusterMetadata and friends)."""
    limit = KUBERAY_MAX_NAME[kind]
    if len(name) > limit or not _DNS1035_LABEL.fullmatch(name):
        errors.append(
            f"kuberay: metadata.name {name!r}: a {kind} name must be a DNS-1035 label "
            f"(start with a letter) of at most {limit} characters"
        )
