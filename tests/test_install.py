"""A clean install: ``pip install .`` gives the three packages of the design and nothing else, and
the installed library finds its default model through the package, from any working directory."""
import glob
import json
import os
import subprocess
import sys
import zipfile

import pytest

from tests import harness

INSTALLED = {"beam_pipelines", "transforms", "schemas"}


@pytest.fixture(scope="module")
def wheel():
    d = harness.tmpdir()
    setup_py = harness.project_copy(d)
    dist = os.path.join(d, "dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--no-index", "-q", "-w", dist, os.path.dirname(setup_py)], check=True)
    [path] = glob.glob(os.path.join(dist, "*.whl"))
    return path


def test_wheel_holds_only_the_three_packages_with_their_data(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == INSTALLED  # no models, benchmarks, tests (PyPI has distributions named so)
    for required in ("transforms/score/models/fashion_mnist_cnn.keras",
                     "transforms/decode/ptransforms.py", "transforms/score/registry.py",
                     "schemas/generated/bigquery/frames.json", "schemas/generated/scores.md",
                     "schemas/views/overview.sql", "beam_pipelines/mine/__main__.py", "beam_pipelines/mine/batch.py",
                     "beam_pipelines/report/assets/index.html", "beam_pipelines/report/assets/report.js"):
        assert required in names, required
    assert not [n for n in names if n.endswith("/BUILD")]


def test_installed_package_finds_its_model_and_media_from_a_folder_with_its_own_models(wheel):
    d = harness.tmpdir()
    site = os.path.join(d, "site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                    "--target", site, wheel], check=True)
    user = os.path.join(d, "user-project")
    os.makedirs(os.path.join(user, "models"))
    with open(os.path.join(user, "models", "__init__.py"), "w") as f:
        f.write("raise ImportError('the user project models package was imported')\n")
    code = ("import json, os, sys\n"
            "from beam_pipelines.local import sample_media\n"
            "from transforms.score import handlers, model_base\n"
            "spec = handlers.load_model_spec()\n"
            "globs = sample_media.prepare(sys.argv[1])\n"
            "print(json.dumps({'module': handlers.__file__, 'model': model_base.default_model_path(),\n"
            "                  'name': spec.version.name, 'cwd': os.getcwd(), 'globs': globs}))\n")
    env = dict(os.environ, PYTHONPATH=site, TF_CPP_MIN_LOG_LEVEL="3")
    media = os.path.join(d, "media")
    out = subprocess.run([sys.executable, "-c", code, media], cwd=user, env=env, check=True,
                         capture_output=True, text=True).stdout
    found = json.loads(out.strip().splitlines()[-1])
    assert found["module"].startswith(site)  # the installed copy, not the checkout
    assert found["model"].startswith(site) and os.path.isfile(found["model"])
    assert found["name"] == "fashion_mnist_cnn"
    assert found["cwd"] == user
    # The default input (the bundled sample media) is prepared by the installed package alone.
    assert all(glob.glob(g) for g in found["globs"]), found["globs"]


if __name__ == "__main__":
    harness.main(__file__)
