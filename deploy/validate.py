#!/usr/bin/env python3
"""Validates rendered Kubernetes manifests offline; used by tests/deploy.rs.

    kubectl kustomize deploy/overlays/ha | python3 deploy/validate.py --kubernetes 1.30 --json out.json -

Every object of the multi-document YAML input must validate:
- Kubernetes' own kinds against the JSON schemas that the `kubernetes-validate` package ships for each
  Kubernetes version given (strict: unknown fields are errors);
- the custom resources these manifests use (ServiceMonitor, CloudNativePG Cluster) against the schemas
  in deploy/schemas/ (written by hand, see their $comment: structural checks of the fields used);
- any other kind is an error, so nothing passes unchecked.

With --json, the objects are also written as a JSON array, for the checks tests/deploy.rs makes on them.
Prints one `error: ...` line per failure and exits 1 if there was any; 2 on bad usage or missing tools.
"""

import argparse
import json
import pathlib
import sys

try:
    import jsonschema
    import kubernetes_validate
    import yaml
except ImportError as e:  # pragma: no cover - depends on the machine
    print(f"error: cannot import `{e.name}`", file=sys.stderr)
    print("  help: pip install kubernetes-validate==1.37.0 (it brings jsonschema and PyYAML)", file=sys.stderr)
    sys.exit(2)

SCHEMAS = pathlib.Path(__file__).resolve().parent / "schemas"
CUSTOM = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
    ("postgresql.cnpg.io/v1", "Cluster"): "cluster-postgresql-v1.json",
}


def where(obj):
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{obj.get('kind')}/{(ns + '/') if ns else ''}{meta.get('name')}"


def validate(obj, versions):
    """Returns the error messages for one object."""
    if not isinstance(obj, dict) or "apiVersion" not in obj or "kind" not in obj:
        return [f"a document is not a Kubernetes object: {str(obj)[:80]}"]
    key = (obj["apiVersion"], obj["kind"])
    if key in CUSTOM:
        schema = json.loads((SCHEMAS / CUSTOM[key]).read_text())
        validator = jsonschema.Draft202012Validator(schema)
        return [
            f"{where(obj)}: {'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
            for e in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
        ]
    errors = []
    for version in versions:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            return [f"{where(obj)}: no schema for `{obj['apiVersion']}` `{obj['kind']}`"
                    " (add one to deploy/schemas/ and to CUSTOM in deploy/validate.py)"]
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.absolute_path) or "(root)"
            errors.append(f"{where(obj)}: Kubernetes {version}: {path}: {e.message}")
    return errors


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("file", help="multi-document YAML, or - for standard input")
    parser.add_argument("--kubernetes", action="append", default=[],
                        help="a Kubernetes version to validate against (repeatable)")
    parser.add_argument("--json", help="also write the objects to this file as a JSON array")
    args = parser.parse_args()
    text = sys.stdin.read() if args.file == "-" else pathlib.Path(args.file).read_text()
    versions = args.kubernetes or [kubernetes_validate.utils.latest_version()]
    try:
        objects = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        print(f"error: the input is not YAML: {e}")
        return 1
    errors = []
    for obj in objects:
        errors += validate(obj, versions)
    for e in errors:
        print(f"error: {e}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(objects))
    print(f"{len(objects)} objects, {len(errors)} errors (Kubernetes {', '.join(versions)})", file=sys.stderr)
    return 1 if errors or not objects else 0


if __name__ == "__main__":
    sys.exit(main())
