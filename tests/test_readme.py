"""The README and docs are tested: every ``refopt ...`` / ``python -m refopt ...`` command in a shell code
block of README.md and docs/*.md runs (in-process, through ``refopt.cli.main``) with small step counts in a
temporary folder, and the README's self-contained Python snippets run as written.

The commands are rewritten, not skipped: ``--steps N`` becomes ``--steps 2`` (4 when resuming a
checkpoint, so there is something to continue), ``train``, ``compare`` and ``verify export`` get ``--steps
2`` when they have none, ``train`` gets ``--no-progress``, ``--checkpoint-every`` becomes 1, and output
paths (--log, --checkpoint, --out, --plot, --csv, --resume) land in the temporary folder, and the input files
the repository ships (``--data examples/blobs.csv``) are read from the repository. A ``verify check
FILE`` whose FILE no earlier command of the same document wrote (the user's own trace, e.g.
``their_trace.npz``) gets it from that document's first ``verify export`` command, written to FILE.
``test_a_broken_command_fails`` shows that a corrupted command makes the check fail.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import shlex
from pathlib import Path

import pytest

from refopt.cli import main

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGS = {"", "bash", "sh", "shell", "console", "zsh"}
OUTPUT_OPTIONS = {"--log", "--checkpoint", "--out", "--plot", "--csv", "--resume"}
INPUT_OPTIONS = {"--data"}  # a relative path names a file of the repository (examples/)
OPTIONAL = ("torch", "optax", "jax")
# The built-in digits problems load scikit-learn's bundled data (the `scripts` extra): without it their commands
# answer with the one-line "needs scikit-learn" error, which is then the expected outcome, not a broken command.
SKLEARN_MISSING = importlib.util.find_spec("sklearn") is None


def code_blocks(text: str):
    """[(language, first line number, lines)] of the fenced code blocks of a Markdown text."""
    blocks, lang, start, lines = [], None, 0, []
    for i, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"^\s*```(\w*)", line)
        if fence and lang is None:
            lang, start, lines = fence.group(1).lower(), i + 1, []
        elif fence:
            blocks.append((lang, start, lines))
            lang = None
        elif lang is not None:
            lines.append(line)
    return blocks


def extract_commands(text: str):
    """[(line number, argv after ``refopt``)] for every refopt command in the shell code blocks of ``text``
    (a ``$ `` prompt is dropped, ``a && refopt b`` contributes ``refopt b``, comments are removed)."""
    out = []
    for lang, start, lines in code_blocks(text):
        if lang not in SHELL_LANGS:
            continue
        for k, line in enumerate(lines):
            for part in line.strip().removeprefix("$ ").split("&&"):
                if not part.strip().startswith(("refopt", "python -m refopt")):
                    continue  # another command, or a command's output shown in the block (not shell syntax)
                argv = shlex.split(part.strip(), comments=True)
                if argv[:1] == ["refopt"]:
                    out.append((start + k, argv[1:]))
                elif argv[:3] == ["python", "-m", "refopt"]:
                    out.append((start + k, argv[3:]))
    return out


def extract_python(text: str):
    """[(line number, source)] of the ``python`` code blocks of ``text``."""
    return [(start, "\n".join(lines)) for lang, start, lines in code_blocks(text) if lang == "python"]


def _opt_value(argv, name):
    return argv[argv.index(name) + 1] if name in argv[:-1] else None


def adapt(argv, tmp: Path):
    """``argv`` with small step counts and every output path inside ``tmp``."""
    argv = list(argv)
    for i, a in enumerate(argv[:-1]):
        if a in OUTPUT_OPTIONS and argv[i + 1]:
            argv[i + 1] = str(tmp / Path(argv[i + 1]).name) + ("/" if argv[i + 1].endswith("/") else "")
        elif a in INPUT_OPTIONS and not Path(argv[i + 1]).is_absolute():
            argv[i + 1] = str(ROOT / argv[i + 1])
    steps = "4" if "--resume" in argv else "2"
    if "--steps" in argv:
        argv[argv.index("--steps") + 1] = steps
    elif argv[:1] in (["train"], ["compare"]) or argv[:2] == ["verify", "export"]:
        argv += ["--steps", steps]
    if "--checkpoint-every" in argv:
        argv[argv.index("--checkpoint-every") + 1] = "1"
    if argv[:1] == ["train"] and "--no-progress" not in argv:
        argv.append("--no-progress")
    return argv


def _call(argv):
    """(exit status, captured stdout + stderr) of ``refopt argv`` run in-process."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse's own errors
            rc = exc.code if isinstance(exc.code, int) else 2
    return rc, buf.getvalue()


def run_commands(text: str, tmp: Path):
    """Run every refopt command of ``text`` (adapted) in ``tmp``; returns the failures as strings."""
    commands = extract_commands(text)
    exports = [argv for _, argv in commands if argv[:2] == ["verify", "export"] and "--all" not in argv]
    failures = []
    old = os.getcwd()
    os.chdir(tmp)
    try:
        for lineno, argv in commands:
            if any(name in " ".join(argv) for name in OPTIONAL if importlib.util.find_spec(name) is None):
                continue
            if argv[:2] == ["verify", "check"] and len(argv) > 2 and not (tmp / argv[2]).exists():
                if not exports:
                    continue  # the user's own file and no export command to make one
                source = adapt(exports[0], tmp)
                source[source.index("--out") + 1] = str(tmp / argv[2])
                rc, log = _call(source)
                if rc != 0:
                    failures.append(f"line {lineno}: making {argv[2]} with refopt {' '.join(source)} -> {rc}: {log[-500:]}")
                    continue
            adapted = adapt(argv, tmp)
            if SKLEARN_MISSING and "--resume" in adapted and not Path(adapted[adapted.index("--resume") + 1]).exists():
                continue  # its checkpoint came from a digits command skipped for want of scikit-learn
            rc, log = _call(adapted)
            if rc == 2 and SKLEARN_MISSING and "needs scikit-learn" in log:
                continue  # the digits problems need the script extra; the test extra alone does not have it
            if rc != 0:
                failures.append(f"line {lineno}: refopt {' '.join(argv)} (run as refopt {' '.join(adapted)}) "
                                f"exited {rc}: {log[-500:]}")
    finally:
        os.chdir(old)
    return failures


@pytest.fixture(autouse=True)
def _agg_backend(monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_command_runs(doc, tmp_path):
    failures = run_commands(doc.read_text(encoding="utf-8"), tmp_path)
    assert not failures, f"{doc.name}: broken commands:\n" + "\n".join(failures)


def test_readme_has_the_commands_it_documents():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    subcommands = {argv[0] for _, argv in extract_commands(text)}
    assert {"list", "train", "compare", "verify", "analyze"} <= subcommands


def _changed_commands(text: str, broken: str) -> str:
    """A shell block of the commands of ``broken`` that ``text`` does not have (the corrupted ones), so that
    only they run (the README's other commands are run by test_every_command_runs)."""
    before = [argv for _, argv in extract_commands(text)]
    changed = [argv for _, argv in extract_commands(broken) if argv not in before]
    assert len(changed) == 1, changed
    return "```bash\n" + shlex.join(["refopt", *changed[0]]) + "\n```\n"


def test_a_broken_command_fails(tmp_path):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "refopt list" in text
    broken = text.replace("refopt list", "refopt list --no-such-option", 1)
    failures = run_commands(_changed_commands(text, broken), tmp_path)
    assert any("--no-such-option" in f for f in failures)
    broken = re.sub(r"--problem digits_mlp", "--problem no_such_problem", text, count=1)
    (tmp_path / "second").mkdir()
    assert any("no_such_problem" in f for f in run_commands(_changed_commands(text, broken), tmp_path / "second"))


README_SNIPPETS = extract_python((ROOT / "README.md").read_text(encoding="utf-8"))


@pytest.mark.parametrize("lineno,source", README_SNIPPETS, ids=[f"line{n}" for n, _ in README_SNIPPETS])
def test_readme_python_snippet_runs(lineno, source, tmp_path, monkeypatch):
    for name in OPTIONAL:
        if re.search(rf"^\s*(import|from)\s+{name}\b", source, re.M) and importlib.util.find_spec(name) is None:
            pytest.skip(f"needs {name}")
    monkeypatch.chdir(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(source, f"README.md:{lineno}", "exec"), {"__name__": "__readme__"})


def test_a_broken_snippet_fails():
    lineno, source = next((n, s) for n, s in README_SNIPPETS if "minimize(" in s)
    with pytest.raises(Exception), contextlib.redirect_stdout(io.StringIO()):
        exec(compile(source.replace('method="bfgs"', 'method="no_such_method"'), "README", "exec"), {})
