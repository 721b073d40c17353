"""What the documents claim: figures that match what the code does, sources a reader can open."""

import inspect
import os
import re

from configs import demo as demo_config
from effdr_tf import demo
from effdr_tf.data.sources.synthetic_dr import SyntheticDR

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP = {".git", ".venv", "out", "__pycache__", ".pytest_cache", ".ruff_cache", "node_modules"}


def _documents():
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP and not d.endswith(".egg-info")]
        for name in files:
            if name.endswith((".py", ".md", ".txt", ".html", ".toml", ".cfg")):
                yield os.path.join(folder, name)


def _text(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def test_nothing_cites_a_file_that_is_not_in_the_repository():
    # A reader of a clone can open every source the code and documents name.
    own = os.path.abspath(__file__)
    citing = [
        os.path.relpath(p, ROOT) for p in _documents() if p != own and "ANCHORS.md" in _text(p)
    ]
    assert citing == []


def test_readme_states_the_demo_test_split_it_builds():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    stated = re.search(r"held-out test split \((\d+) photographs of (\d+) patients\)", readme)
    assert stated, "the quickstart no longer states the demo's test split"
    images = inspect.signature(demo.run).parameters["num_images"].default
    source = SyntheticDR(num_images=images, seed=demo_config.get_config().seed, image_size=64)
    test = [r for r in source.scan() if r.split == "test"]
    assert (int(stated[1]), int(stated[2])) == (len(test), len({r.patient_id for r in test}))


def test_benchmarks_readme_states_each_protocols_hash():
    import hashlib

    readme = _text(os.path.join(ROOT, "benchmarks", "README.md"))
    folder = os.path.join(ROOT, "benchmarks", "protocols")
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        assert f"`benchmarks/protocols/{name}` | `{digest}`" in readme, name
