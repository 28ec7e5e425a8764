"""Example worker: a live counter and chat room on a stream.

Open http://127.0.0.1:3111/live in a browser (two windows), press the button or type a message:
every window sees the change at once. The page joins the stream ``demo`` over the supervisor's
stream endpoint (ws://127.0.0.1:3112/); this worker changes it with ``stream::update``,
``stream::set`` and ``stream::send``, and logs who joins and leaves.

    curl -s -X POST localhost:3111/live/bump                                   # +1 for everyone
    curl -s localhost:3111/live/say -H 'content-type: application/json' -d '{"text": "hi"}'
"""

import json
import time

from iii_supervisor import logger, register_worker

iii = register_worker()

COUNTER = {"stream_name": "demo", "group_id": "counter", "item_id": "value"}

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>iii live</title>
<style>body{font:16px system-ui;margin:2em} #count{font-size:3em} li{margin:.2em 0}</style></head>
<body>
<h1>Live counter: <span id="count">…</span></h1>
<button id="bump">+1</button> <span id="status">connecting…</span>
<h2>Chat</h2>
<form id="say"><input id="text" autocomplete="off"> <button>send</button></form>
<ul id="messages"></ul> <p id="typing"></p>
<script>
const ws = new WebSocket(__WS_URL__);
const $ = (id) => document.getElementById(id);
function showMessage(m) {
  const li = document.createElement("li");
  li.id = "m-" + m.id; li.textContent = m.text;
  $("messages").appendChild(li);
}
ws.onopen = () => {
  $("status").textContent = "live";
  ws.send(JSON.stringify({type: "join", data: {subscriptionId: "counter", streamName: "demo",
                                                groupId: "counter", id: "value"}}));
  ws.send(JSON.stringify({type: "join", data: {subscriptionId: "chat", streamName: "demo", groupId: "chat"}}));
};
ws.onclose = (e) => { $("status").textContent = "closed (" + e.code + ")"; };
ws.onmessage = (msg) => {
  const e = JSON.parse(msg.data);
  if (e.type === "error") { $("status").textContent = e.error.code + ": " + e.error.message; return; }
  if (e.type !== "stream") return;
  const kind = e.event.type;
  if (e.groupId === "counter") {
    if (kind === "sync" || kind === "create" || kind === "update") {
      $("count").textContent = e.event.data ? e.event.data.count : 0;
      document.body.dataset.synced = "1";
    }
  } else if (e.groupId === "chat") {
    if (kind === "sync") { $("messages").textContent = ""; e.event.data.forEach(showMessage); }
    else if (kind === "create") showMessage(e.event.data);
    else if (kind === "delete") { const li = $("m-" + e.id); if (li) li.remove(); }
    else if (kind === "event") $("typing").textContent = e.event.event.data.text;
  }
};
$("bump").onclick = () => fetch("/live/bump", {method: "POST"});
$("say").onsubmit = (ev) => {
  ev.preventDefault();
  fetch("/live/say", {method: "POST", headers: {"content-type": "application/json"},
                      body: JSON.stringify({text: $("text").value})});
  $("text").value = "";
};
</script></body></html>
"""


def page(req):
    # the page connects to the stream endpoint on the host it was loaded from
    port = iii.trigger({"function_id": "engine::streams::stats", "payload": {}})["port"]
    host = (req.get("headers") or {}).get("host", "127.0.0.1").rsplit(":", 1)[0]
    html = PAGE.replace("__WS_URL__", json.dumps(f"ws://{host}:{port}/"))
    return {"status_code": 200, "headers": {"content-type": "text/html; charset=utf-8"}, "body": html}


def bump(_req):
    answer = iii.trigger({"function_id": "stream::update", "payload": {
        **COUNTER, "ops": [{"type": "increment", "path": "count", "by": 1}]}})
    return {"status_code": 200, "body": answer["new_value"]}


def say(req):
    text = str((req.get("body") or {}).get("text", ""))[:500]
    if not text:
        return {"status_code": 400, "body": {"error": "text is empty"}}
    message = {"id": f"{time.time_ns()}", "text": text}
    iii.trigger({"function_id": "stream::set", "payload": {
        "stream_name": "demo", "group_id": "chat", "item_id": message["id"], "data": message}})
    # an ephemeral event, not stored: the last line said, shown under the list
    iii.trigger({"function_id": "stream::send", "payload": {
        "stream_name": "demo", "group_id": "chat", "type": "said", "data": {"text": f"last: {text}"}}})
    return {"status_code": 201, "body": message}


def on_join(event):
    logger.info(f"joined {event['stream_name']}/{event['group_id']} ({event['subscription_id']})")
    return {}


def on_leave(event):
    logger.info(f"left {event['stream_name']}/{event['group_id']} ({event['subscription_id']})")


iii.register_function({"id": "live.page"}, page)
iii.register_function({"id": "live.bump"}, bump)
iii.register_function({"id": "live.say"}, say)
iii.register_function({"id": "live.onJoin"}, on_join)
iii.register_function({"id": "live.onLeave"}, on_leave)
iii.register_trigger({"type": "http", "function_id": "live.page",
                      "config": {"api_path": "/live", "http_method": "GET"}})
iii.register_trigger({"type": "http", "function_id": "live.bump",
                      "config": {"api_path": "/live/bump", "http_method": "POST"}})
iii.register_trigger({"type": "http", "function_id": "live.say",
                      "config": {"api_path": "/live/say", "http_method": "POST"}})
iii.register_trigger({"type": "stream:join", "function_id": "live.onJoin", "config": {}})
iii.register_trigger({"type": "stream:leave", "function_id": "live.onLeave", "config": {}})
