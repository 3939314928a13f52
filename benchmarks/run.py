"""Run every benchmark and print one table.

    python benchmarks/run.py            # the full run (about ten minutes on 2 cores)
    python benchmarks/run.py --quick    # fewer rounds, for a look
    python benchmarks/run.py --check    # exit 1 when a target is missed

The reference peer, fastapi-disconnect, needs Python >= 3.12: the script makes a virtual
environment for it with the first ``python3.12`` or ``python3.13`` it finds (pyenv's too)
and skips the peer when there is none.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import server

HERE = Path(__file__).parent
ROOT = HERE.parent
PEER = "fastapi_disconnect"
PEER_VENV = ROOT / ".bench-peer"

TARGETS = {
    ("uvicorn", "hello"): ("cpu_ratio", ">=", 0.85),
    ("uvicorn", "awaits_once"): ("cpu_ratio", ">=", 0.85),
    ("uvicorn", "starlette_hello"): ("cpu_ratio", ">=", 0.90),
    ("in-process", "a: answers at once"): ("added_us", "<=", 2.5),
    ("disconnect latency", None): ("p99_ms", "<=", 5.0),
    ("memory", None): ("added_bytes_per_request", "<=", 2048.0),
}
#: What a middleware that watches a request cannot cost less than, measured beside it.
FLOORS = ("passthrough", "copy_send")


def _pythons() -> list[str]:
    """Interpreters that fastapi-disconnect accepts, pyenv's first."""
    found = []
    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    for version in ("3.12", "3.13"):
        found += sorted(
            str(p) for p in Path(pyenv_root, "versions").glob(f"{version}*/bin/python3")
        )
        which = shutil.which(f"python{version}")
        if which is not None:
            found.append(which)
    return [p for p in found if subprocess.run([p, "-c", ""], capture_output=True).returncode == 0]


def peer_python() -> str | None:
    python = PEER_VENV / "bin" / "python"
    if not python.exists():
        candidates = _pythons()
        if not candidates:
            return None
        subprocess.run([candidates[0], "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                "fastapi-disconnect==0.4.0",
                "uvicorn[standard]",
                "starlette",
                "anyio",
                "sniffio",
            ],
            check=True,
        )
    return str(python)


def in_subprocess(python: str, script: str, *args: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [python, str(HERE / script), *args], check=True, capture_output=True, text=True, cwd=HERE
    )
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def collect(quick: bool, with_peer: bool) -> list[dict[str, Any]]:
    rounds, seconds, scale = (3, 1.0, 0.3) if quick else (8, 2.0, 1.0)
    rows: list[dict[str, Any]] = []
    middlewares = [("asgi_disconnect", sys.executable)]
    python = peer_python() if with_peer else None
    if python is not None:
        middlewares.append((PEER, python))
    for floor in FLOORS:
        print(f"in-process: {floor} on asyncio", file=sys.stderr)
        rows += in_subprocess(
            sys.executable,
            "inprocess.py",
            "--middleware",
            floor,
            "--rounds",
            str(15 if quick else 31),
            "--scale",
            str(scale),
        )
    for name, python in middlewares:
        loops = ["asyncio", "uvloop"] + (["trio"] if name == "asgi_disconnect" else [])
        for loop in loops:
            print(f"in-process: {name} on {loop}", file=sys.stderr)
            rows += in_subprocess(
                python,
                "inprocess.py",
                "--middleware",
                name,
                "--loop",
                loop,
                "--rounds",
                str(15 if quick else 31),
                "--scale",
                str(scale),
            )
        env = {"BENCH_MIDDLEWARE": name}
        for app in ("hello", "awaits_once", "starlette_hello"):
            print(f"uvicorn: {name}, {app}", file=sys.stderr)
            rows.append(
                {"middleware": name, **server.throughput(app, rounds, seconds, python, **env)}
            )
        print(f"disconnect latency: {name}", file=sys.stderr)
        latency = server.disconnect_latency(200 if quick else 1000, python, **env)
        rows.append({"middleware": name, **latency})
        print(f"memory: {name}", file=sys.stderr)
        rows += in_subprocess(
            python, "memory.py", "--middleware", name, "--requests", "2000" if quick else "10000"
        )
    return rows


def target_of(row: dict[str, Any]) -> tuple[str, str, float] | None:
    if row.get("middleware") != "asgi_disconnect":
        return None
    if row["benchmark"] == "in-process" and row["loop"] == "trio":
        return None  # the targets are set for asyncio
    return TARGETS.get((row["benchmark"], row.get("case"))) or TARGETS.get((row["benchmark"], None))


def misses(rows: list[dict[str, Any]]) -> list[str]:
    missed = []
    for row in rows:
        target = target_of(row)
        if target is None:
            continue
        key, op, limit = target
        value = row[key]
        if not (value >= limit if op == ">=" else value <= limit):
            missed.append(
                f"{row['benchmark']} {row.get('case') or ''} {row.get('loop') or ''}: "
                f"{key} = {value:.3g}, target {op} {limit}"
            )
    return missed


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| benchmark | middleware | case | bare | wrapped | cost | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        target = target_of(row)
        goal = f"{target[1]} {target[2]:g}" if target else ""
        name = row["middleware"]
        if row["benchmark"] == "in-process":
            lines.append(
                f"| in-process, {row['loop']} | {name} | {row['case']} | "
                f"{row['bare_us']:.2f} µs | {row['wrapped_us']:.2f} µs | "
                f"+{row['added_us']:.2f} µs | {goal} |"
            )
        elif row["benchmark"] == "uvicorn":
            lines.append(
                f"| uvicorn + wrk | {name} | {row['case']} | "
                f"{row['bare_rps']:,.0f} req/s, p50 {row['bare_p50_ms']:.2f} ms, "
                f"p99 {row['bare_p99_ms']:.2f} ms | "
                f"{row['wrapped_rps']:,.0f} req/s, p50 {row['wrapped_p50_ms']:.2f} ms, "
                f"p99 {row['wrapped_p99_ms']:.2f} ms | x{row['ratio']:.3f} "
                f"(CPU time x{row['cpu_ratio']:.3f}) | {goal} |"
            )
        elif row["benchmark"] == "disconnect latency":
            lines.append(
                f"| disconnect → cancellation, uvicorn | {name} | "
                f"{row['cancelled']}/{row['requests']} abandoned requests cancelled | | "
                f"p50 {row['p50_ms']:.2f} ms | p99 {row['p99_ms']:.2f} ms | {goal} |"
            )
        elif row["benchmark"] == "memory":
            lines.append(
                f"| memory, {row['loop']} | {name} | {row['requests']:,} long polls "
                f"held | {row['bare_bytes_per_request']:,.0f} B/request | | "
                f"+{row['added_bytes_per_request']:,.0f} B/request | {goal} |"
            )
    return "\n".join(lines)


def machine() -> str:
    from importlib.metadata import version

    cpu = "?"
    if os.path.exists("/proc/cpuinfo"):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{platform.system()} {platform.release()}, {os.cpu_count()} cores ({cpu}), "
        f"Python {platform.python_version()}, uvicorn {version('uvicorn')}, "
        f"uvloop {version('uvloop')}, anyio {version('anyio')}, trio {version('trio')}, "
        f"starlette {version('starlette')}, wrk 4.1"
    )


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = ["hello", "awaits_once", "starlette_hello"]
    names = [n for n in ("asgi_disconnect", PEER) if any(r.get("middleware") == n for r in rows)]
    figure, axes = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / len(names)
    for offset, name in enumerate(names):
        ratios = [
            next(
                (
                    r["ratio"]
                    for r in rows
                    if r["benchmark"] == "uvicorn" and r["case"] == case and r["middleware"] == name
                ),
                0,
            )
            for case in cases
        ]
        bars = axes.bar(
            [i + offset * width for i in range(len(cases))],
            ratios,
            width,
            label=name.replace("_", "-"),
        )
        axes.bar_label(bars, fmt="%.2f")
    axes.axhline(1.0, color="grey", linewidth=0.8)
    axes.set_xticks(
        [i + width * (len(names) - 1) / 2 for i in range(len(cases))],
        ["raw ASGI hello", "awaits once", "Starlette hello"],
    )
    axes.set_ylim(0, 1.15)
    axes.set_ylabel("throughput, wrapped / bare")
    axes.set_title("uvicorn (httptools, uvloop, 1 worker), wrk -c32")
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--no-peer", action="store_true", help="skip fastapi-disconnect")
    parser.add_argument(
        "--save",
        action="store_true",
        help="write results.json and results.md in benchmarks/, the chart in docs/img/",
    )
    args = parser.parse_args()
    rows = collect(args.quick, with_peer=not args.no_peer)
    text = f"Measured on {machine()}.\n\n{table(rows)}\n"
    print(text)
    missed = misses(rows)
    for line in missed:
        print(f"target missed: {line}")
    if args.save:
        (HERE / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
        (HERE / "results.md").write_text(text)
        chart(rows, HERE.parent / "docs" / "img" / "results.png")
    if args.check and missed:
        sys.exit(1)


if __name__ == "__main__":
    main()
