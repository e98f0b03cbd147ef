"""Search: question answering with two tools over a real full-text index (SQLite FTS5, bm25 ranking) of the
documentation already on the machine: CPython's pydoc topics, stdlib module docstrings, and installed
packages' long descriptions. Actions are one JSON object each:

    {"tool": "web_search", "arguments": {"queries": ["with statement", "context manager"]}}
    {"tool": "web_extractor", "arguments": {"url": "pydoc://topics/with", "page": 1}}
    {"answer": "with"}                                   (ends the episode; 1.0 when right)

The call forms `web_search(queries=[...])`, `web_extractor(url="...")` and `answer("...")` work too.

`search:q1`..`q17` are hand-written questions (`search:python-docs` draws one by seed). `search:train` and
`search:heldout` draw from hundreds of questions generated from the index's own pages (which page says this
sentence, which module or package is described so, which name fills this blank, which version is installed),
split by a hash of the page that holds the answer; see `split_tasks`. The menu (`menu`) is read off what the agent
has seen: searches from the question, reads of the last results and answers naming their top pages, and on a page
read its next page and the names it quotes."""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import inspect
import json
import os
import random
import re
import sqlite3
import sys
import sysconfig
import tokenize
from pathlib import Path
from typing import Any, Iterator, Sequence

import pydoc_data.topics
from agentworld.envs.base import retry_ast, split_of, unparsed_info  # noqa: F401  (split_of: the shared split rule; re-exported)

SCHEMA = 2  # bump when the corpus or the index layout changes: it is part of the cache key
TOP_K = 5  # results per query
MAX_QUERIES = 3  # queries per web_search call, to keep observations short
PAGE_CHARS = 3000  # web_extractor shows a page in chunks of this size
MAX_DOC_CHARS = 20000  # a package description longer than this is cut at indexing time

# Each question: its reference answers, the page that holds the fact (`evidence` is a substring of it),
# and a query that finds that page. Facts come from Python 3.11's pydoc topics, stable across machines.
QUESTIONS = [
    {"question": "Which statement wraps the execution of a block with methods defined by a context manager?",
     "answers": ["with", "with statement"], "url": "pydoc://topics/with",
     "query": "with statement wrap block context manager",
     "evidence": 'The "with" statement is used to wrap the execution of a block'},
    {"question": "In a generator function, which exception does a return statement cause to be raised?",
     "answers": ["StopIteration"], "url": "pydoc://topics/return",
     "query": "return statement generator function",
     "evidence": 'generator is done and will cause "StopIteration" to be raised'},
    {"question": "Which exception does the simple form `assert expression` raise when the expression is false?",
     "answers": ["AssertionError"], "url": "pydoc://topics/assert",
     "query": "assert statement", "evidence": "if not expression: raise AssertionError"},
    {"question": "Which built-in variable must be true for assert statements to be checked?",
     "answers": ["__debug__", "debug"], "url": "pydoc://topics/assert",
     "query": "assert statement debugging", "evidence": "if __debug__:"},
    {"question": "Which exception does division by zero raise in Python?",
     "answers": ["ZeroDivisionError"], "url": "pydoc://topics/binary",
     "query": "division by zero exception", "evidence": 'Division by zero raises the "ZeroDivisionError" exception.'},
    {"question": "Which exception is raised when a function's local variable is used before it is bound to a value?",
     "answers": ["UnboundLocalError"], "url": "pydoc://topics/naming",
     "query": "local variable not yet bound exception", "evidence": 'an "UnboundLocalError" exception is raised'},
    {"question": "Which method does dict.__getitem__() call on a dict subclass when the key is not in the dictionary?",
     "answers": ["__missing__", "missing", "object.__missing__"], "url": "pydoc://topics/sequence-types",
     "query": "dict subclass key not in dictionary __missing__", "evidence": "object.__missing__(self, key)"},
    {"question": "Which statement is a null operation, a placeholder where a statement is required syntactically?",
     "answers": ["pass", "pass statement"], "url": "pydoc://topics/pass",
     "query": "null operation placeholder statement", "evidence": '"pass" is a null operation'},
    {"question": "Which string method returns a copy of the string that can be used for caseless matching?",
     "answers": ["casefold", "str.casefold"], "url": "pydoc://topics/string-methods",
     "query": "string caseless matching casefold", "evidence": "used for caseless matching."},
    {"question": "Which method of a context manager is invoked to enter its runtime context?",
     "answers": ["__enter__", "enter", "object.__enter__"], "url": "pydoc://topics/context-managers",
     "query": "context manager enter runtime context", "evidence": "Enter the runtime context related to this object."},
    {"question": "Which statement makes names refer to variables in the nearest enclosing scope, excluding globals?",
     "answers": ["nonlocal", "nonlocal statement"], "url": "pydoc://topics/nonlocal",
     "query": "nonlocal statement enclosing scope",
     "evidence": 'The "nonlocal" statement causes the listed identifiers to refer to'},
    {"question": "Besides __len__(), which method can a class define to make its objects test as false?",
     "answers": ["__bool__", "bool", "object.__bool__"], "url": "pydoc://topics/truth",
     "query": "truth value testing false", "evidence": 'either a "__bool__()" method that returns "False"'},
    {"question": "Which exception does d[key] raise when key is not in the dictionary d?",
     "answers": ["KeyError"], "url": "pydoc://topics/typesmapping",
     "query": "dictionary mapping types key", "evidence": 'Raises a "KeyError" if'},
    {"question": "Which standard library module is the Python debugger?",
     "answers": ["pdb"], "url": "pydoc://topics/debugger",
     "query": "python debugger", "evidence": 'The module "pdb" defines an interactive source'},
    {"question": "Which exception does str.index() raise when the substring is not found?",
     "answers": ["ValueError"], "url": "pydoc://topics/string-methods",
     "query": "str index substring not found", "evidence": 'but raise "ValueError" when the substring is not'},
    {"question": "Which format string conversion flag calls repr() on the value?",
     "answers": ["!r", "r"], "url": "pydoc://topics/formatstrings",
     "query": "format string conversion flag repr", "evidence": "\"'!r'\" which calls \"repr()\""},
    {"question": "What kind of functions do lambda expressions create?",
     "answers": ["anonymous", "anonymous functions", "anonymous function"], "url": "pydoc://topics/lambda",
     "query": "lambda expressions", "evidence": "anonymous functions"},
]

# Common English words that carry no weight in a query; Python's keywords (with, for, in, ...) do carry it.
STOPWORDS = set("a an are at be by can do does has have how it its of on that the this to was what when where "
                "which who why".split())


# --- The corpus and its index ---------------------------------------------------------------------------

def topic_pages() -> Iterator[tuple[str, str, str]]:
    """CPython's documentation topics (what `help("with")` shows): (url, title, text)."""
    for name, text in sorted(pydoc_data.topics.topics.items()):
        title, _, body = text.strip("\n").split("\n", 2)  # every topic opens with an underlined title
        yield f"pydoc://topics/{name}", title.strip(), body


def module_docstring(path: str) -> str | None:
    """The leading docstring of a source file, read from its first tokens (no import, no full parse)."""
    with open(path, "rb") as f:
        for tok in tokenize.tokenize(f.readline):
            if tok.type in (tokenize.ENCODING, tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE):
                continue
            if tok.type != tokenize.STRING:
                return None
            doc = retry_ast(ast.literal_eval, tok.string)
            return inspect.cleandoc(doc) if isinstance(doc, str) else None
    return None


def module_pages() -> Iterator[tuple[str, str, str]]:
    lib = Path(sysconfig.get_paths()["stdlib"])
    for name in sorted(sys.stdlib_module_names):
        path = next((p for p in (lib / f"{name}.py", lib / name / "__init__.py") if p.exists()), None)
        if name.startswith("_") or path is None:
            continue
        try:
            doc = module_docstring(str(path))
        except (SyntaxError, ValueError, tokenize.TokenError):  # a file we cannot read is not worth a crash
            continue
        if doc and doc.strip():
            yield f"pydoc://module/{name}", f"{name} — {doc.strip().splitlines()[0]}", doc


@functools.lru_cache(maxsize=1)  # reading every package's metadata costs ~0.3 s: once per process
def installed_packages() -> dict[str, Any]:
    """Normalized name -> metadata, one per name: the first on sys.path (what `import` would see)."""
    seen: dict[str, Any] = {}
    for dist in importlib.metadata.distributions():
        meta = dist.metadata  # each access re-reads the file: read it once
        name = (meta.get("Name") or "").strip()  # .get: a broken dist-info may lack the header
        if name:
            seen.setdefault(re.sub(r"[-_.]+", "-", name).lower(), meta)
    return dict(sorted(seen.items()))


def package_pages(packages: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    for name, meta in packages.items():
        body = (meta.get_payload() or meta.get("Description") or "").strip()
        if body:
            title = f"{meta.get('Name')} {meta.get('Version')}: {meta.get('Summary') or ''}".strip().rstrip(":")
            yield f"pypi://{name}", title, body[:MAX_DOC_CHARS]


def corpus_key(packages: dict[str, Any]) -> str:
    """What the corpus is made of: the Python build and the installed packages' versions."""
    parts = [str(SCHEMA), sys.version, sysconfig.get_paths()["stdlib"]]
    parts += [f"{name}=={meta.get('Version')}" for name, meta in packages.items()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "agentworld"


def build_index(directory: str | Path | None = None) -> Path:
    """The index file for this machine's corpus, built once and reused. The build writes a temporary file
    and renames it, so concurrent builders never see half an index."""
    packages = installed_packages()
    path = Path(directory or cache_dir()) / f"search-{corpus_key(packages)}.sqlite"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    con = sqlite3.connect(tmp)
    try:
        con.execute("CREATE VIRTUAL TABLE docs USING fts5(url UNINDEXED, title, body, tokenize='porter unicode61')")
        pages = [*topic_pages(), *module_pages(), *package_pages(packages)]
        con.executemany("INSERT INTO docs(url, title, body) VALUES (?, ?, ?)", pages)
        con.execute("INSERT INTO docs(docs) VALUES ('optimize')")
        con.commit()
    finally:
        con.close()
    os.replace(tmp, path)
    return path


def fts_query(text: str) -> str:
    """A user's free text as an FTS5 query: each word quoted (so no word is read as syntax), any may match."""
    words = [w for w in re.findall(r"\w+", text.lower()) if w.strip("_")]
    kept = [w for w in words if w not in STOPWORDS] or words
    return " OR ".join(f'"{w}"' for w in dict.fromkeys(kept))


RANKED = "WHERE docs MATCH ? ORDER BY bm25(docs, 0.0, 5.0, 1.0), url LIMIT ?"


def search(con: sqlite3.Connection, text: str, k: int = TOP_K) -> list[tuple[str, str, str]]:
    """The top `k` pages for `text` by bm25 (a title match weighs 5 body matches): (url, title, snippet)."""
    query = fts_query(text)
    if not query:
        return []
    rows = con.execute(f"SELECT url, title, snippet(docs, 2, '', '', ' … ', 24) FROM docs {RANKED}",
                       (query, k)).fetchall()
    rules = re.compile(r"([*=~^-])\1{3,}")  # reST underlines say nothing in a one-line snippet
    return [(url, title, " ".join(rules.sub(" ", snip).split())) for url, title, snip in rows]


def ranked_urls(con: sqlite3.Connection, text: str, k: int = TOP_K) -> list[str]:
    """The URLs `search` would list, without the snippets (which cost four fifths of a search)."""
    query = fts_query(text)
    return [url for (url,) in con.execute(f"SELECT url FROM docs {RANKED}", (query, k))] if query else []


UNDERLINE = re.compile(r"^\s*([=~^*-])\1{2,}\s*$")


def to_markdown(title: str, body: str) -> str:
    """A page as Markdown: its title as the `#` heading; underlined (reST) headings become `##`."""
    lines = body.strip("\n").splitlines()
    out = [f"# {title}", ""]
    for line, after in zip(lines, lines[1:] + [""]):
        if UNDERLINE.match(line) and out[-1].startswith("## "):
            continue  # the underline of the heading just written
        heading = line.strip() and UNDERLINE.match(after) and not UNDERLINE.match(line)
        out.append(f"## {line.strip()}" if heading else line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip() + "\n"


def normalize(answer: str) -> str:
    """Case, quotes, call parentheses, a final period, a leading article and spacing do not matter; the
    characters of names (`_`, `.`, `!`, `-`) do."""
    a = re.sub(r"[^\w.!-]+", " ", str(answer).lower().replace("()", "")).strip(" .")
    return re.sub(r"^(the|a|an) ", "", " ".join(a.split()))


def is_correct(given: str, answers: list[str]) -> bool:
    return bool(normalize(given)) and normalize(given) in {normalize(a) for a in answers}


# --- Actions ------------------------------------------------------------------------------------------

def call(tool: str, **arguments: Any) -> str:
    """The canonical text of an action, as the menu and the oracle write it."""
    if tool == "answer":
        return json.dumps({"answer": arguments["answer"]})
    return json.dumps({"tool": tool, "arguments": arguments})


def parse_action(action: Any) -> tuple[str, dict[str, Any]]:
    """(tool, arguments) from a JSON object or a Python-style call; ValueError says what is wrong."""
    if not isinstance(action, str) or not action.strip():
        raise ValueError("the action must be a non-empty string")
    text = action.strip()
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"the action is not valid JSON ({e.msg})") from None
        except (ValueError, RecursionError) as e:  # thousands of digits, nesting deeper than the parser goes
            raise ValueError(f"the action could not be read ({type(e).__name__})") from None
        if not isinstance(obj, dict):
            raise ValueError("the action must be a JSON object")
        if "answer" in obj:
            return "answer", {"answer": obj["answer"]}
        tool, args = obj.get("tool", obj.get("name")), obj.get("arguments", {})
        if isinstance(args, str):  # OpenAI-style calls carry their arguments as a JSON string
            try:
                args = json.loads(args)
            except (ValueError, RecursionError):
                raise ValueError("`arguments` is not a JSON object") from None
        if not isinstance(tool, str) or not isinstance(args, dict):
            raise ValueError('expected {"tool": NAME, "arguments": {...}} or {"answer": TEXT}')
        return tool, args
    try:
        node = retry_ast(functools.partial(ast.parse, mode="eval"), text).body
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            raise ValueError
        first = {"web_search": "queries", "web_extractor": "url", "answer": "answer"}.get(node.func.id, "arg")
        args = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg}
        if node.args:
            args.setdefault(first, ast.literal_eval(node.args[0]))
        return node.func.id, args
    except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError):
        raise ValueError("expected a JSON object such as "
                         + call("web_search", queries=["..."]) + ' or {"answer": "..."}') from None


def check_call(tool: str, args: dict[str, Any]) -> None:
    """ValueError unless (tool, args) is a well-formed call: a known tool with its required arguments of the right
    types. Whether it then works (a URL with a page, a page number in range) is the tool's to say."""
    if tool == "answer":
        if not isinstance(args.get("answer"), str):
            raise ValueError('the answer must be a string: {"answer": "..."}')
    elif tool == "web_search":
        queries = args.get("queries", args.get("query"))
        queries = [queries] if isinstance(queries, str) else queries
        if not isinstance(queries, list) or not queries or not all(isinstance(q, str) for q in queries):
            raise ValueError("web_search needs `queries`: a list of strings")
    elif tool == "web_extractor":
        if not isinstance(args.get("url"), str) or not args["url"].strip():
            raise ValueError("web_extractor needs `url`: a URL from the search results")
        if not isinstance(args.get("page", 1), int) or isinstance(args.get("page"), bool):
            raise ValueError("`page` must be an integer")
    else:
        raise ValueError(f"unknown tool {tool!r}; the tools are web_search, web_extractor and answer")


# --- Generated tasks ----------------------------------------------------------------------------------
# Hundreds of questions drawn from the index's own pages by a few templates. Every task is checked when it is
# made: its text sits on one page only (so its answer is unambiguous) and its oracle query finds that page.

TASKS_SCHEMA = 2  # bump when the templates, their checks or the split change: part of the task cache's name
PER_PAGE = 3  # at most this many passage and this many fill-the-blank tasks per page
BLANK = "___"
QUERY_WORDS = 12  # the oracle's query: the first words of the question's quoted text
QUOTED = re.compile(r'("|``?)([A-Za-z_][\w.]{1,38}(?:\(\))?)\1')  # "name", `name` or ``name``
BAD = re.compile(r"http|://|\]\(|[<>{}|\\\[\]=]|::|>>>|[A-Za-z]_(?!\w)")  # markup, links, code, reST refs
SPLITS = ("train", "heldout")


def flat(text: str) -> str:
    return " ".join(text.split())


def sentences(text: str) -> Iterator[str]:
    """The raw sentences (substrings of `text`) of a Markdown page's paragraphs, headings left out."""
    for block in re.split(r"\n[ \t]*\n", text):
        if not block.lstrip().startswith("#"):
            yield from (m.group() for m in re.finditer(r"\S[\s\S]*?(?:[.!?](?=\s|$)|$)", block))


def prose(sentence: str, lo: int = 50, hi: int = 200, words: int = 8) -> bool:
    """A sentence fit to quote in a question: of sensible length, ends in a period, no links, markup or code."""
    s = flat(sentence)
    if not (lo <= len(s) <= hi and s[0].isupper() and s.endswith(".")) or len(s.split()) < words or BAD.search(s):
        return False
    return sum(c.isalpha() or c == " " for c in s) >= 0.8 * len(s)


def page_names(url: str, title: str) -> list[str]:
    """The answers that name a page: a topic's key and title, a module's name, a package's names."""
    kind, name = url.split("://")[0], url.rsplit("/", 1)[-1]
    if url.startswith("pydoc://topics/"):
        return [name, title]
    if kind == "pypi":
        spelled = title.split(" ")[0]
        return list(dict.fromkeys([name, spelled, name.replace("-", "_"), spelled.replace("-", "_")]))
    return [name]


def mask(text: str, names: list[str]) -> str:
    """`text` with every spelling of the page's names (any of `-_. ` between their parts) blanked out."""
    for name in names:
        parts = [re.escape(p) for p in re.split(r"[-_. ]+", name) if p]
        if parts:
            text = re.sub(r"(?<![\w-])" + r"[-_. ]?".join(parts) + r"(?![\w-])", BLANK, text, flags=re.I)
    return text


def names_it(text: str, url: str, names: list[str]) -> bool:
    """Whether `text` still gives the page away: a topic's key or title as words, or a long name run together.
    A topic's key is often a common word ("with", "binary"), so its sentences are dropped, not masked."""
    squash = re.sub(r"[\W_]+", "", text.lower())
    if url.startswith("pydoc://topics/"):
        words = lambda t: " " + " ".join(re.findall(r"[^\W_]+", t.lower())) + " "
        title = re.sub(r"^the ", "", words(names[1]).strip())
        return f" {title} " in words(text) or words(names[0]) in words(text)  # a key such as "bitwise", too
    return any(len(n) >= 5 and re.sub(r"[\W_]+", "", n.lower()) in squash for n in names)


def pages_with(con: sqlite3.Connection, text: str) -> list[str]:
    """The pages (at most 3) holding each unmasked stretch of `text` as a phrase. Phrases match tokens, so
    punctuation and word endings are ignored: a looser test than the exact text, hence a safe one."""
    parts = [p for p in text.split(BLANK) if re.search(r"[^\W_]", p)]
    query = " AND ".join('"' + p.replace('"', '""') + '"' for p in parts)
    return [u for (u,) in con.execute("SELECT url FROM docs WHERE docs MATCH ? LIMIT 3", (query,))] if query else []


def oracle_query(text: str) -> str:
    """What a person would type: the quoted text's first words as written, the blanks and markup left out."""
    words = (w.strip("\"'`*()[],;:.?!") for w in text.replace(BLANK, " ").split())
    return " ".join([w for w in words if re.search(r"[^\W_]", w)][:QUERY_WORDS])


def make_task(con: sqlite3.Connection, text: str, url: str, template: str, question: str, answers: list[str],
              evidence: str, query: str, n: int = 0) -> dict[str, Any] | None:
    """A task, or None when its evidence is cut by a page break or its query does not find the page in the
    top results. `distractor` is the page the oracle's query ranks above the evidence page, if any."""
    start = text.find(evidence)
    if start < 0 or start // PAGE_CHARS != (start + len(evidence) - 1) // PAGE_CHARS:
        return None
    ranked = ranked_urls(con, query)
    if url not in ranked:
        return None
    return {"id": f"{template}:{url}" + (f"#{n}" if n else ""), "split": split_of(url), "template": template,
            "question": question, "answers": answers, "url": url, "query": query, "evidence": evidence,
            "rank": ranked.index(url) + 1, "distractor": ranked[0] if ranked[0] != url else None}


def page_tasks(con: sqlite3.Connection, url: str, title: str, body: str) -> Iterator[dict[str, Any]]:
    """The tasks one page yields, each template's candidates tried in a seeded order until enough pass."""
    text, names = to_markdown(title, body), page_names(url, title)
    kind = ("stdlib module" if url.startswith("pydoc://module/") else
            "pydoc topic" if url.startswith("pydoc://") else "installed package")
    noun = {"pydoc topic": "pydoc topic page", "stdlib module": "stdlib module's documentation",
            "installed package": "installed package's description"}[kind]  # as the passage question says it
    unique = lambda t: pages_with(con, t) == [url]
    if kind == "stdlib module":  # its docstring's first sentence, the name masked
        first = next(sentences(text.split("\n", 1)[1]), "")
        masked = mask(flat(first), names)
        if prose(first, lo=20, words=4) and not names_it(masked, url, names) and unique(masked):
            task = make_task(con, text, url, "module-first", f'Which stdlib module\'s documentation starts with: '
                             f'"{masked}"?', names, first, oracle_query(masked))
            yield from [task] if task else []
    if kind == "installed package":  # its one-line summary, and its version, both from the title
        spelled, version, summary = re.match(r"(\S+) ([^\s:]+):? ?(.*)$", title).groups()
        masked = mask(summary, names)
        if len(masked) >= 15 and len(masked.split()) >= 3 and not names_it(masked, url, names) and unique(masked):
            task = make_task(con, text, url, "package-summary", f'Which installed package is described as '
                             f'"{masked}"?', names, summary, oracle_query(masked))
            yield from [task] if task else []
        task = make_task(con, text, url, "package-version", f"Which version of the package {spelled} is "
                         "installed, according to its documentation?", [version], f"{spelled} {version}", spelled)
        yield from [task] if task else []
    candidates = [s for s in dict.fromkeys(sentences(text.split("\n", 1)[1])) if prose(s)]
    random.Random(url).shuffle(candidates)  # a seeded order: tasks from the whole page, not only its opening
    used, made = set(), 0
    for s in candidates:  # passages: which page says this?
        masked = mask(flat(s), names if kind != "pydoc topic" else [])
        if made < PER_PAGE and not names_it(masked, url, names) and unique(masked):
            task = make_task(con, text, url, "passage", f'Which {noun} says: "{masked}"?', names, s,
                             oracle_query(masked), made + 1)
            if task:
                used.add(s)
                made += 1
                yield task
    made, terms = 0, set()
    for s in candidates:  # fill the blank: a quoted name of the sentence, masked
        found = QUOTED.search(s)
        term = found.group(2) if found else None
        if made >= PER_PAGE or s in used or not term or term in terms:
            continue
        masked = flat(re.sub(r'("|``?)' + re.escape(term) + r"\1", BLANK, s))
        if re.search(rf"(?<!\w){re.escape(term)}(?!\w)", masked, re.I) or not unique(masked) \
                or not fills_one_way(text, masked, term):
            continue
        answers = list(dict.fromkeys([term, term.rsplit(".", 1)[-1]]))
        task = make_task(con, text, url, "fill-blank", f'Which name fills the blank {BLANK} in this sentence '
                         f'from the documentation: "{masked}"?', answers, s, oracle_query(masked), made + 1)
        if task:
            terms.add(term)
            made += 1
            yield task


def fills_one_way(text: str, masked: str, term: str) -> bool:
    """Whether every place of the page where the masked sentence fits has `term` in its blanks."""
    pattern = re.escape(masked).replace(re.escape(BLANK), r"(.{1,44}?)").replace(r"\ ", r"\s+")
    fills = {f.strip('"`') for m in re.finditer(pattern, text) for f in m.groups()}
    return fills == {term}


def generate_tasks(index: str | Path) -> list[dict[str, Any]]:
    """Every task the index yields, in page order; one question text is never asked twice."""
    con = sqlite3.connect(f"{Path(index).resolve().as_uri()}?mode=ro", uri=True)
    try:
        tasks, seen = [], set()
        for url, title, body in con.execute("SELECT url, title, body FROM docs ORDER BY url").fetchall():
            for task in page_tasks(con, url, title, body):
                if task["question"] not in seen:
                    seen.add(task["question"])
                    tasks.append(task)
        return tasks
    finally:
        con.close()


@functools.lru_cache(maxsize=4)
def all_tasks(index: Path) -> tuple[dict[str, Any], ...]:
    """The index's tasks, generated once and kept in a file beside it (written whole, then renamed)."""
    path = index.with_name(f"{index.stem}.tasks{TASKS_SCHEMA}.json")
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(generate_tasks(index)))
        os.replace(tmp, path)
    return tuple(json.loads(path.read_text()))


def split_tasks(split: str, index_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """The generated tasks of `split` (train or heldout): dicts with id, question, answers, url, query,
    evidence, template, rank and distractor. Deterministic on one machine; the set depends on the installed
    docs (Python's build and packages), as the index does."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: the splits are {', '.join(SPLITS)}")
    return [dict(t) for t in all_tasks(build_index(index_dir).resolve()) if t["split"] == split]


# --- The env ------------------------------------------------------------------------------------------

NO_PAGE = "no page at {url!r}; use a URL from the search results"
HELP = ("Answer the question using the two tools over Python's documentation. One action per turn, a JSON object:\n"
        + call("web_search", queries=["query one", "query two"]) + "\n"
        + call("web_extractor", url="URL from the results", page=1) + "\n"
        + '{"answer": "short answer"}   (ends the episode)')


class SearchEnv:
    def __init__(self, name: str, max_steps: int | None = None, domain: str = "search",
                 index_dir: str | Path | None = None):
        check(name)
        self.env_id, self.domain, self.name, self.max_steps = f"search:{name}", domain, name, max_steps
        index = build_index(index_dir).resolve()
        self.con = sqlite3.connect(f"{index.as_uri()}?mode=ro", uri=True, check_same_thread=False)
        self.tasks = [t for t in all_tasks(index) if t["split"] == name] if name in SPLITS else QUESTIONS
        if not self.tasks:
            raise ValueError(f"the index at {index} yields no {name} tasks")
        self.task = self.tasks[0]
        self._start()

    def _start(self) -> None:
        self.t, self.score, self.done, self.won = 0, 0.0, False, False
        self.results: list[str] = []  # URLs of the last search
        self.seen: set[tuple[str, int]] = set()

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        if self.name == "python-docs" or self.name in SPLITS:
            self.task = self.tasks[random.Random(seed).randrange(len(self.tasks))]
        else:
            self.task = QUESTIONS[int(self.name[1:]) - 1]
        self._start()
        return f"Question: {self.task['question']}\n\n{HELP}", self._info()

    # The tools ---------------------------------------------------------------------------------------

    def page(self, url: str) -> str | None:
        row = self.con.execute("SELECT title, body FROM docs WHERE url = ?", (url.strip(),)).fetchone()
        return to_markdown(*row) if row else None

    def web_search(self, queries: Any) -> str:
        if isinstance(queries, str):
            queries = [queries]
        if not isinstance(queries, list) or not queries or not all(isinstance(q, str) for q in queries):
            raise ValueError("web_search needs `queries`: a list of strings")
        blocks, self.results = [], []
        for q in queries[:MAX_QUERIES]:
            hits = search(self.con, q)
            self.results += [url for url, _, _ in hits if url not in self.results]
            lines = [f"[{n}] {url}\n{title}\n{snip}" for n, (url, title, snip) in enumerate(hits, 1)]
            blocks.append(f"## Results for {json.dumps(q)}\n" + ("\n\n".join(lines) or "No results."))
        if len(queries) > MAX_QUERIES:
            blocks.append(f"(Only the first {MAX_QUERIES} queries were run.)")
        return "\n\n".join(blocks)

    def web_extractor(self, url: Any, page: Any = 1) -> str:
        if not isinstance(url, str) or not url.strip():
            raise ValueError("web_extractor needs `url`: a URL from the search results")
        text = self.page(url)
        if text is None:
            raise ValueError(NO_PAGE.format(url=url))
        pages = max(1, -(-len(text) // PAGE_CHARS))
        if not isinstance(page, int) or isinstance(page, bool) or not 1 <= page <= pages:
            raise ValueError(f"`page` must be an integer from 1 to {pages}")
        chunk = text[(page - 1) * PAGE_CHARS: page * PAGE_CHARS]
        self.seen.add((url.strip(), page))
        if pages > 1:
            more = f" Next: {call('web_extractor', url=url.strip(), page=page + 1)}" if page < pages else ""
            chunk += f"\n\n[Page {page} of {pages}; the page was cut at {PAGE_CHARS} characters.{more}]"
        return chunk

    # The loop ----------------------------------------------------------------------------------------

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        self.t += 1
        truncated = self.max_steps is not None and self.t >= self.max_steps
        if self.done:
            err = "The episode is over; call reset()."
            return err, 0.0, True, truncated, self._info(error=err)
        try:
            tool, args = parse_action(action)
            check_call(tool, args)
        except ValueError as e:  # no well-formed call
            err = f"Invalid action: {e}."
            return f"{err}\n\n{HELP}", 0.0, False, truncated, self._info(**unparsed_info(err))
        try:
            if tool == "answer":
                self.done, self.won = True, is_correct(args["answer"], self.task["answers"])
                reward = 1.0 if self.won else 0.0
                self.score += reward
                obs = "Correct." if self.won else f"Incorrect: {args['answer']!r} is not the answer."
                return obs, reward, True, truncated, self._info()
            if tool == "web_search":
                obs = self.web_search(args.get("queries", args.get("query")))
            else:
                obs = self.web_extractor(args.get("url"), args.get("page", 1))
        except ValueError as e:  # a well-formed call the tool could not serve: no such page, a page out of range
            err = f"Invalid action: {e}."
            return f"{err}\n\n{HELP}", 0.0, False, truncated, self._info(error=err)
        return obs, 0.0, False, truncated, self._info()

    def _info(self, **extra: Any) -> dict[str, Any]:
        return {"open_actions": True, "won": self.won, "score": self.score, **extra}

    def oracle_action(self) -> str | None:
        """Search with a good query, read the page that holds the answer, then answer."""
        if self.done:
            return None
        task = self.task
        if not self.results and not self.seen:
            return call("web_search", queries=[task["query"]])
        text = self.page(task["url"]) or ""
        page = text.find(task["evidence"]) // PAGE_CHARS + 1
        if (task["url"], page) not in self.seen:
            return call("web_extractor", url=task["url"], page=page)
        return call("answer", answer=task["answers"][0])

    def close(self) -> None:
        if self.con is not None:
            self.con.close()
            self.con = None


# --- Controlled observations for the LWM's SFT (agentworld/controls.py), from this env's own texts ------------------

def _queries(args: dict[str, Any]) -> list[str]:
    queries = args.get("queries", args.get("query"))
    return ([queries] if isinstance(queries, str) else queries)[:MAX_QUERIES]


def _served_call(action: str, next_obs: str) -> tuple[str, dict[str, Any]] | None:
    """(tool, arguments) of a well-formed search or page read the env served; None for answers and anything else."""
    try:
        tool, args = parse_action(action)
        check_call(tool, args)
    except ValueError:
        return None
    return None if tool == "answer" or next_obs.startswith("Invalid action") else (tool, args)


def perturbed(name: str, action: str, next_obs: str) -> str | None:
    """The observation of a real search step under the perturbation `name`, in this env's own words: its result pages
    with no hit (empty), its answer to a URL with no page (missing), the real results or page cut in two with a pager
    line (paginated). None where the env has no such text for the step (a timeout or a rejection: the search tools
    have neither), or the step is an answer or an unparsed action."""
    if (served := _served_call(action, next_obs)) is None:
        return None
    tool, args = served
    if name == "empty" and tool == "web_search":
        return "\n\n".join(f"## Results for {json.dumps(q)}\nNo results." for q in _queries(args))
    if name == "missing" and tool == "web_extractor":
        return f"Invalid action: {NO_PAGE.format(url=args['url'])}.\n\n{HELP}"
    if name == "paginated":
        if tool == "web_search":  # the first result of each query's block, and a pager line
            blocks = [b.split("\n\n[2] ")[0] for b in next_obs.split("\n\n## ")]
            if blocks == next_obs.split("\n\n## "):
                return None  # one result per query: nothing to page
            return "\n\n## ".join(blocks) + "\n\n[Page 1 of 2 of the results; the next page has the rest.]"
        body = FOOTER.sub("", next_obs)
        if len(body) < 400:
            return None
        cut = body.rfind("\n", 0, len(body) // 2) + 1 or len(body) // 2
        page = args.get("page", 1)
        more = call("web_extractor", url=args["url"].strip(), page=page + 1)
        return f"{body[:cut].rstrip()}\n\n[Page {page} of {page + 1}; the page was cut at {cut} characters. Next: {more}]"
    return None


def fictional(action: str, next_obs: str, facts: Sequence[str]) -> str | None:
    """The observation of a real search step in a fictional world where every result states `facts`: each result keeps
    its URL and title and says the facts; a page read starts with them. None for answers and unparsed actions."""
    if (served := _served_call(action, next_obs)) is None:
        return None
    tool, args = served
    said = " ".join(facts)
    if tool == "web_search":
        blocks, real = [], next_obs.split("\n\n## ")
        for i, q in enumerate(_queries(args)):
            hits = (RESULT.findall(real[i]) if i < len(real) else []) or [(f"fiction://{q.replace(' ', '-')}", q)]
            lines = [f"[{n}] {url}\n{title}\n{said}" for n, (url, title) in enumerate(hits, 1)]
            blocks.append(f"## Results for {json.dumps(q)}\n" + "\n\n".join(lines))
        return "\n\n".join(blocks)
    head, _, rest = next_obs.partition("\n\n")
    return f"{head}\n\n{said}\n\n{rest}".rstrip()


def fictional_task(obs: str, question: str) -> str:
    """An episode's first observation asking a fictional world's question instead of its own."""
    return re.sub(r"^Question: .*", lambda m: f"Question: {question}", obs, count=1)


def fictional_reward(action: str, answer: str) -> tuple[str, float, bool] | None:
    """(observation, reward, terminated) of an answer in a fictional world, in the env's words: right when it gives the
    world's answer (is_correct, as the real env scores); None for any other action."""
    try:
        tool, args = parse_action(action)
        check_call(tool, args)
    except ValueError:
        return None
    if tool != "answer":
        return None
    if is_correct(args["answer"], [answer]):
        return "Correct.", 1.0, True
    return f"Incorrect: {args['answer']!r} is not the answer.", 0.0, True


# --- The menu: from what the agent has seen -----------------------------------------------------------

RESULT = re.compile(r"^\[\d+\] (\w+://\S+)\n(.*)$", re.M)  # a search result's URL and title lines
FOOTER = re.compile(r"\n\n\[Page \d+ of \d+; the page was cut at \d+ characters\.( Next: .*)?\]$")


def menu(observations: Sequence[str], actions: Sequence[str]) -> list[str]:
    """Searches from the question's keywords (and its quoted text), extractor calls on the last search's results and
    answers naming their top pages, and on the last page read: its next page and the answers it suggests."""
    question = re.match(r"Question: (.*)", observations[0])
    question = question.group(1) if question else ""
    words = [w for w in re.findall(r"[\w.]+", question) if len(w) > 2 and w.lower() not in STOPWORDS]
    out = [call("web_search", queries=[" ".join(words)]),
           call("web_search", queries=[" ".join(words[: len(words) // 2 + 1])]),
           call("web_search", queries=[" ".join(words[len(words) // 2:])])]
    quoted = re.search(r'"(.+)"', question)
    if quoted:  # a generated question quotes its page: search for the quote's words
        out.append(call("web_search", queries=[oracle_query(quoted.group(1))]))
    results = next((dict(RESULT.findall(o)) for o in reversed(observations) if o.startswith("## Results for")), {})
    out += [call("web_extractor", url=url) for url in list(results)[:6]]
    out += [call("answer", answer=a) for url, title in list(results.items())[:3] for a in page_answers(url, title)]
    viewed = last_page(observations, actions)
    if viewed:
        url, page, text = viewed
        footer = FOOTER.search(text)
        if footer and footer.group(1):
            out.append(call("web_extractor", url=url, page=page + 1))
        text = FOOTER.sub("", text)
        terms = re.findall(r'"([^"\s]{1,40})"', text)
        common = sorted(dict.fromkeys(terms), key=lambda q: (-terms.count(q), terms.index(q)))
        title = text[2:].split("\n", 1)[0] if text.startswith("# ") else ""  # on the page's first chunk
        out += [call("answer", answer=a)
                for a in [q.strip("()") for q in common[:3]] + page_answers(url, title) + asked_names(text, question)]
    return list(dict.fromkeys(out))


def last_page(observations: Sequence[str], actions: Sequence[str]) -> tuple[str, int, str] | None:
    """(url, page, text) of the last page the extractor showed, if any."""
    for action, obs in zip(reversed(actions), reversed(observations)):
        try:
            tool, args = parse_action(action)
        except ValueError:
            continue
        if tool == "web_extractor" and not obs.startswith("Invalid action"):
            page = args.get("page", 1)
            return str(args.get("url")).strip(), page if isinstance(page, int) else 1, obs
    return None


def page_answers(url: str, title: str) -> list[str]:
    """The answers that name a page: its name, and a package's version (its title reads "Name Version: Summary")."""
    version = re.match(r"\S+ ([^\s:]+)", title) if url.startswith("pypi://") else None
    return [url.rsplit("/", 1)[-1]] + ([version.group(1)] if version else [])


def asked_names(text: str, question: str) -> list[str]:
    """The quoted names of the page's sentence that shares most words with the question (a fill-the-blank answer)."""
    asked = set(re.findall(r"\w+", question.lower()))
    best = max(sentences(text), key=lambda s: len(asked & set(re.findall(r"\w+", s.lower()))), default="")
    return list(dict.fromkeys(m.group(2) for m in QUOTED.finditer(best)))[:3]


NAMES = ["python-docs", *SPLITS] + [f"q{k}" for k in range(1, len(QUESTIONS) + 1)]


def check(name: str) -> None:
    if name not in NAMES:
        raise ValueError(f"unknown env id 'search:{name}': the search envs are search:python-docs, "
                         f"search:q1 .. search:q{len(QUESTIONS)}, and the generated tasks' search:train and "
                         "search:heldout")


def make(name: str, max_steps: int | None = None, domain: str = "search", **kwargs: Any) -> SearchEnv:
    return SearchEnv(name, max_steps=max_steps, domain=domain, **kwargs)
