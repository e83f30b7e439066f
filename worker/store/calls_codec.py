"""A step's own LLM calls stored deflated with a preset dictionary.

After parts.split_calls a step's calls hold only what is the step's own: the user message (the
historical pool and the node's instruction) and the raw answer, with their costs. A step row is
far under PostgreSQL's ~2 KB TOAST threshold, below which PostgreSQL 15 compresses nothing
(`toast_tuple_target` does not change that), so these calls are compressed here, when that is
smaller, into

    {"codec": "deflate-d1", "n": <calls>, "parts": [<prompt part hashes>], "data": "<base85>"}

The call count and the prompt parts referenced stay readable in SQL (and the step's token,
latency and retry totals are columns of their own); the prompts and answers read back through
`inflate_calls`, which every reader goes through (trace show --calls, the audit API, replay). The
dictionary is frozen: a new one gets a new codec name, and every codec ever written stays
readable. Steps stored before keep their list and read as they are.
"""

from __future__ import annotations

import base64
import zlib
from typing import Any

import orjson

REF = "sha256:"


def is_ref(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(REF)


CODEC = "deflate-d1"
DICTIONARY_D1 = (
    b'[{"messages":[0,{"role":"user","content":"Pool (oldest first):\\n(empty)\\n1 accur'
    b"acy: 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20\\n2 diversity: \\n3 fairne"
    b"ss: \\nNode: backward\\nThe latest list was dropped. Name only the next node.\\nNod"
    b"e: novelty\\nFavour candidates whose genre is unlike the user's history (seen: ),"
    b" staying relevant.\\nNode: fairness\\nGroups by year (below ; and above) should ge"
    b"t about the same average position; keep the most relevant first within each grou"
    b"p.\\nNode: diversity\\nPut candidates with different genre values near the top, st"
    b"aying relevant.\\nNode: accuracy\\nRank by how well each candidate matches the use"
    b'r, likeliest first.\\nNext: one of accuracy, diversity, fairness, backward, stop"'
    b'}],"response_format":1,"raw":"{\\"ranking\\":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,'
    b'16,17,18,19,20],\\"next_node\\":\\"stop\\"}","prompt_tokens":,"completion_tokens":,"'
    b'latency_ms":,"attempts":[{"status":200,"latency_ms":}],"finish_reason":"stop","m'
    b'odel":"","cached_tokens":0,"max_tokens":,"counted_tokens":}]'
)
DICTIONARIES = {CODEC: DICTIONARY_D1}


def _deflate(data: bytes, dictionary: bytes) -> bytes:
    """Raw deflate with a 4 KB window and a small hash table: as small as zlib's defaults on a
    step's calls (the dictionary is 1 KB) at about a tenth of the setup cost (~30 us against
    ~300 us a step, measured); the reader's 32 KB window reads any window size."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -12, 4, zdict=dictionary)
    return packer.compress(data) + packer.flush()


def _inflate(data: bytes, dictionary: bytes) -> bytes:
    unpacker = zlib.decompressobj(-15, zdict=dictionary)
    return unpacker.decompress(data) + unpacker.flush()


def deflate_calls(calls: Any) -> Any:
    """Lean calls (parts.split_calls) deflated into the stored object, when that is smaller."""
    if not isinstance(calls, list) or not calls:
        return calls
    hashes: list[str] = []

    def index(ref: str) -> int:
        key = ref.removeprefix(REF)
        if key not in hashes:
            hashes.append(key)
        return hashes.index(key)

    payload = []
    for call in calls:
        if not isinstance(call, dict):
            return calls
        call = dict(call)
        if isinstance(call.get("messages"), list):
            call["messages"] = [index(m) if is_ref(m) else m for m in call["messages"]]
        if is_ref(call.get("response_format")):
            call["response_format"] = index(call["response_format"])
        payload.append(call)
    data = base64.b85encode(_deflate(orjson.dumps(payload), DICTIONARY_D1)).decode()
    packed = {"codec": CODEC, "n": len(calls), "parts": hashes, "data": data}
    return packed if len(orjson.dumps(packed)) < len(orjson.dumps(calls)) else calls


def inflate_calls(value: Any) -> Any:
    """Stored calls in any form as the lean (or full, for older rows) list parts.join_calls reads."""
    if not (isinstance(value, dict) and "codec" in value):
        return value
    dictionary = DICTIONARIES.get(value["codec"])
    if dictionary is None:
        raise ValueError(f"stored calls use an unknown codec {value['codec']!r}")
    hashes = value["parts"]
    calls = orjson.loads(_inflate(base64.b85decode(value["data"]), dictionary))
    for call in calls:
        if isinstance(call.get("messages"), list):
            call["messages"] = [
                REF + hashes[m] if isinstance(m, int) and not isinstance(m, bool) else m
                for m in call["messages"]
            ]
        rf = call.get("response_format")
        if isinstance(rf, int) and not isinstance(rf, bool):
            call["response_format"] = REF + hashes[rf]
    return calls
