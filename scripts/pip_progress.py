"""Filters pip's output (stdin) into short progress lines on stdout, for scripts/setup.sh: one
per package file pip takes (a local wheel, a download, its cache), then a count of the packages
it installs. Requirement lines ("Collecting ...") and "already satisfied" lines are left out."""

import re
import sys


def packages(n: int) -> str:
    return f"{n} package{'s' * (n != 1)}"


for line in sys.stdin:
    line = line.strip()
    if line.startswith(("Downloading ", "Using cached ", "Processing ")):
        line = re.sub(r" \(from .*\)$", "", line)  # which requirement asked for it
        line = re.sub(r"^(Processing|Using cached) \S*/", r"\1 ", line)  # the file's directory
        print(f"  pip: {line}", flush=True)
    elif line.startswith("Installing collected packages: "):
        count = len(line.split(": ", 1)[1].split(", "))
        print(f"  pip: installing {packages(count)} ...", flush=True)
    elif line.startswith("Successfully installed "):
        print(f"  pip: installed {packages(len(line.split()) - 2)}", flush=True)
