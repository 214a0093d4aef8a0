"""Writes stream-sig.json: stream `_sig` vectors computed with Python's hmac and
hashlib, independently of the Rust code (storage-and-events.md §6.3,
wire-contract.md §5.2). The spec and upstream signatures are asserted, not
trusted. Run: python3 compute_stream_sig.py > stream-sig.json
"""
import hmac, hashlib, json, re

NAME = re.compile(r"^[a-z0-9_]{1,64}$")
SPEC_KEY = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

def canonical(stream, fields):
    names = [k for k, _ in fields if k != "_sig"]
    assert len(names) == len(set(names))
    for k, v in fields:
        assert NAME.match(k) and "\n" not in v
    body = "".join(f"{k}={v}\n" for k, v in sorted(((k, v) for k, v in fields if k != "_sig"), key=lambda kv: kv[0].encode()))
    return (stream + "\n" + body).encode("utf-8")

def sig(key_hex, stream, fields):
    return hmac.new(bytes.fromhex(key_hex), canonical(stream, fields), hashlib.sha256).hexdigest()

vectors = []
def add(name, source, stream, fields, key_hex=SPEC_KEY, expect=None):
    c = canonical(stream, fields)
    s = sig(key_hex, stream, fields)
    if expect is not None:
        assert s == expect, (name, s)
    vectors.append({"name": name, "source": source, "key_hex": key_hex, "stream": stream,
                    "fields": [list(f) for f in fields], "canonical": c.decode("utf-8"),
                    "canonical_len": len(c), "sig": s})

add("spec_grant_revocation", "spec: storage-and-events.md §6.3 worked example", "caracal.sessions.revoke",
    [("zone_id", "zone-1"), ("session_id", "authority-record-1"), ("reason", "grant_revoked"),
     ("grant_id", "grant-1"), ("outbox_id", "0197a3c2-5e10-7d3a-9f1e-2b4c6d8e0f12")],
    expect="339ac075987f1396409f3f49be9cfda9ec470355858af50a309a68134792f1b3")
assert vectors[-1]["canonical_len"] == 154
add("wire_contract_session_revoke", "spec: wire-contract.md §5.2 example", "caracal.sessions.revoke",
    [("zone_id", "zone-1"), ("session_id", "0198a3f2-7c1e-7b40-9d2a-3f6c1e5b8a01"),
     ("agent_session_id", "0198a3f2-9e44-7a10-8c3b-5d2e7f1a4b02"), ("reason", "requested"),
     ("outbox_id", "0198a3f3-0a11-7c55-b1e0-9f8d7c6b5a03")],
    expect="ceed11f572f16176c86c3ac8634ebd7282b9765a240809d1371a392ae64072f9")
add("caracal_1_0_cross_check", "upstream: Caracal 1.0 cross-check quoted in wire-contract.md §5.2", "audit:events",
    [("action", "transfer"), ("amount", "100")],
    expect="c06ccc579e026c31a97a04f203981b236a3c88041712e9b46242e8762da23d75")
add("computed_empty_value", "computed: Python 3 hmac/hashlib; an empty value is signed as `name=` LF", "caracal.agents.lifecycle",
    [("event", "resume"), ("zone_id", "zone-1"), ("agent_session_id", "0198a3f2-9e44-7a10-8c3b-5d2e7f1a4b02"),
     ("reason", ""), ("outbox_id", "0198a3f3-0a11-7c55-b1e0-9f8d7c6b5a03")])
add("computed_byte_order_of_names", "computed: Python 3 hmac/hashlib; insertion order differs from byte order, digits < '_' < letters, a prefix sorts first", "caracal.test.order",
    [("zone_id", "z"), ("ab", "4"), ("a_b", "3"), ("a1", "2"), ("a", "1"), ("_x", "0"), ("9", "9"), ("zone", "y")])
add("computed_delegation_expire_json_array", "computed: Python 3 hmac/hashlib; JSON array value, fields in reverse order", "caracal.delegations.invalidate",
    [("outbox_id", "0198a3f3-0a11-7c55-b1e0-9f8d7c6b5a04"), ("epoch", "42"), ("edge_ids", "[\"e-1\",\"e-2\"]"),
     ("affected_edges", "2"), ("zone_id", "zone-1"), ("event", "edge_expire"), ("dedupe_key", "coord:expire:42")])
add("computed_non_ascii_values", "computed: Python 3 hmac/hashlib; UTF-8 values, '=' and spaces, tab and CR inside values", "caracal.sessions.revoke",
    [("zone_id", "zone-ü"), ("reason", "révoqué — 取消 🐆"), ("session_id", "a=b c\td\re"), ("outbox_id", "x")])
add("computed_no_fields", "computed: Python 3 hmac/hashlib; only the stream name", "caracal.keys.invalidate", [])
add("computed_48_byte_key", "computed: Python 3 hmac/hashlib; a key longer than 32 bytes", "caracal.policy.invalidate",
    [("zone_id", "zone-1"), ("policy_set_id", "ps-1"), ("policy_set_version_id", "psv-7")],
    key_hex="00112233445566778899aabbccddeeff" * 3)
add("computed_max_length_name", "computed: Python 3 hmac/hashlib; a 64-character field name", "caracal.test.names",
    [("n" * 64, "long"), ("n", "short")])

spec = vectors[0]
good_sig = spec["sig"]
base = [tuple(f) for f in spec["fields"]]
rejections = [
    {"name": "value_with_line_feed", "operation": "both", "stream": spec["stream"],
     "fields": [list(f) for f in base] + [["note", "line one\nline two"], ["_sig", good_sig]],
     "error": "value_has_newline"},
    {"name": "repeated_field", "operation": "both", "stream": spec["stream"],
     "fields": [list(f) for f in base] + [["zone_id", "zone-2"], ["_sig", good_sig]],
     "error": "repeated_field"},
    {"name": "repeated_sig", "operation": "verify", "stream": spec["stream"],
     "fields": [list(f) for f in base] + [["_sig", good_sig], ["_sig", good_sig]],
     "error": "repeated_field"},
    {"name": "uppercase_field_name", "operation": "both", "stream": spec["stream"],
     "fields": [list(f) for f in base] + [["Zone_id", "zone-1"], ["_sig", good_sig]],
     "error": "bad_field_name"},
    {"name": "dash_in_field_name", "operation": "both", "stream": spec["stream"],
     "fields": [list(f) for f in base] + [["zone-id", "zone-1"], ["_sig", good_sig]],
     "error": "bad_field_name"},
    {"name": "empty_field_name", "operation": "both", "stream": spec["stream"],
     "fields": [list(f) for f in base] + [["", "x"], ["_sig", good_sig]],
     "error": "bad_field_name"},
    {"name": "field_name_of_65_characters", "operation": "both", "stream": spec["stream"],
     "fields": [list(f) for f in base] + [["n" * 65, "x"], ["_sig", good_sig]],
     "error": "bad_field_name"},
    {"name": "uppercase_hex_sig", "operation": "verify", "stream": spec["stream"],
     "fields": [list(f) for f in base] + [["_sig", good_sig.upper()]], "error": "malformed"},
    {"name": "short_sig", "operation": "verify", "stream": spec["stream"],
     "fields": [list(f) for f in base] + [["_sig", good_sig[:63]]], "error": "malformed"},
    {"name": "sig_with_trailing_newline", "operation": "verify", "stream": spec["stream"],
     "fields": [list(f) for f in base] + [["_sig", good_sig + "\n"]], "error": "malformed"},
    {"name": "missing_sig", "operation": "verify", "stream": spec["stream"],
     "fields": [list(f) for f in base], "error": "missing"},
    {"name": "altered_value", "operation": "verify", "stream": spec["stream"],
     "fields": [list(f) for f in base if f[0] != "reason"] + [["reason", "requested"], ["_sig", good_sig]],
     "error": "mismatch"},
    {"name": "omitted_field", "operation": "verify", "stream": spec["stream"],
     "fields": [list(f) for f in base if f[0] != "grant_id"] + [["_sig", good_sig]], "error": "mismatch"},
    {"name": "other_stream", "operation": "verify", "stream": "caracal.delegations.invalidate",
     "fields": [list(f) for f in base] + [["_sig", good_sig]], "error": "mismatch"},
]
for r in rejections:
    r["key_hex"] = SPEC_KEY

doc = {
    "description": "Stream _sig vectors (storage-and-events.md §6.3, wire-contract.md §5.2). canonical = stream LF, then for each field except _sig in ascending byte order of the name: name '=' value LF; sig = lowercase hex HMAC-SHA256(bytes.fromhex(key_hex), canonical). `fields` are in message (insertion) order. `source` says where a vector comes from: 'spec' (published in this project's specs), 'upstream' (Caracal 1.0 interoperability vector), 'computed' (computed for this file with Python's hmac/hashlib, independently of the Rust code). Every spec and upstream signature was also recomputed with Python. Rejections: `operation` is 'verify' or 'both' (sign and verify must reject), `error` names the StreamSigError variant in snake_case.",
    "vectors": vectors,
    "rejections": rejections,
}
text = json.dumps(doc, indent=2, ensure_ascii=False)
# one [name, value] pair per line
text = re.sub(r'\[\n\s+("(?:[^"\\]|\\.)*"),\n\s+("(?:[^"\\]|\\.)*")\n\s+\]', r'[\1, \2]', text)
print(text)
