"""Capture and replay of the store's hot script calls (see run.sh next to this file).

  replay.py capture MONITOR_FILE DIR   # writes DIR/create.lua, DIR/transition.lua, DIR/calls.json
  replay.py replay DIR [VARIANT ...]   # prints the server time per job of each variant
"""
import hashlib
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time

TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMEOUT", "DENIED"}
ESCAPES = {"n": b"\n", "r": b"\r", "t": b"\t", "a": b"\a", "b": b"\b", '"': b'"', "\\": b"\\"}
QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


def unquote(s):
    """The bytes of one argument as MONITOR prints it (Redis's sdscatrepr)."""
    out, i = bytearray(), 0
    while i < len(s):
        if s[i] != "\\":
            out += s[i].encode("utf-8")
            i += 1
        elif s[i + 1] == "x":
            out.append(int(s[i + 2 : i + 4], 16))
            i += 4
        else:
            out += ESCAPES[s[i + 1]]
            i += 2
    return bytes(out)


def capture(monitor, out_dir):
    bodies, calls = {}, []
    for line in open(monitor, encoding="utf-8", errors="replace"):
        if " lua]" in line:  # a command a script ran
            continue
        args = [unquote(m.group(1)) for m in QUOTED.finditer(line)]
        if len(args) > 2 and [a.upper() for a in args[:2]] == [b"SCRIPT", b"LOAD"]:
            bodies[hashlib.sha1(args[2]).hexdigest()] = args[2]
        elif args and args[0].upper() == b"EVALSHA":
            calls.append(args)
    kinds = {}
    for sha, body in bodies.items():
        for kind in ("create", "transition"):
            if b"local function %s(" % kind.encode() in body:
                kinds[sha] = kind
                with open(os.path.join(out_dir, kind + ".lua"), "wb") as f:
                    f.write(body)
    hot = [[kinds[c[1].decode()]] + [a.decode("latin1") for a in c[2:]] for c in calls if c[1].decode() in kinds]
    with open(os.path.join(out_dir, "calls.json"), "w") as f:
        json.dump(hot, f)
    print(f"captured {len(hot)} create and transition calls of {len(calls)} script calls", file=sys.stderr)


def without(args, drop):
    """A transition call's arguments with update fields `drop` left out of finishing transitions."""
    nkeys = int(args[0])
    head, argv = args[: 1 + nkeys], args[1 + nkeys :]
    out, i = [argv[0]], 1
    while i < len(argv):
        vend = i + 10 + 2 * int(argv[i + 9])
        n = int(argv[vend])
        pairs = argv[vend + 1 : vend + 1 + 2 * n]
        kept = []
        for j in range(0, len(pairs), 2):
            if not (argv[i + 2] in TERMINAL and pairs[j] in drop):
                kept += pairs[j : j + 2]
        out += argv[i:vend] + [str(len(kept) // 2)] + kept
        i = vend + 1 + 2 * n
    return head + out


def replay(cap_dir, variants):
    import redis

    calls = json.load(open(os.path.join(cap_dir, "calls.json")))
    scripts = {k: open(os.path.join(cap_dir, k + ".lua"), "rb").read() for k in ("create", "transition")}

    def prepare(spec):
        s, cs = dict(scripts), calls
        for part in filter(None, spec.split(",")):
            key, value = part.split("=", 1)
            if key == "drop":
                cs = [[c[0]] + without(c[1:], set(value.split("+"))) if c[0] == "transition" else c for c in cs]
            elif key in s:
                s[key] = open(value, "rb").read()
            else:
                sys.exit(f"unknown variant part {part!r}")
        return s, [(c[0], [a.encode("latin1") for a in c[1:]]) for c in cs]

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL
    )
    try:
        r = redis.Redis(port=port)
        for _ in range(100):
            try:
                r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)

        def run(s, cs):
            sha = {k: r.script_load(b) for k, b in s.items()}
            r.flushall()
            r.config_resetstat()
            spent, last = {"create": 0, "transition": 0}, 0
            for kind, args in cs:
                r.execute_command("EVALSHA", sha[kind], *args)
                usec = r.info("commandstats")["cmdstat_evalsha"]["usec"]
                spent[kind] += usec - last
                last = usec
            return spent["create"], spent["transition"]

        sets = [("as loaded", prepare(""))] + [(v, prepare(v)) for v in variants]
        runs = {name: [] for name, _ in sets}
        for rep in range(int(os.environ.get("REPS", "6"))):
            for name, (s, cs) in sets if rep % 2 == 0 else reversed(sets):
                runs[name].append(run(s, cs))
    finally:
        server.terminate()
    jobs = int(os.environ.get("N", "20000"))
    base = runs["as loaded"]
    print(f"server time per job (µs), medians of {len(base)} replays; ratio: the median of each replay's ratio")
    print(f"  {'':44} {'create':>8} {'ratio':>6} {'transition':>10} {'ratio':>6}")
    for name, v in runs.items():
        cells = []
        for i in range(2):
            us = statistics.median(x[i] for x in v) / jobs
            ratio = statistics.median(x[i] / b[i] for x, b in zip(v, base))
            cells += [us, ratio]
        print(f"  {name[-44:]:44} {cells[0]:8.2f} {cells[1]:6.3f} {cells[2]:10.2f} {cells[3]:6.3f}")


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "capture":
        capture(sys.argv[2], sys.argv[3])
    elif len(sys.argv) >= 3 and sys.argv[1] == "replay":
        replay(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(__doc__)
