"""A CustomResourceDefinition's openAPIV3Schema as a JSON Schema (draft 2020-12) that `jsonschema` validates
offline: how `cluster-postgresql.cnpg.io-v1.json` was made from CloudNativePG's own CRD.

    curl -sL https://raw.githubusercontent.com/cloudnative-pg/cloudnative-pg/v1.30.0/config/crd/bases/postgresql.cnpg.io_clusters.yaml \\
      | python k8s/schemas/crd_to_json_schema.py --version v1 \\
          --source "cloudnative-pg v1.30.0 (commit 4b5e244a7d031f67e025c83c1555e7726ecbbfa1), config/crd/bases/postgresql.cnpg.io_clusters.yaml" \\
      > k8s/schemas/cluster-postgresql.cnpg.io-v1.json

Mechanical, so nothing is transcribed by hand (the RayService schema is, for the few fields we write). The
API server's rules, as JSON Schema says them:
- an object with `properties` rejects other fields (`additionalProperties: false`), as `kubectl apply`'s
  strict field validation does, unless the CRD preserves unknown fields there;
- `x-kubernetes-int-or-string`: an integer or a string; `nullable`: null is allowed too;
- `apiVersion` and `kind` are the CRD's group/version and kind; `status` is left out (the operator writes it).
Dropped: descriptions and defaults (text, not rules), list/map markers (merge strategy, not validity), and
the CEL rules (`x-kubernetes-validations`), which only an API server evaluates: they are listed in the
output's `$comment` so a reader knows what is not checked here.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import yaml

# Keys that carry a rule JSON Schema checks the same way; everything else is dropped.
KEPT = {"type", "properties", "items", "required", "enum", "pattern", "minimum", "maximum",
        "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "minItems", "maxItems",
        "minProperties", "maxProperties", "anyOf", "oneOf", "allOf", "not", "additionalProperties",
        "format"}  # fmt: skip


def convert(node: dict[str, Any], cel_rules: list[str], path: str = "") -> dict[str, Any]:
    """One CRD schema node as JSON Schema; CEL rules met on the way are appended to `cel_rules`."""
    for rule in node.get("x-kubernetes-validations", []):
        cel_rules.append(f"{path or '.'}: {rule['rule']}")
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key not in KEPT:
            continue
        if key == "properties":
            out[key] = {name: convert(sub, cel_rules, f"{path}.{name}") for name, sub in value.items()}
        elif key == "items" or (key == "additionalProperties" and isinstance(value, dict)):
            out[key] = convert(value, cel_rules, f"{path}[]")
        elif key in {"anyOf", "oneOf", "allOf"}:
            out[key] = [convert(sub, cel_rules, path) for sub in value]
        elif key == "not":
            out[key] = convert(value, cel_rules, path)
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    preserves_unknown = node.get("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in out and "additionalProperties" not in out and not preserves_unknown:
        out["additionalProperties"] = False
    return out


def crd_to_json_schema(crd: dict[str, Any], version: str, source: str) -> dict[str, Any]:
    """The JSON Schema of `crd`'s served `version`, its apiVersion and kind fixed, without `status`."""
    [entry] = [v for v in crd["spec"]["versions"] if v["name"] == version]
    openapi = dict(entry["schema"]["openAPIV3Schema"])
    openapi["properties"] = {k: v for k, v in openapi["properties"].items() if k != "status"}
    cel_rules: list[str] = []
    schema = convert(openapi, cel_rules)
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    schema["properties"]["apiVersion"] = {"const": f"{group}/{version}"}
    schema["properties"]["kind"] = {"const": kind}
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})
    comment = (
        f"{kind} {group}/{version}, converted mechanically by k8s/schemas/crd_to_json_schema.py from {source}. "
        "Unknown fields are rejected as kubectl's strict field validation rejects them. Not checked here "
        f"(CEL rules only an API server evaluates): {'; '.join(cel_rules) or 'none'}."
    )
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$comment": comment, **schema}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", default="v1", help="the CRD version to convert")
    parser.add_argument("--source", required=True, help="where the CRD came from (release and commit)")
    args = parser.parse_args()
    crd = yaml.safe_load(sys.stdin)
    json.dump(crd_to_json_schema(crd, args.version, args.source), sys.stdout, indent=1)  # diffable
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
