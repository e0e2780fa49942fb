"""config.json's environment: git_sha only from a checkout of accbench itself."""

import subprocess

import pytest
from accbench.engine.measure import git_sha


@pytest.mark.parametrize("name,expect_sha", [("someone-elses-project", False), ("accbench", True)])
def test_git_sha_only_from_an_accbench_checkout(tmp_path, name, expect_sha):
    repo = tmp_path / "repo"
    (repo / ".venv" / "site-packages" / "accbench" / "engine").mkdir(parents=True)
    (repo / "pyproject.toml").write_text(f'[project]\nname = "{name}"\nversion = "1"\n')
    module = repo / ".venv" / "site-packages" / "accbench" / "engine" / "measure.py"
    module.write_text("")
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(git[:3] + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "pyproject.toml"], check=True)
    subprocess.run(git + ["commit", "-qm", "x"], check=True)
    head = subprocess.run(git[:3] + ["rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert git_sha(module) == (head if expect_sha else None)


def test_git_sha_of_this_source():
    sha = git_sha()
    assert sha is None or len(sha) == 40
