"""Resident memory per idle device: starts `parley` (the binary given), signs up
USERS users, connects PER_USER idle MQTT 3.1.1 devices for each (subscribed to their
downlinks), and prints the growth of the process's RSS divided by the devices.
Gate and embedded bus share the process, so the figure covers both.

    python3 tools/idle_memory.py target/release/parley 80 25

A rough figure until parley-bench measures it properly (issue 6)."""
import json, os, socket, struct, subprocess, sys, tempfile, time, urllib.request

BIN = sys.argv[1]
N_USERS, PER_USER = int(sys.argv[2]), int(sys.argv[3])
MQTT, HTTP = 18830, 18080

def varint(n):
    out = b""
    while True:
        b = n % 128; n //= 128
        out += bytes([b | (0x80 if n else 0)])
        if not n: return out

def s(x): x = x.encode(); return struct.pack(">H", len(x)) + x

def connect(cid, user, token):
    body = s("MQTT") + b"\x04\xc2" + struct.pack(">H", 600) + s(cid) + s(user) + s(token)
    return b"\x10" + varint(len(body)) + body

def subscribe(filt):
    body = struct.pack(">H", 1) + s(filt) + b"\x01"
    return b"\x82" + varint(len(body)) + body

def post(path, body, token=None):
    req = urllib.request.Request(f"http://127.0.0.1:{HTTP}{path}", json.dumps(body).encode(), {"content-type": "application/json"})
    return json.load(urllib.request.urlopen(req))

def rss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"): return int(line.split()[1])

data = tempfile.mkdtemp()
env = dict(os.environ, PARLEY_DATA_DIR=data, PARLEY_MQTT__LISTEN=f"127.0.0.1:{MQTT}", PARLEY_HTTP__LISTEN=f"127.0.0.1:{HTTP}",
           PARLEY_MQTT__WS_LISTEN="", PARLEY_MQTT__CONNECTIONS_PER_SEC_PER_ADDRESS="0", PARLEY_LOG__LEVEL="warn")
proc = subprocess.Popen([BIN, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
for _ in range(100):
    try: urllib.request.urlopen(f"http://127.0.0.1:{HTTP}/readyz"); break
    except Exception: time.sleep(0.2)
users = []
for i in range(N_USERS):
    post("/v1/auth/register", {"username": f"member{i:04}", "password": "correct horse battery"})
    r = post("/v1/auth/login", {"login": f"member{i:04}", "password": "correct horse battery"})
    users.append((r["user"]["id"], r["access_token"]))
socks = []
def open_one(uid, tok, cid):
    c = socket.create_connection(("127.0.0.1", MQTT))
    c.sendall(connect(cid, uid, tok))
    got = c.recv(4)
    assert got == b"\x20\x02\x00\x00", (got, len(socks))
    c.sendall(subscribe(f"to/{uid}/#"))
    c.recv(5)
    socks.append(c)
open_one(*users[0], "warm")
time.sleep(2)
before = rss(proc.pid)
start = time.time()
for (uid, tok) in users:
    for k in range(PER_USER):
        open_one(uid, tok, f"d{k}-{uid[-6:]}")
took = time.time() - start
time.sleep(3)
after = rss(proc.pid)
n = N_USERS * PER_USER
print(f"{n} idle devices: RSS {before} KiB -> {after} KiB, {(after - before) / n:.1f} KiB per device (gate and bus in one process); connect+subscribe {n / took:.0f}/s sequential")
proc.terminate(); proc.wait()
