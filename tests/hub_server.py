"""A small loopback Hugging Face Hub server for the test suite (stdlib only).

It speaks enough of the Hub HTTP API for the *real* ``huggingface_hub`` client (and hence
``transformers``/``peft``) to create repos, commit files, list them and download them:

* ``GET  /api/whoami-v2``                                     (needs any ``Authorization: Bearer ...``)
* ``POST /api/repos/create`` | ``/api/repos/delete`` | ``/api/repos/move``
* ``POST /api/validate-yaml``                                 (always valid)
* ``GET  /api/{models,datasets,spaces}``                      (list; ``author``/``search`` filters)
* ``GET  /api/{type}s/{repo}[/revision/{rev}]``               (repo info: ``sha``, ``siblings``, ...)
* ``GET  /api/{type}s/{repo}/tree/{rev}[/{path}]``            (``recursive``/``expand``; no pagination)
* ``POST /api/{type}s/{repo}/paths-info/{rev}``
* ``POST /api/{type}s/{repo}/preupload/{rev}``                (always ``uploadMode: "regular"``)
* ``POST /api/{type}s/{repo}/commit/{rev}``                   (NDJSON; ``file``, ``deletedFile``,
  ``deletedFolder``; ``parentCommit`` -> 412 on mismatch; ``?create_pr=1`` -> ``refs/pr/N``)
* ``GET  /api/{type}s/{repo}/refs`` | ``/commits/{rev}`` | ``/auth-check``
* ``POST|DELETE /api/{type}s/{repo}/branch/{name}``, ``POST /tag/{rev}``, ``DELETE /tag/{name}``
* ``PUT  /api/{type}s/{repo}/settings``                       (``private``)
* ``GET|HEAD /[datasets/|spaces/]{repo}/resolve/{rev}/{path}`` (``X-Repo-Commit``, ``ETag`` = git blob
  sha1, ``Content-Length``, ``Range`` support) -- ``raw`` is served the same way.

Errors carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) and
``X-Error-Message`` so that ``hf_raise_for_status`` maps them to the usual exceptions.

Every file is a plain git blob: no LFS, no Xet (no ``X-Xet-*`` headers, no ``Link`` header), so the
client always takes the "regular" upload/download routes. Repos are ``owner/name``; a repo created
without an owner gets the server's user name. Any bearer token is accepted; writes and private repos
need one. Each commit gets a 40-hex sha; branches (``main`` first), tags and ``refs/pr/N`` point at
commits, and any revision (branch, tag, full sha or a unique >=7-char prefix) can be read.

Blobs are stored content-addressed under ``<root>/blobs``; repo metadata lives in memory.

Usage::

    with HubServer() as hub:           # or hub = HubServer().start(); ...; hub.stop()
        hub.endpoint                   # "http://127.0.0.1:<port>"
        hub.seed("org/fake", {"config.json": b"{}"})   # commit files without any client

Run ``python tests/hub_server.py --port 8765`` for a manual server.
"""

from __future__ import annotations

import base64
import collections
import datetime as _dt
import hashlib
import itertools
import json
import mimetypes
import os
import shutil
import sys
import tempfile
import threading
import traceback
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit


__all__ = ["HubServer", "HubStore", "HubError", "git_blob_sha1"]

# URL segment after /api/ -> repo type, and repo type -> prefix used in web/resolve URLs.
API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}

DEFAULT_GITATTRIBUTES = (
    b"*.bin filter=lfs diff=lfs merge=lfs -text\n"
    b"*.pt filter=lfs diff=lfs merge=lfs -text\n"
    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
)


def git_blob_sha1(data: bytes) -> str:
    """Git object id of a blob (what the Hub uses as ETag/oid of a regular file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class HubError(Exception):
    """An error answered as ``status`` with ``X-Error-Code: code`` (when given)."""

    def __init__(
        self, status: int, message: str, code: str | None = None, headers: dict | None = None,
        extra: dict | None = None,
    ):  # fmt: skip
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}
        self.extra = extra or {}  # merged into the JSON error body


def _repo_not_found(repo_type: str, repo_id: str) -> HubError:
    return HubError(404, f"Repository {repo_type}s/{repo_id} not found", "RepoNotFound")


@dataclass
class Commit:
    oid: str
    parent: str | None
    tree: dict[str, str]  # path -> blob oid
    title: str
    message: str
    date: str


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit oid ("refs/pr/N" for PRs)
    tags: dict[str, str] = field(default_factory=dict)
    n_prs: int = 0

    @property
    def object_id(self) -> str:  # Mongo-like "_id"
        return hashlib.sha1(f"{self.repo_type}/{self.repo_id}".encode()).hexdigest()[:24]


class HubStore:
    """Thread-safe storage: blobs on disk (content-addressed), repos/commits/refs in memory."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.blob_dir = self.root / "blobs"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.repos: dict[tuple[str, str], Repo] = {}
        self.blob_sizes: dict[str, int] = {}
        self.lock = threading.RLock()
        self._counter = itertools.count()

    # -- blobs -------------------------------------------------------------------------------
    def put_blob(self, data: bytes) -> str:
        oid = git_blob_sha1(data)
        with self.lock:
            path = self.blob_dir / oid
            if not path.exists():
                tmp = path.with_suffix(".tmp")
                tmp.write_bytes(data)
                os.replace(tmp, path)
            self.blob_sizes[oid] = len(data)
        return oid

    def read_blob(self, oid: str) -> bytes:
        return (self.blob_dir / oid).read_bytes()

    def blob_size(self, oid: str) -> int:
        return self.blob_sizes[oid]

    # -- repos -------------------------------------------------------------------------------
    def get_repo(self, repo_type: str, repo_id: str) -> Repo:
        with self.lock:
            repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise _repo_not_found(repo_type, repo_id)
        return repo

    def create_repo(self, repo_type: str, repo_id: str, private: bool = False) -> Repo:
        with self.lock:
            if (repo_type, repo_id) in self.repos:
                raise HubError(409, f"You already created this {repo_type} repo")
            repo = Repo(repo_type=repo_type, repo_id=repo_id, private=private, created_at=_now_iso())
            self.repos[(repo_type, repo_id)] = repo
            # Like the Hub: a new repo has an initial commit with a .gitattributes on `main`.
            init = self._new_commit(
                repo, None, {".gitattributes": self.put_blob(DEFAULT_GITATTRIBUTES)}, "initial commit", ""
            )
            repo.branches["main"] = init.oid
            return repo

    def delete_repo(self, repo_type: str, repo_id: str) -> None:
        with self.lock:
            if self.repos.pop((repo_type, repo_id), None) is None:
                raise _repo_not_found(repo_type, repo_id)

    def move_repo(self, repo_type: str, from_id: str, to_id: str) -> None:
        with self.lock:
            repo = self.get_repo(repo_type, from_id)
            if (repo_type, to_id) in self.repos:
                raise HubError(409, f"Repository {to_id} already exists")
            del self.repos[(repo_type, from_id)]
            repo.repo_id = to_id
            self.repos[(repo_type, to_id)] = repo

    # -- revisions ---------------------------------------------------------------------------
    def resolve(self, repo: Repo, revision: str) -> Commit:
        """Branch, tag, refs/heads/x, refs/tags/x, refs/pr/N, full sha or unique sha prefix."""
        with self.lock:
            rev = revision
            if rev.startswith("refs/heads/"):
                rev = rev[len("refs/heads/") :]
            elif rev.startswith("refs/tags/"):
                rev = rev[len("refs/tags/") :]
            if rev in repo.branches:
                return repo.commits[repo.branches[rev]]
            if rev in repo.tags:
                return repo.commits[repo.tags[rev]]
            if rev in repo.commits:
                return repo.commits[rev]
            if 7 <= len(rev) < 40 and all(c in "0123456789abcdef" for c in rev):
                matches = [oid for oid in repo.commits if oid.startswith(rev)]
                if len(matches) == 1:
                    return repo.commits[matches[0]]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def history(self, repo: Repo, commit: Commit) -> list[Commit]:
        out, cur = [], commit
        while cur is not None:
            out.append(cur)
            cur = repo.commits.get(cur.parent) if cur.parent else None
        return out

    def _new_commit(self, repo: Repo, parent: str | None, tree: dict[str, str], title: str, message: str) -> Commit:
        seed = json.dumps([repo.repo_type, repo.repo_id, parent, sorted(tree.items()), title, message,
                           next(self._counter), _now_iso()])
        oid = hashlib.sha1(seed.encode()).hexdigest()
        commit = Commit(oid=oid, parent=parent, tree=dict(tree), title=title, message=message, date=_now_iso())
        repo.commits[oid] = commit
        return commit

    def commit(
        self,
        repo: Repo,
        branch: str,
        files: dict[str, bytes],
        deleted_files: list[str] = (),
        deleted_folders: list[str] = (),
        title: str = "Update",
        message: str = "",
        parent_commit: str | None = None,
        create_pr: bool = False,
    ) -> tuple[Commit, int | None]:
        """Apply a commit on ``branch``; returns (commit, pr_number or None)."""
        with self.lock:
            if branch not in repo.branches:
                if branch.startswith("refs/heads/") and branch[len("refs/heads/") :] in repo.branches:
                    branch = branch[len("refs/heads/") :]
                else:
                    self.resolve(repo, branch)  # 404 RevisionNotFound if unknown at all
                    raise HubError(400, f"Revision {branch} is not a branch: cannot commit on it")
            head = repo.commits[repo.branches[branch]]
            if parent_commit is not None and parent_commit != head.oid:
                raise HubError(412, f"A commit has happened since. Parent commit {parent_commit} != {head.oid}")
            tree = dict(head.tree)
            for path in deleted_files:
                if path not in tree:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                del tree[path]
            for folder in deleted_folders:
                prefix = folder.strip("/") + "/"
                doomed = [p for p in tree if p.startswith(prefix)]
                if not doomed:
                    raise HubError(404, f"A folder with this name doesn't exist: {folder}", "EntryNotFound")
                for p in doomed:
                    del tree[p]
            for path, data in files.items():
                tree[path] = self.put_blob(data)
            pr_num = None
            if create_pr:
                repo.n_prs += 1
                pr_num = repo.n_prs
                branch = f"refs/pr/{pr_num}"
            commit = self._new_commit(repo, head.oid, tree, title, message)
            repo.branches[branch] = commit.oid
            return commit, pr_num


class _App:
    """HTTP-agnostic router: ``handle(...)`` returns (status, headers, body) or raises HubError."""

    def __init__(self, store: HubStore, username: str):
        self.store = store
        self.username = username

    # -- helpers -----------------------------------------------------------------------------
    @staticmethod
    def _token(headers) -> str | None:
        auth = headers.get("Authorization") or ""
        if auth.lower().startswith("bearer ") and auth[7:].strip():
            return auth[7:].strip()
        return None

    def _require_token(self, headers) -> None:
        if self._token(headers) is None:
            raise HubError(401, "Invalid credentials in Authorization header")

    def _readable_repo(self, repo_type: str, repo_id: str, headers) -> Repo:
        repo = self.store.get_repo(repo_type, repo_id)
        if repo.private and self._token(headers) is None:
            raise _repo_not_found(repo_type, repo_id)
        return repo

    def _writable_repo(self, repo_type: str, repo_id: str, headers) -> Repo:
        self._require_token(headers)
        return self.store.get_repo(repo_type, repo_id)

    @staticmethod
    def _json_body(body: bytes) -> dict:
        if not body:
            return {}
        try:
            return json.loads(body)
        except ValueError as e:
            raise HubError(400, f"Invalid JSON body: {e}") from e

    @staticmethod
    def _flag(query: dict, name: str) -> bool:
        return (query.get(name, ["false"])[-1] or "").lower() in ("1", "true", "yes")

    def _tree_entries(self, repo: Repo, commit: Commit, path: str, recursive: bool, expand: bool) -> list[dict]:
        path = path.strip("/")
        prefix = path + "/" if path else ""
        files = {p: oid for p, oid in commit.tree.items() if p.startswith(prefix)}
        if path and not files:
            raise HubError(404, f"{path} does not exist on {commit.oid}", "EntryNotFound",
                           {"X-Repo-Commit": commit.oid})
        entries: dict[str, dict] = {}
        for p, oid in sorted(files.items()):
            rel = p[len(prefix) :].split("/")
            # intermediate directories
            for depth in range(1, len(rel)):
                if not recursive and depth > 1:
                    break
                d = prefix + "/".join(rel[:depth])
                if d not in entries:
                    entries[d] = {"type": "directory", "oid": self._dir_oid(commit, d), "size": 0, "path": d}
            if recursive or len(rel) == 1:
                entries[p] = self._file_entry(p, oid)
        out = list(entries.values())
        if expand:
            history = self.store.history(repo, commit)
            for entry in out:
                entry["lastCommit"] = self._last_commit(history, entry["path"], entry["type"] == "directory")
                if entry["type"] == "file":
                    entry["securityFileStatus"] = {"status": "safe"}
        # directories first then files, each sorted, like the Hub
        return sorted(out, key=lambda e: (e["type"] != "directory", e["path"]))

    def _file_entry(self, path: str, oid: str) -> dict:
        return {"type": "file", "oid": oid, "size": self.store.blob_size(oid), "path": path}

    @staticmethod
    def _dir_oid(commit: Commit, d: str) -> str:
        listing = sorted((p, o) for p, o in commit.tree.items() if p.startswith(d + "/"))
        return hashlib.sha1(json.dumps(listing).encode()).hexdigest()

    @staticmethod
    def _last_commit(history: list[Commit], path: str, is_dir: bool) -> dict:
        def state(c: Commit):
            if is_dir:
                return sorted((p, o) for p, o in c.tree.items() if p.startswith(path + "/"))
            return c.tree.get(path)

        current = state(history[0])
        last = history[0]
        for c in history[1:]:
            if state(c) != current:
                break
            last = c
        return {"id": last.oid, "title": last.title, "date": last.date}

    def _repo_info(self, repo: Repo, commit: Commit) -> dict:
        info = {
            "_id": repo.object_id,
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": [
                {"rfilename": p, "size": self.store.blob_size(oid), "blobId": oid}
                for p, oid in sorted(commit.tree.items())
            ],
            "usedStorage": sum(self.store.blob_size(oid) for oid in set(commit.tree.values())),
        }
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
        if repo.repo_type == "space":
            info.update({"sdk": "static", "runtime": {"stage": "RUNNING", "hardware": {"current": None}}})
        return info

    def _web_url(self, base: str, repo: Repo) -> str:
        return f"{base}/{URL_PREFIX[repo.repo_type]}{repo.repo_id}"

    # -- dispatch ----------------------------------------------------------------------------
    def handle(self, method: str, raw_path: str, query: dict, headers, body: bytes, base: str):
        segs = raw_path.split("/")[1:]
        if segs and segs[-1] == "" and len(segs) > 1:
            segs = segs[:-1]
        if segs and segs[0] == "api":
            return self._api(method, segs[1:], query, headers, body, base)
        return self._files(method, segs, headers)

    def _api(self, method, segs, query, headers, body, base):
        if segs == ["whoami-v2"] and method == "GET":
            self._require_token(headers)
            return 200, {}, {
                "type": "user",
                "id": hashlib.sha1(self.username.encode()).hexdigest()[:24],
                "name": self.username,
                "fullname": "Roadwork Test User",
                "email": f"{self.username}@example.invalid",
                "emailVerified": True,
                "isPro": False,
                "canPay": False,
                "orgs": [],
                "auth": {"type": "access_token",
                         "accessToken": {"displayName": "roadwork-tests", "role": "write", "createdAt": _now_iso()}},
            }
        if segs == ["agent-harnesses"] and method == "GET":  # huggingface_hub's user-agent detection
            return 200, {}, {"standardEnvVars": [], "harnesses": {}}
        if segs == ["validate-yaml"] and method == "POST":
            return 200, {}, {"errors": [], "warnings": []}
        if len(segs) == 2 and segs[0] == "repos" and method in ("POST", "DELETE"):
            return self._repos_op(segs[1], self._json_body(body), headers, base)
        if len(segs) == 1 and segs[0] in API_TYPES and method == "GET":
            return self._list_repos(API_TYPES[segs[0]], query, headers)
        if len(segs) == 2 and segs[0] in API_TYPES:  # canonical (owner-less) ids are not supported
            raise _repo_not_found(API_TYPES[segs[0]], unquote(segs[1]))
        if len(segs) >= 3 and segs[0] in API_TYPES:
            repo_type = API_TYPES[segs[0]]
            repo_id = f"{unquote(segs[1])}/{unquote(segs[2])}"
            return self._repo_api(method, repo_type, repo_id, segs[3:], query, headers, body, base)
        raise HubError(404, f"Not implemented by the test Hub: {method} /api/{'/'.join(segs)}")

    def _repos_op(self, op, payload, headers, base):
        self._require_token(headers)
        repo_type = payload.get("type") or "model"
        if repo_type not in URL_PREFIX:
            raise HubError(400, f"Invalid repo type {repo_type!r}")
        if op == "move":
            self.store.move_repo(repo_type, payload["fromRepo"], payload["toRepo"])
            return 200, {}, {}
        name = payload.get("name")
        if not name:
            raise HubError(400, "Missing repo name")
        repo_id = f"{payload.get('organization') or self.username}/{name}"
        if op == "create":
            private = payload.get("private")
            if private is None:
                private = payload.get("visibility") == "private"
            url = f"{base}/{URL_PREFIX[repo_type]}{repo_id}"
            try:
                repo = self.store.create_repo(repo_type, repo_id, private=bool(private))
            except HubError as e:
                e.extra["url"] = url  # like the Hub: create_repo(exist_ok=True) reads it from the 409
                raise
            return 200, {}, {"url": url, "name": repo_id, "id": repo.object_id}
        if op == "delete":
            self.store.delete_repo(repo_type, repo_id)
            return 200, {}, {}
        raise HubError(404, f"Not implemented by the test Hub: /api/repos/{op}")

    def _list_repos(self, repo_type, query, headers):
        author = query.get("author", [None])[-1]
        search = query.get("search", [None])[-1]
        out = []
        with self.store.lock:
            repos = [r for (t, _), r in sorted(self.store.repos.items()) if t == repo_type]
        for repo in repos:
            if repo.private and self._token(headers) is None:
                continue
            if author and repo.repo_id.split("/")[0] != author:
                continue
            if search and search.lower() not in repo.repo_id.lower():
                continue
            commit = repo.commits[repo.branches["main"]]
            info = self._repo_info(repo, commit)
            info.pop("siblings")
            out.append(info)
        return 200, {}, out

    def _repo_api(self, method, repo_type, repo_id, rest, query, headers, body, base):
        store = self.store
        action = rest[0] if rest else ""
        arg = unquote(rest[1]) if len(rest) > 1 else None
        if method == "GET" and action == "":
            repo = self._readable_repo(repo_type, repo_id, headers)
            return 200, {}, self._repo_info(repo, store.resolve(repo, "main"))
        if method == "GET" and action == "revision" and arg is not None:
            repo = self._readable_repo(repo_type, repo_id, headers)
            return 200, {}, self._repo_info(repo, store.resolve(repo, "/".join(unquote(s) for s in rest[1:])))
        if method == "GET" and action == "tree" and arg is not None:
            repo = self._readable_repo(repo_type, repo_id, headers)
            commit = store.resolve(repo, arg)
            path = "/".join(unquote(s) for s in rest[2:])
            recursive, expand = self._flag(query, "recursive"), self._flag(query, "expand")
            return 200, {}, self._tree_entries(repo, commit, path, recursive, expand)
        if method == "POST" and action == "paths-info" and arg is not None:
            repo = self._readable_repo(repo_type, repo_id, headers)
            commit = store.resolve(repo, arg)
            ctype = headers.get("Content-Type") or ""
            if "json" in ctype:
                payload = self._json_body(body)
                paths, expand = payload.get("paths", []), bool(payload.get("expand"))
            else:
                form = parse_qs(body.decode(), keep_blank_values=True)
                paths, expand = form.get("paths", []), (form.get("expand", ["false"])[-1].lower() == "true")
            out = []
            history = store.history(repo, commit) if expand else None
            for p in paths:
                p = p.strip("/")
                if p in commit.tree:
                    entry = self._file_entry(p, commit.tree[p])
                elif any(f.startswith(p + "/") for f in commit.tree):
                    entry = {"type": "directory", "oid": self._dir_oid(commit, p), "size": 0, "path": p}
                else:
                    continue
                if expand:
                    entry["lastCommit"] = self._last_commit(history, p, entry["type"] == "directory")
                out.append(entry)
            return 200, {}, out
        if method == "POST" and action == "preupload" and arg is not None:
            repo = self._writable_repo(repo_type, repo_id, headers)
            commit = store.resolve(repo, arg)
            payload = self._json_body(body)
            files = [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": commit.tree.get(f["path"])}
                for f in payload.get("files", [])
            ]
            return 200, {}, {"files": files, "commitOid": commit.oid}
        if method == "POST" and action == "commit" and arg is not None:
            repo = self._writable_repo(repo_type, repo_id, headers)
            return self._commit(repo, arg, query, body, base)
        if method == "GET" and action == "refs":
            repo = self._readable_repo(repo_type, repo_id, headers)
            with store.lock:
                branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": o}
                            for n, o in repo.branches.items() if not n.startswith("refs/pr/")]
                prs = [{"name": n, "ref": n, "targetCommit": o}
                       for n, o in repo.branches.items() if n.startswith("refs/pr/")]
                tags = [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": o} for n, o in repo.tags.items()]
            out = {"branches": branches, "converts": [], "tags": tags}
            if self._flag(query, "include_prs"):
                out["pullRequests"] = prs
            return 200, {}, out
        if method == "GET" and action == "commits" and arg is not None:
            repo = self._readable_repo(repo_type, repo_id, headers)
            commit = store.resolve(repo, "/".join(unquote(s) for s in rest[1:]))
            out = [
                {"id": c.oid, "title": c.title, "message": c.message, "date": c.date,
                 "authors": [{"user": self.username, "avatar": None}]}
                for c in store.history(repo, commit)
            ]
            return 200, {}, out
        if action == "branch" and arg is not None and method in ("POST", "DELETE"):
            repo = self._writable_repo(repo_type, repo_id, headers)
            with store.lock:
                if method == "DELETE":
                    if arg not in repo.branches:
                        raise HubError(404, f"Branch {arg} not found", "RevisionNotFound")
                    if arg == "main":
                        raise HubError(403, "Cannot delete the default branch")
                    del repo.branches[arg]
                    return 200, {}, {}
                if arg in repo.branches:
                    raise HubError(409, f"Reference refs/heads/{arg} already exists")
                start = self._json_body(body).get("startingPoint") or "main"
                repo.branches[arg] = store.resolve(repo, start).oid
                return 200, {}, {}
        if action == "tag" and arg is not None and method in ("POST", "DELETE"):
            repo = self._writable_repo(repo_type, repo_id, headers)
            with store.lock:
                if method == "DELETE":
                    if repo.tags.pop(arg, None) is None:
                        raise HubError(404, f"Tag {arg} not found", "RevisionNotFound")
                    return 200, {}, {}
                tag = self._json_body(body).get("tag")
                if not tag:
                    raise HubError(400, "Missing tag name")
                if tag in repo.tags:
                    raise HubError(409, f"Tag {tag} already exists")
                repo.tags[tag] = store.resolve(repo, arg).oid
                return 200, {}, {}
        if method == "GET" and action == "auth-check":
            self._readable_repo(repo_type, repo_id, headers)
            return 200, {}, {}
        if method == "PUT" and action == "settings":
            repo = self._writable_repo(repo_type, repo_id, headers)
            payload = self._json_body(body)
            if "private" in payload:
                repo.private = bool(payload["private"])
            if payload.get("visibility") in ("private", "public"):
                repo.private = payload["visibility"] == "private"
            return 200, {}, {}
        raise HubError(404, f"Not implemented by the test Hub: {method} /api/{repo_type}s/{repo_id}/{'/'.join(rest)}")

    def _commit(self, repo: Repo, revision: str, query, body: bytes, base: str):
        header: dict = {}
        files: dict[str, bytes] = {}
        deleted_files, deleted_folders = [], []
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item.get("key"), item.get("value") or {}
            if key == "header":
                header = value
            elif key == "file":
                content = value.get("content", "")
                if value.get("encoding", "base64") == "base64":
                    files[value["path"]] = base64.b64decode(content)
                else:
                    files[value["path"]] = content.encode()
            elif key == "deletedFile":
                deleted_files.append(value["path"])
            elif key == "deletedFolder":
                deleted_folders.append(value["path"])
            elif key == "lfsFile":
                raise HubError(400, "LFS files are not supported by the test Hub (preupload always says 'regular')")
            else:
                raise HubError(400, f"Unknown commit operation {key!r}")
        create_pr = self._flag(query, "create_pr")
        commit, pr_num = self.store.commit(
            repo,
            revision,
            files,
            deleted_files,
            deleted_folders,
            title=header.get("summary") or "Update",
            message=header.get("description") or "",
            parent_commit=header.get("parentCommit"),
            create_pr=create_pr,
        )
        web = self._web_url(base, repo)
        out = {
            "success": True,
            "commitOid": commit.oid,
            "commitUrl": f"{web}/commit/{commit.oid}",
            "commitMessage": commit.title,
            "hookOutput": "",
        }
        if pr_num is not None:
            out["pullRequestUrl"] = f"{web}/discussions/{pr_num}"
            out["pullRequestRevision"] = f"refs/pr/{pr_num}"
        return 200, {}, out

    def _files(self, method, segs, headers):
        if method not in ("GET", "HEAD"):
            raise HubError(405, f"{method} not allowed")
        repo_type = "model"
        if segs and segs[0] in ("datasets", "spaces"):
            repo_type = API_TYPES[segs[0]]
            segs = segs[1:]
        if len(segs) >= 4 and segs[1] in ("resolve", "raw"):  # canonical (owner-less) id, e.g. "gpt2"
            raise _repo_not_found(repo_type, unquote(segs[0]))
        if len(segs) < 5 or segs[2] not in ("resolve", "raw"):
            raise HubError(404, "Not found")
        repo_id = f"{unquote(segs[0])}/{unquote(segs[1])}"
        revision = unquote(segs[3])
        path = "/".join(unquote(s) for s in segs[4:])
        repo = self._readable_repo(repo_type, repo_id, headers)
        commit = self.store.resolve(repo, revision)
        oid = commit.tree.get(path)
        if oid is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        data = self.store.read_blob(oid)
        ctype = mimetypes.guess_type(path)[0] or "application/octet-stream"
        if path.endswith((".md", ".txt")):
            ctype = "text/plain; charset=utf-8"
        out_headers = {
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{oid}"',
            "Content-Type": ctype,
            "Accept-Ranges": "bytes",
        }
        status = 200
        rng = headers.get("Range")
        if rng and method == "GET":
            span = self._parse_range(rng, len(data))
            if span is None:
                raise HubError(416, "Requested range not satisfiable",
                               headers={"Content-Range": f"bytes */{len(data)}"})
            start, end = span
            out_headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data = data[start : end + 1]
            status = 206
        return status, out_headers, data

    @staticmethod
    def _parse_range(value: str, total: int) -> tuple[int, int] | None:
        if not value.startswith("bytes=") or "," in value:
            return None
        a, _, b = value[len("bytes=") :].strip().partition("-")
        try:
            if a == "":
                n = int(b)
                if n <= 0:
                    return None
                return max(total - n, 0), total - 1
            start = int(a)
            end = int(b) if b else total - 1
        except ValueError:
            return None
        end = min(end, total - 1)
        if start > end or start >= total:
            return None
        return start, end


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "RoadworkTestHub/1.0"

    def log_message(self, format, *args):  # noqa: A002 - signature from BaseHTTPRequestHandler
        if self.server.hub.verbose:
            sys.stderr.write("[test-hub] " + (format % args) + "\n")

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self):
        hub = self.server.hub
        split = urlsplit(self.path)
        body = self._read_body()
        base = f"http://{self.headers.get('Host') or hub.host_port}"
        try:
            status, headers, payload = hub.app.handle(
                self.command, split.path, parse_qs(split.query, keep_blank_values=True), self.headers, body, base
            )
        except HubError as e:
            status, payload = e.status, {"error": e.message, **e.extra}
            headers = {"X-Error-Message": e.message.replace("\n", " ")[:500], **e.headers}
            if e.code:
                headers["X-Error-Code"] = e.code
        except Exception as e:  # noqa: BLE001 - report server bugs as 500 with the traceback
            status, payload, headers = 500, {"error": f"test Hub internal error: {e!r}"}, {}
            traceback.print_exc(file=sys.stderr)
        hub._record(self.command, self.path, status)
        if isinstance(payload, (bytes, bytearray)):
            data = bytes(payload)
        else:
            data = json.dumps(payload).encode()
            headers.setdefault("Content-Type", "application/json; charset=utf-8")
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class HubServer:
    """Loopback Hub server running in a background thread.

    Attributes: ``endpoint`` (``http://127.0.0.1:<port>``), ``token``, ``username``, ``store``,
    ``root`` (storage dir), ``requests`` (recent ``(method, path, status)`` tuples).
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        username: str = "user",
        token: str = "hf_roadwork_test_token",
        verbose: bool | None = None,
    ):
        self._own_root = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="roadwork-test-hub-"))
        self.host = host
        self.port = port
        self.username = username
        self.token = token
        self.verbose = bool(os.environ.get("ROADWORK_TEST_HUB_LOG")) if verbose is None else verbose
        self.store = HubStore(self.root)
        self.app = _App(self.store, username)
        self.requests: collections.deque = collections.deque(maxlen=10_000)
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._names = itertools.count()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "HubServer":
        if self._httpd is not None:
            return self
        self._httpd = _Server((self.host, self.port), _Handler)
        self._httpd.hub = self
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="roadwork-test-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = self._thread = None
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def host_port(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def endpoint(self) -> str:
        return f"http://{self.host_port}"

    def _record(self, method: str, path: str, status: int) -> None:
        self.requests.append((method, path, status))

    # -- conveniences for tests --------------------------------------------------------------
    def unique_repo_id(self, prefix: str = "repo") -> str:
        """A fresh ``<username>/<prefix>-<n>`` id (the server is shared by the whole session)."""
        return f"{self.username}/{prefix}-{next(self._names)}"

    def reset(self) -> None:
        """Forget every repo (blobs stay on disk; harmless)."""
        with self.store.lock:
            self.store.repos.clear()

    def seed(
        self,
        repo_id: str,
        files: dict[str, bytes | str | os.PathLike] | str | os.PathLike,
        repo_type: str = "model",
        message: str = "seed",
        branch: str = "main",
        private: bool = False,
    ) -> str:
        """Commit ``files`` (``{path_in_repo: bytes|str|Path}`` or a local folder) without any client.

        Creates the repo (and ``branch``) if needed. Returns the new commit sha.
        """
        if not isinstance(files, dict):
            folder = Path(files)
            files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
        blobs: dict[str, bytes] = {}
        for path, content in files.items():
            if isinstance(content, bytes):
                blobs[path] = content
            elif isinstance(content, str):
                blobs[path] = content.encode()
            else:
                blobs[path] = Path(content).read_bytes()
        with self.store.lock:
            try:
                repo = self.store.get_repo(repo_type, repo_id)
            except HubError:
                repo = self.store.create_repo(repo_type, repo_id, private=private)
            if branch not in repo.branches:
                repo.branches[branch] = repo.branches["main"]
            commit, _ = self.store.commit(repo, branch, blobs, title=message)
        return commit.oid

    def head(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> str:
        """Commit sha that ``revision`` points to."""
        repo = self.store.get_repo(repo_type, repo_id)
        return self.store.resolve(repo, revision).oid

    def read(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> bytes:
        """Content of ``path`` at ``revision`` (KeyError if missing)."""
        repo = self.store.get_repo(repo_type, repo_id)
        return self.store.read_blob(self.store.resolve(repo, revision).tree[path])

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[str]:
        repo = self.store.get_repo(repo_type, repo_id)
        return sorted(self.store.resolve(repo, revision).tree)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--root", default=None)
    parser.add_argument("--user", default="user")
    args = parser.parse_args(argv)
    hub = HubServer(root=args.root, host=args.host, port=args.port, username=args.user, verbose=True).start()
    print(f"HF_ENDPOINT={hub.endpoint} HF_TOKEN={hub.token} HF_HUB_DISABLE_XET=1", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        hub.stop()


if __name__ == "__main__":
    main()
