"""MQTT 5 and 3.1.1 behaviour checks with paho-mqtt (an independent client library)
against a broker on localhost:PORT, in the spirit of the Eclipse Paho interoperability
tests: QoS 0-2, retained messages, wills (keepalive, delay), zero-length client ids,
offline queues, overlapping subscriptions, session expiry (also set at DISCONNECT),
properties, message expiry, No Local, Retain As Published, Retain Handling,
subscription identifiers, request/response, topic aliases both ways, maximum packet
size. For Parley, run the gate with an open namespace and anonymous access:

    pip install paho-mqtt
    PARLEY_MQTT__OPEN_NAMESPACE='*' PARLEY_MQTT__ALLOW_ANONYMOUS=true parley serve &
    python3 tools/interop_check.py 1883

Works against any broker (Mosquitto: `mosquitto -p 1884`). Prints PASS/FAIL per check."""
import sys, time, threading
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

PORT = int(sys.argv[1])
T = ("TopicA", "TopicA/B", "Topic/C", "TopicA/C", "/TopicA")
results = []

class C:
    def __init__(self, cid, proto=mqtt.MQTTv5, **kw):
        self.msgs, self.conn, self.subs, self.discs = [], [], [], []
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=proto, **kw)
        self.c.on_connect = lambda c, u, f, rc, p: self.conn.append((f, rc, p))
        self.c.on_message = lambda c, u, m: self.msgs.append(m)
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subs.append(rcs)
        self.c.on_disconnect = lambda c, u, f, rc, p: self.discs.append(rc)
    def connect(self, **kw):
        self.c.connect("localhost", PORT, **kw); self.c.loop_start(); wait(self.conn); return self.conn[-1]
    def sub(self, *a, **kw):
        n = len(self.subs); self.c.subscribe(*a, **kw); wait(lambda: len(self.subs) > n); return self.subs[-1]
    def stop(self):
        try: self.c.disconnect()
        except Exception: pass
        time.sleep(0.2); self.c.loop_stop()

def wait(cond, limit=3.0):
    end = time.time() + limit
    while time.time() < end:
        if (cond() if callable(cond) else cond): return True
        time.sleep(0.05)
    return False

def check(name, f):
    try:
        f(); results.append((name, "PASS", ""))
    except Exception as e:
        results.append((name, "FAIL", repr(e)))

def props(**kv):
    p = Properties(PacketTypes.PUBLISH)
    for k, v in kv.items(): setattr(p, k, v)
    return p

def clean_retained():
    c = C("cleaner"); c.connect(); c.sub("#", options=SubscribeOptions(qos=0)); time.sleep(0.5)
    for m in list(c.msgs):
        if m.retain: c.c.publish(m.topic, b"", 0, retain=True)
    time.sleep(0.3); c.stop()

def basic():
    a = C("aclient"); a.connect(); rc = a.sub(T[0], options=SubscribeOptions(qos=2))
    assert rc[0].value == 2, rc
    for q in range(3): a.c.publish(T[0], f"qos {q}".encode(), q)
    assert wait(lambda: len(a.msgs) == 3), len(a.msgs)
    assert sorted(m.qos for m in a.msgs) == [0, 1, 2]
    a.stop()

def retained():
    clean_retained()
    a = C("aclient"); a.connect()
    up = props(UserProperty=[("a", "2"), ("c", "3")])
    for i, q in ((1, 0), (2, 1), (3, 2)): a.c.publish(T[i], f"qos {q}".encode(), q, retain=True, properties=up)
    time.sleep(0.5); a.sub("+/+", options=SubscribeOptions(qos=2))
    assert wait(lambda: len(a.msgs) == 3), [m.topic for m in a.msgs]
    assert all(m.retain for m in a.msgs)
    assert sorted(m.qos for m in a.msgs) == [0, 1, 2]
    assert all(sorted(m.properties.UserProperty) == [("a", "2"), ("c", "3")] for m in a.msgs)
    a.stop(); clean_retained()

def will_on_keepalive():
    wp = Properties(PacketTypes.WILLMESSAGE); wp.UserProperty = [("a", "2"), ("c", "3")]
    a = C("aclient"); a.c.will_set(T[2], b"will message", properties=wp); a.connect(keepalive=2)
    b = C("bclient"); b.connect(); b.sub(T[2], qos=2)
    a.c.loop_stop()  # no more pings
    assert wait(lambda: len(b.msgs) == 1, 10)
    assert b.msgs[0].properties.UserProperty == [("a", "2"), ("c", "3")]
    b.stop()

def zero_length_clientid():
    z = C(""); f, rc, p = z.connect(clean_start=False)
    assert rc == 0 and len(p.AssignedClientIdentifier) > 0
    z.stop()
    z = C("client0"); f, rc, p = z.connect()
    assert not hasattr(p, "AssignedClientIdentifier"); z.stop()

def offline_queueing():
    cp = Properties(PacketTypes.CONNECT); cp.SessionExpiryInterval = 99999
    o = C("offline message queueing"); o.connect(properties=cp); o.sub("+/+", qos=2); o.stop()
    b = C("bclient"); b.connect()
    for i, q in ((1, 0), (2, 1), (3, 2)): b.c.publish(T[i], f"qos {q}".encode(), q)
    time.sleep(1); b.stop()
    o = C("offline message queueing"); f, rc, p = o.connect(clean_start=False)
    assert f.session_present
    wait(lambda: len(o.msgs) >= 2); time.sleep(0.5)
    assert len(o.msgs) in (2, 3), len(o.msgs)
    o.stop()

def overlapping():
    o = C("overlapping subscriptions"); o.connect()
    o.sub([("TopicA/#", SubscribeOptions(qos=2)), ("TopicA/+", SubscribeOptions(qos=1))])
    o.c.publish(T[3], b"overlapping topic filters", 2)
    wait(lambda: len(o.msgs) >= 1); time.sleep(0.5)
    assert len(o.msgs) in (1, 2) and (len(o.msgs) == 2 or o.msgs[0].qos == 2), [(m.qos) for m in o.msgs]
    o.stop()

def unsubscribe():
    b = C("bclient"); b.connect()
    for t in T[:3]: b.sub(t, qos=2)
    b.c.unsubscribe(T[0]); time.sleep(0.3)
    a = C("aclient"); a.connect()
    for t in T[:3]: a.c.publish(t, b"x", 1)
    time.sleep(1); assert len(b.msgs) == 2, len(b.msgs)
    a.stop(); b.stop()

def session_expiry():
    cp = Properties(PacketTypes.CONNECT); cp.SessionExpiryInterval = 0
    e = C("session expiry"); e.connect(properties=cp); e.sub(T[0], qos=2); e.stop()
    e = C("session expiry"); f, rc, p = e.connect(clean_start=False, properties=cp); assert not f.session_present; e.stop()
    cp.SessionExpiryInterval = 2
    e = C("session expiry"); e.connect(properties=cp); e.sub(T[0], qos=2); e.stop()
    e = C("session expiry"); f, rc, p = e.connect(clean_start=False, properties=cp); assert f.session_present; e.stop()
    time.sleep(3)
    e = C("session expiry"); f, rc, p = e.connect(clean_start=False, properties=cp); assert not f.session_present
    e.sub(T[0], qos=2)
    dp = Properties(PacketTypes.DISCONNECT); dp.SessionExpiryInterval = 6
    e.c.disconnect(properties=dp); time.sleep(0.3); e.c.loop_stop()
    time.sleep(3)
    e = C("session expiry"); f, rc, p = e.connect(clean_start=False, properties=cp)
    assert f.session_present, "DISCONNECT's session expiry interval"
    e.stop()

def payload_format_and_user_properties():
    c = C("payload format"); c.connect(); c.sub(T[0], qos=2)
    for q in range(3): c.c.publish(T[0], b"x", q, properties=props(PayloadFormatIndicator=1, ContentType="My name", UserProperty=[("a", "2")]))
    assert wait(lambda: len(c.msgs) == 3)
    for m in c.msgs:
        assert m.properties.ContentType == "My name" and m.properties.PayloadFormatIndicator == 1
        assert m.properties.UserProperty == [("a", "2")]
    c.stop()

def message_expiry():
    cp = Properties(PacketTypes.CONNECT); cp.SessionExpiryInterval = 99999
    b = C("message expiry b"); b.connect(properties=cp); b.sub(T[0], qos=2); b.stop()
    a = C("message expiry a"); a.connect()
    a.c.publish(T[0], b"expire", 1, properties=props(MessageExpiryInterval=1))
    a.c.publish(T[0], b"expire 2", 2, properties=props(MessageExpiryInterval=1))
    a.c.publish(T[0], b"keep", 1, properties=props(MessageExpiryInterval=6))
    a.c.publish(T[0], b"keep 2", 2, properties=props(MessageExpiryInterval=6))
    time.sleep(3)
    b = C("message expiry b"); b.connect(clean_start=False); wait(lambda: len(b.msgs) >= 2); time.sleep(0.5)
    assert len(b.msgs) == 2, [m.payload for m in b.msgs]
    assert all(m.properties.MessageExpiryInterval < 6 for m in b.msgs)
    a.stop(); b.stop()

def subscribe_options():
    a = C("noLocal a"); a.connect(); a.sub(T[0], options=SubscribeOptions(qos=2, noLocal=True))
    b = C("noLocal b"); b.connect(); b.sub(T[0], options=SubscribeOptions(qos=2, noLocal=True))
    a.c.publish(T[0], b"noLocal test", 1); wait(lambda: len(b.msgs) == 1); time.sleep(0.5)
    assert a.msgs == [] and len(b.msgs) == 1
    a.stop(); b.stop()
    a = C("rap"); a.connect(); a.sub(T[0], options=SubscribeOptions(qos=2, retainAsPublished=True))
    a.c.publish(T[0], b"rap false", 1, retain=False); a.c.publish(T[0], b"rap true", 1, retain=True)
    assert wait(lambda: len(a.msgs) == 2)
    assert [m.retain for m in a.msgs] == [False, True]
    a.stop(); clean_retained()
    a = C("rh"); a.connect()
    for i, q in ((1, 0), (2, 1), (3, 2)): a.c.publish(T[i], f"qos {q}".encode(), q, retain=True)
    time.sleep(0.5)
    a.sub("+/+", options=SubscribeOptions(2, retainHandling=1)); assert wait(lambda: len(a.msgs) == 3)
    a.msgs.clear(); a.sub("+/+", options=SubscribeOptions(2, retainHandling=1)); time.sleep(0.5); assert a.msgs == []
    a.c.unsubscribe("+/+"); time.sleep(0.3)
    a.sub("+/+", options=SubscribeOptions(2, retainHandling=2)); time.sleep(0.5); assert a.msgs == []
    a.c.unsubscribe("+/+"); time.sleep(0.3)
    a.sub("+/+", options=SubscribeOptions(2, retainHandling=0)); assert wait(lambda: len(a.msgs) == 3)
    a.msgs.clear(); a.sub("+/+", options=SubscribeOptions(2, retainHandling=0)); assert wait(lambda: len(a.msgs) == 3)
    a.stop(); clean_retained()

def subscription_identifiers():
    a = C("subid a"); a.connect()
    sp = Properties(PacketTypes.SUBSCRIBE); sp.SubscriptionIdentifier = 456789; a.sub(T[0], qos=2, properties=sp)
    b = C("subid b"); b.connect()
    sp = Properties(PacketTypes.SUBSCRIBE); sp.SubscriptionIdentifier = 2; b.sub(T[0], qos=2, properties=sp)
    sp = Properties(PacketTypes.SUBSCRIBE); sp.SubscriptionIdentifier = 3; b.sub(T[0] + "/#", qos=2, properties=sp)
    b.c.publish(T[0], b"sub identifier test", 1)
    assert wait(lambda: len(a.msgs) == 1 and len(b.msgs) >= 1); time.sleep(0.5)
    assert a.msgs[0].properties.SubscriptionIdentifier[0] == 456789
    # One message with both identifiers, or one per matching subscription (both allowed).
    ids = sorted(i for m in b.msgs for i in m.properties.SubscriptionIdentifier)
    assert ids == [2, 3] and len(b.msgs) in (1, 2), ids
    a.stop(); b.stop()

def request_response():
    a = C("rr a"); a.connect(); a.sub(T[0], options=SubscribeOptions(2, noLocal=True))
    b = C("rr b"); b.connect(); b.sub(T[0], options=SubscribeOptions(2, noLocal=True))
    a.c.publish(T[0], b"request", 1, properties=props(ResponseTopic=T[0], CorrelationData=b"334"))
    assert wait(lambda: len(b.msgs) == 1)
    assert b.msgs[0].properties.ResponseTopic == T[0] and b.msgs[0].properties.CorrelationData == b"334"
    b.c.publish(b.msgs[0].properties.ResponseTopic, b"response", 1, properties=b.msgs[0].properties)
    assert wait(lambda: len(a.msgs) == 1)
    a.stop(); b.stop()

def client_topic_alias():
    cp = Properties(PacketTypes.CONNECT); cp.TopicAliasMaximum = 0; cp.SessionExpiryInterval = 99999
    a = C("client topic alias"); f, rc, p = a.connect(properties=cp)
    assert p.TopicAliasMaximum > 0
    a.sub(T[0], qos=2)
    a.c.publish(T[0], b"topic alias 1", 1, properties=props(TopicAlias=1)); assert wait(lambda: len(a.msgs) == 1)
    a.c.publish("", b"topic alias 2", 1, properties=props(TopicAlias=1)); assert wait(lambda: len(a.msgs) == 2)
    assert a.msgs[1].topic == T[0]
    a.stop()
    a = C("client topic alias"); a.connect(clean_start=False, properties=cp)
    a.c.publish(T[0], b"topic alias 3", 1); assert wait(lambda: len(a.msgs) == 1)
    a.c.publish("", b"topic alias 4", 1, properties=props(TopicAlias=1))
    assert wait(lambda: len(a.discs) == 1), "disconnected for an unknown alias"
    a.c.loop_stop()

def server_topic_alias():
    cp = Properties(PacketTypes.CONNECT); cp.TopicAliasMaximum = 1
    a = C("server topic alias"); a.connect(properties=cp); a.sub(T[0], qos=2)
    for q in range(3): a.c.publish(T[0], b"topic alias 1", q)
    assert wait(lambda: len(a.msgs) == 3)
    # A server may use aliases (it need not). If it does, the first message sets the alias
    # with the topic and later ones carry the alias alone (paho-mqtt hands them on with an
    # empty topic).
    if hasattr(a.msgs[0].properties, "TopicAlias"):
        alias = a.msgs[0].properties.TopicAlias
        assert 0 < alias <= 1 and a.msgs[0].topic == T[0]
        assert all(m.topic == "" and m.properties.TopicAlias == alias for m in a.msgs[1:])
        print("  (server topic aliases used)")
    a.stop()
    a = C("server topic alias"); a.connect(); a.sub(T[0], qos=2)
    for q in range(3): a.c.publish(T[0], b"topic alias 2", q)
    assert wait(lambda: len(a.msgs) == 3)
    assert not any(hasattr(m.properties, "TopicAlias") for m in a.msgs)
    a.stop()

def maximum_packet_size():
    cp = Properties(PacketTypes.CONNECT); cp.MaximumPacketSize = 64
    a = C("maximum packet size"); a.connect(properties=cp); a.sub(T[0], qos=2)
    a.c.publish(T[0], b"." * 32, 0); assert wait(lambda: len(a.msgs) == 1)
    a.c.publish(T[0], b"." * 64, 1); time.sleep(1); assert len(a.msgs) == 1, "too big for the client is not sent"
    a.stop()

def will_delay():
    wp = Properties(PacketTypes.WILLMESSAGE); wp.WillDelayInterval = 3
    cp = Properties(PacketTypes.CONNECT); cp.SessionExpiryInterval = 5
    a = C("will delay a"); a.c.will_set(T[0], b"will delay", properties=wp); a.connect(properties=cp)
    b = C("will delay b"); b.connect(properties=cp); b.sub(T[0], qos=2)
    a.c.loop_stop(); a.c.socket().close(); start = time.time()
    assert wait(lambda: len(b.msgs) == 1, 8)
    took = time.time() - start
    assert 2.5 <= took <= 5, took
    b.stop()

def v311_basic_retained_will():
    a = C("v3 a", proto=mqtt.MQTTv311); a.connect(); a.sub("TopicA/#", qos=2)
    for q in range(3): a.c.publish("TopicA/B", f"qos {q}".encode(), q)
    assert wait(lambda: len(a.msgs) == 3) and sorted(m.qos for m in a.msgs) == [0, 1, 2]
    a.c.publish("TopicA/R", b"kept", 1, retain=True); time.sleep(0.3)
    b = C("v3 b", proto=mqtt.MQTTv311); b.c.will_set("TopicA/W", b"gone", 1); b.connect(keepalive=2)
    b.sub("TopicA/R", qos=1); assert wait(lambda: len(b.msgs) == 1) and b.msgs[0].retain
    b.c.loop_stop()
    assert wait(lambda: any(m.topic == "TopicA/W" for m in a.msgs), 8)
    a.stop(); clean_retained()

for f in (basic, retained, will_on_keepalive, zero_length_clientid, offline_queueing, overlapping, unsubscribe,
          session_expiry, payload_format_and_user_properties, message_expiry, subscribe_options,
          subscription_identifiers, request_response, client_topic_alias, server_topic_alias,
          maximum_packet_size, will_delay, v311_basic_retained_will):
    check(f.__name__, f)
for name, status, why in results:
    print(f"{status} {name} {why}")
print(f"{sum(1 for r in results if r[1] == 'PASS')}/{len(results)} passed")
