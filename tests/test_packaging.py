"""The files a new user relies on: the two README commands, CI, compose."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.helpers import ROOT


def test_readme_opens_with_the_two_commands_and_ci_calls_the_second():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```(?:bash|sh)\n(.*?)```", readme, flags=re.DOTALL)
    assert [c.strip() for c in commands[:2]] == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "torch==2.13.0" in makefile  # the CPU wheel, installed before anything can pull a CUDA build


def test_compose_services_build_from_the_repository():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        assert (ROOT / service.get("build", ".") / "Dockerfile").is_file(), name
    assert "make setup" in (ROOT / "Dockerfile").read_text()


def test_shipped_alfworld_archives_are_intact():
    from sdar_envs.alfworld.data import _SHA256, PACKAGE_DATA, _sha256

    for name, digest in _SHA256.items():
        assert _sha256(PACKAGE_DATA / name) == digest
    assert (PACKAGE_DATA / "SOURCE.md").is_file()


def test_the_wheel_carries_the_data_files_the_code_reads(tmp_path):
    """A non-editable install must find the ALFWorld archives, the seed skill banks and the demo's warm start."""
    import subprocess
    import sys
    import zipfile

    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("sdar-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for env in ("alfworld", "webshop", "searchqa"):
        assert f"skills/banks/{env}.yaml" in names
    assert "sdar_envs/alfworld/data/json_2.1.1_official_valid.tar.xz" in names
    for name in ("model.safetensors", "tokenizer.json", "config.json", "recipe.json", "SHA256SUMS"):
        assert f"sdar_train/miniature/warmstart/{name}" in names  # make demo's warm start
    for name in ("adapter_model.safetensors", "adapter_config.json", "recipe.json", "SHA256SUMS"):
        assert f"sdar_train/miniature/warmstart_smollm2_webshop/{name}" in names  # make demo-real's
        assert f"sdar_train/miniature/warmstart_smollm2_webshop_40steps/{name}" in names  # and its longer clone


def test_compose_services_bind_localhost_and_have_health_checks():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name in ("webshop", "retrieval"):
        service = compose["services"][name]
        assert all(p.startswith("127.0.0.1:") for p in service["ports"]), name
        assert "/health" in " ".join(service["healthcheck"]["test"]), name
        assert "sdar-cache:/cache" in service["volumes"], name


@pytest.mark.slow
def test_the_docs_python_examples_run_verbatim(tmp_path):
    """Every ```python block of the README and of docs/*.md, each as its own script, from an empty folder."""
    import os
    import re
    import subprocess
    import sys

    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    blocks = [
        (page.name, code) for page in pages for code in re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
    ]
    assert len(blocks) >= 5 and blocks[0][0] == "README.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for i, (page, code) in enumerate(blocks):
        script = tmp_path / f"example_{i}.py"
        script.write_text(code)
        done = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, f"{page}: python block:\n{code}\n{done.stderr[-3000:]}"


def test_the_contributing_guides_example_environment_works():
    """CONTRIBUTING.md's worked example of a new environment runs as written and passes gymnasium's checker."""
    import gymnasium.utils.env_checker

    code = re.search(r"```python\n(.*?)```", (ROOT / "CONTRIBUTING.md").read_text(), re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "CONTRIBUTING.md", "exec"), namespace)
    gymnasium.utils.env_checker.check_env(namespace["EchoEnv"](), skip_render_check=True)


@pytest.mark.parametrize(
    "module",
    [
        "sdar_train",
        "sdar_train.eval",
        "sdar_train.miniature.replicate",
        "sdar_train.miniature.alfworld_warmstart",
        "sdar_train.miniature.real_model",
        "sdar_train.miniature.demo",
        "servers.retrieval.cli",
        "servers.webshop.cli",
        "skills.cli",
    ],
)
def test_every_command_prints_its_help(module):
    """``--help`` lists every flag with its default (a ``%`` in a help text once broke the trainer's)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout and "--" in done.stdout
