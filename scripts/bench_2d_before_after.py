"""The 2-D CPU solve before and after a kernel change (issue 21: the N-D kernels), side by side.

Builds the CPU module (csrc/bind_cpu.cpp, generated/registry_cpu.cpp and a few generated
layers) of two commits from their sources, with the compiler and flags that built the
installed package (``toolchain`` in its build info), loads both under their own paths, and
times their raw ``solve`` entry points round-robin in one process (with the installed
module's as a third column), for the 2-D shapes of the parity and suite benchmarks and for
the generic kernel. Both builds compile only the layers below (``-DIFLOW_HAS_<stem>``);
``build_info.h``, which CMake writes, is a stub. Every output is checked against the
installed module's before it is timed.

    .venv/bin/python scripts/bench_2d_before_after.py --old 99508ed --new 91d3dd3 \\
        --out docs/results/bench_2d_before_after.json

Sources come from ``git archive`` (no work tree is touched); builds are cached under
build/bench_2d_before_after/<commit>/ and reused when the commit and flags match.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import shlex
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inverseflow.bench.conv_parity import round_robin  # noqa: E402
from inverseflow.bench.environment import environment, write_json  # noqa: E402
from inverseflow.ops import _backends  # noqa: E402

STEMS = ("invconv_k3x3_c12_tl", "invconv_k3x3_c12_quad", "invconv_k3x3_c48_tl",
         "invconv_k2x2_c4_quad")
# (batch, channels, side, kernel, order): the parity bench's fwd+bwd shapes and the suite's.
CASES = ((64, 12, 16, 3, "TL"), (100, 12, 16, 3, "quad"), (16, 48, 32, 3, "TL"),
         (100, 4, 8, 2, "quad"))
PATTERN = {"TL": 0, "quad": 4}        # the same codes before and after the change
VARIANTS = {"solve": (0, False), "transposed": (1, False), "generic": (0, True)}
CACHE = ROOT / "build" / "bench_2d_before_after"


def resolve(rev: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"],
                          check=True, capture_output=True, text=True).stdout.strip()


def toolchain() -> tuple[str, list[str]]:
    """The compiler and flags that built the installed CPU module: the recorded toolchain
    (the JIT's flags), with what CMake's own build adds (build.ninja): GNU extensions
    (``gnu++17``, under which GCC contracts a*b+c into FMAs; ISO ``c++17`` does not) and
    pybind11_add_module's link-time optimisation."""
    chain = _backends.build_info().get("toolchain") or {}
    if not chain.get("cxx"):
        raise SystemExit("the installed package records no toolchain; rebuild it first")
    flags = ["-std=gnu++17" if f == "-std=c++17" else f for f in shlex.split(chain["cxx_flags"])]
    return chain["cxx"], flags + ["-flto=auto", "-fno-fat-lto-objects"]


def build(commit: str, cxx: str, flags: list[str], log=print) -> Path:
    """The CPU module of ``commit`` with the layers in STEMS; cached by commit and flags."""
    import pybind11

    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    key = hashlib.sha256(json.dumps([commit, cxx, flags, STEMS, suffix]).encode()).hexdigest()[:12]
    folder = CACHE / f"{commit[:12]}-{key}"
    product = folder / f"_cpu{suffix}"
    if product.exists():
        return product
    src = folder / "src"
    src.mkdir(parents=True, exist_ok=True)
    paths = ["csrc", "generated/registry_cpu.cpp",
             *(f"generated/cpu/{stem}_cpu.cpp" for stem in STEMS)]
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit, *paths],
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(src, filter="data")
    (src / "build_info.h").write_text(
        'static const char kBuildInfoJson[] = R"json({"commit": "%s", '
        '"standalone": "scripts/bench_2d_before_after.py"})json";\n' % commit)
    includes = ["-I", str(src), "-I", str(src / "csrc"), "-I", sysconfig.get_paths()["include"],
                "-I", pybind11.get_include()]
    defines = [f"-DIFLOW_HAS_{stem}" for stem in STEMS]
    sources = [src / "csrc" / "bind_cpu.cpp", src / "generated" / "registry_cpu.cpp",
               *(src / "generated" / "cpu" / f"{stem}_cpu.cpp" for stem in STEMS)]
    objects = []
    for source in sources:
        obj = folder / f"{source.stem}.o"
        log(f"compiling {commit[:7]} {source.name}")
        subprocess.run([cxx, *flags, "-fPIC", *includes, *defines, "-c", str(source),
                        "-o", str(obj)], check=True)
        objects.append(str(obj))
    subprocess.run([cxx, *flags, "-shared", *objects, "-o", str(product)], check=True)
    return product


def load(path: Path):
    # PyInit__cpu fixes the name; a module is keyed by its file, so two builds coexist.
    spec = importlib.util.spec_from_file_location("_cpu", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def solver(module):
    """``f(y, weight, order, direction, force_generic) -> (x, kernel name)`` over the raw
    entry point of ``module``; before the N-D change it had no depth and kd arguments."""
    has_depth = "depth" in (module.solve.__doc__ or "")

    def run(y, weight, order, direction, force_generic):
        x = torch.empty_like(y)
        batch, channels, height, width = y.shape
        kh, kw = weight.shape[2:]
        sizes = (1, height, width, 1, kh, kw) if has_depth else (height, width, kh, kw)
        name = module.solve(y.data_ptr(), weight.data_ptr(), x.data_ptr(), batch, channels,
                            *sizes, PATTERN[order], 0, direction, torch.get_num_threads(), 0,
                            force_generic)
        return x, name
    return run


def case(solvers: dict, batch, channels, side, kernel, order, variant, rounds) -> dict:
    gen = torch.Generator().manual_seed(0)
    cg = channels // 4 if order == "quad" else channels
    weight = 0.1 / kernel * torch.randn(channels, cg, kernel, kernel, generator=gen)
    y = torch.randn(batch, channels, side, side, generator=gen)
    direction, generic = VARIANTS[variant]
    outputs = {name: run(y, weight, order, direction, generic) for name, run in solvers.items()}
    reference = outputs["installed"][0]
    t = round_robin({name: (lambda run=run: run(y, weight, order, direction, generic))
                     for name, run in solvers.items()}, rounds)
    med = {name: v["median_ms"] for name, v in t.items()}
    low = {name: v["min_ms"] for name, v in t.items()}
    return {"shape": [batch, channels, side, side], "kernel": kernel, "order": order,
            "variant": variant, "kernels_used": {k: v[1] for k, v in outputs.items()},
            "max_abs_diff_vs_installed": {k: (v[0] - reference).abs().max().item()
                                          for k, v in outputs.items()},
            "times": t, "new_over_old": med["new"] / med["old"],
            "installed_over_old": med["installed"] / med["old"],
            # A busy machine preempts whole time slices into single calls; the minima
            # show the kernels' own speed when the medians are dominated by that.
            "new_over_old_of_minima": low["new"] / low["old"],
            "installed_over_old_of_minima": low["installed"] / low["old"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", default="99508ed", help="commit before the change")
    parser.add_argument("--new", default="HEAD", help="commit after the change")
    parser.add_argument("--rounds", type=int, default=25, help="round-robin rounds per case")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and kernel threads (default 1: on a shared machine a "
                             "two-thread kernel waits at every barrier for a preempted thread)")
    parser.add_argument("--out", default="bench-results/bench_2d_before_after.json")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be a positive integer, got {args.rounds}")
    if args.threads < 1:
        parser.error(f"--threads must be a positive integer, got {args.threads}")
    torch.set_num_threads(args.threads)
    cxx, flags = toolchain()
    commits = {"old": resolve(args.old), "new": resolve(args.new)}
    solvers = {name: solver(load(build(commit, cxx, flags))) for name, commit in commits.items()}
    solvers["installed"] = solver(_backends.module_for("cpu"))
    results = []
    for batch, channels, side, kernel, order in CASES:
        for variant in VARIANTS:
            r = case(solvers, batch, channels, side, kernel, order, variant, args.rounds)
            results.append(r)
            t = r["times"]
            print(f"{batch}x{channels}x{side}x{side} k={kernel} {order:>4} {variant:>10}: "
                  f"old {t['old']['median_ms']:.3f} ms, new {t['new']['median_ms']:.3f} ms, "
                  f"installed {t['installed']['median_ms']:.3f} ms; "
                  f"new/old {r['new_over_old']:.3f} "
                  f"(of minima {r['new_over_old_of_minima']:.3f})", flush=True)
    result = {"environment": environment("cpu"), "commits": commits, "compiler": cxx,
              "flags": flags, "layers": list(STEMS), "rounds": args.rounds, "threads": args.threads,
              "cases": results}
    print(f"wrote {write_json(result, Path(args.out).parent, Path(args.out).name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
