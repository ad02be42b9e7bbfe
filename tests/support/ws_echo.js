// An echo server on Node's `ws` with permessage-deflate on, for the compression tests.
//
//   NODE_PATH=<dir>/node_modules node ws_echo.js
//
// Listens on 127.0.0.1 (a free port), prints one JSON line {"port": N} once ready,
// echoes every message as it came (text as text, binary as binary), and prints
// {"extensions": "..."} for each connection: the permessage-deflate it agreed.
// Stops when stdin closes, so the test's teardown (or its death) stops it.
"use strict";

const { WebSocketServer } = require("ws");

const wss = new WebSocketServer({
  host: "127.0.0.1",
  port: 0,
  maxPayload: 64 * 1024 * 1024,
  // ws's defaults otherwise (threshold 1024 bytes, context takeover both ways).
  perMessageDeflate: true,
});

wss.on("listening", () => {
  process.stdout.write(JSON.stringify({ port: wss.address().port }) + "\n");
});

wss.on("connection", (ws) => {
  process.stdout.write(JSON.stringify({ extensions: ws.extensions }) + "\n");
  ws.on("message", (data, isBinary) => ws.send(data, { binary: isBinary }));
});

process.stdin.resume();
process.stdin.on("end", () => {
  for (const client of wss.clients) client.terminate();
  wss.close(() => process.exit(0));
});
