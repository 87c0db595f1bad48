#!/usr/bin/env python3
"""Build or validate a TF_CONFIG (see coco_tf/training/tf_config.py for the contract).

    python launch/tf_config.py validate                 # the TF_CONFIG environment variable
    python launch/tf_config.py validate '{"cluster": ...}'   # or a JSON string
    python launch/tf_config.py validate path/to/tf_config.json
    python launch/tf_config.py cluster --ps 2 --workers 10 [--host 127.0.0.1]   # a cluster with free ports
    python launch/tf_config.py task CLUSTER_JSON TYPE INDEX                      # one process's TF_CONFIG

Exit status 0 when valid, 2 with a message naming the problem otherwise. Loads
the logic by path, so it needs neither TensorFlow nor the package installed.
"""

import argparse
import importlib.util
import json
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location(
    "_coco_tf_config", os.path.join(_HERE, "..", "coco_tf", "training", "tf_config.py")
)
tfc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tfc)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate")
    v.add_argument("config", nargs="?", help="JSON string or file (default: $TF_CONFIG)")
    c = sub.add_parser("cluster")
    c.add_argument("--ps", type=int, default=2)
    c.add_argument("--workers", type=int, required=True)
    c.add_argument("--host", default="127.0.0.1")
    t = sub.add_parser("task")
    t.add_argument("cluster")
    t.add_argument("type")
    t.add_argument("index", type=int)
    a = p.parse_args(argv)
    try:
        if a.cmd == "validate":
            if a.config is None:
                text, source = os.environ.get("TF_CONFIG", ""), "TF_CONFIG"
            elif os.path.exists(a.config):
                text, source = open(a.config).read(), a.config
            else:
                text, source = a.config, "TF_CONFIG"
            cfg = tfc.parse(text, source)
            print(f"ok: {tfc.describe(cfg)}")
        elif a.cmd == "cluster":
            print(json.dumps(tfc.make_cluster(a.ps, a.workers, a.host)))
        else:
            print(json.dumps(tfc.make_tf_config(json.loads(a.cluster), a.type, a.index)))
    except tfc.TFConfigError as e:
        print(f"TF_CONFIG error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
