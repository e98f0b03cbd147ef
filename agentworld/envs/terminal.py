"""Terminal env: a real bash in tmux, both inside a Sandbox (no network, only /scratch writable), with
file-system and text-processing tasks checked after every step. Ids are `terminal:<task>` for the 8 fixed
tasks, and `terminal:train` / `terminal:heldout` for the generated ones: templates (count, grep, sort, rename, ...)
times parameters (file, word, column, extension, output file, ...) give several hundred tasks, split about 80/20 by a
hash of each task's key; a reset draws one task of the split and its files from the seed (`task_keys`, `draw`).

Actions are keystrokes:
- plain text is typed, then Enter is pressed: `wc -l < log.txt > answer.txt`. A newline in the text
  presses Enter there too.
- special keys are tokens in angle brackets: <Enter> <Tab> <BTab> <Up> <Down> <Left> <Right> <Home> <End>
  <PageUp> <PageDown> <Esc> <BSpace> <Delete> <Space>, <C-x> for Ctrl+x and <M-x> for Alt+x (x a letter).
  An action that holds a token is sent exactly as written, with no Enter added: `<C-c>`, `cat lo<Tab>`,
  `<Up><Enter>`.
- <Wait> sends nothing: the step waits for the prompt to come back (`make<Enter><Wait>`, or `<Wait>` alone).
The observation is the visible screen once the output settles: 50 ms without change at the prompt, 1 s
while a program runs, at most `timeout` seconds. Output still streaming at the timeout is interrupted with
Ctrl-C, unless the action asked to <Wait>. If the shell dies (`exit`, `kill -9 -1`), a new
one is started in /scratch with a note saying so; if that fails too, step raises and Supervised recreates
the env.

The host talks to tmux only through a tmux client that itself runs in the sandbox: the sandbox controls
the tmux server, and a tmux server can make its clients open, write and execute files.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import secrets
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from agentworld.envs.sandbox import Limits, Sandbox
from agentworld.envs.base import split_of, unparsed_info  # noqa: F401  (split_of: the shared split rule; re-exported)

SOCKET = "/run/tmux/sock"
# A prompt the settle check recognises, a count of prompts drawn (so a step knows its command finished, however
# slow the machine), and no history file in /scratch.
SHELL_ENV = ["-e", "PS1=\\w$ ", "-e", "PROMPT_COMMAND=printf %s $((++__prompts)) > /run/tmux/prompts",
             "-e", "HISTFILE="]
FIXED_MTIME = 1704067200  # 2024-01-01: `ls -l` of the task files is the same in every episode
MAX_ACTION = 4096
KEYS = {"Enter", "Tab", "BTab", "Up", "Down", "Left", "Right", "Home", "End", "PageUp", "PageDown", "Esc",
        "BSpace", "Delete", "Space", "Wait"}
_TOKEN = re.compile(r"<((?:C|M)-[a-zA-Z]|[A-Za-z]+)>")
_JUNK = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # control characters other than tab and newline
GENERIC_MENU = ["ls", "ls -la", "pwd", "<C-c>", "clear"]


class ShellLost(Exception):
    """The tmux server, the session or the shell is gone, or a tmux client could not reach it."""


# ---------------------------------------------------------------------------------------------- tasks

@dataclass
class Episode:
    goal: str
    files: dict[str, str]  # relative path -> content, written into /scratch at reset
    check: Callable[[Path], bool]  # reads the scratch dir on the host, never following a symlink
    solution: list[str]  # the oracle's commands, in order
    decoy: list[str] = field(default_factory=list)  # plausible wrong commands that its check must reject


WORDS = ["apple", "river", "stone", "cloud", "maple", "tiger", "lemon", "piano", "ocean", "pixel", "amber",
         "cedar", "falcon", "garnet", "harbor", "island"]
CITIES = ["Oslo", "Lima", "Cairo", "Quito", "Porto", "Kyoto", "Dakar", "Perth", "Turin", "Hanoi"]
NAMES = ["ada", "bo", "cy", "dee", "eli", "fay", "gus", "hal", "ivy", "jo", "kai", "lu", "max", "ned"]


def count_lines(rng: random.Random) -> Episode:
    n = rng.randint(20, 60)
    lines = [f"{rng.choice(['INFO', 'WARN', 'ERROR'])} request {rng.randint(100, 999)} {rng.choice(WORDS)}"
             for _ in range(n)]
    return Episode("Write the number of lines in log.txt into answer.txt.", {"log.txt": "\n".join(lines) + "\n"},
                   lambda root: _text(root, "answer.txt").strip() == str(n),
                   ["wc -l < log.txt > answer.txt"])


def make_tree(rng: random.Random) -> Episode:
    top = rng.choice(["atlas", "boreal", "cedar", "delta", "ember", "fjord"])
    subs = rng.sample(["src", "tests", "docs", "data", "scripts", "config"], 3)
    dirs = [f"{top}/{s}" for s in subs]

    def check(root: Path) -> bool:
        return all(_kind(root, d) == "dir" for d in dirs) and _kind(root, f"{top}/README.md") == "file"

    return Episode(f"Create the directories {', '.join(dirs)} and an empty file {top}/README.md.", {}, check,
                   [f"mkdir -p {' '.join(dirs)}", f"touch {top}/README.md"])


def find_word(rng: random.Random) -> Episode:
    word, fillers = rng.choice(WORDS[:8]), WORDS[8:]  # fillers never contain a target word
    names = [f"note{i:02d}.txt" for i in range(1, rng.randint(8, 12) + 1)]
    hits = sorted(rng.sample(names, rng.randint(2, 4)))
    files = {}
    for name in names:
        words = [rng.choice(fillers) for _ in range(rng.randint(5, 12))]
        if name in hits:
            words.insert(rng.randrange(len(words) + 1), word)
        files[f"notes/{name}"] = " ".join(words) + "\n"

    def check(root: Path) -> bool:
        found = [line.strip().removeprefix("./").removeprefix("notes/") for line in _text(root, "found.txt").splitlines()]
        return [f for f in found if f] == hits

    return Episode(f"Write the names of the files in notes/ that contain the word '{word}' into found.txt, "
                   "one per line, sorted (e.g. notes/note01.txt).", files, check,
                   [f"grep -lw {word} notes/* | sort > found.txt"])


def sort_uniq(rng: random.Random) -> Episode:
    words = [rng.choice(WORDS[:10]) for _ in range(rng.randint(25, 40))]
    return Episode("Write the distinct words of words.txt into unique.txt, sorted alphabetically, one per line.",
                   {"words.txt": "\n".join(words) + "\n"},
                   lambda root: _text(root, "unique.txt").split("\n") == sorted(set(words)) + [""],
                   ["sort -u words.txt > unique.txt"])


def rename_ext(rng: random.Random) -> Episode:
    stems = [f"img_{i:03d}" for i in sorted(rng.sample(range(1, 200), rng.randint(4, 8)))]
    files = {f"photos/{s}.jpeg": f"jpeg data {rng.random():.6f}\n" for s in stems}
    want = {f"{s}.jpg": files[f"photos/{s}.jpeg"] for s in stems}

    def check(root: Path) -> bool:
        return _listdir(root, "photos") == sorted(want) and all(_text(root, f"photos/{n}") == c for n, c in want.items())

    return Episode("Rename every file in photos/ from .jpeg to .jpg (img_001.jpeg -> img_001.jpg), keeping the contents.",
                   files, check, ['for f in photos/*.jpeg; do mv "$f" "${f%.jpeg}.jpg"; done'])


def csv_column(rng: random.Random) -> Episode:
    rows = [(rng.choice(NAMES), rng.randint(18, 90), rng.choice(CITIES)) for _ in range(rng.randint(8, 16))]
    csv = "name,age,city\n" + "".join(f"{n},{a},{c}\n" for n, a, c in rows)
    return Episode("Write the city column of people.csv, without the header, into cities.txt: one city per line, "
                   "in the file's order.", {"people.csv": csv},
                   lambda root: _text(root, "cities.txt").split("\n") == [c for _, _, c in rows] + [""],
                   ["tail -n +2 people.csv | cut -d, -f3 > cities.txt"])


def sum_column(rng: random.Random) -> Episode:
    rows = [(rng.choice(WORDS), rng.randint(1, 500)) for _ in range(rng.randint(6, 14))]
    csv = "item,amount\n" + "".join(f"{i},{a}\n" for i, a in rows)
    total = sum(a for _, a in rows)
    return Episode("Write the sum of the amount column of sales.csv into total.txt.", {"sales.csv": csv},
                   lambda root: _text(root, "total.txt").strip() == str(total),
                   ["awk -F, 'NR > 1 {s += $2} END {print s}' sales.csv > total.txt"])


def clean_tmp(rng: random.Random) -> Episode:
    files = {}
    for d in ["build", "build/lib", "build/lib/core", "build/bin"]:
        for _ in range(rng.randint(1, 3)):
            files[f"{d}/f{rng.randint(100, 999)}{rng.choice(['.tmp', '.tmp', '.o', '.log'])}"] = "x\n"
    files.setdefault("build/lib/core/cache.tmp", "x\n")
    keep = sorted(p for p in files if not p.endswith(".tmp"))
    return Episode("Delete every .tmp file under build/, in all its subdirectories, and keep every other file.",
                   files, lambda root: _tree(root, "build") == keep,
                   ["find build -name '*.tmp' -delete"])


TASKS: dict[str, Callable[[random.Random], Episode]] = {
    "count-lines": count_lines, "make-tree": make_tree, "find-word": find_word, "sort-uniq": sort_uniq,
    "rename-ext": rename_ext, "csv-column": csv_column, "sum-column": sum_column, "clean-tmp": clean_tmp,
}


# ------------------------------------------------------------------ generated tasks, in two splits
# A template is a builder `(rng, **params) -> Episode` and a grid of parameter values; a task is one point of the
# grid, named by its key "template/value/value/...". The key fixes the goal; the reset's rng draws the files, so an
# agent cannot memorise an answer. A task's split is a hash of its key: disjoint by construction, and stable when
# a grid grows.

SPLITS = ("train", "heldout")
TEMPLATES: dict[str, tuple[Callable[..., Episode], dict[str, list]]] = {}
LOGS = ["log.txt", "app.log", "events.log", "server.log"]
LEVELS = ["ERROR", "WARN", "INFO"]


def template(name: str, **grid: list) -> Callable:
    """Register a builder `(rng, **params) -> Episode` with the values each of its params takes."""
    def register(build: Callable[..., Episode]) -> Callable[..., Episode]:
        TEMPLATES[name] = (build, grid)
        return build
    return register


def _lines_are(out: str, want: list[str]) -> Callable[[Path], bool]:
    return lambda root: _text(root, out).splitlines() == want


def _number_is(out: str, n: int | str) -> Callable[[Path], bool]:
    return lambda root: _text(root, out).strip() == str(n)


def _log(rng: random.Random, n: int) -> list[str]:
    """n distinct log lines; every level occurs, so no level is on every line."""
    levels = LEVELS + [rng.choice(LEVELS) for _ in range(n - len(LEVELS))]
    rng.shuffle(levels)
    return [f"{lv} request {i} {rng.choice(WORDS)}" for lv, i in zip(levels, rng.sample(range(100, 1000), n))]


@template("count", what=["lines", "words", *LEVELS], file=LOGS, out=["answer.txt", "count.txt", "n.txt"])
def gen_count(rng: random.Random, what: str, file: str, out: str) -> Episode:
    lines = _log(rng, rng.randint(12, 40))
    lines_cmd, words_cmd = f"wc -l < {file} > {out}", f"wc -w < {file} > {out}"
    if what == "lines":
        goal, n, sol, decoy = f"the number of lines in {file}", len(lines), lines_cmd, words_cmd
    elif what == "words":
        goal, n, sol, decoy = f"the number of words in {file}", 4 * len(lines), words_cmd, lines_cmd
    else:
        goal, n = f"how many lines of {file} contain {what}", sum(what in line for line in lines)
        sol, decoy = f"grep -c {what} {file} > {out}", lines_cmd
    return Episode(f"Write {goal} into {out}.", {file: "\n".join(lines) + "\n"}, _number_is(out, n), [sol], [decoy])


@template("grep", keep=["with", "without"], level=LEVELS, file=LOGS, out=["lines.txt", "out.txt", "matches.txt"])
def gen_grep(rng: random.Random, keep: str, level: str, file: str, out: str) -> Episode:
    lines = _log(rng, rng.randint(10, 24))
    want = [line for line in lines if (level in line) == (keep == "with")]
    sol, decoy = f"grep {level} {file} > {out}", f"grep -v {level} {file} > {out}"
    if keep == "without":
        sol, decoy = decoy, sol
    how = "contain" if keep == "with" else "do not contain"
    return Episode(f"Write the lines of {file} that {how} {level} into {out}, in order.", {file: "\n".join(lines) + "\n"},
                 _lines_are(out, want), [sol], [decoy])


@template("ends", end=["first", "last"], k=[2, 3, 5, 10], file=LOGS, out=["part.txt", "lines.txt"])
def gen_ends(rng: random.Random, end: str, k: int, file: str, out: str) -> Episode:
    lines = _log(rng, rng.randint(12, 30))
    head, tail = f"head -n {k} {file} > {out}", f"tail -n {k} {file} > {out}"
    sol, decoy, want = (head, tail, lines[:k]) if end == "first" else (tail, head, lines[-k:])
    return Episode(f"Write the {end} {k} lines of {file} into {out}.", {file: "\n".join(lines) + "\n"},
                 _lines_are(out, want), [sol], [decoy])


@template("tree", top=["atlas", "boreal", "cedar", "delta", "ember", "fjord"],
          subs=[f"{a}+{b}" for i, a in enumerate(["src", "tests", "docs", "data", "config"])
                for b in ["src", "tests", "docs", "data", "config"][i + 1:]],
          file=["README.md", "NOTES.md"])
def gen_tree(rng: random.Random, top: str, subs: str, file: str) -> Episode:
    dirs = [f"{top}/{s}" for s in subs.split("+")]

    def check(root: Path) -> bool:
        return all(_kind(root, d) == "dir" for d in dirs) and _kind(root, f"{top}/{file}") == "file" \
            and _text(root, f"{top}/{file}") == ""

    touch = f"touch {top}/{file}"
    return Episode(f"Create the directories {' and '.join(dirs)} and an empty file {top}/{file}.", {}, check,
                 [f"mkdir -p {' '.join(dirs)}", touch], [f"mkdir -p {dirs[0]}", touch])


@template("find", word=WORDS[:8], has=["with", "without"], dir=["notes", "docs", "mail"], out=["found.txt", "hits.txt"])
def gen_find(rng: random.Random, word: str, has: str, dir: str, out: str) -> Episode:
    names = [f"{dir.rstrip('s')}{i:02d}.txt" for i in range(1, rng.randint(6, 10) + 1)]
    hits = sorted(rng.sample(names, rng.randint(2, len(names) - 2)))
    files = {}
    for name in names:
        words = [rng.choice(WORDS[8:]) for _ in range(rng.randint(4, 9))]  # fillers never hold a target word
        if name in hits:
            words.insert(rng.randrange(len(words) + 1), word)
        files[f"{dir}/{name}"] = " ".join(words) + "\n"
    want = hits if has == "with" else [n for n in names if n not in hits]

    def check(root: Path) -> bool:
        found = [line.strip().removeprefix("./").removeprefix(f"{dir}/") for line in _text(root, out).splitlines()]
        return [f for f in found if f] == want

    sol, decoy = f"grep -lw {word} {dir}/* | sort > {out}", f"grep -Lw {word} {dir}/* | sort > {out}"
    if has == "without":
        sol, decoy = decoy, sol
    how = "containing" if has == "with" else "not containing"
    return Episode(f"List the files in {dir}/ {how} the word '{word}' into {out}, one per line, sorted.", files, check,
                 [sol], [decoy])


POOLS = {"words.txt": WORDS[:10], "names.txt": NAMES, "cities.txt": CITIES, "tags.txt": WORDS[6:]}


@template("uniq", file=list(POOLS), mode=["asc", "desc", "distinct", "top"],
          out=["unique.txt", "out.txt", "result.txt"])
def gen_uniq(rng: random.Random, file: str, mode: str, out: str) -> Episode:
    vocab = rng.sample(POOLS[file], rng.randint(4, 7))
    most = rng.randint(4, 6)  # vocab[0] is strictly the most frequent, so "top" has one answer
    lines = [w for i, w in enumerate(vocab) for _ in range(most if i == 0 else rng.randint(1, most - 1))]
    rng.shuffle(lines)

    def top(order: str) -> str:
        return f"sort {file} | uniq -c | sort -{order}n | head -1 | awk '{{print $2}}' > {out}"

    goal, check, sol, decoy = {
        "asc": ("the distinct lines of {} into {}, sorted A-Z", _lines_are(out, sorted(vocab)),
                f"sort -u {file} > {out}", f"sort {file} > {out}"),
        "desc": ("the distinct lines of {} into {}, sorted Z-A", _lines_are(out, sorted(vocab, reverse=True)),
                 f"sort -ru {file} > {out}", f"sort -u {file} > {out}"),
        "distinct": ("how many distinct lines {} has into {}", _number_is(out, len(vocab)),
                     f"sort -u {file} | wc -l > {out}", f"wc -l < {file} > {out}"),
        "top": ("the most frequent line of {} into {}", _number_is(out, vocab[0]), top("r"), top("")),
    }[mode]
    return Episode(f"Write {goal.format(file, out)}.", {file: "\n".join(lines) + "\n"}, check, [sol], [decoy])


STEMS = {"jpeg": "img", "htm": "page", "txt": "note", "yml": "conf", "tiff": "scan", "mpeg": "clip"}


@template("rename", ext=["jpeg>jpg", "htm>html", "txt>md", "yml>yaml", "tiff>tif", "mpeg>mpg"],
          dir=["photos", "files", "inbox", "data"], op=["rename", "copy"])
def gen_rename(rng: random.Random, ext: str, dir: str, op: str) -> Episode:
    a, b = ext.split(">")
    stems = [f"{STEMS[a]}_{i:03d}" for i in sorted(rng.sample(range(1, 200), rng.randint(3, 6)))]
    files = {f"{dir}/{s}.{a}": f"{a} data {rng.random():.6f}\n" for s in stems}
    files[f"{dir}/notes.log"] = "keep me as I am\n"
    want = {f"{s}.{b}": files[f"{dir}/{s}.{a}"] for s in stems} | {"notes.log": files[f"{dir}/notes.log"]}
    if op == "copy":
        want |= {f"{s}.{a}": files[f"{dir}/{s}.{a}"] for s in stems}

    def check(root: Path) -> bool:
        return _listdir(root, dir) == sorted(want) and all(_text(root, f"{dir}/{n}") == c for n, c in want.items())

    cmd = "mv" if op == "rename" else "cp"
    goal = (f"Rename every .{a} file in {dir}/ to .{b} (x.{a} -> x.{b}), keeping the contents." if op == "rename" else
            f"Copy every .{a} file in {dir}/ to a .{b} file of the same name, keeping the originals.")
    return Episode(goal, files, check, [f'for f in {dir}/*.{a}; do {cmd} "$f" "${{f%.{a}}}.{b}"; done'],
                 [f"{cmd} {dir}/{stems[0]}.{a} {dir}/{stems[0]}.{b}"])


@template("csv", file=["people.csv", "staff.csv", "members.csv"], column=["name", "age", "city"],
          order=["file", "sorted"], out=["column.txt", "out.txt", "list.txt"])
def gen_csv(rng: random.Random, file: str, column: str, order: str, out: str) -> Episode:
    cols = rng.sample(["name", "age", "city"], 3)  # the files' header order, so the column's number must be read
    rows = [{"name": rng.choice(NAMES), "age": str(rng.randint(18, 90)), "city": rng.choice(CITIES)}
            for _ in range(rng.randint(6, 14))]
    k = cols.index(column) + 1
    want = [r[column] for r in rows]  # ages have two digits, so sort's order is the numeric one too
    pipe = " | sort" if order == "sorted" else ""
    return Episode(f"Write the {column} column of {file} (no header) into {out}, one per line, "
                 f"{'sorted' if order == 'sorted' else 'in file order'}.",
                 {file: ",".join(cols) + "\n" + "".join(",".join(r[c] for c in cols) + "\n" for r in rows)},
                 _lines_are(out, sorted(want) if pipe else want), [f"tail -n +2 {file} | cut -d, -f{k}{pipe} > {out}"],
                 [f"cut -d, -f{k} {file}{pipe} > {out}"])


@template("stat", file=["sales.csv", "costs.csv", "orders.csv"], column=["amount", "qty", "price"],
          agg=["sum", "max", "min"], out=["total.txt", "result.txt", "answer.txt"])
def gen_stat(rng: random.Random, file: str, column: str, agg: str, out: str) -> Episode:
    n, pos = rng.randint(6, 14), rng.choice([2, 3])
    values, ids = rng.sample(range(1, 500), n), rng.sample(range(1000, 10000), n)  # distinct: min < max
    cols = ["item", column, "id"] if pos == 2 else ["item", "id", column]
    rows = [{"item": rng.choice(WORDS), column: str(v), "id": str(i)} for v, i in zip(values, ids)]
    other = 5 - pos
    ends = {e: f"tail -n +2 {file} | cut -d, -f{pos} | sort -n | {e} -1 > {out}" for e in ("head", "tail")}
    sol, decoy, answer = {
        "sum": (f"awk -F, 'NR > 1 {{s += ${pos}}} END {{print s}}' {file} > {out}",
                f"awk -F, 'NR > 1 {{s += ${other}}} END {{print s}}' {file} > {out}", sum(values)),  # ids sum larger
        "max": (ends["tail"], ends["head"], max(values)),
        "min": (ends["head"], ends["tail"], min(values)),
    }[agg]
    what = {"sum": "sum", "max": "largest value", "min": "smallest value"}[agg]
    return Episode(f"Write the {what} of the {column} column of {file} into {out}.",
                 {file: ",".join(cols) + "\n" + "".join(",".join(r[c] for c in cols) + "\n" for r in rows)},
                 _number_is(out, answer), [sol], [decoy])


@template("clean", dir=["build", "cache", "out", "dist"], ext=["tmp", "log", "bak", "o"],
          op=["delete", "list", "count"])
def gen_clean(rng: random.Random, dir: str, ext: str, op: str) -> Episode:
    exts = ["tmp", "log", "bak", "o"]
    files = {f"{d}/f{rng.randint(100, 999)}.{rng.choice(exts)}": "x\n"
             for d in [dir, f"{dir}/lib", f"{dir}/lib/core", f"{dir}/bin"] for _ in range(rng.randint(1, 3))}
    # a target at the top and one deep down (so a top-level-only command fails), and one file to keep
    files |= {f"{dir}/a{rng.randint(100, 999)}.{ext}": "x\n", f"{dir}/lib/core/cache.{ext}": "x\n",
              f"{dir}/bin/main.{rng.choice([e for e in exts if e != ext])}": "x\n"}
    targets = sorted(p for p in files if p.endswith(f".{ext}"))
    find = f"find {dir} -name '*.{ext}'"
    goal, check, sol, decoy = {
        "delete": (f"Delete every .{ext} file under {dir}/, in all its subdirectories, and keep every other file.",
                   lambda root: _tree(root, dir) == sorted(set(files) - set(targets)), f"{find} -delete",
                   f"rm {dir}/*.{ext}"),
        "list": (f"Write the paths of all .{ext} files under {dir}/ into list.txt, sorted (e.g. {dir}/x.{ext}).",
                 lambda root: [p.removeprefix("./") for p in _text(root, "list.txt").splitlines()] == targets,
                 f"{find} | sort > list.txt", f"ls {dir}/*.{ext} > list.txt"),
        "count": (f"Write how many .{ext} files there are under {dir}/, in all its subdirectories, into n.txt.",
                  _number_is("n.txt", len(targets)), f"{find} | wc -l > n.txt", f"ls {dir}/*.{ext} | wc -l > n.txt"),
    }[op]
    return Episode(goal, files, check, [sol], [decoy])


NEW_WORDS = ["pear", "lake", "rock", "mist", "oak"]


@template("replace", file=["story.txt", "memo.txt", "poem.txt"], old=WORDS[:6], new=NEW_WORDS)
def gen_replace(rng: random.Random, file: str, old: str, new: str) -> Episode:
    fillers = [w for w in WORDS if old not in w]
    lines = [[rng.choice(fillers) for _ in range(rng.randint(4, 8))] for _ in range(rng.randint(4, 8))]
    for i, line in enumerate(lines):
        for _ in range(2 if i == 0 else rng.randint(0, 2)):  # twice on one line: a replace without /g falls short
            line.insert(rng.randrange(len(line) + 1), old)
    rng.shuffle(lines)
    text = "".join(" ".join(line) + "\n" for line in lines)
    return Episode(f"Replace every '{old}' in {file} with '{new}', editing the file in place.", {file: text},
                 lambda root: _text(root, file) == text.replace(old, new), [f"sed -i 's/{old}/{new}/g' {file}"],
                 [f"sed -i 's/{old}/{new}/' {file}"])


def _enumerate() -> dict[str, tuple[str, dict[str, Any]]]:
    space = {}
    for name, (_, grid) in TEMPLATES.items():
        for values in itertools.product(*grid.values()):
            space["/".join([name, *map(str, values)])] = (name, dict(zip(grid, values)))
    return space


def _by_split() -> dict[str, dict[str, list[str]]]:
    """split -> template -> its keys in that split."""
    by: dict[str, dict[str, list[str]]] = {s: {} for s in SPLITS}
    for key, (name, _) in TASK_SPACE.items():
        by[split_of(key)].setdefault(name, []).append(key)
    return by


TASK_SPACE = _enumerate()  # key -> (template, params)
_BY_SPLIT = _by_split()


def task_keys(split: str | None = None) -> list[str]:
    """The generated tasks' keys, sorted: all of them, or those of the split 'train' or 'heldout'."""
    return sorted(k for k in TASK_SPACE if split is None or split_of(k) == split)


def generate(key: str, rng: random.Random) -> Episode:
    """The task `key`, its files drawn from `rng`."""
    name, params = TASK_SPACE[key]
    return TEMPLATES[name][0](rng, **params)


def draw(split: str, rng: random.Random) -> tuple[str, Episode]:
    """One task of the split: a template first, uniformly, so that large grids do not crowd out small ones."""
    by_template = _BY_SPLIT[split]
    key = rng.choice(by_template[rng.choice(sorted(by_template))])
    return key, generate(key, rng)


# ------------------------------------------------- reading the scratch dir, which the sandbox controls

def _open(root: Path, rel: str, flags: int = os.O_RDONLY) -> int:
    """An fd for root/rel that follows no symlink on the way, so a planted link cannot point us at a host file."""
    *dirs, last = rel.split("/")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for d in dirs:
            fd, old = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd), fd
            os.close(old)
        return os.open(last, flags | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)  # NONBLOCK: a FIFO must not hang us
    finally:
        os.close(fd)


def _text(root: Path, rel: str, limit: int = 1 << 16) -> str:
    """The file's text, or "" if it is missing, not a regular file, or reached through a symlink."""
    try:
        with os.fdopen(_open(root, rel), "rb") as f:
            return f.read(limit).decode("utf-8", "replace") if stat.S_ISREG(os.fstat(f.fileno()).st_mode) else ""
    except OSError:
        return ""


def _kind(root: Path, rel: str) -> str | None:
    try:
        fd = _open(root, rel, os.O_PATH)
    except OSError:
        return None
    mode = os.fstat(fd).st_mode
    os.close(fd)
    return "dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "other"


def _listdir(root: Path, rel: str) -> list[str] | None:
    try:
        fd = _open(root, rel, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        return sorted(os.listdir(fd))
    finally:
        os.close(fd)


def _tree(root: Path, rel: str) -> list[str]:
    """Every path under root/rel that is not a directory (fwalk follows no symlink)."""
    return sorted(os.path.relpath(os.path.join(d, n), root) for d, dirs, files, _ in os.fwalk(root / rel) for n in files)


# ------------------------------------------------------------------------------------------ the env

def parse_action(action: Any) -> tuple[list[tuple[str, str]] | None, str | None]:
    """Keystrokes as [("text" | "key", value)], or (None, error)."""
    if not isinstance(action, str):
        return None, f"the action must be a string of keystrokes, not {type(action).__name__}"
    if len(action) > MAX_ACTION:
        return None, f"the action is {len(action)} characters long; the limit is {MAX_ACTION}"
    action = _JUNK.sub("", action.encode("utf-8", "replace").decode("utf-8"))
    if not action.strip():
        return None, "the action is empty: type a command, or send a key such as <Enter> or <C-c>"
    parts, has_key, pos = [], False, 0
    for m in _TOKEN.finditer(action):
        name = m.group(1)
        if name not in KEYS and name[:2] not in ("C-", "M-"):
            continue  # not a key we know: it stays literal text, like `<file>`
        parts += [("text", action[pos:m.start()]), ("key", name)]
        has_key, pos = True, m.end()
    parts.append(("text", action[pos:]))
    if not has_key:
        parts.append(("key", "Enter"))
    keys = []
    for kind, value in parts:
        if kind == "key":
            keys.append((kind, value))
        else:  # a newline inside text presses Enter there
            for i, line in enumerate(value.replace("\r", "").split("\n")):
                keys += [("key", "Enter")] * (i > 0) + [("text", line)] * bool(line)
    return keys, None


def _tmux_keys(keys: list[tuple[str, str]]) -> list[str]:
    """One tmux command line of send-keys commands. An argument ending in ';' would end a tmux command."""
    args = []
    for kind, value in keys:
        if value == "Wait" and kind == "key":
            continue
        if kind == "text":
            value = value[:-1] + "\\;" if value.endswith(";") else value
            args += ["send-keys", "-t", "main", "-l", "--", value, ";"]
        else:
            args += ["send-keys", "-t", "main", value, ";"]
    return args[:-1]


class TerminalEnv:
    def __init__(self, task: str, max_steps: int | None = None, domain: str = "terminal",
                 limits: Limits | None = None, timeout: float = 5.0, rows: int = 24, cols: int = 80):
        check(task)
        if shutil.which("tmux") is None:
            raise RuntimeError("the terminal env needs tmux: apt-get install tmux bubblewrap")
        self.env_id, self.domain, self.task = f"terminal:{task}", domain, task
        self.key: str | None = None  # with a split: the generated task of this episode
        self.max_steps, self.timeout, self.rows, self.cols = max_steps, timeout, rows, cols
        self.limits = limits or Limits()
        self.sandbox: Sandbox | None = None
        self.root: Path | None = None
        self.episode: Episode | None = None
        self.t, self.score, self.won, self.screen, self.busy, self.done_cmds = 0, 0.0, False, "", False, 0
        self.marker = f"@@agentworld-{secrets.token_hex(4)}@@"  # splits tmux's answer into screens

    # ---- the sandboxed shell

    def _tmux(self, *args: str, timeout: float = 3.0) -> str:
        """Run a tmux client in the sandbox (the server is the sandbox's to control, so never on the host)."""
        r = self.sandbox.call(["tmux", "-S", SOCKET, *args], timeout=timeout)
        if r.exit_code != 0:
            raise ShellLost(r.output.strip()[:200] or ("tmux timed out" if r.timed_out else f"tmux exit {r.exit_code}"))
        return r.output

    def _start_shell(self) -> None:
        sock = self.root / "ctl" / "sock"
        sock.unlink(missing_ok=True)  # a killed server leaves its socket behind
        (self.root / "ctl" / "prompts").unlink(missing_ok=True)  # the new shell counts from 1 again
        self.server = self.sandbox.popen(["tmux", "-S", SOCKET, "-f", "/dev/null", "-D"], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while not (sock.exists() and stat.S_ISSOCK(sock.lstat().st_mode)):
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.env_id}: the sandboxed tmux server did not start")
            time.sleep(0.01)
        session = ["set", "-g", "status", "off", ";", "set", "-s", "escape-time", "0", ";",
                   "new-session", "-d", "-s", "main", "-x", str(self.cols), "-y", str(self.rows), "-c", "/scratch",
                   *SHELL_ENV, "--", "bash", "--norc", "--noprofile"]
        self.screen, _ = self._settle(session, patient=True, enter=True)  # until the first prompt

    def _snapshots(self, first: list[str]) -> list[tuple[str, bool]]:
        """Run the tmux commands `first` (send-keys, new-session), then take two snapshots of the screen 50 ms apart, all in one tmux
        client call. A snapshot is the visible screen and whether the shell sits idle at its prompt."""
        snap = ["display-message", "-p", "-t", "main", f"{self.marker} #{{pane_current_command}} #{{cursor_y}}", ";",
                "capture-pane", "-p", "-t", "main"]
        out = self._tmux(*first, *[";"] * bool(first), "run-shell", "-d", "0.02", ";", *snap, ";",
                         "run-shell", "-d", "0.05", ";", *snap)
        shots = []
        for part in out.split(self.marker + " ")[1:]:
            head, _, screen = part.partition("\n")
            command, _, y = head.rpartition(" ")
            lines = screen.split("\n")[:self.rows]
            cursor = lines[int(y)] if y.isdigit() and int(y) < len(lines) else ""
            screen = "\n".join(line.rstrip() for line in lines).rstrip("\n")
            shots.append((screen[-self.limits.max_output:], command == "bash" and cursor.rstrip().endswith("$")))
        if len(shots) != 2:
            raise ShellLost("tmux answered without a screen")
        return shots

    def _settle(self, keys: list[str], patient: bool = False, enter: bool = False) -> tuple[str, str]:
        """Run the tmux commands `keys`, then wait until the screen stops changing (see the module docstring). `enter`: the
        keys end a command line, so wait for a new prompt too. `patient`: wait for the prompt, interrupt nothing."""
        deadline, since, last = time.monotonic() + self.timeout, time.monotonic(), None
        prompts = _text(self.root, "ctl/prompts")
        while True:
            (a, _), (screen, idle) = self._snapshots(keys)
            keys, now = [], time.monotonic()
            if a != screen or screen != last:
                last, since = screen, now
            prompted = not enter or _text(self.root, "ctl/prompts") != prompts
            if (idle and a == screen and prompted) or (now - since >= 1.0 and not patient):
                self.busy = not idle
                return screen, ""
            if now >= deadline and patient:
                self.busy = not idle
                return screen, f"[the command was still running after {self.timeout:g}s]"
            if now >= deadline:
                (_, _), (screen, idle) = self._snapshots(["send-keys", "-t", "main", "C-c"])
                self.busy = not idle
                return screen, f"[the command was still writing output after {self.timeout:g}s and was interrupted with Ctrl-C]"

    def _restart(self, reason: str) -> tuple[str, str]:
        self.sandbox.kill_all()
        self._start_shell()  # raises if it cannot: Supervised then recreates the env
        return self.screen, f"[{reason}. A new shell was started in /scratch; your files there are kept.]"

    # ---- the env protocol

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        self.close()
        if self.task in SPLITS:
            self.key, self.episode = draw(self.task, random.Random(seed))
        else:
            self.episode = TASKS[self.task](random.Random(seed))
        self.root = Path(tempfile.mkdtemp(prefix="agentworld-term-"))
        os.chmod(self.root, 0o711)  # the sandbox uid must pass through to mount scratch/ and ctl/
        for rel, content in self.episode.files.items():
            path = self.root / "scratch" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
        (self.root / "scratch").mkdir(exist_ok=True)
        (self.root / "ctl").mkdir()
        for d, dirs, files in os.walk(self.root / "scratch"):
            for name in dirs + files:
                os.utime(os.path.join(d, name), (FIXED_MTIME, FIXED_MTIME))
        self.sandbox = Sandbox(self.root / "scratch", self.limits, binds={"/run/tmux": self.root / "ctl"})
        self.t, self.score, self.won, self.done_cmds = 0, 0.0, False, 0
        self._start_shell()
        header = (f"Task: {self.episode.goal}\nYou are at a bash prompt in /scratch, the only writable directory "
                  "(no network). Text you send is typed and Enter pressed; send keys as <C-c>, <Tab>, <Up>.\n\n")
        return header + self.screen, self._info()

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        self.t += 1
        truncated = self.max_steps is not None and self.t >= self.max_steps
        keys, err = parse_action(action)
        if err:  # every text is shell input: unparsed only when empty (or not text); one over MAX_ACTION is refused
            too_long = isinstance(action, str) and len(action) > MAX_ACTION
            extra = {"error": err} if too_long else unparsed_info(err)
            return f"[error: {err}]\n{self.screen}", 0.0, False, truncated, self._info(**extra)
        if self.won:
            err = "the task is already solved; reset to start a new episode"
            return f"[error: {err}]\n{self.screen}", 0.0, True, truncated, self._info(error=err)
        sol = self.episode.solution
        if self.done_cmds < len(sol) and action == sol[self.done_cmds]:
            self.done_cmds += 1
        try:
            if self.server.poll() is not None:
                raise ShellLost("the tmux server exited")
            enter = not self.busy and keys[-1] == ("key", "Enter")
            self.screen, note = self._settle(_tmux_keys(keys), patient=("key", "Wait") in keys, enter=enter)
        except ShellLost:
            self.screen, note = self._restart("The shell exited or was killed")
        n = len(self.sandbox.pids())
        if n >= 0.75 * self.limits.nproc:  # a fork bomb: it would starve the shell and our tmux clients
            self.screen, note = self._restart(f"The sandbox ran {n} processes, near its limit of {self.limits.nproc}, "
                                              "and was restarted")
        reward = 0.0
        if self.episode.check(self.root / "scratch"):
            self.won, reward = True, 1.0
            self.score += reward
        obs = f"{note}\n{self.screen}" if note else self.screen
        return obs, reward, self.won, truncated, self._info()

    def oracle_action(self) -> str | None:
        """Ctrl-C if a program holds the terminal, else the scripted solution's next command."""
        if self.episode is None or self.won:
            return None
        if self.busy:
            return "<C-c>"
        sol = self.episode.solution
        return sol[self.done_cmds] if self.done_cmds < len(sol) else sol[-1]

    def _info(self, **extra: Any) -> dict[str, Any]:
        return {"open_actions": True, "won": self.won, "score": self.score,
                "task": self.episode.goal if self.episode else "", **({"task_key": self.key} if self.key else {}),
                **extra}

    def close(self) -> None:
        if self.sandbox is not None:
            self.sandbox.close()
            self.sandbox = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None


FILE = re.compile(r"(?<![\w./-])((?:[\w-]+/)*[\w-]+\.[A-Za-z]{2,4})(?![\w/])")  # log.txt, notes/note01.txt
DIR = re.compile(r"(?<![\w./-])((?:[\w-]+/)*[\w-]+)/(?![\w.])")  # notes/


def menu(observations: Sequence[str], actions: Sequence[str]) -> list[str]:
    """The generic commands, and looks at what the task names: `cat` and `head` of its files, `ls` of its
    directories. Nothing that writes: the task's own commands take free text (`open_actions`)."""
    task = observations[0].split("\n", 1)[0].removeprefix("Task: ")
    looks = [c for f in dict.fromkeys(FILE.findall(task)) for c in (f"cat {f}", f"head {f}")]
    return list(dict.fromkeys(GENERIC_MENU + looks + [f"ls {d}" for d in dict.fromkeys(DIR.findall(task))]))


def check(name: str) -> None:
    if name not in TASKS and name not in SPLITS:
        raise ValueError(f"unknown env id 'terminal:{name}': terminal tasks are {', '.join([*TASKS, *SPLITS])}")


def make(name: str, max_steps: int | None = None, domain: str = "terminal", **kwargs: Any) -> TerminalEnv:
    return TerminalEnv(name, max_steps=max_steps, domain=domain, **kwargs)
