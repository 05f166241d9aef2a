"""The Dataflow worker environment agrees with the code (docs/dataflow.md).

* The Flex Template metadata (dataflow/mine_template_metadata.json) is what
  ``python -m beam_pipelines.tools.dataflow_template`` generates from :class:`MineOptions`: one parameter
  per flag, no other.
* The image (dataflow/Dockerfile) is Beam's SDK image at the apache-beam version pinned in
  requirements.txt, on a Python that setup.py accepts and that submits the jobs (a worker refuses
  work built by another Python minor version or Beam version), installs exactly requirements.txt
  and the project with ``--no-deps``, and works as a Flex Template image.
* (tests/test_dataflow_flex_template.py runs the Flex Template entry point as the launcher does.)

Each static check is a function returning its problems, and a mutated copy of the real files
shows that each check fails when it should. Nothing leaves 127.0.0.1 (the Docker image cannot be
built here: it is checked statically).
"""
import argparse
import ast
import json
import os
import re
import shlex
from typing import Dict, List, Optional, Tuple

import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.environments import DockerEnvironment
from packaging.specifiers import SpecifierSet

from beam_pipelines.tools import dataflow_template
from beam_pipelines.mine.options import MineOptions, check_options
from tests import harness

# The checkout, or Bazel's runfiles tree (tests/BUILD gives this test the files as data).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SDK_IMAGE = re.compile(r"^apache/beam_python(?P<python>\d+\.\d+)_sdk:(?P<beam>\S+)$")
LAUNCHER_IMAGE = re.compile(
    r"^gcr\.io/dataflow-templates-base/python(?P<python>\d+)-template-launcher-base(:\S+)?$")
LAUNCHER_BINARY = "/opt/google/dataflow/python_template_launcher"
SDK_BOOT = "/opt/apache/beam/boot"


def _read(*parts) -> str:
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
        return f.read()


@pytest.fixture(scope="module")
def files() -> Dict[str, str]:
    return {"dockerfile": _read("dataflow", "Dockerfile"), "dockerignore": _read(".dockerignore"),
            "requirements": _read("requirements.txt"), "setup_py": _read("setup.py")}


# -- reading the files ---------------------------------------------------------------------------

def instructions(dockerfile: str) -> List[Tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    result, pending = [], ""
    for line in dockerfile.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        if full:
            keyword, _, args = full.partition(" ")
            result.append((keyword.upper(), args.strip()))
    return result


def requirement_pins(requirements: str) -> Tuple[Dict[str, str], List[str]]:
    """``{name: version}`` of the ``name[extras]==version`` lines, and the lines pinned otherwise."""
    pins, unpinned = {}, []
    for line in requirements.splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([A-Za-z0-9_.+-]+)", line)
        if match:
            pins[match.group(1).lower().replace("_", "-")] = match.group(3)
        else:
            unpinned.append(line)
    return pins, unpinned


def python_requires(setup_py: str) -> Optional[str]:
    """The ``python_requires`` string of setup.py's ``setup()`` call."""
    for node in ast.walk(ast.parse(setup_py)):
        if isinstance(node, ast.Call):
            for keyword in node.keywords:
                if keyword.arg == "python_requires" and isinstance(keyword.value, ast.Constant):
                    return keyword.value.value
    return None


class Image:
    """What a Dockerfile builds, as far as these checks need: stages, copies, installs, settings."""

    def __init__(self, dockerfile: str):
        self.stages: List[Tuple[str, Optional[str]]] = []  # (image, alias)
        self.copies: List[Tuple[Optional[str], List[str], str]] = []  # (from stage, sources, dest)
        self.pip_installs: List[List[str]] = []  # the words after "pip install"
        self.commands: List[List[str]] = []  # every RUN command's words, ENV values substituted
        self.env: Dict[str, str] = {}
        self.entrypoint: Optional[str] = None
        workdir = "/"
        for keyword, args in instructions(dockerfile):
            if keyword == "FROM":
                words = args.split()
                alias = words[2] if len(words) > 2 and words[1].upper() == "AS" else None
                self.stages.append((words[0], alias))
                self.copies, self.pip_installs, self.env, self.entrypoint = [], [], {}, None
                self.commands = []
            elif keyword == "WORKDIR":
                workdir = os.path.join(workdir, args)
            elif keyword in ("COPY", "ADD"):
                words = shlex.split(args)
                flags = [w for w in words if w.startswith("--")]
                paths = [w for w in words if not w.startswith("--")]
                source_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
                self.copies.append((source_stage, paths[:-1], os.path.join(workdir, paths[-1])))
            elif keyword == "RUN":
                for command in re.split(r"&&|;|\|\|", args):
                    words = [re.sub(r"\$\{?(\w+)\}?", lambda m: self.env.get(m.group(1), m.group(0)), w)
                             for w in shlex.split(command)]
                    self.commands.append(words)
                    for i in range(len(words) - 1):
                        is_pip = re.fullmatch(r"pip3?(\.\d+)?", os.path.basename(words[i]))
                        if is_pip and words[i + 1] == "install":
                            self.pip_installs.append(words[i + 2:])
                            break
            elif keyword == "ENV":
                items = shlex.split(args)
                if items and "=" not in items[0]:  # the legacy form: ENV KEY value
                    items = [items[0] + "=" + " ".join(items[1:])]
                for item in items:
                    key, _, value = item.partition("=")
                    self.env[key] = value
            elif keyword == "ENTRYPOINT":
                self.entrypoint = args

    def copied_to(self, source: str) -> List[str]:
        """Container paths a build-context path is copied to (by the final stage)."""
        targets = []
        for stage, sources, dest in self.copies:
            if stage is None and source in sources:
                single_file = len(sources) == 1 and not dest.endswith("/")
                target = dest if single_file else os.path.join(dest, os.path.basename(source))
                targets.append(os.path.normpath(target))
        return targets


# -- the checks ----------------------------------------------------------------------------------

def image_problems(dockerfile: str, requirements: str, setup_py: str, dockerignore: str,
                   submitting_image: str) -> List[str]:
    """Everything that keeps the image from being a worker and Flex Template image for this code."""
    problems = []
    image = Image(dockerfile)
    pins, unpinned = requirement_pins(requirements)
    if unpinned:
        problems.append(f"requirements.txt has lines not pinned with ==: {unpinned}")
    if not image.stages:
        return problems + ["no FROM"]

    base = SDK_IMAGE.match(image.stages[-1][0])
    if not base:
        return problems + [f"the image's base {image.stages[-1][0]} is not Beam's Python SDK image "
                           f"apache/beam_pythonX.Y_sdk:VERSION"]
    python, beam = base.group("python"), base.group("beam")
    if beam != pins.get("apache-beam"):
        problems.append(f"base image Beam {beam} != apache-beam=={pins.get('apache-beam')} of requirements.txt")
    if not SpecifierSet(python_requires(setup_py) or "").contains(python + ".0"):
        problems.append(f"base image Python {python} is not allowed by setup.py's "
                        f"python_requires={python_requires(setup_py)!r}")
    if image.stages[-1][0] != submitting_image:
        problems.append(f"base image {image.stages[-1][0]} != {submitting_image}, the SDK image of the "
                        f"Python and Beam that submit jobs (workers refuse work built by another)")

    launchers = [(img, alias) for img, alias in image.stages[:-1] if LAUNCHER_IMAGE.match(img)]
    launcher_copied = [stage for stage, sources, dest in image.copies
                       if sources == [LAUNCHER_BINARY] and dest == LAUNCHER_BINARY]
    if not launchers or not launcher_copied or launcher_copied[0] not in {a for _, a in launchers}:
        problems.append(f"the Flex Template launcher is not copied to {LAUNCHER_BINARY} from a "
                        f"gcr.io/dataflow-templates-base/pythonXY-template-launcher-base stage")
    for img, _ in launchers:
        if LAUNCHER_IMAGE.match(img).group("python") != python.replace(".", ""):
            problems.append(f"launcher {img} is not for Python {python}")

    problems += _install_problems(image)
    if _exec_form(image.entrypoint) != [SDK_BOOT]:
        problems.append(f"ENTRYPOINT is {image.entrypoint}, not [\"{SDK_BOOT}\"]: Dataflow starts the "
                        f"SDK worker harness through it")
    py_file = image.env.get("FLEX_TEMPLATE_PYTHON_PY_FILE")
    if not py_file or py_file not in image.copied_to("dataflow/main.py"):
        problems.append("FLEX_TEMPLATE_PYTHON_PY_FILE does not name the copy of dataflow/main.py")
    for variable in ("FLEX_TEMPLATE_PYTHON_SETUP_FILE", "FLEX_TEMPLATE_PYTHON_REQUIREMENTS_FILE"):
        if variable in image.env:
            problems.append(f"{variable} is set: the launcher would install again what the image has")

    problems += _model_problems(image)
    problems += _dockerignore_problems(image, dockerignore)
    return problems


def _model_problems(image: Image) -> List[str]:
    """The image converts the default models, with set-up's recipe, where ``mine`` looks for them
    (``ACTIVEBEAM_MODELS``): without them a job launched from the image refuses to run."""
    models = image.env.get("ACTIVEBEAM_MODELS")
    for words in image.commands:
        if "transforms.score.pretrained.convert" in words:
            i = words.index("transforms.score.pretrained.convert")
            out = [w.split("=", 1)[1] for w in words[i:] if w.startswith("--output_dir=")]
            out += [words[j + 1] for j in range(i, len(words) - 1) if words[j] == "--output_dir"]
            if models and out == [models] and words[i - 1] == "-m":
                return []
    return ["the image does not convert the default models into $ACTIVEBEAM_MODELS "
            "(python -m transforms.score.pretrained.convert --output_dir $ACTIVEBEAM_MODELS)"]


def _exec_form(instruction_args: Optional[str]) -> Optional[list]:
    """``["a", "b"]`` of an exec-form ENTRYPOINT/CMD, None for the shell form or none."""
    try:
        return json.loads(instruction_args) if instruction_args else None
    except ValueError:
        return None


def _install_problems(image: Image) -> List[str]:
    """The image installs requirements.txt, and the project with --no-deps, and nothing else."""
    problems = []
    requirement_files = set(image.copied_to("requirements.txt"))
    project_dirs = {os.path.dirname(p) for p in image.copied_to("setup.py")}
    installed_requirements = installed_project = False
    for words in image.pip_installs:
        requirement_args = [words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-r", "--requirement")]
        other_files = [w for w in words if re.match(r"-(c|e|r.)|--(constraint|editable)|--requirement=", w)]
        targets = [w for i, w in enumerate(words)
                   if not w.startswith("-") and (i == 0 or words[i - 1] not in ("-r", "--requirement"))]
        command = "pip install " + " ".join(words)
        if other_files:
            problems.append(f"`{command}` installs from something other than requirements.txt")
        for path in requirement_args:
            if path not in requirement_files:
                problems.append(f"`{command}` installs {path}, not a copy of requirements.txt")
            installed_requirements = True
        for target in targets:
            if target in project_dirs:
                installed_project = True
                if "--no-deps" not in words:
                    problems.append(f"`{command}` installs the project without --no-deps: pip would "
                                    f"resolve its dependencies anew instead of keeping the pins")
            else:
                problems.append(f"`{command}` installs {target}, which requirements.txt does not pin")
    if not installed_requirements:
        problems.append("the image does not pip install -r (a copy of) requirements.txt")
    if not installed_project:
        problems.append("the image does not pip install the project (the directory of setup.py)")
    return problems


def _dockerignore_problems(image: Image, dockerignore: str) -> List[str]:
    """The build context is only what the image copies."""
    patterns = [line.strip() for line in dockerignore.splitlines()
                if line.strip() and not line.strip().startswith("#")]
    if not patterns or patterns[0] != "*":
        return [".dockerignore does not start by excluding everything ('*')"]
    kept = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    needed = {s.rstrip("/") for stage, sources, _ in image.copies if stage is None for s in sources}
    problems = [f".dockerignore leaves out {s}, which the Dockerfile copies" for s in sorted(needed - kept)]
    problems += [f".dockerignore keeps {s}, which the Dockerfile does not copy" for s in sorted(kept - needed)]
    return problems


def parameter_problems(metadata: dict, flags: List[str]) -> List[str]:
    """The metadata's parameters against the job's flags (names without dashes)."""
    problems = []
    names = [p.get("name") for p in metadata.get("parameters", [])]
    problems += [f"flag --{f} is not a template parameter" for f in flags if f not in names]
    problems += [f"parameter {n} is not a flag of MineOptions" for n in names if n not in flags]
    problems += [f"parameter {n} is listed twice" for n in sorted({n for n in names if names.count(n) > 1})]
    for p in metadata.get("parameters", []):
        for field in ("name", "label", "helpText"):
            if not isinstance(p.get(field), str) or not p[field].strip():
                problems.append(f"parameter {p.get('name')}: {field} is missing (Dataflow requires it)")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", p.get("name") or ""):
            problems.append(f"parameter name {p.get('name')!r} is not a plain identifier")
        if not isinstance(p.get("isOptional"), bool):
            problems.append(f"parameter {p.get('name')}: isOptional is not a boolean")
    for field in ("name", "description"):
        if not metadata.get(field):
            problems.append(f"the template has no {field}")
    return problems


def mine_flags() -> List[str]:
    """The flags of MineOptions, from a parser of their own (not the generator's)."""
    parser = argparse.ArgumentParser(add_help=False)
    MineOptions._add_argparse_args(parser)
    return sorted(vars(parser.parse_args([])))


# -- the tests -----------------------------------------------------------------------------------

def test_metadata_file_is_what_the_generator_makes_from_mine_options():
    assert dataflow_template.drift() == "", (
        "dataflow/mine_template_metadata.json differs from MineOptions: run "
        "`python -m beam_pipelines.tools.dataflow_template` and commit the result")


def test_every_flag_is_a_parameter_and_every_parameter_a_flag():
    metadata = json.loads(_read("dataflow", "mine_template_metadata.json"))
    assert parameter_problems(metadata, mine_flags()) == []


def test_parameter_regexes_accept_the_choices_and_numbers_they_describe():
    parameters = {p["name"]: p for p in dataflow_template.metadata()["parameters"]}
    for action in dataflow_template.mine_actions():
        spec = parameters[action.dest]
        regexes = [re.compile(r) for r in spec.get("regexes", [])]
        if action.choices:
            assert all(r.fullmatch(str(c)) for c in action.choices for r in regexes), spec
            assert not any(r.fullmatch(str(action.choices[0]) + "x") for r in regexes), spec
        elif action.type in (int, float):
            if action.default is not None:
                assert all(r.fullmatch(str(action.default)) for r in regexes), spec
            assert not any(r.fullmatch("ten") for r in regexes), spec
        else:
            assert not regexes, spec


def test_required_parameters_are_those_the_job_refuses_to_run_without_on_dataflow():
    remote = ["--runner=DataflowRunner", "--input=gs://cameras/*.jpg",
              "--mongo_uri=mongodb://127.0.0.1:9", "--output_dir=gs://cameras/out"]
    required = [p["name"] for p in dataflow_template.metadata()["parameters"] if not p["isOptional"]]
    assert required == list(dataflow_template.REQUIRED_ON_DATAFLOW)
    for name in required:
        argv = [a for a in remote if not a.startswith(f"--{name}=")]
        with pytest.raises(ValueError, match=f"--{name}"):
            check_options(PipelineOptions(argv))


def test_metadata_checks_fail_on_drift_and_on_missing_or_extra_parameters(tmp_path):
    path = str(tmp_path / "metadata.json")
    assert dataflow_template.drift(path) == "missing"
    assert dataflow_template.main(["--check", "--path", path]) == 1
    dataflow_template.write(path)
    assert dataflow_template.drift(path) == "" and dataflow_template.main(["--check", "--path", path]) == 0
    metadata = dataflow_template.metadata()
    metadata["parameters"][0]["helpText"] += " Edited by hand."
    with open(path, "w", encoding="utf-8") as f:
        json.dump(metadata, f, indent=2)
    assert dataflow_template.drift(path) == "differs"

    flags = mine_flags()
    first, rest = metadata["parameters"][0], metadata["parameters"][1:]
    assert parameter_problems(dict(metadata, parameters=rest), flags) == [
        f"flag --{first['name']} is not a template parameter"]
    extra = dict(metadata, parameters=[first] + rest + [dict(first, name="frames")])
    assert parameter_problems(extra, flags) == ["parameter frames is not a flag of MineOptions"]
    twice = dict(metadata, parameters=[first, first] + rest)
    assert parameter_problems(twice, flags) == [f"parameter {first['name']} is listed twice"]
    no_help = dict(metadata, parameters=[dict(first, helpText="")] + rest)
    assert parameter_problems(no_help, flags) == [
        f"parameter {first['name']}: helpText is missing (Dataflow requires it)"]


def test_image_agrees_with_requirements_setup_py_and_the_submitting_python(files):
    assert image_problems(**files, submitting_image=DockerEnvironment.default_docker_image()) == []


def _sub(pattern: str, new: str):
    """A mutation: ``re.sub(pattern, new)`` on one file, which must contain ``pattern``."""
    def mutate(text: str) -> str:
        assert re.search(pattern, text), f"{pattern!r} is not in the file any more: update this test"
        return re.sub(pattern, new, text)
    return mutate


# name: (file, mutation, a problem it must cause). Versions are read from the files, not written here.
SDK_TAG = r"apache/beam_python\d+\.\d+_sdk:\S+"
REQUIREMENTS_RUN = r"RUN pip install --no-cache-dir -r (\S+)"
MUTATIONS = {
    "older Beam in FROM": ("dockerfile", _sub(r"(apache/beam_python\d+\.\d+_sdk):\S+", r"\1:0.0.1"),
                           "base image Beam 0.0.1 != apache-beam=="),
    "other Beam pinned": ("requirements", _sub(r"(apache-beam(\[\w+\])?)==\S+", r"\1==0.0.1"),
                          "!= apache-beam==0.0.1 of requirements.txt"),
    "unpinned requirement": ("requirements", _sub(r"\Z", "\nrequests\n"), "not pinned with =="),
    "Python setup.py refuses": ("setup_py", _sub(r"python_requires=\"[^\"]*\"", 'python_requires=">=9.0"'),
                                "is not allowed by setup.py"),
    "other Python than the launcher": ("dockerfile", _sub(r"apache/beam_python\d+\.\d+_sdk",
                                                          "apache/beam_python3.99_sdk"), "is not for Python 3.99"),
    "not Beam's image": ("dockerfile", _sub(SDK_TAG, "python:3.11-slim"), "is not Beam's Python SDK image"),
    "extra unpinned package": ("dockerfile", _sub(REQUIREMENTS_RUN, r"\g<0> && pip install --upgrade requests"),
                               "installs requests, which requirements.txt does not pin"),
    "requirements not installed": ("dockerfile", _sub(REQUIREMENTS_RUN, "RUN pip install apache-beam[gcp]"),
                                   "does not pip install -r"),
    "other requirements file": ("dockerfile", _sub(REQUIREMENTS_RUN, "RUN pip install -r /tmp/other.txt"),
                                "installs /tmp/other.txt, not a copy of requirements.txt"),
    "constraints added": ("dockerfile", _sub(REQUIREMENTS_RUN, r"\g<0> -c /tmp/constraints.txt"),
                          "installs from something other than requirements.txt"),
    "project with its dependencies": ("dockerfile", _sub(r"--no-deps ", ""), "without --no-deps"),
    "project not installed": ("dockerfile", _sub(r"pip install --no-cache-dir --no-deps \S+ && ", ""),
                              "does not pip install the project"),
    "no launcher": ("dockerfile", _sub(r"COPY --from=launcher", "COPY --from=elsewhere"),
                    "launcher is not copied"),
    "entrypoint replaced": ("dockerfile", _sub(r"ENTRYPOINT .*", 'ENTRYPOINT ["python"]'), "ENTRYPOINT is"),
    "entrypoint in shell form": ("dockerfile", _sub(r"ENTRYPOINT .*", "ENTRYPOINT /opt/apache/beam/boot"),
                                 "ENTRYPOINT is"),
    "no Flex Template entry point": ("dockerfile", _sub(r"FLEX_TEMPLATE_PYTHON_PY_FILE=\S+",
                                                        "FLEX_TEMPLATE_PYTHON_PY_FILE=/template/other.py"),
                                     "FLEX_TEMPLATE_PYTHON_PY_FILE does not name"),
    "setup file at launch": ("dockerfile", _sub(r"FLEX_TEMPLATE_PYTHON_PY_FILE=\S+",
                                                r"\g<0> FLEX_TEMPLATE_PYTHON_SETUP_FILE=/x"),
                             "FLEX_TEMPLATE_PYTHON_SETUP_FILE is set"),
    "no default models": ("dockerfile", _sub(r"(?m)^ENV ACTIVEBEAM_MODELS=.*\n", ""),
                          "does not convert the default models"),
    "models converted elsewhere": ("dockerfile", _sub(r"--output_dir \S+", "--output_dir /tmp/m"),
                                   "does not convert the default models"),
    "context keeps too little": ("dockerignore", _sub(r"(?m)^!schemas\n", ""), "leaves out schemas"),
    "context keeps everything": ("dockerignore", _sub(r"(?m)^\*\n", ""), "does not start by excluding everything"),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_each_image_check_fails_when_it_should(files, mutation):
    key, mutate, expected = MUTATIONS[mutation]
    mutated = dict(files, **{key: mutate(files[key])})
    problems = image_problems(**mutated, submitting_image=DockerEnvironment.default_docker_image())
    assert any(expected in p for p in problems), problems


def test_image_must_match_the_python_that_submits_jobs(files):
    other_python = re.sub(r"python\d+\.\d+", "python3.99", DockerEnvironment.default_docker_image())
    problems = image_problems(**files, submitting_image=other_python)
    assert any("the SDK image of the Python and Beam that submit jobs" in p for p in problems), problems


if __name__ == "__main__":
    harness.main(__file__)
