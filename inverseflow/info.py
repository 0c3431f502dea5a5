"""``inverseflow info``: what was built, and why a backend is missing."""

from __future__ import annotations

import torch

from .ops import _backends

# The layer shapes one specialization serves, per dimension (DESIGN.md §17): every corner
# with C = group channels, and the group pattern with C = groups x group channels.
_SERVED = {1: ("l/r", "pair", 2), 2: ("tl/tr/bl/br", "quad", 4),
           3: ("ntl/ntr/nbl/nbr/ftl/ftr/fbl/fbr", "oct", 8)}


def kernel_text(row: dict) -> str:
    """A compiled specialization's kernel, in its own dimension ("5", "3x3", "3x3x3")."""
    dims = row.get("dims", 2)
    return "x".join(str(k) for k in (row.get("kd", 1), row["kh"], row["kw"])[3 - dims:])


def served_text(dims: int, group_channels: int) -> str:
    """``"tl/tr/bl/br C=12, quad C=48"``: the layer shapes one specialization serves."""
    corners, group, groups = _SERVED[dims]
    return f"{corners} C={group_channels}, {group} C={groups * group_channels}"


DTYPES = ("float32", "float64")
DIRECTIONS = ("solve", "transposed", "conv")   # codes 0, 1, 2 (csrc/invconv/common.h)


def collect() -> dict:
    """A JSON-able summary of the build: backends, their specializations and problems."""
    info = {"torch": torch.__version__, "build": _backends.build_info(), "backends": {}}
    for name in ("_cpu", "_cuda"):
        backend = name.lstrip("_")
        error = _backends.import_error(name)
        entry = {"built": error is None}
        if error is None:
            module = _backends.cpu_module() if backend == "cpu" else _backends.cuda_module()
            entry["specializations"] = [
                {"name": s["name"], "kernel": kernel_text(s),
                 "group_channels": s["group_channels"],
                 "serves": served_text(s["dims"], s["group_channels"]),
                 "dtype": DTYPES[s["dtype"]], "direction": DIRECTIONS[s["direction"]]}
                for s in module.specializations()]
            if backend == "cuda":
                try:
                    entry["devices"] = module.device_count()
                except RuntimeError as exc:
                    entry["devices"] = 0
                    entry["device_error"] = str(exc)
            else:
                entry["openmp"] = bool(module.openmp)
        else:
            entry["error"] = error if backend == "cpu" else (
                f"{error}; build: {_backends.build_info().get('cuda')}")
        info["backends"][backend] = entry
    info["torch_cuda_available"] = torch.cuda.is_available()
    info["jit"] = jit_cache()
    info["form_choice"] = form_choice()
    info["triton"] = triton_backend()
    return info


def form_choice() -> dict:
    """How equal forms are chosen now (DESIGN §16): the setting and what is in force."""
    from . import backends

    return {"benchmark": backends.benchmark, "mode": backends.mode(),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled()}


def triton_backend() -> dict:
    """The Triton backend (DESIGN §18): Triton's version, whether it is interpreted, the
    backend setting, and the launch table's specializations."""
    from .ops._triton import launch

    entry = {"installed": _backends.triton_version() is not None,
             "version": _backends.triton_version(), "interpreted": launch.interpreting()}
    try:
        entry["setting"] = _backends.get_backend()
    except ValueError as exc:
        entry["setting"] = f"invalid: {exc}"
    entry["specializations"] = [
        {"name": spec["name"], "dims": key[0], "kernel": "x".join(map(str, key[1])),
         "group_channels": key[2], "dtype": key[3], "direction": key[4],
         "layers": list(spec["layers"])}
        for key, spec in launch.launch_table().items()]
    return entry


def jit_cache() -> dict:
    """The layer shapes specialized at run time and cached (inverseflow.jit)."""
    from . import jit

    return {"cache": str(jit.cache_dir()), "specializations": jit.cached_specializations()}


DTYPE_SHORT = {"float32": "f32", "float64": "f64"}
DEFAULT_SOURCE = "build"


def _row_order(key: tuple) -> tuple:
    """Sort key of a (kernel "KHxKW", group channels, serves, source) row: by dimension,
    kernel size, group channels, then the build's rows before others."""
    kernel, group_channels, _, source = key
    sizes = tuple(int(k) for k in kernel.split("x") if k.isdigit())
    return (len(sizes), sizes, group_channels, source != DEFAULT_SOURCE, source)


def _in_order(values, known: tuple) -> list:
    return sorted(values, key=lambda v: (known.index(v) if v in known else len(known), v))


def specialization_rows(specializations: list[dict]) -> list[dict]:
    """Groups kernels into one row per specialization (kernel, group channels) and source,
    with the layer shapes it serves and the dtypes and directions present, sorted by
    dimension, kernel size and group channels.

    Each kernel is a dict as :func:`collect` lists them (``kernel`` "3x3",
    ``group_channels``, ``serves``, ``dtype``, ``direction``); an optional ``source`` says
    where it came from (default ``"build"``; run-time specializations say ``"jit"``).
    """
    rows: dict[tuple, dict] = {}
    for spec in specializations:
        source = spec.get("source", DEFAULT_SOURCE)
        key = (spec["kernel"], spec["group_channels"], spec["serves"], source)
        row = rows.setdefault(key, {"kernel": spec["kernel"],
                                    "group_channels": spec["group_channels"],
                                    "serves": spec["serves"], "source": source,
                                    "dtypes": set(), "directions": set()})
        row["dtypes"].add(spec["dtype"])
        row["directions"].add(spec["direction"])
    out = []
    for key in sorted(rows, key=_row_order):
        row = rows[key]
        row["dtypes"] = _in_order(row["dtypes"], DTYPES)
        row["directions"] = _in_order(row["directions"], DIRECTIONS)
        out.append(row)
    return out


def _row_key(row: dict) -> tuple:
    return (row["kernel"], row["group_channels"], row["serves"], row["source"])


def _cell(row: dict | None) -> str:
    if row is None:
        return "-"
    dtypes = " ".join(DTYPE_SHORT.get(d, d) for d in row["dtypes"])
    return f"{dtypes}; {' '.join(row['directions'])}"


def format_table(header: list[str], body: list[list[str]]) -> list[str]:
    """Left-aligned columns, two spaces apart, with a rule under the header."""
    widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header))]
    render = lambda line: "  ".join(str(v).ljust(w) for v, w in zip(line, widths)).rstrip()  # noqa: E731
    return [render(header), render(["-" * w for w in widths]), *map(render, body)]


def specialization_table(specializations_by_backend: dict[str, list[dict]]) -> list[str]:
    """One row per specialization (kernel, group channels) with the layer shapes it serves;
    per backend the dtypes and directions built ("-": none). A "source" column appears once
    any specialization has a source other than the build."""
    per_backend = {backend: {_row_key(r): r for r in specialization_rows(specs)}
                   for backend, specs in specializations_by_backend.items()}
    keys = sorted(set().union(*per_backend.values()), key=_row_order)
    with_source = any(source != DEFAULT_SOURCE for *_, source in keys)
    header = ["kernel", "group C"] + (["source"] if with_source else []) + [
        f"{backend} (dtypes; directions)" for backend in per_backend] + ["serves layers"]
    body = [[kernel, str(group_channels)] + ([source] if with_source else [])
            + [_cell(rows.get((kernel, group_channels, serves, source)))
               for rows in per_backend.values()] + [serves]
            for kernel, group_channels, serves, source in keys]
    return format_table(header, body)


def _triton_line(triton: dict) -> str:
    count = len(triton["specializations"])
    if not triton["installed"]:
        state = "Triton not installed (pip install 'inverseflow[triton]')"
    else:
        state = f"Triton {triton['version']}" + (
            ", interpreted (TRITON_INTERPRET=1)" if triton["interpreted"] else "")
    return (f"[triton] {state}; {count} specialized launch-table entries; backend setting: "
            f"{triton['setting']}")


def format_report(info: dict, verbose: bool = False) -> str:
    """A compact report: build and backend status lines, then one table row per
    specialization and the layer shapes it serves; ``verbose`` also lists every compiled
    kernel by name."""
    lines = [f"inverseflow with torch {info['torch']}"]
    build = info["build"]
    if "layers_built" in build:
        lines.append(f"specializations built (kernel x group channels): "
                     f"{len(build['layers_built'])} of {build['layers_total']}"
                     + (f" (filter {build['spec_filter']!r})" if build.get("spec_filter") else ""))
    lines.append(f"cuda build: {build.get('cuda')}")
    choice = info["form_choice"]
    lines.append(f"equal forms: {choice['mode']} ("
                 + ("timed once per shape; inverseflow.backends.benchmark" if choice["mode"] ==
                    "benchmark" else "a fixed rule; benchmark mode is "
                    + ("on but off under torch.use_deterministic_algorithms"
                       if choice["benchmark"] else "off")) + ")")
    built = {}
    for backend, entry in info["backends"].items():
        if not entry["built"]:
            lines.append(f"[{backend}] NOT AVAILABLE: {entry['error']}")
            continue
        if backend == "cpu":
            extra = f", OpenMP {'on' if entry['openmp'] else 'OFF'}"
        else:
            extra = f", {entry['devices']} device(s)"
            if "device_error" in entry:
                extra += f" ({entry['device_error']})"
        built[backend] = entry["specializations"]
        lines.append(f"[{backend}] built, {len(entry['specializations'])} specialized kernels"
                     f"{extra}")
    if info["torch_cuda_available"] and not info["backends"]["cuda"]["built"]:
        lines.append("WARNING: this machine has a GPU but the CUDA backend is missing; "
                     + _backends.REBUILD_HINT)
    triton = info.get("triton")
    if triton:
        lines.append(_triton_line(triton))
    for backend, specs in info.get("jit", {}).get("specializations", {}).items():
        built.setdefault(backend, []).extend(specs)  # rows with source "jit"
    if built:
        lines += ["", "specializations, each serving every layer shape of its kernel and group "
                      "size (any other shape runs the generic kernel):"]
        lines += ["  " + line for line in specialization_table(built)]
    if verbose:
        for backend, specs in built.items():
            lines += ["", f"[{backend}] kernels:"] + [f"    {s['name']}" for s in specs]
        if triton:
            lines += ["", "[triton] launch table:"] + [
                f"    {s['name']} ({', '.join(s['layers'])})" for s in triton["specializations"]]
    else:
        lines += ["", "(--verbose lists every kernel; --json prints all of it for scripts)"]
    return "\n".join(lines)
