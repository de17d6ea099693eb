#!/usr/bin/env python3
"""Bounded HTTP load for bench/rollout: GET / on ADDR at RPS until STOPFILE exists, at most
MAX requests and MAX_S seconds. Prints one JSON line: requests, failures, versions seen in
order of first appearance, and the first few failure reasons."""
import http.client, json, os, sys, time

addr, rps, stopfile = sys.argv[1], float(sys.argv[2]), sys.argv[3]
max_n, max_s = int(os.environ.get("MAX", "60000")), float(os.environ.get("MAX_S", "300"))
host, port = addr.rsplit(":", 1)
n = fails = 0
versions, reasons = [], []
start = nxt = time.monotonic()
while not os.path.exists(stopfile) and n < max_n and time.monotonic() - start < max_s:
    n += 1
    try:
        c = http.client.HTTPConnection(host, int(port), timeout=5)
        c.request("GET", "/", headers={"Connection": "close"})
        r = c.getresponse()
        body = r.read().decode(errors="replace")
        c.close()
        if r.status != 200:
            fails += 1
            reasons.append(f"{r.status}")
        else:
            v = body.split()[0] if body else "?"
            if not versions or versions[-1] != v:
                versions.append(v)
    except Exception as e:  # a failed request is what we count
        fails += 1
        reasons.append(type(e).__name__)
    nxt += 1.0 / rps
    d = nxt - time.monotonic()
    if d > 0:
        time.sleep(d)
print(json.dumps({"requests": n, "failures": fails, "versions": versions, "reasons": reasons[:5]}))
