"""The ``mine`` job's Dataflow Flex Template metadata, generated from :class:`MineOptions`.

    python -m beam_pipelines.tools.dataflow_template            # (re)write dataflow/mine_template_metadata.json
    python -m beam_pipelines.tools.dataflow_template --check    # exit 1 if the file differs (CI, tests)

``gcloud dataflow flex-template build ... --metadata-file dataflow/mine_template_metadata.json``
merges the file into the template spec: Dataflow then checks a launch's parameters against it
(required ones present, values matching ``regexes``) and the console shows a form built from it.
See docs/dataflow.md.

Every parameter is one flag of :class:`~beam_pipelines.mine.options.MineOptions`, read from its
argparse action (the job's options have a single source; this file only describes them):

* ``name``: the flag without its dashes (the launcher passes ``--name=value`` to the job);
* ``label``: the name in words;
* ``helpText``: the flag's help, with its default (or "Required on Dataflow.");
* ``isOptional``: false for the flags in :data:`REQUIRED_ON_DATAFLOW`, true for the others;
* ``regexes``: ``^(a|b)$`` for a flag with choices, a number pattern for ``int``/``float`` flags.

Standard Beam options (``sdk_container_image``, ``max_num_workers``, ...) are not template
parameters: ``gcloud dataflow flex-template run`` takes them as its own flags or ``--parameters``.
"""
import argparse
import json
import os
import re
import sys
from typing import Dict, List

from beam_pipelines.mine.options import MineOptions

DEFAULT_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                            "dataflow", "mine_template_metadata.json")

TEMPLATE_NAME = "activebeam mine"
TEMPLATE_DESCRIPTION = (
    "Decodes camera images and videos, scores every frame with a TensorFlow model through "
    "RunInference, indexes one record per frame in MongoDB (and BigQuery) and selects the frames "
    "to annotate next. Standard Beam and Dataflow options (sdk_container_image, max_num_workers, "
    "number_of_worker_harness_threads, ...) are passed as usual; see docs/dataflow.md.")

#: Flags the job refuses to run without on a remote runner (``check_options``: the bundled sample
#: media and the embedded mongod live on the submitting machine only).
REQUIRED_ON_DATAFLOW = ("input", "mongo_uri")

#: Words spelled otherwise in labels.
_LABEL_WORDS = {"bigquery": "BigQuery", "dir": "directory", "fps": "FPS", "id": "ID", "mc": "MC",
                "mongo": "MongoDB", "n": "N", "params": "parameters", "s": "(s)", "uri": "URI"}

INT_PATTERN = r"^[+-]?[0-9]+$"
FLOAT_PATTERN = r"^[+-]?([0-9]+([.][0-9]*)?|[.][0-9]+)([eE][+-]?[0-9]+)?$"


class _RecordingParser(argparse.ArgumentParser):
    """An argument parser that keeps the action of every ``add_argument`` call, in order."""

    def __init__(self):
        super().__init__(add_help=False)
        self.recorded: List[argparse.Action] = []

    def add_argument(self, *args, **kwargs):
        action = super().add_argument(*args, **kwargs)
        self.recorded.append(action)
        return action


def mine_actions() -> List[argparse.Action]:
    """The argparse actions of :class:`MineOptions`' flags, in declaration order."""
    parser = _RecordingParser()
    MineOptions._add_argparse_args(parser)
    return parser.recorded


def _name(action: argparse.Action) -> str:
    long_flags = [s for s in action.option_strings if s.startswith("--")]
    if not long_flags:
        raise ValueError(f"MineOptions flag {action.option_strings} has no --long form")
    return long_flags[0][2:]


def _label(name: str) -> str:
    words = [_LABEL_WORDS.get(w, w) for w in name.split("_")]
    return " ".join([words[0][:1].upper() + words[0][1:]] + words[1:])


def _help_text(action: argparse.Action) -> str:
    text = " ".join((action.help or _label(action.dest) + ".").split())
    if _name(action) in REQUIRED_ON_DATAFLOW:
        text += " Required on Dataflow."
    elif action.default is not None and "default:" not in text.lower():
        text += f" Default: {action.default}."
    return text


def _regexes(action: argparse.Action) -> List[str]:
    if action.choices:
        return ["^(" + "|".join(re.escape(str(c)) for c in action.choices) + ")$"]
    if action.type is int:
        return [INT_PATTERN]
    if action.type is float:
        return [FLOAT_PATTERN]
    return []


def parameter(action: argparse.Action) -> Dict:
    """One Flex Template ``ParameterMetadata`` for one flag."""
    name = _name(action)
    spec = {"name": name, "label": _label(name), "helpText": _help_text(action),
            "isOptional": name not in REQUIRED_ON_DATAFLOW}
    regexes = _regexes(action)
    if regexes:
        spec["regexes"] = regexes
    return spec


def metadata() -> Dict:
    """The template's ``TemplateMetadata``: name, description and one parameter per flag."""
    return {"name": TEMPLATE_NAME, "description": TEMPLATE_DESCRIPTION, "streaming": False,
            "parameters": [parameter(a) for a in mine_actions()]}


def render() -> str:
    return json.dumps(metadata(), indent=2, ensure_ascii=False) + "\n"


def drift(path: str = DEFAULT_PATH) -> str:
    """'' when ``path`` holds :func:`render`'s text, else 'missing' or 'differs'."""
    if not os.path.exists(path):
        return "missing"
    with open(path, encoding="utf-8") as f:
        return "" if f.read() == render() else "differs"


def write(path: str = DEFAULT_PATH) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(render())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="Only report drift; exit 1 if any.")
    parser.add_argument("--path", default=DEFAULT_PATH, help="The metadata file (default: %(default)s).")
    args = parser.parse_args(argv)
    if args.check:
        problem = drift(args.path)
        if problem:
            print(f"{problem}: {args.path}\nrun `python -m beam_pipelines.tools.dataflow_template` and "
                  f"commit the result", file=sys.stderr)
        return 1 if problem else 0
    write(args.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
