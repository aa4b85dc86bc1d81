#!/usr/bin/env python3
"""Regenerate the protobuf modules (``*_pb2.py`` + mypy ``*_pb2.pyi``) from the ``.proto`` sources beside this file.

    python proto/regen.py           # rewrite the generated modules in place
    python proto/regen.py --check   # regenerate into a temporary directory; exit 1 if the committed ones differ

protoc comes from grpcio-tools (pinned in pyproject, protoc 29.0) so every developer and CI produce the same
bytes; the generated code then runs on protobuf 5.29.x. protoc writes imports as if the packages were at the
top level (``from tendermint.types import types_pb2``); they live under ``pykms.proto``, so import lines and
the module names registered with the descriptor builder are rewritten here, never the serialized descriptors
(package names inside them are wire-irrelevant but must stay what the ``.proto`` files say).
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import re
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["generate", "main"]

HERE = Path(__file__).resolve().parent
ROOTS = ("tendermint", "cometbft")
PREFIX = "pykms.proto."

# `from tendermint.types import types_pb2 as ...` / `import tendermint.types.types_pb2` at the start of a line.
_IMPORT_LINE = re.compile(rf"^(\s*)(from|import) ({'|'.join(ROOTS)})\.", re.MULTILINE)
# The module name handed to the descriptor builder (becomes each class's __module__).
_BUILDER_NAME = re.compile(rf"(BuildTopDescriptorsAndMessages\(DESCRIPTOR, ')(({'|'.join(ROOTS)})\.[\w.]+_pb2')")
# In the stubs, dotted references such as `tendermint.types.types_pb2.Vote` in annotations.
_STUB_REF = re.compile(rf"(?<![\w.\"'])(({'|'.join(ROOTS)})\.[\w.]*_pb2)\b")


def _sources() -> list[Path]:
    return sorted(p.relative_to(HERE) for root in ROOTS for p in (HERE / root).rglob("*.proto"))


def _protoc_include() -> Path:
    spec = importlib.util.find_spec("grpc_tools")
    if spec is None or spec.origin is None:
        raise SystemExit("grpcio-tools is not installed: install the dev extras")
    return Path(spec.origin).resolve().parent / "_proto"


# mypy-protobuf 5.1.0 (pinned in pyproject) ships its own extensions_pb2 built by protoc 32 (gencode 6.32), which
# protobuf 5.29's runtime refuses to load although it reads it fine; ledgerblue keeps us on protobuf < 6. The shim
# disables only that gencode/runtime version check, inside the plugin process, and runs the plugin unchanged.
_MYPY_SHIM = """\
import google.protobuf.runtime_version as _rv
_rv.ValidateProtobufRuntimeVersion = lambda *args, **kwargs: None
from mypy_protobuf.main import main
main()
"""


def _mypy_plugin(workdir: Path) -> str:
    if importlib.util.find_spec("mypy_protobuf") is None:
        raise SystemExit("mypy-protobuf is not installed: install the dev extras")
    shim = workdir / "protoc-gen-mypy"
    shim.write_text(f"#!{sys.executable}\n{_MYPY_SHIM}")
    shim.chmod(0o700)
    return str(shim)


def _rewrite_py(text: str) -> str:
    text = _IMPORT_LINE.sub(lambda m: f"{m.group(1)}{m.group(2)} {PREFIX}{m.group(3)}.", text)
    return _BUILDER_NAME.sub(lambda m: f"{m.group(1)}{PREFIX}{m.group(2)}", text)


def _rewrite_pyi(text: str) -> str:
    text = _IMPORT_LINE.sub(lambda m: f"{m.group(1)}{m.group(2)} {PREFIX}{m.group(3)}.", text)
    out = []
    for line in text.splitlines(keepends=True):
        if line.lstrip().startswith(("import ", "from ")):
            out.append(line)
        else:
            out.append(_STUB_REF.sub(lambda m: f"{PREFIX}{m.group(1)}", line))
    return "".join(out)


def generate(out: Path, workdir: Path) -> list[Path]:
    """Run protoc over every source into ``out``; return the generated files relative to ``out``."""
    sources = _sources()
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{HERE}",
        f"-I{_protoc_include()}",
        f"--plugin=protoc-gen-mypy={_mypy_plugin(workdir)}",
        f"--python_out={out}",
        f"--mypy_out={out}",
        *(str(s) for s in sources),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"protoc failed:\n{result.stderr}")
    generated = []
    for src in sources:
        for suffix, rewrite in ((".py", _rewrite_py), (".pyi", _rewrite_pyi)):
            rel = src.with_name(src.stem + "_pb2" + suffix)
            path = out / rel
            path.write_text(rewrite(path.read_text()))
            generated.append(rel)
    return generated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed generated modules are stale")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        out.mkdir()
        generated = generate(out, Path(tmp))
        stale = []
        for rel in generated:
            fresh = (out / rel).read_text()
            target = HERE / rel
            current = target.read_text() if target.exists() else None
            if current == fresh:
                continue
            if args.check:
                stale.append(rel)
                diff = difflib.unified_diff(
                    (current or "").splitlines(keepends=True),
                    fresh.splitlines(keepends=True),
                    f"committed/{rel}",
                    f"regenerated/{rel}",
                    n=1,
                )
                sys.stderr.writelines(list(diff)[:40])
            else:
                target.write_text(fresh)
                print(f"wrote proto/{rel}")
        expected = set(generated)
        for root in ROOTS:
            for orphan in sorted((HERE / root).rglob("*_pb2.py*")):
                rel = orphan.relative_to(HERE)
                if rel in expected:
                    continue
                if args.check:
                    stale.append(rel)
                    print(f"proto/{rel} has no .proto source", file=sys.stderr)
                else:
                    orphan.unlink()
                    print(f"removed proto/{rel} (no .proto source)")
        if stale:
            names = ", ".join(f"proto/{p}" for p in stale)
            print(
                f"generated protobuf modules are stale: {names}\nrun `python proto/regen.py` and commit the result",
                file=sys.stderr,
            )
            return 1
    if args.check:
        print(f"generated protobuf modules are current ({len(generated)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
