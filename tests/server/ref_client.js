// Plays the reference TypeScript client (tether-ws) on Node's `ws`: no hello, plain §3.
//
//   NODE_PATH=<dir>/node_modules node ref_client.js URL COUNT
//
// Puts on the wire what TETHER-WIRE.md §2 recorded of the TS client: right after open an
// immediate heartbeat `{"type":"tether:ping","ts":<Date.now()>}`, then a subscribe to
// "news" and COUNT data envelopes on "chat", each with a random UUID id and no seq.
// Prints one JSON line per message the server sends, and {"closed": code} at the end.
// Closes with 1000 "Client disconnect" (the TS client's disconnect()) when stdin closes.
"use strict";

const crypto = require("crypto");
const WebSocket = require("ws");

const [url, count] = [process.argv[2], Number(process.argv[3] || "0")];
const ws = new WebSocket(url);

ws.on("open", () => {
  ws.send(JSON.stringify({ type: "tether:ping", ts: Date.now() }));
  ws.send(JSON.stringify({ channel: "news", type: "subscribe", id: crypto.randomUUID() }));
  for (let n = 1; n <= count; n++) {
    ws.send(
      JSON.stringify({ channel: "chat", type: "data", payload: { n }, id: crypto.randomUUID() })
    );
  }
  process.stdout.write(JSON.stringify({ opened: true }) + "\n");
});

ws.on("message", (data) => {
  process.stdout.write(data.toString() + "\n");
});

ws.on("close", (code) => {
  process.stdout.write(JSON.stringify({ closed: code }) + "\n");
  process.exit(0);
});

ws.on("error", (err) => {
  process.stdout.write(JSON.stringify({ error: String(err) }) + "\n");
});

process.stdin.resume();
process.stdin.on("end", () => ws.close(1000, "Client disconnect"));
