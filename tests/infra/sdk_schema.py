"""Print the wire schema of azure-mgmt-appcontainers' models as JSON (run in the infra venv).

The infra tests run in the project's venv, where the Azure SDK is not installed; they run this
script with the infra venv's Python and check the Bicep against what it prints:
``{"models": {Name: {wireName: {"type": ..., "writable": bool}}}, "api_version": ..., "sdk": ...}``.
"""

from __future__ import annotations

import enum
import json
import sys
import types
import typing
from importlib.metadata import version
from typing import Any

from azure.mgmt.appcontainers import _configuration, models
from azure.mgmt.appcontainers._utils.model_base import Model

_WRITE_VISIBILITY = {"create", "update"}


def _describe(annotation: Any) -> dict[str, Any]:
    """A JSON description of one field's type: model, list, dict, enum or scalar."""
    origin = typing.get_origin(annotation)
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if origin in (typing.Union, types.UnionType):
        model_args = [arg for arg in args if isinstance(arg, type) and issubclass(arg, Model)]
        enum_args = [arg for arg in args if isinstance(arg, type) and issubclass(arg, enum.Enum)]
        if len(args) == 1:
            return _describe(args[0])
        if model_args:
            return {"kind": "model", "name": model_args[0].__name__}
        if enum_args:
            return {"kind": "enum", "values": sorted(str(member.value) for member in enum_args[0])}
        return {"kind": "scalar"}
    if origin is list:
        return {"kind": "list", "item": _describe(args[0])}
    if origin is dict:
        return {"kind": "dict", "value": _describe(args[1])}
    if isinstance(annotation, type) and issubclass(annotation, Model):
        return {"kind": "model", "name": annotation.__name__}
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return {"kind": "enum", "values": sorted(str(member.value) for member in annotation)}
    return {"kind": "scalar"}


def _fields(cls: type[Model]) -> dict[str, dict[str, Any]]:
    cls()  # the SDK fills _attr_to_rest_field on first instantiation
    hints = typing.get_type_hints(cls, localns={"_models": models})
    fields = {}
    for attr, rest_field in cls._attr_to_rest_field.items():  # type: ignore[attr-defined]
        visibility = set(rest_field._visibility or ())
        fields[rest_field._rest_name] = {
            "type": _describe(hints.get(attr, Any)),
            "writable": not visibility or bool(visibility & _WRITE_VISIBILITY),
        }
    return fields


def main() -> int:
    schema = {
        name: _fields(cls)
        for name, cls in vars(models).items()
        if isinstance(cls, type) and issubclass(cls, Model) and cls is not Model
    }
    # The configuration only stores the credential; nothing here talks to Azure.
    api_version = _configuration.ContainerAppsAPIClientConfiguration(object(), "0").api_version  # type: ignore[arg-type]
    json.dump({"models": schema, "api_version": api_version, "sdk": version("azure-mgmt-appcontainers")}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
