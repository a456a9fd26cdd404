"""Every command in the README's code blocks runs, in order, and so does every tool's --help example, shrunk to
seconds: run directories go to a temporary folder, an image folder written by the test stands in for the user's,
and each command gets overrides that make its run tiny. A command this file does not know fails the test, so a new
example comes with its check."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from nas.cli import main

ROOT = Path(__file__).resolve().parents[1]

# the overrides that shrink each kind of command, by (tool, recipe)
TINY_SEARCH = ["search.epochs=1", "data.synthetic.train=64", "data.image_size=8", "data.batch_size=16", "model.C=4",
               "model.layers=3", "run.tensorboard=false", "--quiet"]
SHRINK: dict[tuple[str, str], list[str]] = {
    ("search", "configs/quickstart.yaml"): TINY_SEARCH,
    ("evaluate", "configs/eval/quick.yaml"): ["train.epochs=1", "data.synthetic.train=64", "data.synthetic.test=16",
                                              "data.image_size=8", "data.batch_size=16", "model.C=4",
                                              "model.layers=3", "run.tensorboard=false", "--quiet"],
    ("search", "configs/search/zc-train-nb201-small.yaml"): ["data.image_size=8", "data.batch_size=8", "model.C=4",
                                                             "search.samples=3", "search.score_batch=8",
                                                             "search.final.cells=2", "search.final.epochs=1",
                                                             "search.final.average=1", "--quiet"],
    ("compare", "configs/compare/nb201-quality.yaml"): ["methods=[zc-train]", "seeds=[0]", "random.samples=2",
                                                        "data.subset=0", "data.image_size=8", "data.batch_size=8",
                                                        "model.C=4", "per_method.zc-train.samples=3",
                                                        "per_method.zc-train.score_batch=8",
                                                        "per_method.zc-train.final.cells=2",
                                                        "per_method.zc-train.final.epochs=1",
                                                        "per_method.zc-train.final.average=1", "--quiet"],
}
SHRINK[("evaluate", "configs/eval/darts-cifar10.yaml")] = []  # --summary: the network is built, nothing trained
SHRINK[("compare", "configs/compare/quick.yaml")] = [
    "methods=[gdas]", "seeds=[0]", "random.samples=1", "data.synthetic.train=64", "data.synthetic.test=16",
    "data.image_size=8", "data.batch_size=16", "model.C=4", "search.epochs=1", "eval.data.batch_size=16",
    "eval.model.C=4", "eval.train.epochs=1", "run.tensorboard=false", "--quiet"]
NOT_RUN = ("pip install", "python -m pytest", "ruff check", "mypy", "git clone")  # the suite and CI run these
TOOLS = {"search.py": "search", "evaluate.py": "evaluate", "compare.py": "compare"}


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = [line.strip() for b in blocks for line in b.replace("\\\n", " ").splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def image_folder(root: Path) -> Path:
    from PIL import Image

    for split, n in (("train", 10), ("test", 2)):
        for c in range(3):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(n):
                pixel = (60 * c + 5 * i, 100, 180 - 40 * c)
                Image.new("RGB", (12, 12), pixel).save(root / split / f"c{c}" / f"{i}.png")
    return root


def help_examples() -> list[str]:
    import contextlib
    import io

    from nas.cli import TOOLS as CLI_TOOLS

    examples = []
    for tool, _ in CLI_TOOLS.values():
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            tool(["--help"])
        text = " ".join(out.getvalue().split())
        examples += re.findall(r"example: (python .*?)(?:$| {2})", text)
    return examples


def run_command(command: str, images: Path) -> None:
    words = shlex.split(command.replace("~/cifar10-images", str(images)).replace("DIR", str(images))
                        .replace("photos/", str(images / "test")))
    assert words[0] == "python", command
    if words[1] == "-m":
        assert words[2] == "nas", command
        argv = words[3:]
    else:
        assert words[1] in TOOLS, f"command with no check in tests/test_docs.py: {command}"
        argv = [TOOLS[words[1]], *words[2:]]
    recipe = argv[argv.index("--config") + 1] if "--config" in argv else ""
    if argv[0] == "latency":  # the NAS-Bench-201 network at 8 px: every op timed in seconds
        argv += ["data.image_size=8", "search.budget.latency_batch=1"]
    if argv[0] in ("search", "evaluate", "compare"):
        assert (argv[0], recipe) in SHRINK, f"command with no check in tests/test_docs.py: {command}"
        argv += SHRINK[argv[0], recipe]
    assert main(argv) == 0, command


def test_every_readme_command_and_help_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # runs/... land here
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    images = image_folder(tmp_path / "images")
    commands = [c for c in readme_commands() if not c.startswith(NOT_RUN)]
    examples = help_examples()
    assert len(commands) >= 3 and len(examples) >= 4
    for command in commands + examples:  # the README's first: the examples read its runs (runs/quickstart)
        run_command(command, images)
