"""The generator: strict spec parsing, naming, rendering, --check and `add`."""

import shutil
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest

from codegen import render
from codegen.__main__ import main as codegen_main
from codegen.spec import (DIRECTIONS, DTYPES, Layer, SpecError, fold, parse_kernel,
                          parse_specs)

ROOT = Path(__file__).resolve().parent.parent


def _entry(**fields):
    lines = ["[[layer]]"]
    for key, value in fields.items():
        lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


def test_committed_generated_is_fresh():
    result = subprocess.run([sys.executable, "-m", "codegen", "--check"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_default_specs_cover_default_model_shapes():
    layers = parse_specs((ROOT / "codegen" / "specs.toml").read_text())
    keys = {(layer.kh, layer.kw, layer.channels, layer.pattern) for layer in layers}
    for channels in (4, 8, 12, 24, 48):
        for k in (2, 3):
            assert (k, k, channels, "tl") in keys
            assert (k, k, channels, "quad") in keys


@pytest.mark.parametrize("text, field", [
    (_entry(kernel='"3x"', channels=12, pattern='"tl"'), "kernel"),
    (_entry(kernel='"0x3"', channels=12, pattern='"tl"'), "kernel"),
    (_entry(kernel='"3x3"', channels=0, pattern='"tl"'), "channels"),
    (_entry(kernel='"3x3"', channels='"12"', pattern='"tl"'), "channels"),
    (_entry(kernel='"3x3"', channels=12, pattern='"diag"'), "pattern"),
    (_entry(kernel='"3x3"', channels=6, pattern='"quad"'), "channels"),
    (_entry(kernel='"3x3"', channels=12, pattern='"tl"', colour='"red"'), "colour"),
    (_entry(kernel='"3x3"', channels=12), "pattern"),
    (_entry(kernel='"3x3"', channels=12, pattern='"tl"', dtypes='["float16"]'), "dtypes"),
    (_entry(kernel='"3x3"', channels=12, pattern='"tl"', directions='["solve", "solve"]'),
     "directions"),
])
def test_bad_entries_name_entry_line_and_field(text, field):
    good = _entry(kernel='"2x2"', channels=4, pattern='"tl"')
    with pytest.raises(SpecError) as info:
        parse_specs(good + "\n" + text, "specs.toml")
    message = str(info.value)
    assert "layer #2" in message and "line 6" in message and field in message


def test_duplicate_layers_are_rejected():
    text = _entry(kernel='"3x3"', channels=12, pattern='"tl"') * 2
    with pytest.raises(SpecError, match="duplicates layer #1"):
        parse_specs(text)


def test_unknown_top_level_key_and_bad_toml():
    with pytest.raises(SpecError, match="unknown top-level key"):
        parse_specs("[layers]\nx = 1\n")
    with pytest.raises(SpecError, match="not valid TOML"):
        parse_specs("[[layer]\n")


def test_kernel_parsing():
    assert parse_kernel("3x3") == (3, 3)
    assert parse_kernel("1x5") == (1, 5)
    assert parse_kernel(4) == (4, 4)
    for bad in ("3x3x3", "x3", True, 2.5):
        with pytest.raises(SpecError):
            parse_kernel(bad)


def test_names_follow_the_axis_order():
    layer = Layer(2, 3, 12, "quad")   # 3 channels per group
    assert layer.stem == "invconv_k2x3_g3"
    assert layer.filename("cuda") == "cuda/invconv_k2x3_g3_cuda.cu"
    insts = layer.instantiations("cpu")
    assert [i.symbol for i in insts] == [f"invconv_k2x3_g3_{d}_{r}_cpu" for d in ("f32", "f64")
                                         for r in ("solve", "transposed", "conv")]
    assert len({i.key for i in insts}) == 6
    assert insts[0].key == (2, 1, 2, 3, 3, "float32", "solve")
    assert insts[0].filename == "cpu/invconv_k2x3_g3_cpu.cpp" and insts[0].layers == (layer,)


def test_layers_of_one_group_size_fold_onto_one_instantiation():
    tl, quad = Layer(3, 3, 12, "tl"), Layer(3, 3, 48, "quad")
    for backend in ("cpu", "cuda"):
        folded = fold([tl, quad], backend)
        # One instantiation per dtype and direction, serving both listed layers.
        assert len(folded) == len(DTYPES) * len(DIRECTIONS) == len({i.key for i in folded})
        assert all(i.layers == (tl, quad) and i.group_channels == 12 for i in folded)
        assert ("br", 12) in folded[0].serves() and ("quad", 48) in folded[0].serves()
    outputs = render.render_all([tl, quad])
    kernel_files = sorted(p for p in outputs if "registry" not in p and p.endswith((".cpp", ".cu")))
    assert kernel_files == ["cpu/invconv_k3x3_g12_cpu.cpp", "cuda/invconv_k3x3_g12_cuda.cu"]
    for backend, registry in render.REGISTRY_FILE.items():
        text = outputs[registry]
        for inst in fold([tl, quad], backend):
            assert text.count(f"void {inst.symbol}(") == 1 and text.count(f'"{inst.symbol}"') == 1
        assert text.count("cpu::solve") + text.count("cuda::solve") == 0   # declares only
    assert outputs["cpu/invconv_k3x3_g12_cpu.cpp"].count("cpu::solve<float, 12, 1, 3, 3,") == 3
    # Different dimensions or kernels never fold; a group pattern of another size neither.
    assert len(fold([tl, Layer(3, 3, 12, "quad"), Layer(1, 3, 12, "l")], "cpu")) == 3 * 6
    # dtypes and directions of the folded layers are united.
    only32 = Layer(3, 3, 12, "br", dtypes=("float32",), directions=("solve",))
    assert {(i.dtype, i.direction) for i in fold([only32, Layer(3, 3, 48, "quad",
            dtypes=("float64",))], "cpu")} == {("float32", "solve")} | {
                ("float64", r) for r in DIRECTIONS}


def test_every_generated_file_is_stamped_and_listed():
    outputs = render.render_all(parse_specs((ROOT / "codegen" / "specs.toml").read_text()))
    for path, text in outputs.items():
        assert "generated by codegen from templates/" in text.splitlines()[0], path
        assert "do not edit" in text.splitlines()[0], path
    sources = outputs["sources.cmake"]
    for path in outputs:
        if path.endswith((".cpp", ".cu")) and "registry" not in path:
            assert f"generated/{path}" in sources


def test_check_detects_every_kind_of_staleness(tmp_path):
    layers = parse_specs((ROOT / "codegen" / "specs.toml").read_text())
    out = tmp_path / "generated"
    render.generate(layers, out)
    assert render.check(layers, out) == []
    victim = out / layers[0].filename("cpu")
    victim.write_text(victim.read_text() + "// hand edit\n")
    (out / "cpu" / "stray.cpp").write_text("")
    (out / layers[1].filename("cuda")).unlink()
    problems = "\n".join(render.check(layers, out))
    assert "out of date" in problems and "stray.cpp" in problems and "missing" in problems


def test_generate_writes_only_changed_files(tmp_path):
    layers = [Layer(3, 3, 12, "tl")]
    out = tmp_path / "generated"
    written, _ = render.generate(layers, out)
    assert written
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    written, removed = render.generate(layers, out)
    assert written == [] and removed == []
    assert stamp == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def test_templates_fail_loudly_on_missing_variables():
    env = render._environment()
    with pytest.raises(jinja2.UndefinedError):
        env.get_template("kernel_cpu.cpp.j2").render(template_name="x")


def test_add_appends_a_layer_and_regenerates(tmp_path, monkeypatch):
    specs = tmp_path / "specs.toml"
    shutil.copy(ROOT / "codegen" / "specs.toml", specs)
    out = tmp_path / "generated"
    monkeypatch.setattr(render, "SPECS", specs)
    monkeypatch.setattr(render, "GENERATED", out)
    assert codegen_main(["add", "--kernel", "5x5", "--channels", "24", "--pattern", "quad"]) == 0
    layers = parse_specs(specs.read_text())
    assert layers[-1] == Layer(5, 5, 24, "quad")
    assert (out / "cpu" / "invconv_k5x5_g6_cpu.cpp").exists()
    assert "invconv_k5x5_g6" in (out / "sources.cmake").read_text()
    # A layer that an instantiation already serves (5x5 tl C=6 is quad C=24's) adds nothing.
    before = specs.read_text()
    assert codegen_main(["add", "--kernel", "5x5", "--channels", "6", "--pattern", "br"]) == 0
    assert specs.read_text() == before
    # Adding it again changes nothing; a bad one is refused and leaves the file alone.
    before = specs.read_text()
    assert codegen_main(["add", "--kernel", "5x5", "--channels", "24", "--pattern", "quad"]) == 0
    assert codegen_main(["add", "--kernel", "3x3", "--channels", "6", "--pattern", "quad"]) == 2
    assert specs.read_text() == before
