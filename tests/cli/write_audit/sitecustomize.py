"""Put on PYTHONPATH by tests/cli/test_distributed_cli.py: in a process of rank 1 or above, record
every file the process opens for writing, creates, renames or deletes, and save the list as
``$METACTL_TEST_AUDIT/rank-N.json`` when it exits. Rank 0 and processes outside torchrun
(RANK unset) are not watched."""

import atexit
import json
import os
import sys

WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
CHANGING = ("os.rename", "os.remove", "os.mkdir", "os.rmdir", "os.truncate", "os.symlink",
            "os.link", "shutil.rmtree", "shutil.move", "shutil.copyfile")


def _path(value):
    try:
        return os.fsdecode(value)
    except TypeError:
        return repr(value)


def _watch(report_folder, rank):
    records = []

    def audit(event, arguments):
        if event == "open" and arguments and not isinstance(arguments[0], int):
            path, mode, flags = (tuple(arguments) + (None, None))[:3]
            if (isinstance(mode, str) and set(mode) & set("wax+")) or (
                    isinstance(flags, int) and flags & WRITING):
                records.append([event, _path(path)])
        elif event in CHANGING and arguments:
            records.append([event, _path(arguments[0])])

    def save():
        text = json.dumps(records)
        with open(os.path.join(report_folder, f"rank-{rank}.json"), "w") as stream:
            stream.write(text)

    sys.addaudithook(audit)
    atexit.register(save)


if os.environ.get("RANK", "0") != "0" and os.environ.get("METACTL_TEST_AUDIT"):
    _watch(os.environ["METACTL_TEST_AUDIT"], os.environ["RANK"])
