"""A loopback Hugging Face Hub for the tests: serves model repositories from a folder over HTTP.

It implements the endpoints huggingface_hub calls for a download (``HEAD``/``GET
/{repo}/resolve/{revision}/{file}``, answered like the real Hub's LFS files: a redirect carrying
``X-Repo-Commit``, ``X-Linked-Etag`` and ``X-Linked-Size``, then the blob with ``ETag`` and
``Content-Length``), repo metadata (``/api/models/{repo}[/revision/{rev}]``) and an upload
(``/api/repos/create``, ``validate-yaml``, ``preupload`` answering "regular" for every file,
``commit`` with base64 contents in NDJSON). Blobs are served from a second port, a different origin
as the Hub's CDN is: huggingface_hub follows same-origin redirects, and would otherwise look for
the metadata on the blob response. It binds to 127.0.0.1 only, handles a bounded number of
requests, times out idle sockets and stops by itself after ``lifetime_s``.

Faults, set per served file in ``faults`` (``{'org/name/model.safetensors': 'cut'}``) and applied to
every request for it until removed (the ETag always stays the sha256 of the stored file, as the Hub's):
``cut``: announced at full size, half sent, the connection closed; ``truncate``: a consistent half
file (size headers and body); ``corrupt-data`` / ``corrupt-header``: same length, one byte flipped at
the end (tensor data) or in the safetensors JSON header; ``stall``: half sent, then silence for
``stall_s`` (bounded; ended early when the hub stops); ``error500``: the resolve request answers 500.
"""
import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional, Tuple
from urllib.parse import unquote, urlsplit

MAX_REQUESTS = 1000
FAULTS = ('cut', 'truncate', 'corrupt-data', 'corrupt-header', 'stall', 'error500')


def served_bytes(data: bytes, fault: Optional[str]) -> bytes:
    """The file as a faulty transfer delivers it (``cut`` and ``stall`` end the transfer instead)."""
    if fault == 'truncate':
        return data[:len(data) // 2]
    if fault in ('corrupt-data', 'corrupt-header'):
        at = len(data) - 1 if fault == 'corrupt-data' else 8 + 1  # after the 8-byte header length: in the JSON
        return data[:at] + bytes([data[at] ^ 0x55]) + data[at + 1:]
    return data


class LoopbackHub:
    """``with LoopbackHub(folder) as hub:`` then point ``HF_ENDPOINT`` at ``hub.url``.

    A repository is ``folder/org/name/``; its commit id is a hash over its files, so it changes
    with every commit. ``requests`` records ``(method, path)`` of every request served, and
    ``authorizations`` the Authorization header sent to each path.
    """

    def __init__(self, root: Path, lifetime_s: float = 120.0):
        self.root = Path(root)
        self.lifetime_s = lifetime_s
        self.faults: Dict[str, str] = {}  # 'org/name/file' -> one of FAULTS
        self.stall_s = 3.0
        self.requests: List[Tuple[str, str]] = []
        self.authorizations: Dict[str, Optional[str]] = {}  # path -> the Authorization header last sent
        self._lock = threading.Lock()
        self._server: Optional[ThreadingHTTPServer] = None
        self._cdn: Optional[ThreadingHTTPServer] = None  # a second origin for blobs, as the Hub's CDN
        self._timer: Optional[threading.Timer] = None
        self._stopped = False
        self._stop_event = threading.Event()  # ends stalls early

    # --- repository storage -----------------------------------------------------------------

    def repo_dir(self, repo_id: str) -> Path:
        return self.root / repo_id

    def repo_files(self, repo_id: str) -> Dict[str, Path]:
        folder = self.repo_dir(repo_id)
        return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob('*')) if p.is_file()}

    def commit_id(self, repo_id: str) -> str:
        digest = hashlib.sha1()
        for name, path in self.repo_files(repo_id).items():
            digest.update(name.encode() + b'\0' + hashlib.sha256(path.read_bytes()).digest())
        return digest.hexdigest()

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f'http://{host}:{port}'

    @property
    def cdn_url(self) -> str:
        host, port = self._cdn.server_address[:2]
        return f'http://{host}:{port}'

    def __enter__(self) -> 'LoopbackHub':
        self.root.mkdir(parents=True, exist_ok=True)
        handler = type('Handler', (_Handler,), {'hub': self})
        self._server, self._cdn = (ThreadingHTTPServer(('127.0.0.1', 0), handler) for _ in range(2))
        for server in (self._server, self._cdn):
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, kwargs={'poll_interval': 0.1}, daemon=True).start()
        self._timer = threading.Timer(self.lifetime_s, self.stop)  # stops by itself, whatever the test does
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        with self._lock:
            if self._stopped or self._server is None:
                return
            self._stopped = True
        self._stop_event.set()
        if self._timer is not None:
            self._timer.cancel()
        for server in (self._server, self._cdn):
            server.shutdown()
            server.server_close()

    def fault(self, repo_id: str, filename: str) -> Optional[str]:
        fault = self.faults.get(f'{repo_id}/{filename}')
        if fault is not None and fault not in FAULTS:
            raise ValueError(f'unknown fault {fault!r}; expected one of {FAULTS}')
        return fault

    def stall(self) -> None:
        self._stop_event.wait(self.stall_s)

    def record(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))
            if len(self.requests) > MAX_REQUESTS:
                threading.Thread(target=self.stop, daemon=True).start()


class _Handler(BaseHTTPRequestHandler):
    hub: LoopbackHub
    timeout = 10  # seconds a socket may sit idle
    protocol_version = 'HTTP/1.1'

    def log_message(self, *args) -> None:  # keep the test output clean
        pass

    # --- helpers ------------------------------------------------------------------------------

    def _reply(self, status: int, body: bytes = b'', headers: Optional[Dict[str, str]] = None,
               content_type: str = 'application/json') -> None:
        self.send_response(status)
        self.send_header('Content-Type', content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(body)

    def _json(self, status: int, payload: object, headers: Optional[Dict[str, str]] = None) -> None:
        self._reply(status, json.dumps(payload).encode(), headers)

    def _error(self, status: int, code: str, message: str) -> None:
        self._json(status, {'error': message}, {'X-Error-Code': code, 'X-Error-Message': message})

    def _route(self) -> None:
        # read the whole body first: an unread body would be parsed as the next request
        self.body = self.rfile.read(int(self.headers.get('Content-Length', 0)))
        path = unquote(urlsplit(self.path).path)
        self.hub.record(self.command, path)
        self.hub.authorizations[path] = self.headers.get('Authorization')
        parts = path.strip('/').split('/')
        if '..' in parts:
            return self._error(400, 'BadRequest', 'paths may not leave the served folder')
        if parts[0] == 'api':
            return self._api(parts[1:])
        if parts[0] == '_blobs':  # _blobs/org/name/commit/file...
            return self._blob('/'.join(parts[1:3]), '/'.join(parts[4:]))
        if len(parts) >= 5 and parts[2] == 'resolve':  # org/name/resolve/revision/file...
            return self._resolve('/'.join(parts[:2]), '/'.join(parts[4:]))
        self._error(404, 'NotFound', f'no route for {path}')

    # --- download -----------------------------------------------------------------------------

    def _resolve(self, repo_id: str, filename: str) -> None:
        if not self.hub.repo_dir(repo_id).is_dir():
            return self._error(404, 'RepoNotFound', f'Repository {repo_id} not found')
        files = self.hub.repo_files(repo_id)
        if filename not in files:
            return self._error(404, 'EntryNotFound', f'{filename} does not exist in {repo_id}')
        fault = self.hub.fault(repo_id, filename)
        if fault == 'error500':
            return self._error(500, 'InternalError', 'Internal Server Error (injected)')
        data = files[filename].read_bytes()
        commit = self.hub.commit_id(repo_id)
        etag = f'"{hashlib.sha256(data).hexdigest()}"'
        self._reply(302, headers={
            'Location': f'{self.hub.cdn_url}/_blobs/{repo_id}/{commit}/{filename}',
            'X-Repo-Commit': commit, 'ETag': etag, 'X-Linked-Etag': etag,
            'X-Linked-Size': str(len(served_bytes(data, fault))),
        })

    def _blob(self, repo_id: str, filename: str) -> None:
        files = self.hub.repo_files(repo_id) if self.hub.repo_dir(repo_id).is_dir() else {}
        if filename not in files:
            return self._error(404, 'EntryNotFound', f'{filename} does not exist in {repo_id}')
        stored = files[filename].read_bytes()
        fault = self.hub.fault(repo_id, filename)
        data = served_bytes(stored, fault)
        start = 0
        ranged = self.headers.get('Range', '')
        if ranged.startswith('bytes='):
            start = int(ranged[6:].split('-')[0] or 0)
        self.send_response(206 if start else 200)
        self.send_header('Content-Type', 'application/octet-stream')
        self.send_header('ETag', f'"{hashlib.sha256(stored).hexdigest()}"')
        self.send_header('Content-Length', str(len(data) - start))
        if start:
            self.send_header('Content-Range', f'bytes {start}-{len(data) - 1}/{len(data)}')
        self.end_headers()
        if self.command == 'HEAD':
            return
        body = data[start:]
        if fault in ('cut', 'stall'):
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            if fault == 'stall':
                self.hub.stall()
            self.close_connection = True
            return
        self.wfile.write(body)

    # --- metadata and upload ------------------------------------------------------------------

    def _api(self, parts: List[str]) -> None:
        if parts[:2] == ['repos', 'create'] and self.command == 'POST':
            return self._create_repo(json.loads(self.body or b'{}'))
        if parts == ['validate-yaml'] and self.command == 'POST':  # the model card's metadata block
            has_metadata = json.loads(self.body)['content'].startswith('---\n')
            return self._json(200, {'errors': [], 'warnings': [] if has_metadata else [{'message': 'empty metadata'}]})
        if len(parts) < 3 or parts[0] != 'models':
            return self._error(404, 'NotFound', f'no API route /api/{"/".join(parts)}')
        repo_id, rest = '/'.join(parts[1:3]), parts[3:]
        if not self.hub.repo_dir(repo_id).is_dir():
            return self._error(404, 'RepoNotFound', f'Repository {repo_id} not found')
        if self.command == 'GET' and (not rest or rest[0] == 'revision'):
            commit = self.hub.commit_id(repo_id)
            siblings = [{'rfilename': name} for name in self.hub.repo_files(repo_id)]
            return self._json(200, {'id': repo_id, 'modelId': repo_id, 'sha': commit, 'private': False,
                                    'siblings': siblings, 'tags': [], 'downloads': 0, 'likes': 0})
        if self.command == 'POST' and rest and rest[0] == 'preupload':
            files = json.loads(self.body)['files']
            return self._json(200, {'files': [
                {'path': f['path'], 'uploadMode': 'regular', 'shouldIgnore': False} for f in files]})
        if self.command == 'POST' and rest and rest[0] == 'commit':
            return self._commit(repo_id, self.body)
        self._error(404, 'NotFound', f'no API route /api/{"/".join(parts)}')

    def _create_repo(self, payload: dict) -> None:
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get('organization') else payload['name']
        if '/' not in repo_id:
            repo_id = f'user/{repo_id}'
        folder = self.hub.repo_dir(repo_id)
        if folder.is_dir():
            return self._json(409, {'error': 'You already created this model repo', 'url': f'{self.hub.url}/{repo_id}'})
        folder.mkdir(parents=True)
        self._json(200, {'url': f'{self.hub.url}/{repo_id}', 'name': repo_id})

    def _commit(self, repo_id: str, body: bytes) -> None:
        folder = self.hub.repo_dir(repo_id)
        for line in body.splitlines():
            item = json.loads(line)
            if item['key'] == 'file':
                value = item['value']
                target = (folder / value['path']).resolve()
                if folder.resolve() not in target.parents:
                    return self._error(400, 'BadRequest', f'path escapes the repository: {value["path"]}')
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(base64.b64decode(value['content']))
            elif item['key'] != 'header':
                return self._error(400, 'BadRequest', f'this loopback Hub only takes regular files, got {item["key"]}')
        commit = self.hub.commit_id(repo_id)
        self._json(200, {'commitUrl': f'{self.hub.url}/{repo_id}/commit/{commit}', 'commitOid': commit,
                         'success': True})

    do_GET = do_HEAD = do_POST = _route
