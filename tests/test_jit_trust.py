"""The JIT cache's trust boundary and its housekeeping (inverseflow.jit, issue 16).

A cached module is native code that is loaded and run, so the cache is used only when its
root, its ``jit/`` folder, the entry and the entry's files are the user's own and no one
else can write them; ``jit --clear`` removes only entries of ours; ``INVERSEFLOW_JIT=1``
runs one compile per backend at a time; a compile that is interrupted or times out takes
its whole process group (cc1plus included) with it.

No test here needs a real compile: an entry is planted the way an attacker would plant it
(the key is computed from public inputs), with a spy in place of the loader, and the
compilers are small shell scripts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch

from inverseflow import cli, info, jit
from inverseflow.jit import _auto, _build, _cache
from inverseflow.ops import _dispatch

import oracle

TESTS = Path(__file__).resolve().parent
SHAPE = ((2, 3), 5, "tl")        # shapes no build specializes (specs.toml: square kernels)
OTHER_SHAPE = ((3, 2), 6, "br")
running_as_root = pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                                     reason="giving a folder to another user needs root")


def _script(path: Path, body: str) -> Path:
    """A stand-in compiler: answers --version, runs ``body`` for a compile."""
    path.write_text('#!/bin/sh\nif [ "$1" = "--version" ]; then echo "stand-in c++ 1.0"; '
                    f'exit 0; fi\n{body}\n')
    path.chmod(0o755)
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache root (0700, ours) and a stand-in compiler that fails every compile."""
    root = tmp_path / "cache"
    root.mkdir(mode=0o700)
    monkeypatch.setenv(jit.CACHE_ENV, str(root))
    monkeypatch.setenv("CXX", str(_script(tmp_path / "refusing-c++",
                                          'echo "stand-in compiler refuses" >&2; exit 1')))
    return root


@pytest.fixture
def loads(monkeypatch):
    """A spy in place of the module loader: the modules it was asked to load."""
    calls = []

    def spy(entry, manifest):
        calls.append(entry)
        raise AssertionError(f"loaded {entry}")

    monkeypatch.setattr(_build, "_load", spy)
    return calls


def _plant(root: Path, shape=SHAPE, library: bytes = b"\x7fELF planted code") -> Path:
    """An entry for ``shape`` that looks sound (its key, a manifest naming the module's
    SHA-256), as anyone who can write the folder could make it."""
    layer = _build.layer_for(*shape)
    toolchain, _, key, name = _build.cache_key(layer, "cpu")
    entry = root / "jit" / name
    entry.mkdir(mode=0o700, parents=True)
    (entry / (name + toolchain.ext_suffix)).write_bytes(library)
    _cache.write_manifest(entry, {
        "key": key, "stem": layer.stem, "backend": "cpu", "module": name,
        "library": name + toolchain.ext_suffix, "kernel": f"{layer.kh}x{layer.kw}",
        "group_channels": layer.group_channels, "serves": "tl/tr/bl/br",
        "kernels": [i.symbol for i in layer.instantiations("cpu")],
        "specializations": [{"name": i.symbol, "dtype": i.dtype, "direction": i.direction}
                            for i in layer.instantiations("cpu")],
        "compile_seconds": 1.0, "created": "2026-11-30T00:00:00+00:00",
        **toolchain.describe()})
    return entry


def _library(entry: Path) -> Path:
    return entry / json.loads((entry / "manifest.json").read_text())["library"]


def _move_behind_link(path: Path) -> Path:
    """Replaces ``path`` by a symbolic link to it (moved next door); returns the target."""
    target = path.with_name(path.name + "-real")
    path.rename(target)
    path.symlink_to(target)
    return target


# What another user could do to a cache, and the path the refusal must name.
SPOILS = {
    "root writable by others": (lambda root, entry: root.chmod(0o777), "root", "chmod go-w"),
    "root writable by the group": (lambda root, entry: root.chmod(0o770), "root", "chmod go-w"),
    "jit/ writable by the group": (lambda root, entry: (root / "jit").chmod(0o775), "jit",
                                   "chmod go-w"),
    "entry writable by the group": (lambda root, entry: entry.chmod(0o770), "entry", "rm -r"),
    "module writable by others": (lambda root, entry: _library(entry).chmod(0o666), "module",
                                  "rm -r"),
    "manifest writable by the group": (lambda root, entry: (entry / "manifest.json").chmod(
        0o664), "manifest", "rm -r"),
    "root is a symbolic link": (lambda root, entry: _move_behind_link(root), "root",
                                "symbolic link"),
    "jit/ is a symbolic link": (lambda root, entry: _move_behind_link(root / "jit"), "jit",
                                "symbolic link"),
    "entry is a symbolic link": (lambda root, entry: _move_behind_link(entry), "entry",
                                 "symbolic link"),
}


def _named(which: str, root: Path, entry: Path) -> str:
    """The path the refusal names (a file's refusal tells to remove its entry)."""
    if which in ("module", "manifest"):
        return str(_library(entry) if which == "module" else entry / "manifest.json")
    return str({"root": root, "jit": root / "jit", "entry": entry}[which])


@pytest.mark.parametrize("spoil", list(SPOILS))
def test_specialize_refuses_a_cache_others_can_write_and_loads_nothing(cache, loads, spoil):
    entry = _plant(cache)
    assert _cache.inspect(entry)[0] is not None   # sound by its hash: the hash is no defence
    spoil_it, which, fix = SPOILS[spoil]
    named = _named(which, cache, entry)   # before the spoil: it may move the entry
    spoil_it(cache, entry)
    with pytest.raises(jit.UntrustedCacheError) as raised:
        jit.specialize(*SHAPE)
    message = str(raised.value)
    assert named + " " in message and fix in message, message
    if fix == "rm -r":
        assert f"rm -r {entry}`" in message
    assert loads == []


def test_cli_specialize_names_the_folder_and_the_fix(cache, loads, capsys):
    _plant(cache)
    cache.chmod(0o777)
    assert cli.main(["jit", "--specialize", "2x3", "5", "tl"]) == 2
    err = capsys.readouterr().err
    assert f"{cache} is writable by group and others" in err
    assert f"chmod go-w {cache}" in err and "INVERSEFLOW_CACHE" in err
    assert loads == []


@running_as_root
@pytest.mark.parametrize("which", ["root", "jit", "entry", "module"])
def test_a_folder_or_module_of_another_user_is_refused(cache, loads, which):
    entry = _plant(cache)
    path = {"root": cache, "jit": cache / "jit", "entry": entry, "module": _library(entry)}[which]
    os.chown(path, 4242, 4242, follow_symlinks=False)   # modes stay 0700 / 0644
    with pytest.raises(jit.UntrustedCacheError, match="belongs to uid 4242"):
        jit.specialize(*SHAPE)
    assert loads == []


@pytest.fixture
def background(monkeypatch):
    """INVERSEFLOW_JIT=1 in this process, with none of other tests' shapes or refusals."""
    monkeypatch.setattr(_auto, "_requested", set())
    monkeypatch.setattr(_auto, "_gave_up", set())
    monkeypatch.setattr(_auto, "_slots", {}, raising=False)
    monkeypatch.setattr(_auto, "_cache_refused", threading.Event(), raising=False)
    jit.enable(True)
    yield
    jit.wait()
    jit.enable(False)


def test_background_mode_warns_once_and_keeps_the_generic_kernel(cache, loads, background,
                                                                 rng):
    _plant(cache)
    _plant(cache, OTHER_SHAPE)
    cache.chmod(0o757)
    names = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for (kh, kw), channels, order in (SHAPE, OTHER_SHAPE, SHAPE, OTHER_SHAPE):
            weight = oracle.random_weight(channels, kh, kw, order.upper(), rng)
            y = torch.randn(2, channels, 5, 4, generator=rng, dtype=torch.float64)
            x, name = _dispatch.solve(y, weight, order.upper())
            jit.wait()
            names.append(name)
            assert oracle.rel_err(x, oracle.inv_conv(y, weight, order.upper())) < 1e-10
    assert names == ["generic"] * 4
    refusals = [str(w.message) for w in caught if issubclass(w.category, jit.JitWarning)]
    assert len(refusals) == 1 and f"{cache} is writable by others" in refusals[0], refusals
    assert loads == []


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_cache_folders_and_files_are_created_private(tmp_path, monkeypatch, umask):
    """Folders 0700, whatever the umask; module and manifest writable by the owner alone."""
    root = tmp_path / "new" / "cache"
    monkeypatch.setenv(jit.CACHE_ENV, str(root))
    # A stand-in compiler that "succeeds": the entry is published, then fails to load.
    output = 'while [ $# -gt 1 ]; do shift; done; printf "not a module" > "$1"'
    monkeypatch.setenv("CXX", str(_script(tmp_path / "stand-in-c++", output)))
    previous = os.umask(umask)
    try:
        with pytest.raises(jit.JitError, match="does not load"):
            jit.specialize(*SHAPE)
    finally:
        os.umask(previous)
    (entry,) = [p for p in (root / "jit").iterdir() if not p.name.startswith(".")]
    for folder in (root, root / "jit", root / "jit" / ".locks", root / "jit" / ".tmp", entry):
        assert folder.stat().st_mode & 0o777 == 0o700, (folder, oct(folder.stat().st_mode))
    for file in (entry / "manifest.json", _library(entry)):
        assert file.stat().st_mode & 0o022 == 0, (file, oct(file.stat().st_mode))
    assert _cache.inspect(entry)[0] is not None   # our own entry is trusted


def test_default_cache_follows_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.delenv(jit.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert jit.cache_dir() == tmp_path / "xdg" / "inverseflow" / "jit"
    monkeypatch.setenv(jit.CACHE_ENV, str(tmp_path / "explicit"))   # it still wins
    assert jit.cache_dir() == tmp_path / "explicit" / "jit"
    monkeypatch.delenv(jit.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")   # invalid by the XDG spec
    assert jit.cache_dir() == Path.home() / ".cache" / "inverseflow" / "jit"


def _tree(folder: Path) -> dict:
    """Every path under ``folder`` with its contents (links as their targets)."""
    return {str(p.relative_to(folder)): (os.readlink(p) if p.is_symlink() else
                                         p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def test_clear_removes_only_entries_of_ours(cache, tmp_path):
    ours = _plant(cache)
    damaged = _plant(cache, OTHER_SHAPE)
    _library(damaged).write_bytes(b"trunc")            # ours still: its manifest is ours
    jit_dir = cache / "jit"
    (jit_dir / "my-notes").mkdir()
    (jit_dir / "my-notes" / "todo.txt").write_text("keep me")
    foreign = jit_dir / "foreign"
    foreign.mkdir()
    (foreign / "manifest.json").write_text(json.dumps({"format": 1, "backend": "cpu"}))
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "photos").mkdir(parents=True)
    (elsewhere / "photos" / "a.txt").write_text("precious")
    (jit_dir / "linked").symlink_to(elsewhere)
    before = {name: _tree(path) for name, path in
              (("notes", jit_dir / "my-notes"), ("foreign", foreign), ("elsewhere", elsewhere))}

    cleared = jit.clear_cache()
    after = {name: _tree(path) if path.exists() else "removed" for name, path in
             (("notes", jit_dir / "my-notes"), ("foreign", foreign), ("elsewhere", elsewhere))}
    assert after == before and (jit_dir / "linked").is_symlink()
    assert cleared.removed == 2 and not ours.exists() and not damaged.exists()
    assert sorted(Path(line.split(":")[0]).name for line in cleared.left) == [
        "foreign", "linked", "my-notes"]


def test_clear_never_follows_a_jit_symlink(cache, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "projects").mkdir(parents=True)
    (elsewhere / "todo.txt").write_text("notes")
    _plant(cache)
    (cache / "jit").rename(elsewhere / "jit-like")      # even a folder with an entry of ours
    (cache / "jit").symlink_to(elsewhere)
    before = _tree(elsewhere)
    assert cli.main(["jit", "--clear"]) == 2
    assert f"{cache / 'jit'} is a symbolic link" in capsys.readouterr().err
    assert _tree(elsewhere) == before


def test_clear_leaves_an_entry_whose_lock_is_held(cache):
    entry = _plant(cache)
    with _cache.lock(entry.name):      # a compile (or a rebuild) of that key in progress
        cleared = jit.clear_cache()
    assert entry.exists() and cleared.removed == 0
    assert len(cleared.left) == 1 and "lock" in cleared.left[0]
    assert jit.clear_cache().removed == 1 and not entry.exists()


def test_clear_finishes_when_another_process_removed_an_entry_first(cache, monkeypatch):
    first, second = _plant(cache), _plant(cache, OTHER_SHAPE)
    real_rename = os.rename

    def removed_first_by_someone_else(source, target, *args, **kwargs):
        if Path(source) == first:
            real_rename(first, first.with_name(".gone"))
        return real_rename(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "rename", removed_first_by_someone_else)
    cleared = jit.clear_cache()
    assert cleared.removed == 1 and cleared.left == []
    assert not first.exists() and not second.exists()


@pytest.mark.parametrize("spoil", ["no backend", "group channels a string", "not an object",
                                   "unknown backend"])
def test_list_and_info_tolerate_an_invalid_manifest(cache, capsys, spoil):
    good, bad = _plant(cache), _plant(cache, OTHER_SHAPE)
    manifest = json.loads((bad / "manifest.json").read_text())
    if spoil == "no backend":
        del manifest["backend"]
    elif spoil == "group channels a string":
        manifest["group_channels"] = "6"
    elif spoil == "unknown backend":
        manifest["backend"] = "tpu"
    else:
        manifest = [manifest]
    (bad / "manifest.json").write_text(json.dumps(manifest))

    assert cli.main(["jit", "--list"]) == 0
    out = capsys.readouterr().out
    assert f"{bad.name}: corrupt" in out and "invconv_k2x3_g5 [cpu]" in out, out
    assert cli.main(["jit", "--list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["path"]: r["status"] == "ok" for r in rows} == {str(good): True, str(bad): False}
    jit_rows = info.collect()["jit"]["specializations"]["cpu"]
    assert {(r["kernel"], r["group_channels"]) for r in jit_rows} == {("2x3", 5)}
    assert cli.main(["info"]) == 0


def test_background_compiles_run_one_per_backend(monkeypatch, background):
    """Six new shapes at once, on two backends: never two compiles of one backend together."""
    running = {"cpu": 0, "cuda": 0}
    most = {"cpu": 0, "cuda": 0}
    done = []
    changed = threading.Condition()

    def compile_slowly(kernel_size, channels, pattern, device):
        with changed:
            running[device] += 1
            most[device] = max(most[device], running[device])
            changed.notify_all()
            # Gives a second compile of this backend every chance to start meanwhile.
            changed.wait_for(lambda: running[device] > 1, timeout=0.5)
            running[device] -= 1
            done.append((device, channels))

    monkeypatch.setattr(_build, "specialize", compile_slowly)
    shapes = [("cpu", c) for c in (5, 6, 7, 9)] + [("cuda", c) for c in (5, 6)]
    for device, channels in shapes:
        _auto.on_unspecialized(device, (2, 3), channels, "TL")
    assert jit.wait(timeout=60)
    assert sorted(done) == sorted(shapes)
    assert most == {"cpu": 1, "cuda": 1}


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by init, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = _alive(pid)
    if alive:
        os.kill(pid, signal.SIGKILL)   # leave no stray process behind a failed test
    return not alive


@pytest.fixture
def slow_compiler(tmp_path, monkeypatch):
    """CXX that starts a long-running child (as g++ starts cc1plus), writes its pid to a
    file and waits for it. The child's output does not go to the pipe (so that a compile
    killed alone does not keep the reader waiting)."""
    pid_file = tmp_path / "cc1plus.pid"
    script = _script(tmp_path / "slow-c++", f'sleep 300 >/dev/null 2>&1 &\n'
                                            f'echo $! > "{pid_file}"\nwait')
    monkeypatch.setenv("CXX", str(script))
    return pid_file


def test_a_compile_timeout_kills_the_compilers_process_group(cache, slow_compiler,
                                                             monkeypatch):
    monkeypatch.setattr(_build, "COMPILE_TIMEOUT_S", 5)
    with pytest.raises(jit.CompileError, match="timeout"):
        jit.specialize(*SHAPE)
    assert _gone_within(int(slow_compiler.read_text()), 30)


INTERRUPTED_CHILD = """
    import signal, sys, time, torch, inverseflow, oracle
    from inverseflow.ops import _dispatch
    # A shell's background job inherits SIGINT ignored; Python keeps it so. Take Ctrl-C.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if sys.argv[1] == "explicit":
        inverseflow.jit.specialize((2, 3), 5, "tl")
    else:   # INVERSEFLOW_JIT=1: the compile runs in a daemon thread
        g = torch.Generator().manual_seed(0)
        w = oracle.random_weight(5, 2, 3, "TL", g)
        _dispatch.solve(torch.randn(1, 5, 3, 3, generator=g, dtype=torch.float64), w, "TL")
        time.sleep(600)
"""


@pytest.mark.parametrize("mode", ["explicit", "background"])
def test_ctrl_c_during_a_compile_leaves_no_compiler_running(cache, slow_compiler, tmp_path,
                                                            mode):
    """SIGINT to the Python process alone (as a job runner sends it)."""
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path, INVERSEFLOW_JIT="1" if mode == "background" else "0")
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(INTERRUPTED_CHILD), mode],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not slow_compiler.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert slow_compiler.exists(), child.communicate(timeout=60)
        time.sleep(0.2)   # the pid is written before the file is closed
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode != 0 and "KeyboardInterrupt" in err, err
    assert _gone_within(int(slow_compiler.read_text()), 30)
